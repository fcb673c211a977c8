package main

import (
	"context"
	"fmt"
	"github.com/dsyncd/dsyncd/mapping"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

func scenario(name string) (cfg, events string) {
	dir := filepath.Join("../../testdata/scenarios", name)
	return filepath.Join(dir, "config.yaml"), filepath.Join(dir, "events.ndjson")
}

func TestPlanAndApplyAMappingChange(t *testing.T) {
	cfgPath, evPath := scenario("initial-sync")
	db := filepath.Join(t.TempDir(), "s.db")
	if code, _, errOut := runCLI(t, "replay", "--config", cfgPath, "--db", db, evPath); code != 0 {
		t.Fatalf("replay: %s", errOut)
	}
	orig, err := os.ReadFile(cfgPath)
	mustf(t, err, "read config")
	// The new mapping drops the "App Admins" rule and grants admin by role instead.
	next := strings.Replace(string(orig), `    - {name: "App Admins", badges: [admin]}`+"\n", "", 1)
	next = strings.Replace(next, "    - {slug: billing, badges: [billing]}", "    - {slug: billing, badges: [billing]}\n    - {slug: owner, badges: [admin]}", 1)
	newCfg := writeFile(t, t.TempDir(), "new.yaml", next)
	_, before, _ := runCLI(t, "export", "--config", cfgPath, "--db", db)

	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
	}{
		{"no unmap choice is refused with the users it concerns", nil, 1, "removed rule group:name=App Admins: 2 users hold badges through it; on_unmap: NOT GIVEN"},
		{"remove would leave the organisation without an admin", []string{"--on-unmap", "remove"}, exitNoAdmin, "admins 2 -> 0"},
		{"keep changes no badge", []string{"--on-unmap", "keep"}, 0, "no badge changes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, append([]string{"plan", "--config", newCfg, "--db", db}, tc.args...)...)
			if code != tc.wantCode || !strings.Contains(out, tc.wantOut) {
				t.Fatalf("plan exit %d, want %d; output:\n%s%s", code, tc.wantCode, out, errOut)
			}
			if _, after, _ := runCLI(t, "export", "--config", cfgPath, "--db", db); after != before {
				t.Fatal("plan changed the store")
			}
		})
	}
	code, out, errOut := runCLI(t, "apply", "--config", newCfg, "--db", db, "--on-unmap", "keep")
	if code != 0 {
		t.Fatalf("apply: %d %s %s", code, out, errOut)
	}
	code, why, _ := runCLI(t, "export", "--config", newCfg, "--db", db)
	if code != 0 || strings.Count(why, `"admin"`) != 2 {
		t.Fatalf("after apply --on-unmap keep, want both admins retained:\n%s", why)
	}
}

func TestPlanAndResumeAPausedOrganisation(t *testing.T) {
	cfgPath, evPath := scenario("mass-deprovision")
	db := filepath.Join(t.TempDir(), "s.db")
	if code, out, _ := runCLI(t, "replay", "--config", cfgPath, "--db", db, evPath); code != 0 || !strings.Contains(out, "deferred 3") {
		t.Fatalf("replay: %d %s", code, out)
	}
	org := "org_01HSCENARIO00000000000000001"
	code, out, _ := runCLI(t, "plan", "--config", cfgPath, "--db", db, "--org", org)
	if code != 0 || !strings.Contains(out, "- member (2): directory_user_05, directory_user_06") {
		t.Fatalf("plan --org: %d\n%s", code, out)
	}
	code, out, errOut := runCLI(t, "resume", org, "--config", cfgPath, "--db", db)
	if code != 0 || !strings.Contains(out, "applied 3") {
		t.Fatalf("resume: %d %s %s", code, out, errOut)
	}
	_, export, _ := runCLI(t, "export", "--config", cfgPath, "--db", db)
	if !strings.Contains(export, `"first_name": "AfterPause"`) || strings.Contains(export, "mass_deprovision") {
		t.Fatalf("after resume the deferred events should be applied and the hold closed:\n%s", export)
	}
	if code, _, errOut := runCLI(t, "resume", org, "--config", cfgPath, "--db", db); code == 0 || !strings.Contains(errOut, "not paused") {
		t.Fatalf("second resume: %d %s", code, errOut)
	}
}

