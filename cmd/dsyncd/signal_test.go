package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/events"
)

// runMainEnv makes the test binary run dsyncd's main instead of the tests:
// the signal tests start it as a child process, as systemd starts dsyncd.
const runMainEnv = "DSYNCD_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		knownEnv = append(knownEnv, runMainEnv)
		main()
		return
	}
	code := m.Run()
	removeBuiltBinary()
	if consumerBuilt.dir != "" {
		_ = os.RemoveAll(consumerBuilt.dir)
	}
	os.Exit(code)
}

// serveProcess is "dsyncd serve" running as a child process.
type serveProcess struct {
	cmd   *exec.Cmd
	cfg   string
	addr  string
	ready map[string]any      // the "dsyncd ready" log line
	seen  []map[string]any    // the lines waitLog read
	logs  chan map[string]any // every JSON log line
	exit  chan error
}

// startServeProcess starts serve on a configuration whose HTTP timeouts are
// long, so that only a signal ends a slow request.
func startServeProcess(t *testing.T) *serveProcess {
	t.Helper()
	dir := t.TempDir()
	cfg := writeFile(t, dir, "dsyncd.yaml", `data_dir: `+filepath.Join(dir, "data")+`
log:
  level: info
  format: json
http:
  listen: 127.0.0.1:0
  read_timeout: 2m
  write_timeout: 2m
  shutdown_timeout: 2m
webhook:
  secrets: [`+testSecret+`]
`+adminMappingYAML)
	cmd := exec.Command(os.Args[0], "serve", "--config", cfg)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	p := startServeCmd(t, cmd)
	p.cfg = cfg
	return p
}

// startServeCmd starts cmd, a "dsyncd serve" logging JSON to stderr, and
// waits until it is ready.
func startServeCmd(t *testing.T, cmd *exec.Cmd) *serveProcess {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	mustf(t, err, "stderr pipe")
	mustf(t, cmd.Start(), "start serve")
	p := &serveProcess{cmd: cmd, logs: make(chan map[string]any, 1024), exit: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) == nil {
				p.logs <- line
			}
		}
		close(p.logs)
		p.exit <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		for range p.logs { // drain, so that the reader ends
		}
	})
	ready := p.waitLog(t, "dsyncd ready", 60*time.Second)
	p.ready = ready
	p.addr, _ = ready["http"].(string)
	if p.addr == "" {
		t.Fatalf("ready line without the HTTP address: %v", ready)
	}
	return p
}

// waitLog returns the first log line with message msg, failing the test if
// the process ends or the deadline passes first.
func (p *serveProcess) waitLog(t *testing.T, msg string, within time.Duration) map[string]any {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case line, ok := <-p.logs:
			if !ok {
				t.Fatalf("serve exited before logging %q", msg)
			}
			p.seen = append(p.seen, line)
			if line["msg"] == msg {
				return line
			}
		case <-deadline:
			t.Fatalf("serve did not log %q within %s", msg, within)
		}
	}
}

// waitExit returns serve's exit code, failing the test after within.
func (p *serveProcess) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case _, ok := <-p.logs:
			if ok {
				continue
			}
			err := <-p.exit
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return ee.ExitCode()
			}
			mustf(t, err, "wait for serve")
			return 0
		case <-deadline:
			t.Fatalf("serve did not exit within %s", within)
		}
	}
}

// halfPosted is a signed webhook request of which only the first half of
// the body has been sent: a request in flight.
type halfPosted struct {
	conn net.Conn
	r    *bufio.Reader
	rest []byte
}

