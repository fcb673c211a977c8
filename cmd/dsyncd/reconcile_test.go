package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/reconcile"
	"github.com/dsyncd/dsyncd/reconcile/workostest"
	"github.com/dsyncd/dsyncd/storage"
)

const reconcileTestKey = "sk_test_cmd_reconcile_5a4b3c2d1e_never_log_me"

func newWorkOS(t *testing.T) *workostest.Server {
	t.Helper()
	s, err := workostest.New(reconcileTestKey)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// reconcileConfigFile writes a configuration pointing at the fake WorkOS API.
func reconcileConfigFile(t *testing.T, endpoint string) string {
	t.Helper()
	dir := t.TempDir()
	return writeFile(t, dir, "dsyncd.yaml", `data_dir: `+filepath.Join(dir, "data")+`
log:
  level: debug
workos:
  endpoint: `+endpoint+`
mapping:
  admin_badge: admin
  default_badges: [member]
  groups:
    - name: Team - Platform
      badges: [admin]
`)
}

func exportUsers(t *testing.T, cfgPath string) []storage.ExportUser {
	t.Helper()
	code, out, errOut := runCLI(t, "export", "--config", cfgPath)
	if code != 0 {
		t.Fatalf("export: %d %s", code, errOut)
	}
	var snap storage.Snapshot
	mustf(t, json.Unmarshal([]byte(out), &snap), "decode export")
	return snap.Users
}

func TestReconcileCommandDryRunThenRepair(t *testing.T) {
	fake := newWorkOS(t)
	cfgPath := reconcileConfigFile(t, fake.URL)
	t.Setenv("DSYNCD_WORKOS_API_KEY", reconcileTestKey)

	code, out, errOut := runCLI(t, "reconcile", "--config", cfgPath, "--directory", workostest.UsersDirectory, "--dry-run")
	if code != 0 {
		t.Fatalf("dry run: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, want := range []string{
		"directory " + workostest.UsersDirectory, "4 users, 8 groups, 11 memberships in WorkOS; 24 differences",
		"user_missing", "dsync.user.created", "membership_missing", "dsync.group.user_added",
		"plan (dry run, nothing changed):", "organisation " + workostest.UsersOrganization + ": admins 0 -> 3",
		"+ admin (3):", "+ member (4):",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, out)
		}
	}
	if users := exportUsers(t, cfgPath); len(users) != 0 {
		t.Fatalf("a dry run stored %d users", len(users))
	}

	code, out, errOut = runCLI(t, "reconcile", "--config", cfgPath, "--org", workostest.UsersOrganization, "--format", "json")
	if code != 0 {
		t.Fatalf("reconcile: exit %d\n%s\n%s", code, out, errOut)
	}
	var res reconcile.Result
	mustf(t, json.Unmarshal([]byte(out), &res), "decode result")
	if res.DryRun || len(res.Differences) != 24 || res.Outcomes[storage.Applied] != 24 {
		t.Fatalf("result %+v", res)
	}
	var ids []string
	for _, u := range exportUsers(t, cfgPath) {
		ids = append(ids, u.ID)
	}
	want := fake.Users(workostest.UsersDirectory)
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Fatalf("users %v, want %v", ids, want)
	}

	// A stale Events API cursor is forgotten on request, once reconciled.
	st, err := storage.Open(storage.Options{Path: filepath.Join(filepath.Dir(cfgPath), "data", "dsyncd.db")})
	mustf(t, err, "open store")
	mustf(t, st.SetCursor(reconcile.CursorEvents, "event_too_old"), "set cursor")
	mustf(t, st.Close(), "close store")
	code, out, _ = runCLI(t, "reconcile", "--config", cfgPath, "--directory", workostest.UsersDirectory, "--reset-events-cursor")
	if code != 0 || !strings.Contains(out, "no differences") || !strings.Contains(out, "events cursor reset") {
		t.Fatalf("second run: exit %d\n%s", code, out)
	}
	st, err = storage.Open(storage.Options{Path: filepath.Join(filepath.Dir(cfgPath), "data", "dsyncd.db")})
	mustf(t, err, "open store")
	if c, _ := st.Cursor(reconcile.CursorEvents); c != "" {
		t.Errorf("cursor %q after --reset-events-cursor", c)
	}
	mustf(t, st.Close(), "close store")
	if strings.Contains(errOut, reconcileTestKey) {
		t.Fatal("the API key was logged")
	}
}