func TestStartupRefusesAMappingWithoutAdminRule(t *testing.T) {
	dir := t.TempDir()
	cfgPath := writeFile(t, dir, "c.yaml", "data_dir: "+dir+"\nmapping:\n  groups:\n    - {name: Staff, badges: [staff]}\n")
	_, evPath := scenario("initial-sync")
	for _, args := range [][]string{
		{"replay", "--config", cfgPath, evPath},
		{"plan", "--config", cfgPath},
		{"serve", "--config", cfgPath, "--webhook.path", "/wh"},
	} {
		t.Setenv("DSYNCD_WEBHOOK_SECRETS", "s1")
		code, _, errOut := runCLI(t, args...)
		if code == 0 || !strings.Contains(errOut, "safeguards.allow_no_admin_rule") {
			t.Errorf("%s: exit %d, want a refusal naming safeguards.allow_no_admin_rule; stderr: %s", args[0], code, errOut)
		}
	}
}

func TestReloadKeepsTheOldMappingWhenTheNewOneIsInvalid(t *testing.T) {
	cfg := testConfig(t)
	d := startDaemon(t, cfg, nil)
	bad := cfg
	bad.Mapping.Groups = nil // no rule grants admin
	if err := d.Reload(bad); err == nil || !strings.Contains(err.Error(), "allow_no_admin_rule") {
		t.Fatalf("reload without admin rule: %v", err)
	}
	good := cfg
	good.Mapping.DefaultBadges = []mapping.Badge{"member", "viewer"}
	mustf(t, d.Reload(good), "reload")
	if got := d.st.Mapping().DefaultBadges; fmt.Sprint(got) != "[member viewer]" {
		t.Fatalf("mapping after reload: %v", got)
	}
}

// TestPlanAndResumeGoThroughTheRunningDaemon: with serve running, plan --org
// and resume reach it through /v1 at http.listen, as holds, why and dlq do,
// where they used to need --server.
func TestPlanAndResumeGoThroughTheRunningDaemon(t *testing.T) {
	scenCfg, evPath := scenario("mass-deprovision")
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	conf := func(listen string) string {
		return "data_dir: " + dataDir + "\nlog:\n  level: warn\nhttp:\n  listen: " + listen + "\nwebhook:\n  secrets: [" + testSecret +
			"]\napi:\n  token: " + opsToken + "\nstore:\n  open_timeout: 200ms\n" + readString(t, scenCfg)
	}
	serveCfg := writeFile(t, dir, "serve.yaml", conf("127.0.0.1:0"))
	if code, out, errOut := runCLI(t, "replay", "--config", serveCfg, evPath); code != 0 || !strings.Contains(out, "deferred 3") {
		t.Fatalf("replay: %d %s %s", code, out, errOut)
	}
	cfg, err := loadConfig(serveCfg, nil, true)
	mustf(t, err, "config")
	d := newDaemon(cfg, zaptest.NewLogger(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	mustf(t, d.Open(ctx), "open daemon")
	t.Cleanup(func() { _ = d.Close() })
	cliCfg := writeFile(t, dir, "cli.yaml", conf(d.Addr()))

	org := "org_01HSCENARIO00000000000000001"
	if out := cli(t, 0, "plan", "--org", org, "--config", cliCfg); !strings.Contains(out, "- member (2): directory_user_05, directory_user_06") {
		t.Errorf("plan --org through the daemon:\n%s", out)
	}
	if out := cli(t, 0, "resume", org, "--config", cliCfg); !strings.Contains(out, "applied 3") {
		t.Errorf("resume through the daemon:\n%s", out)
	}
	if export := snapshotJSON(t, d.st); !strings.Contains(export, `"first_name": "AfterPause"`) || strings.Contains(export, "mass_deprovision") {
		t.Errorf("after resume the deferred events should be applied and the hold closed:\n%s", export)
	}
	if code, _, errOut := runCLI(t, "resume", org, "--config", cliCfg); code != 1 || !strings.Contains(errOut, "not paused") || !strings.Contains(errOut, "409") {
		t.Errorf("second resume: exit %d, want 1 with the daemon's 409 not paused; stderr: %s", code, errOut)
	}
}
