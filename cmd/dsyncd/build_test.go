package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
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
