package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/storage"
)

// tryItCommands returns the shell lines of README.md's Try-it block: those
// of the sh fence between the try-it markers.
func tryItCommands(t *testing.T, readme string) []string {
	t.Helper()
	_, rest, ok := strings.Cut(readme, "<!-- try-it:begin -->")
	block, _, ok2 := strings.Cut(rest, "<!-- try-it:end -->")
	if !ok || !ok2 {
		t.Fatal("README.md has no <!-- try-it:begin --> ... <!-- try-it:end --> block")
	}
	_, fence, ok := strings.Cut(block, "```sh\n")
	fence, _, ok2 = strings.Cut(fence, "```")
	if !ok || !ok2 {
		t.Fatal("the Try-it block has no ```sh fence")
	}
	var cmds []string
	for _, l := range strings.Split(fence, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			cmds = append(cmds, l)
		}
	}
	if len(cmds) == 0 {
		t.Fatal("the Try-it block's sh fence has no command")
	}
	return cmds
}

// copyTree copies the files under src to dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if e.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	mustf(t, err, "copy %s", src)
}

// TestReadmeTryIt runs the README's Try-it commands, as a newcomer would
// after "make run", against the daemon "make run" starts: the built binary
// serving config/example.yaml, in a copy of the repository's files (its
// data/ is the copy's), on a free port instead of 8080.
func TestReadmeTryIt(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	mustf(t, err, "README")
	cmds := tryItCommands(t, string(readme))

	work := t.TempDir()
	bin := builtBinary(t)
	mustf(t, os.MkdirAll(filepath.Join(work, "bin"), 0o755), "bin")
	mustf(t, os.Symlink(bin, filepath.Join(work, "bin", "dsyncd")), "bin/dsyncd")
	copyTree(t, "../../config", filepath.Join(work, "config"))
	copyTree(t, "../../testdata/try", filepath.Join(work, "testdata", "try"))

	// make run: DSYNCD_DEV=1 bin/dsyncd serve --config config/example.yaml,
	// here on a random port and logging JSON, for the test to read.
	if mk := readString(t, "../../Makefile"); !strings.Contains(mk, "\tDSYNCD_DEV=1 $(BIN) serve --config $(CONFIG)\n") ||
		!strings.Contains(mk, "BIN       := bin/dsyncd\n") || !strings.Contains(mk, "CONFIG    ?= config/example.yaml\n") {
		t.Fatal("make run no longer runs DSYNCD_DEV=1 bin/dsyncd serve --config config/example.yaml: update this test")
	}
	serve := exec.Command(filepath.Join(work, "bin", "dsyncd"), "serve", "--config", "config/example.yaml")
	serve.Dir = work
	serve.Env = append(os.Environ(), "DSYNCD_DEV=1", "DSYNCD_HTTP_LISTEN=127.0.0.1:0", "DSYNCD_LOG_FORMAT=json")
	p := startServeCmd(t, serve)
	defer func() {
		mustf(t, serve.Process.Signal(syscall.SIGTERM), "SIGTERM")
		if code := p.waitExit(t, 60*time.Second); code != 0 {
			t.Errorf("serve exited with %d", code)
		}
	}()

	var export string
	for _, c := range cmds {
		line := strings.ReplaceAll(c, "localhost:8080", p.addr)
		sh := exec.Command("bash", "-c", line)
		sh.Dir = work
		sh.Env = append(os.Environ(), "DSYNCD_HTTP_LISTEN="+p.addr)
		var out, errb strings.Builder
		sh.Stdout, sh.Stderr = &out, &errb
		done := make(chan error, 1)
		mustf(t, sh.Start(), "start %s", line)
		go func() { done <- sh.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", c, err, out.String(), errb.String())
			}
		case <-time.After(2 * time.Minute):
			_ = sh.Process.Kill()
			t.Fatalf("%s: still running after 2m", c)
		}
		t.Logf("$ %s\n%s%s", c, out.String(), errb.String())
		if strings.Contains(out.String(), `"users"`) {
			export = out.String()
		}
	}
	if export == "" {
		t.Fatal("no Try-it command printed an export")
	}
	var snap storage.Snapshot
	mustf(t, json.Unmarshal([]byte(export), &snap), "export")
	badges := map[string]string{}
	for _, u := range snap.Users {
		badges[u.Email] = strings.Join(strings.Fields(strings.Trim(fmt.Sprint(slices.Sorted(slices.Values(u.Badges))), "[]")), ",")
	}
	want := map[string]string{"alice@example.com": "admin,member", "bob@example.com": "billing,member"}
	for email, b := range want {
		if badges[email] != b {
			t.Errorf("%s has badges %q, want %q (export: %v)", email, badges[email], b, badges)
		}
	}
	if len(badges) != len(want) {
		t.Errorf("export users %v, want only alice and bob", badges)
	}
}
