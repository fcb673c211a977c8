package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
)

const testSecret = "whsec_test_e2e_secret_do_not_log"

// syncBuffer is a goroutine-safe log sink, so tests can grep what was logged.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testConfig is a valid serve configuration in a temporary data directory,
// listening on a random loopback port.
func testConfig(t testing.TB) config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.Webhook.Secrets = []string{testSecret}
	cfg.Log.Level = "debug"
	cfg.Mapping.Groups = append(cfg.Mapping.Groups, mappingAdminsRule())
	return cfg
}

// jsonLog is a logger writing JSON lines to w at every level, as serve's
// output is read by the tests.
func jsonLog(w io.Writer) *zap.Logger {
	return zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(w), zapcore.DebugLevel))
}

// startDaemon opens a daemon in-process and closes it when the test ends.
func startDaemon(t testing.TB, cfg config.Config, logs io.Writer, opts ...func(*daemon)) *daemon {
	t.Helper()
	if logs == nil {
		logs = io.Discard
	}
	d := newDaemon(cfg, jsonLog(logs))
	for _, o := range opts {
		o(d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.Open(ctx); err != nil {
		if s, ok := logs.(fmt.Stringer); ok {
			t.Fatalf("open daemon: %v\nits log:\n%s", err, s)
		}
		t.Fatalf("open daemon: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("close daemon: %v", err)
		}
	})
	return d
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

// post sends body to the daemon's webhook with the given signature header.
func post(t testing.TB, url, sig string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if sig != "" {
		req.Header.Set(events.HeaderName, sig)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("post: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// postSigned signs body now with testSecret and posts it; it fails the test unless 200.
func postSigned(t testing.TB, d *daemon, body []byte) string {
	t.Helper()
	code, resp := post(t, "http://"+d.Addr()+d.cfg.Webhook.Path, events.Sign(testSecret, time.Now(), body), body)
	if code != http.StatusOK {
		t.Fatalf("post %s: %d %s", firstBytes(body, 80), code, resp)
	}
	return resp
}

func firstBytes(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// waitApplied polls until the worker has applied and acknowledged every
// event in the stream.
func waitApplied(t testing.TB, d *daemon) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		n, err := d.q.Pending(ctx, d.durable)
		cancel()
		if err == nil && n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("events still pending after 60s: %d (%v)", n, err)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not a wait for work
	}
}

// apiGet fetches path from a running dsyncd's API with token, through the
// CLI's client.
func apiGet(ctx context.Context, server, path, token string) ([]byte, error) {
	return (&apiClient{base: strings.TrimRight(server, "/"), token: token}).read(ctx, path)
}

func apiGetT(t testing.TB, d *daemon, path string) []byte {
	t.Helper()
	b, err := apiGet(context.Background(), "http://"+d.Addr(), path, d.apiToken)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return b
}

// readNDJSON returns the lines of an NDJSON file.
func readNDJSON(t testing.TB, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(l)) > 0 {
			out = append(out, l)
		}
	}
	return out
}

// runCLI runs the dsyncd command line in-process.
func runCLI(t testing.TB, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func writeFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustf(t testing.TB, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

func mappingAdminsRule() mapping.GroupRule {
	return mapping.GroupRule{Name: "App Admins", Badges: []mapping.Badge{"admin"}}
}
