package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCheckConfigRefusesEnvironmentVariablesThatSetNoKey: a misspelt
// DSYNCD_WEBHOOK_SECRET is a problem naming the right variable, not
// silently ignored.
func TestCheckConfigRefusesEnvironmentVariablesThatSetNoKey(t *testing.T) {
	cfg := writeFile(t, t.TempDir(), "c.yaml", "webhook:\n  secrets: [s]\n"+adminMappingYAML)
	if code, out, errOut := runCLI(t, "check-config", "--config", cfg); code != 0 {
		t.Fatalf("check-config before: exit %d %s%s", code, out, errOut)
	}
	t.Setenv("DSYNCD_WEBHOOK_SECRET", "whsec_misspelt")
	code, out, _ := runCLI(t, "check-config", "--config", cfg)
	if code != 1 || !strings.Contains(out, "DSYNCD_WEBHOOK_SECRET: no configuration key has this environment variable; it is ignored (did you mean DSYNCD_WEBHOOK_SECRETS?)") {
		t.Errorf("check-config with DSYNCD_WEBHOOK_SECRET: exit %d\n%s", code, out)
	}
}

// TestTheDevelopmentSecretIsWarnedOutsideMakeRun: config/example.yaml's
// public secret gets a warning from check-config and serve, except under
// make run (DSYNCD_DEV=1).
func TestTheDevelopmentSecretIsWarnedOutsideMakeRun(t *testing.T) {
	const warning = "development secret, which anyone can read"
	t.Setenv(devEnv, "")
	code, out, _ := runCLI(t, "check-config", "--config", "../../config/example.yaml")
	if code != 0 || !strings.Contains(out, "warning: webhook.secrets: holds config/example.yaml's "+warning) {
		t.Errorf("check-config of the example: exit %d\n%s", code, out)
	}
	if strings.Contains(out, devSecret) {
		t.Errorf("the warning repeats the secret: %s", out)
	}
	t.Setenv(devEnv, "1")
	if code, out, _ := runCLI(t, "check-config", "--config", "../../config/example.yaml"); code != 0 || strings.Contains(out, warning) {
		t.Errorf("check-config of the example under make run: exit %d\n%s", code, out)
	}

	// serve warns at start-up, about the secret and a misspelt variable.
	t.Setenv(devEnv, "")
	t.Setenv("DSYNCD_HTTP_LISTN", "127.0.0.1:9")
	dir := t.TempDir()
	cfg := writeFile(t, dir, "c.yaml", "data_dir: "+filepath.Join(dir, "data")+"\nhttp:\n  listen: 127.0.0.1:0\nwebhook:\n  secrets: ["+devSecret+"]\n"+adminMappingYAML)
	serve := exec.Command(os.Args[0], "serve", "--config", cfg)
	serve.Env = append(os.Environ(), runMainEnv+"=1")
	p := startServeCmd(t, serve)
	var warned []string
	for _, l := range p.seen {
		if l["msg"] == "configuration warning" {
			warned = append(warned, l["warning"].(string))
		}
	}
	all := strings.Join(warned, "\n")
	if !strings.Contains(all, warning) || !strings.Contains(all, "DSYNCD_HTTP_LISTN: no configuration key") || strings.Contains(all, runMainEnv) {
		t.Errorf("serve's start-up warnings:\n%s", all)
	}
	mustf(t, serve.Process.Signal(syscall.SIGTERM), "SIGTERM")
	if code := p.waitExit(t, 60*time.Second); code != 0 {
		t.Errorf("serve exited with %d", code)
	}
}