// postHalf sends a webhook's headers with "Expect: 100-continue" and waits
// for the 100 Continue that net/http sends when the handler starts reading
// the body, so the request is in the server's hands (not merely queued in
// the listener's backlog) before the first half of the body goes out.
func postHalf(t *testing.T, addr string, body []byte) *halfPosted {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	mustf(t, err, "dial")
	t.Cleanup(func() { conn.Close() })
	_, err = fmt.Fprintf(conn, "POST /webhooks/workos HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n%s: %s\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n",
		addr, events.HeaderName, events.Sign(testSecret, time.Now(), body), len(body))
	mustf(t, err, "write the headers")
	mustf(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)), "deadline")
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		mustf(t, err, "read 100 Continue")
		if strings.TrimSpace(line) == "" {
			break
		}
		if !strings.HasPrefix(line, "HTTP/1.1 100") && !strings.Contains(line, ":") {
			t.Fatalf("answer to the headers: %q, want 100 Continue", line)
		}
	}
	half := len(body) / 2
	_, err = conn.Write(body[:half])
	mustf(t, err, "write the first half")
	return &halfPosted{conn: conn, r: r, rest: body[half:]}
}

// finish sends the rest of the body and returns the answer's status line.
func (h *halfPosted) finish(t *testing.T) string {
	t.Helper()
	_, err := h.conn.Write(h.rest)
	mustf(t, err, "write the rest")
	mustf(t, h.conn.SetReadDeadline(time.Now().Add(30*time.Second)), "deadline")
	status, err := h.r.ReadString('\n')
	mustf(t, err, "read the answer")
	return strings.TrimSpace(status)
}

// waitListenerClosed polls until nothing accepts connections at addr: the
// HTTP server has begun its graceful shutdown.
func waitListenerClosed(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the listener still accepts connections 30s after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
}

const signalTestEvent = `{"id":"event_inflight","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"directory_user_inflight","directory_id":"directory_sig","organization_id":"org_sig","email":"inflight@example.com","state":"active"}}`

// TestSIGTERMFinishesInFlightRequestsAndLosesNothing: on SIGTERM serve stops
// accepting connections, still answers the request in flight (200: stored),
// exits 0; the next start applies the event.
func TestSIGTERMFinishesInFlightRequestsAndLosesNothing(t *testing.T) {
	p := startServeProcess(t)
	inflight := postHalf(t, p.addr, []byte(signalTestEvent))
	mustf(t, p.cmd.Process.Signal(syscall.SIGTERM), "SIGTERM")
	p.waitLog(t, "shutting down", 30*time.Second)
	waitListenerClosed(t, p.addr)
	if status := inflight.finish(t); !strings.HasPrefix(status, "HTTP/1.1 200") {
		t.Fatalf("request in flight at SIGTERM answered %q, want 200", status)
	}
	p.waitLog(t, "stopped cleanly", 60*time.Second)
	if code := p.waitExit(t, 60*time.Second); code != 0 {
		t.Fatalf("serve exited with %d after SIGTERM, want 0", code)
	}

	// A restart on the same data applies what was acknowledged.
	cfg, err := loadConfig(p.cfg, nil, true)
	mustf(t, err, "config")
	d := startDaemon(t, cfg, nil)
	waitApplied(t, d)
	if !strings.Contains(string(apiGetT(t, d, "/v1/export")), `"directory_user_inflight"`) {
		t.Fatal("the event answered 200 during shutdown is not in the store after a restart")
	}
}

// TestSecondSignalForcesExit: while a graceful shutdown waits for a slow
// request (http.shutdown_timeout is 2m), a second SIGTERM ends serve at once.
func TestSecondSignalForcesExit(t *testing.T) {
	p := startServeProcess(t)
	postHalf(t, p.addr, []byte(signalTestEvent)) // never finished
	mustf(t, p.cmd.Process.Signal(syscall.SIGTERM), "first SIGTERM")
	p.waitLog(t, "shutting down", 30*time.Second)
	waitListenerClosed(t, p.addr)
	mustf(t, p.cmd.Process.Signal(syscall.SIGTERM), "second SIGTERM")
	p.waitLog(t, "second signal: forcing exit", 30*time.Second)
	if code := p.waitExit(t, 30*time.Second); code != exitError {
		t.Fatalf("serve exited with %d after a second signal, want %d", code, exitError)
	}
}
