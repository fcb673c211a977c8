package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The version and commit the test binary is built with, as the Makefile
// passes them.
const (
	builtVersion = "v9.8.7-test"
	builtCommit  = "abc1234"
)

var built struct {
	once sync.Once
	dir  string
	path string
	out  []byte
	err  error
}

// builtBinary builds bin/dsyncd as "make build" does in a copy without .git
// (-buildvcs=false, version and commit from -ldflags), once per test run.
func builtBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		if built.dir, built.err = os.MkdirTemp("", "dsyncd-bin-"); built.err != nil {
			return
		}
		built.path = filepath.Join(built.dir, "dsyncd")
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		}
		cmd := exec.Command(goTool, "build", "-buildvcs=false",
			"-ldflags", "-X main.version="+builtVersion+" -X main.commit="+builtCommit, "-o", built.path, ".")
		built.out, built.err = cmd.CombinedOutput()
	})
	if built.err != nil {
		t.Fatalf("go build: %v\n%s", built.err, built.out)
	}
	return built.path
}

// removeBuiltBinary removes what builtBinary built (from TestMain).
func removeBuiltBinary() {
	if built.dir != "" {
		_ = os.RemoveAll(built.dir)
	}
}

// TestVersionNamesVersionAndCommitWithoutVCS: built as the Makefile builds
// in a copy without .git (-buildvcs=false, -X main.version, -X main.commit),
// "dsyncd version" and the start-up log name both.
func TestVersionNamesVersionAndCommitWithoutVCS(t *testing.T) {
	bin := builtBinary(t)
	out, err := exec.Command(bin, "version").CombinedOutput()
	mustf(t, err, "dsyncd version: %s", out)
	if !strings.Contains(string(out), builtVersion) || !strings.Contains(string(out), "revision "+builtCommit) {
		t.Errorf("dsyncd version = %q, want version %s and revision %s", out, builtVersion, builtCommit)
	}
	dir := t.TempDir()
	cfg := writeFile(t, dir, "c.yaml", "data_dir: "+filepath.Join(dir, "data")+"\nhttp:\n  listen: 127.0.0.1:0\nwebhook:\n  secrets: ["+testSecret+"]\n"+adminMappingYAML)
	serve := exec.Command(bin, "serve", "--config", cfg)
	p := startServeCmd(t, serve)
	ready := p.ready
	if ready["version"] != builtVersion || ready["commit"] != builtCommit {
		t.Errorf("start-up log: version %v, commit %v; want %s, %s", ready["version"], ready["commit"], builtVersion, builtCommit)
	}
	mustf(t, serve.Process.Signal(syscall.SIGTERM), "SIGTERM")
	if code := p.waitExit(t, 60*time.Second); code != 0 {
		t.Errorf("serve exited with %d", code)
	}
	// The Makefile passes the commit, and keeps a COMMIT given to it
	// (.ci/run builds in a copy without .git).
	mk := readString(t, "../../Makefile")
	for _, want := range []string{"COMMIT    ?= ", "-X main.commit=$(COMMIT)"} {
		if !strings.Contains(mk, want) {
			t.Errorf("Makefile lacks %q", want)
		}
	}
}
