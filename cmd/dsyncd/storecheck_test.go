package main

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/storage"
)

// runServeBinary runs "dsyncd serve --config cfg" as a child process (the
// test binary running main) until it exits or logs "dsyncd ready"; it
// returns the exit code (-1: it became ready and was stopped) and stderr.
func runServeBinary(t *testing.T, cfg string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "serve", "--config", cfg)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	var stderr syncBuffer
	cmd.Stderr = &stderr
	mustf(t, cmd.Start(), "start serve")
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case err := <-done:
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatalf("serve: %v", err)
			}
			return code, stderr.String()
		case <-time.After(20 * time.Millisecond): // polling the log, not waiting for work
			if strings.Contains(stderr.String(), `"dsyncd ready"`) {
				_ = cmd.Process.Signal(os.Interrupt)
				<-done
				return -1, stderr.String()
			}
		}
	}
}

// TestServeRefusesADamagedOrStaleStore: a store truncated, overwritten,
// with zeroed meta pages, or swapped for an older backup makes serve exit 1
// with one line that names the store and says to run dsyncd rebuild — never
// a panic, never "ready". After dsyncd rebuild it starts.
// replaceFile copies src over dst (copyFile refuses an existing dst).
func replaceFile(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.Remove(dst); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	mustf(t, copyFile(src, dst), "copy %s to %s", src, dst)
}

func TestServeRefusesADamagedOrStaleStore(t *testing.T) {
	dir := t.TempDir()
	cfgPath := writeFile(t, dir, "dsyncd.yaml", "data_dir: "+filepath.Join(dir, "data")+`
log:
  level: info
  format: json
http:
  listen: 127.0.0.1:0
webhook:
  secrets: [`+testSecret+`]
`+adminMappingYAML)
	cfg, err := loadConfig(cfgPath, nil, true)
	mustf(t, err, "load config")
	store := cfg.StorePath()
	stream := synth.Stream(synth.Options{Seed: 3, Users: 20, Groups: 3, MembershipsPerUser: 1, Changes: 40})

	// Apply the first half, keep a backup, apply the rest.
	run := func(evs []synth.Event) {
		d := startDaemon(t, cfg, nil)
		for _, e := range evs {
			postSigned(t, d, e.Body)
		}
		waitApplied(t, d)
		mustf(t, d.Close(), "close daemon")
	}
	half := len(stream) / 2
	run(stream[:half])
	backup := filepath.Join(dir, "backup.db")
	mustf(t, copyFile(store, backup), "backup")
	run(stream[half:])
	good := filepath.Join(dir, "good.db")
	mustf(t, copyFile(store, good), "keep the good store")

	random := make([]byte, 16<<10)
	_, _ = rand.Read(random)
	overwrite := func(off int64, b []byte) func() {
		return func() {
			f, err := os.OpenFile(store, os.O_WRONLY, 0)
			mustf(t, err, "open store")
			_, err = f.WriteAt(b, off)
			mustf(t, err, "damage store")
			mustf(t, f.Close(), "close store")
		}
	}
	for _, tc := range []struct {
		name, want string
		damage     func()
	}{
		{"truncated to 0 bytes", "is new or was emptied, but the consumer acknowledged the stream up to seq", func() { mustf(t, os.Truncate(store, 0), "truncate") }},
		{"deleted", "is new or was emptied, but the consumer acknowledged the stream up to seq", func() { mustf(t, os.Remove(store), "remove") }},
		{"meta pages zeroed", "is damaged", overwrite(0, make([]byte, 2*os.Getpagesize()))},
		{"16 KB of random bytes", "is damaged", func() { mustf(t, os.WriteFile(store, random, 0o600), "write") }},
		{"random bytes over its first data pages", "is damaged", overwrite(2*int64(os.Getpagesize()), random)},
		{"an older backup swapped in", "is behind the stream (applied seq", func() { replaceFile(t, backup, store) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			replaceFile(t, good, store)
			tc.damage()
			code, stderr := runServeBinary(t, cfgPath)
			var last string
			for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
				last = l
			}
			if code != 1 || !strings.HasPrefix(last, "dsyncd: store "+store+" ") || !strings.Contains(last, tc.want) ||
				!strings.HasSuffix(last, "run dsyncd rebuild (with --from BACKUP if the stream no longer holds every event)") {
				t.Fatalf("serve exited %d, last line %q; want 1 and a line naming %s, saying %q and to run dsyncd rebuild\n%s", code, last, store, tc.want, stderr)
			}
			if strings.Contains(stderr, "goroutine ") {
				t.Fatalf("serve panicked:\n%s", stderr)
			}
			t.Log(last)
		})
	}

	// A store written before the applied sequence was recorded starts, and
	// gets the consumer's position.
	t.Run("a store from before the record starts", func(t *testing.T) {
		replaceFile(t, good, store)
		db, err := bolt.Open(store, 0o600, nil)
		mustf(t, err, "open store")
		mustf(t, db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Delete([]byte("applied_seq")) }), "delete the record")
		mustf(t, db.Close(), "close store")
		if code, stderr := runServeBinary(t, cfgPath); code != -1 {
			t.Fatalf("serve exited %d:\n%s", code, stderr)
		}
		st, err := storage.Open(storeOptions(cfg, store))
		mustf(t, err, "open store")
		defer st.Close()
		if seq, ok, err := st.AppliedSeq(); err != nil || !ok || seq != uint64(len(stream)) {
			t.Fatalf("applied seq after start = %d, %v, %v; want %d", seq, ok, err, len(stream))
		}
	})

	// The remedy: rebuild from the stream, then serve starts.
	replaceFile(t, backup, store)
	if code, out, stderr := runCLI(t, "rebuild", "--config", cfgPath); code != 0 {
		t.Fatalf("rebuild exited %d\n%s\n%s", code, out, stderr)
	}
	if code, stderr := runServeBinary(t, cfgPath); code != -1 {
		t.Fatalf("serve after rebuild exited %d:\n%s", code, stderr)
	}
}
