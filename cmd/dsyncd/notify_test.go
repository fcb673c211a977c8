package main

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// notifyTestConfig is a serve configuration in dir: embedded NATS, random
// HTTP port, a webhook secret, a mapping with an admin rule.
func notifyTestConfig(t *testing.T, dir string) string {
	t.Helper()
	return writeFile(t, dir, "dsyncd.yaml", `data_dir: `+filepath.Join(dir, "data")+`
log:
  level: warn
http:
  listen: 127.0.0.1:0
webhook:
  secrets: [whsec_notify_test]
mapping:
  admin_badge: admin
  groups:
    - {name: App Admins, badges: [admin]}
`)
}

// notifySocket listens on a unixgram socket as systemd does, in a short
// directory: socket paths are limited to 108 bytes.
func notifySocket(t *testing.T) (*net.UnixConn, string) {
	t.Helper()
	dir := t.TempDir()
	if len(dir) > 80 {
		var err error
		dir, err = os.MkdirTemp("", "ntf")
		mustf(t, err, "temp dir")
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	path := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	mustf(t, err, "listen %s", path)
	t.Cleanup(func() { conn.Close() })
	return conn, path
}

// TestServeSpeaksSystemdNotify runs "dsyncd serve" as systemd would with
// Type=notify and WatchdogSec: READY=1 once up, WATCHDOG=1 pings, and
// STOPPING=1 on shutdown, in that order, and a clean exit.
func TestServeSpeaksSystemdNotify(t *testing.T) {
	conn, sock := notifySocket(t)
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "200000") // pings every 100ms
	t.Setenv("WATCHDOG_PID", "")
	cfgFile := notifyTestConfig(t, t.TempDir())

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exit := make(chan int, 1)
	go func() {
		exit <- run(ctx, []string{"serve", "--config", cfgFile}, strings.NewReader(""), io.Discard, io.Discard)
	}()

	// read returns the next datagram's lines, or fails the test at the deadline.
	buf := make([]byte, 4096)
	read := func(within time.Duration) []string {
		t.Helper()
		mustf(t, conn.SetReadDeadline(time.Now().Add(within)), "deadline")
		n, err := conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				select {
				case code := <-exit:
					t.Fatalf("serve exited with %d before notifying", code)
				default:
				}
			}
			t.Fatalf("read notify socket: %v", err)
		}
		return strings.Split(strings.TrimSpace(string(buf[:n])), "\n")
	}
	has := func(lines []string, want string) bool {
		for _, l := range lines {
			if l == want {
				return true
			}
		}
		return false
	}

	first := read(60 * time.Second)
	if !has(first, "READY=1") {
		t.Fatalf("first notification = %q, want READY=1 first", first)
	}
	pings := 0
	for pings < 2 {
		msg := read(5 * time.Second)
		if !has(msg, "WATCHDOG=1") {
			t.Fatalf("after READY=1 got %q, want WATCHDOG=1 pings", msg)
		}
		pings++
	}

	cancel()
	for {
		msg := read(30 * time.Second)
		if has(msg, "STOPPING=1") {
			break
		}
		if !has(msg, "WATCHDOG=1") || has(msg, "READY=1") {
			t.Fatalf("after cancel got %q, want STOPPING=1 (or a last WATCHDOG=1)", msg)
		}
	}
	select {
	case code := <-exit:
		if code != 0 {
			t.Fatalf("serve exited with %d, want 0", code)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not exit within 60s of STOPPING=1")
	}
	// Nothing after STOPPING=1.
	mustf(t, conn.SetReadDeadline(time.Now().Add(50*time.Millisecond)), "deadline")
	if n, err := conn.Read(buf); err == nil {
		t.Fatalf("notification after STOPPING=1: %q", buf[:n])
	}
}
