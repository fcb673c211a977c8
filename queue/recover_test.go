package queue

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// mountTmpfs mounts a tmpfs of size bytes in a temporary directory and
// unmounts it when the test ends. It skips the test when it cannot (not
// root, no mount permission).
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (CI runs as root)")
	}
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Skipf("cannot mount a tmpfs (%v): skipped", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// fillDisk writes a file in dir until the file system is full and returns
// its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling the disk: %v", err)
			}
			return path
		}
	}
}

// publisher publishes numbered events and remembers the acknowledged ones.
type publisher struct {
	t     *testing.T
	q     *Queue
	n     int
	acked map[string]bool
}

func (p *publisher) publish(timeout time.Duration) error {
	p.n++
	id := fmt.Sprintf("evt_%04d", p.n)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	data := fmt.Appendf(nil, `{"id":%q,"event":"dsync.user.created","pad":%q}`, id, make([]byte, 900))
	if _, err := p.q.Publish(ctx, "directory_1", "dsync.user.created", id, data); err != nil {
		return err
	}
	p.acked[id] = true
	return nil
}

// until publishes until one fails (want false) or succeeds (want true)
// within d; it returns the last error.
func (p *publisher) until(want bool, d time.Duration) error {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := p.publish(time.Second)
		if (err == nil) == want {
			return err
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("publishes did not %s within %s (last error %v)", map[bool]string{true: "succeed", false: "fail"}[want], d, err)
		}
	}
}

// waitReady waits until q.Ready returns nil (want true) or an error (want false).
func waitReady(t *testing.T, q *Queue, want bool, d time.Duration) error {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := q.Ready(testCtx(t, time.Second))
		if (err == nil) == want {
			return err
		}
		if time.Now().After(deadline) {
			t.Fatalf("Ready = %v after %s; want ready %v", err, d, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// consumeAll reads every message of the main stream with a fresh consumer
// and returns their message ids.
func consumeAll(t *testing.T, q *Queue) map[string]bool {
	t.Helper()
	info, err := q.StreamInfo(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	c, err := q.jsConsumer(testCtx(t, 5*time.Second), "check", 30*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, m := range fetch(t, c, int(info.State.Msgs)) {
		got[m.Headers().Get(jetstream.MsgIDHeader)] = true
	}
	return got
}

func missing(acked, got map[string]bool) []string {
	var out []string
	for id := range acked {
		if !got[id] {
			out = append(out, id)
		}
	}
	return out
}

func TestFullDiskRecoversInProcessAndKeepsEveryAcknowledgedEvent(t *testing.T) {
	mnt := mountTmpfs(t, 8<<20)
	q := openQueue(t, Options{StoreDir: filepath.Join(mnt, "jetstream"), HealthInterval: 200 * time.Millisecond})
	p := &publisher{t: t, q: q, acked: map[string]bool{}}
	for range 20 {
		if err := p.publish(5 * time.Second); err != nil {
			t.Fatalf("publish before the fault: %v", err)
		}
	}
	cons, err := q.jsConsumer(testCtx(t, 5*time.Second), "worker", 30*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	first := fetch(t, cons, 1)[0]

	filler := fillDisk(t, mnt)
	err = p.until(false, 20*time.Second)
	t.Logf("publish on a full disk: %v", err)
	reason := waitReady(t, q, false, 10*time.Second)
	if !errors.Is(reason, ErrCannotStore) {
		t.Fatalf("Ready on a full disk = %v; want ErrCannotStore", reason)
	}
	t.Logf("Ready on a full disk: %v", reason)
	// While the fault lasts, publishes fail at once with the reason instead
	// of waiting for their deadline.
	start := time.Now()
	if err := p.publish(5 * time.Second); !errors.Is(err, ErrCannotStore) || time.Since(start) > time.Second {
		t.Errorf("publish during the fault = %v after %s; want ErrCannotStore at once", err, time.Since(start))
	}
	// Parking fails too, and must work again afterwards.
	if err := q.park(testCtx(t, 2*time.Second), first, "test", 1); err == nil {
		t.Log("park on a full disk succeeded (the dead-letter stream had room)")
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	if err := p.until(true, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("stores again %s after the disk was freed (restarts: %d)", time.Since(freed).Round(time.Millisecond), q.Restarts())
	if d := time.Since(freed); d > 10*time.Second {
		t.Errorf("stored again after %s; want within 10s", d)
	}
	waitReady(t, q, true, 5*time.Second)
	for range 20 {
		if err := p.publish(5 * time.Second); err != nil {
			t.Fatalf("publish after recovery: %v", err)
		}
	}
	if err := q.park(testCtx(t, 5*time.Second), first, "after recovery", 1); err != nil {
		t.Fatalf("Park after recovery: %v", err)
	}
	if n, err := q.DeadLetterCount(testCtx(t, 5*time.Second)); err != nil || n != 1 {
		t.Errorf("dead letters = %d, %v; want 1", n, err)
	}
	if m := missing(p.acked, consumeAll(t, q)); len(m) > 0 {
		t.Fatalf("%d acknowledged events missing from the stream: %v", len(m), m)
	}
}

func TestDescriptorExhaustionRecoversAndKeepsEveryAcknowledgedEvent(t *testing.T) {
	// Small blocks (32 KB, from MaxBytes ≤ 128 KB) make the file store
	// close its block file and open a new one every ~30 events. With every
	// descriptor under the limit taken (as by a flood of idle connections
	// grabbing each one freed) and the limit lowered under the block's own
	// descriptor, that open fails.
	dir := t.TempDir()
	q := openQueue(t, Options{StoreDir: dir, HealthInterval: 200 * time.Millisecond, MaxBytes: 120_000})
	p := &publisher{t: t, q: q, acked: map[string]bool{}}
	for range 5 {
		if err := p.publish(5 * time.Second); err != nil {
			t.Fatalf("publish before the fault: %v", err)
		}
	}
	block := -1
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot list open files: %v", err)
	}
	for _, e := range entries {
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if strings.HasPrefix(target, dir) && strings.Contains(target, "/streams/DSYNC/msgs/") {
			block, _ = strconv.Atoi(e.Name())
		}
	}
	if block < 0 {
		t.Fatal("the stream's block file is not open")
	}

	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	var hogs []*os.File
	release := func() {
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		for _, f := range hogs {
			_ = f.Close()
		}
		hogs = nil
	}
	t.Cleanup(release)
	lowered := lim
	lowered.Cur = uint64(block) // the block's descriptor is the first one past the limit
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lowered); err != nil {
		t.Skipf("cannot lower the open-files limit: %v", err)
	}
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatal(err)
			}
			break
		}
		hogs = append(hogs, f)
	}

	err = p.until(false, 30*time.Second)
	t.Logf("publish without descriptors: %v", err)
	reason := waitReady(t, q, false, 10*time.Second)
	if !errors.Is(reason, ErrCannotStore) {
		t.Fatalf("Ready without descriptors = %v; want ErrCannotStore", reason)
	}
	t.Logf("Ready without descriptors: %v", reason)

	release()
	freed := time.Now()
	if err := p.until(true, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("stores again %s after descriptors were freed (restarts: %d)", time.Since(freed).Round(time.Millisecond), q.Restarts())
	waitReady(t, q, true, 5*time.Second)
	for range 10 {
		if err := p.publish(5 * time.Second); err != nil {
			t.Fatalf("publish after recovery: %v", err)
		}
	}
	if m := missing(p.acked, consumeAll(t, q)); len(m) > 0 {
		t.Fatalf("%d acknowledged events missing from the stream: %v", len(m), m)
	}
}