func TestReconcileCommandRefusals(t *testing.T) {
	fake := newWorkOS(t)
	cfgPath := reconcileConfigFile(t, fake.URL)
	t.Setenv("DSYNCD_WORKOS_API_KEY", "")
	code, _, errOut := runCLI(t, "reconcile", "--config", cfgPath)
	if code != exitError || !strings.Contains(errOut, "DSYNCD_WORKOS_API_KEY") {
		t.Fatalf("without a key: exit %d %s", code, errOut)
	}
	t.Setenv("DSYNCD_WORKOS_API_KEY", reconcileTestKey)
	code, _, errOut = runCLI(t, "reconcile", "--config", cfgPath, "--directory", "d", "--org", "o")
	if code != exitError || !strings.Contains(errOut, "directory") {
		t.Fatalf("--directory with --org: exit %d %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "reconcile", "--config", cfgPath, "--directory", "directory_unknown")
	if code != exitError || !strings.Contains(errOut, "404") {
		t.Fatalf("unknown directory: exit %d %s", code, errOut)
	}
	if len(fake.Requests("")) == 0 {
		t.Fatal("no request reached the fake")
	}
}

// referenceBodies returns the reference dsync events, as WorkOS sends them.
func referenceBodies(t *testing.T) [][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(workostest.ReferenceDir(), "events", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no reference events: %v", err)
	}
	slices.Sort(files)
	var out [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		mustf(t, err, "read %s", f)
		out = append(out, bytes.TrimSpace(b))
	}
	return out
}

// TestReconcileServePollsEventsWhileWebhooksDeliverTheSame runs serve with
// the Events API poller on while the webhook receives the same events: each
// is stored once and the store ends as the in-order replay.
func TestReconcileServePollsEventsWhileWebhooksDeliverTheSame(t *testing.T) {
	fake := newWorkOS(t)
	bodies := referenceBodies(t)
	fake.AddEvents(bodies...)
	cfg := orderFreeConfig(t)
	cfg.WorkOS.APIKey, cfg.WorkOS.Endpoint = reconcileTestKey, fake.URL
	cfg.Events.PollInterval, cfg.Events.Start = 50*time.Millisecond, "2021-01-01T00:00:00Z"
	var logs syncBuffer
	d := startDaemon(t, cfg, &logs)
	if d.bg == nil || d.bg.Poller == nil || d.bg.Reconciler != nil {
		t.Fatalf("background %+v: want the poller only", d.bg)
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { postConcurrently(t, d, bodies, 3) })
	}
	wg.Wait()
	deadline := time.Now().Add(30 * time.Second)
	seen := func(s reconcile.PollerStats) uint64 { return s.Published + s.Duplicates + s.AlreadyApplied }
	for d.bg.Poller.Stats().Pages == 0 || seen(d.bg.Poller.Stats()) < uint64(len(bodies)) {
		if time.Now().After(deadline) {
			t.Fatalf("the poller did not go through every event: %+v", d.bg.Poller.Stats())
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not a wait for work
	}
	waitApplied(t, d)
	info, err := d.q.StreamInfo(context.Background())
	mustf(t, err, "stream info")
	if info.State.Msgs != uint64(len(bodies)) {
		t.Errorf("%d messages on the stream, want %d: one per event id", info.State.Msgs, len(bodies))
	}
	if got, want := storage.CanonicalExport(apiGetT(t, d, "/v1/export")), inOrderExport(t, cfg, bodies); !bytes.Equal(got, want) {
		t.Errorf("export after poller+webhook:\n%s\nwant the in-order golden:\n%s", got, want)
	}
	// The operator sees what the poller did: every event once, in one of three outcomes.
	metrics := string(apiGetT(t, d, "/metrics"))
	var total float64
	for _, outcome := range []string{"published", "duplicate", "already_applied"} {
		line := `dsyncd_poller_events_total{outcome="` + outcome + `"} `
		i := strings.Index(metrics, line)
		if i < 0 {
			t.Fatalf("/metrics has no %s:\n%s", line, metrics)
		}
		var n float64
		_, err := fmt.Sscan(metrics[i+len(line):], &n)
		mustf(t, err, "parse %s", line)
		total += n
	}
	if total != float64(len(bodies)) {
		t.Errorf("dsyncd_poller_events_total sums to %v over published, duplicate and already_applied, want %d", total, len(bodies))
	}
	if strings.Contains(logs.String(), reconcileTestKey) {
		t.Fatal("the API key was logged")
	}
}

func TestReconcileServeReconcilesPeriodically(t *testing.T) {
	fake := newWorkOS(t)
	cfg := testConfig(t)
	cfg.WorkOS.APIKey, cfg.WorkOS.Endpoint = reconcileTestKey, fake.URL
	cfg.Reconcile.Interval = 50 * time.Millisecond
	var logs syncBuffer
	d := startDaemon(t, cfg, &logs)
	if d.bg == nil || d.bg.Poller != nil || d.bg.Reconciler == nil {
		t.Fatalf("background %+v: want the reconciler only", d.bg)
	}
	want := fake.Users(workostest.UsersDirectory)
	deadline := time.Now().Add(60 * time.Second)
	for {
		var snap storage.Snapshot
		mustf(t, json.Unmarshal(apiGetT(t, d, "/v1/export"), &snap), "decode export")
		n := 0
		for _, u := range snap.Users {
			if slices.Contains(want, u.ID) {
				n++
			}
		}
		if n == len(want) && strings.Contains(logs.String(), "reconciliation done") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("periodic reconcile did not create the %d users; logs:\n%s", len(want), logs.String())
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not a wait for work
	}
	if strings.Contains(logs.String(), reconcileTestKey) {
		t.Fatalf("logs:\n%s", logs.String())
	}
}

// TestReconcileServeSurfacesARefusedEventsCursor: after the Events API
// forgot the event the cursor names, /readyz lists it (staying 200) and
// dsyncd_events_cursor_stale is 1 with on_stale_cursor fail; with
// reconcile (the default) serve reconciles every directory and polls on.
func TestReconcileServeSurfacesARefusedEventsCursor(t *testing.T) {
	metric := func(d *daemon) string {
		for _, l := range strings.Split(string(apiGetT(t, d, "/metrics")), "\n") {
			if strings.HasPrefix(l, "dsyncd_events_cursor_stale ") {
				return strings.TrimPrefix(l, "dsyncd_events_cursor_stale ")
			}
		}
		t.Fatal("/metrics has no dsyncd_events_cursor_stale")
		return ""
	}
	readyz := func(d *daemon) (int, string) {
		resp, err := httpClient.Get("http://" + d.Addr() + "/readyz")
		mustf(t, err, "GET /readyz")
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond) // polling interval, not a wait for work
		}
	}
	for _, mode := range []string{config.OnStaleCursorFail, config.OnStaleCursorReconcile} {
		t.Run(mode, func(t *testing.T) {
			fake := newWorkOS(t)
			bodies := referenceBodies(t)
			fake.AddEvents(bodies...)
			cfg := testConfig(t)
			cfg.WorkOS.APIKey, cfg.WorkOS.Endpoint = reconcileTestKey, fake.URL
			cfg.Events.PollInterval, cfg.Events.Start, cfg.Events.OnStaleCursor = 50*time.Millisecond, "2021-01-01T00:00:00Z", mode
			d := startDaemon(t, cfg, nil)
			p := d.bg.Poller
			waitFor("the first poll", func() bool { return p.Stats().Published+p.Stats().AlreadyApplied > 0 })
			if got := metric(d); got != "0" {
				t.Fatalf("dsyncd_events_cursor_stale = %s before the refusal, want 0", got)
			}
			fake.ExpireEvents(len(bodies))
			if mode == config.OnStaleCursorFail {
				waitFor("the refusal to show", func() bool { return metric(d) == "1" })
				code, body := readyz(d)
				if code != 200 || !strings.Contains(body, `"degraded":["events poller: the Events API refused the events cursor`) {
					t.Fatalf("/readyz = %d %s; want 200 listing the refused cursor", code, body)
				}
				return
			}
			waitFor("a reconciliation after the refusal", func() bool { return p.Stats().StaleResets > 0 })
			if got := metric(d); got != "0" {
				t.Errorf("dsyncd_events_cursor_stale = %s after the reconciliation, want 0", got)
			}
			if code, body := readyz(d); code != 200 || strings.Contains(body, "degraded") {
				t.Errorf("/readyz = %d %s after the reconciliation; want 200, nothing degraded", code, body)
			}
			waitApplied(t, d)
			var snap storage.Snapshot
			mustf(t, json.Unmarshal(apiGetT(t, d, "/v1/export"), &snap), "decode export")
			have := map[string]bool{}
			for _, u := range snap.Users {
				have[u.ID] = true
			}
			for _, id := range fake.Users(workostest.UsersDirectory) {
				if !have[id] {
					t.Errorf("user %s of WorkOS missing after the reconciliation", id)
				}
			}
		})
	}
}
