package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/server"
	"github.com/dsyncd/dsyncd/storage"
)

// apiServer is a server on a real store; the receiver is not used.
func apiServer(t *testing.T, token string, ready func(context.Context) error) *server.Server {
	t.Helper()
	st, err := storage.Open(storage.Options{Path: filepath.Join(t.TempDir(), "dsyncd.db"),
		Mapping: mapping.Config{AdminBadge: "admin", DefaultBadges: []mapping.Badge{"member"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return server.New(server.Options{Listen: "127.0.0.1:0", APIToken: token, Ready: ready},
		events.NewVerifier([]string{"whsec_api"}, 0), nil, st, zaptest.NewLogger(t))
}

// get serves one request from remote through the server's routes, for
// Host localhost:8080.
func get(h http.Handler, path, remote, auth string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.RemoteAddr = remote
	req.Host = "localhost:8080"
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestAPIAuthorization: every client, loopback included, must send the
// token as a bearer token; without a configured token nobody gets in.
func TestAPIAuthorization(t *testing.T) {
	unset := apiServer(t, "", nil).Handler()
	for _, tc := range []struct{ remote, auth string }{
		{"127.0.0.1:5000", ""}, {"[::1]:5000", ""}, {"192.0.2.10:5000", ""}, {"127.0.0.1:5000", "Bearer "},
	} {
		if got := get(unset, "/v1/export", tc.remote, tc.auth).Code; got != 401 {
			t.Errorf("no token configured, client %s, Authorization %q: %d, want 401", tc.remote, tc.auth, got)
		}
	}
	const token = "s3cret-api-token"
	locked := apiServer(t, token, nil).Handler()
	for _, tc := range []struct {
		remote, auth string
		want         int
	}{
		{"127.0.0.1:5000", "", 401},
		{"127.0.0.1:5000", "Bearer wrong", 401},
		{"127.0.0.1:5000", "Bearer " + token + "x", 401},
		{"127.0.0.1:5000", "Bearer " + token[:len(token)-1], 401},
		{"127.0.0.1:5000", "Basic " + token, 401},
		{"127.0.0.1:5000", token, 401},
		{"127.0.0.1:5000", "Bearer " + token, 200},
		{"192.0.2.10:5000", "Bearer " + token, 200},
		{"192.0.2.10:5000", "", 401},
	} {
		rec := get(locked, "/v1/export", tc.remote, tc.auth)
		if rec.Code != tc.want {
			t.Errorf("token set, client %s, Authorization %q: %d, want %d", tc.remote, tc.auth, rec.Code, tc.want)
		}
		if rec.Code == 401 && !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("401 without a Bearer challenge")
		}
	}
	// Health endpoints need no token.
	for _, path := range []string{"/healthz", "/readyz"} {
		if got := get(locked, path, "192.0.2.10:5000", "").Code; got != 200 {
			t.Errorf("GET %s from a remote client without token: %d, want 200", path, got)
		}
	}
}

// TestReadyzSaysWhy: /readyz answers 503 with the reason while the daemon
// cannot work, and /healthz stays 200.
func TestReadyzSaysWhy(t *testing.T) {
	var reason error = errors.New("jetstream: queue: NATS connection RECONNECTING")
	h := apiServer(t, "", func(context.Context) error { return reason }).Handler()
	rec := get(h, "/readyz", "127.0.0.1:1", "")
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), "RECONNECTING") {
		t.Errorf("/readyz not ready = %d %s, want 503 with the reason", rec.Code, rec.Body.String())
	}
	if got := get(h, "/healthz", "127.0.0.1:1", "").Code; got != 200 {
		t.Errorf("/healthz = %d, want 200", got)
	}
	reason = nil
	if rec := get(h, "/readyz", "127.0.0.1:1", ""); rec.Code != 200 {
		t.Errorf("/readyz ready = %d %s, want 200", rec.Code, rec.Body.String())
	}
}

// TestReadyzListsWhatIsDegraded: what needs an operator but does not stop
// the daemon is listed, and the status code stays 200.
func TestReadyzListsWhatIsDegraded(t *testing.T) {
	st, err := storage.Open(storage.Options{Path: filepath.Join(t.TempDir(), "dsyncd.db"),
		Mapping: mapping.Config{AdminBadge: "admin", DefaultBadges: []mapping.Badge{"member"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	var degraded []string
	h := server.New(server.Options{Listen: "127.0.0.1:0", Ready: func(context.Context) error { return nil }, Degraded: func() []string { return degraded }},
		events.NewVerifier([]string{"whsec_api"}, 0), nil, st, zaptest.NewLogger(t)).Handler()
	if rec := get(h, "/readyz", "127.0.0.1:1", ""); rec.Code != 200 || strings.Contains(rec.Body.String(), "degraded") {
		t.Errorf("/readyz = %d %s, want 200 without degraded", rec.Code, rec.Body.String())
	}
	degraded = []string{"events: the Events API refused the events cursor"}
	if rec := get(h, "/readyz", "127.0.0.1:1", ""); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"degraded":["events: the Events API refused`) {
		t.Errorf("/readyz = %d %s, want 200 listing the degradation", rec.Code, rec.Body.String())
	}
}

// TestAuditStreamsEveryEntryAsOneAnswer: GET /v1/audit without a limit reads
// the trail a page at a time; the answer must be the whole trail, as one
// JSON document, whatever the number of pages.
func TestAuditStreamsEveryEntryAsOneAnswer(t *testing.T) {
	st, err := storage.Open(storage.Options{Path: filepath.Join(t.TempDir(), "dsyncd.db"),
		Mapping: mapping.Config{AdminBadge: "admin", DefaultBadges: []mapping.Badge{"member"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	const users = 2345 // a member grant each: two full pages and a part
	evs := make([]*events.Event, 0, users)
	for i := range users {
		body := fmt.Sprintf(`{"id":"ev_%d","event":"dsync.user.created","created_at":"2024-01-01T00:00:00.000Z",`+
			`"data":{"id":"u_%05d","directory_id":"dir_1","organization_id":"org_%d","state":"active"}}`, i, i, i%3)
		ev, err := events.Decode([]byte(body))
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	if _, err := st.Apply(evs); err != nil {
		t.Fatal(err)
	}
	h := server.New(server.Options{Listen: "127.0.0.1:0", APIToken: "tok"}, events.NewVerifier([]string{"whsec_api"}, 0), nil, st, zaptest.NewLogger(t)).Handler()
	for _, tc := range []struct {
		name, query string
		filter      storage.AuditFilter
	}{
		{"the whole trail", "", storage.AuditFilter{}},
		{"one organisation", "?org=org_1", storage.AuditFilter{OrganizationID: "org_1"}},
		{"after an entry", "?after=1500", storage.AuditFilter{After: 1500}},
		{"nothing matches", "?user=nobody", storage.AuditFilter{UserID: "nobody"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := get(h, "/v1/audit"+tc.query, "127.0.0.1:4000", "Bearer tok")
			if rec.Code != http.StatusOK {
				t.Fatalf("GET /v1/audit%s: %d %s", tc.query, rec.Code, rec.Body)
			}
			want, err := st.Audit(tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := json.NewEncoder(&buf).Encode(map[string]any{"entries": want}); err != nil {
				t.Fatal(err)
			}
			if got := rec.Body.String(); got != buf.String() {
				t.Fatalf("GET /v1/audit%s: %d bytes, want the %d entries' %d bytes", tc.query, len(got), len(want), buf.Len())
			}
		})
	}
}

// TestOpenRefusesAWebhookPathTheRouterRejects: an error naming the path, no
// panic and no listener.
func TestOpenRefusesAWebhookPathTheRouterRejects(t *testing.T) {
	for _, p := range []string{"/hooks/{", "/hooks/{x}/{x}", "GET /healthz"} {
		s := server.New(server.Options{Listen: "127.0.0.1:0", WebhookPath: p},
			events.NewVerifier([]string{"whsec_api"}, 0), nil, nil, zaptest.NewLogger(t))
		err := s.Open()
		if err == nil {
			s.Close()
			t.Errorf("Open with webhook path %q succeeded", p)
			continue
		}
		if !strings.Contains(err.Error(), "webhook path") {
			t.Errorf("Open with webhook path %q: %v", p, err)
		}
	}
}

// TestAPIRefusesForeignHostsAndNonJSONChanges: a page in a browser on the
// host can neither read /v1 through a rebound name (421) nor change
// anything with a form post (401 without the token, 415 even with it).
// Health and metrics-like routes outside /v1 answer any Host.
func TestAPIRefusesForeignHostsAndNonJSONChanges(t *testing.T) {
	const token = "s3cret-api-token"
	st, err := storage.Open(storage.Options{Path: filepath.Join(t.TempDir(), "dsyncd.db"),
		Mapping: mapping.Config{AdminBadge: "admin", DefaultBadges: []mapping.Badge{"member"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	h := server.New(server.Options{Listen: "10.1.2.3:8080", APIToken: token, AllowedHosts: []string{"dsyncd.internal", "Ops.Example:8443"}},
		events.NewVerifier([]string{"whsec_api"}, 0), nil, st, zaptest.NewLogger(t)).Handler()
	// A change the handler refuses with 409 (the organisation is not
	// paused): that answer proves the request got past the guards.
	const change = "/v1/organizations/org_1/resume?dry_run=true"
	do := func(method, path, host, auth, ct string) int {
		req := httptest.NewRequest(method, path, strings.NewReader("hold=1"))
		req.RemoteAddr, req.Host = "127.0.0.1:5000", host
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	bearer := "Bearer " + token
	for _, tc := range []struct {
		name                         string
		method, path, host, auth, ct string
		want                         int
	}{
		{"a rebound name is refused", "GET", "/v1/export", "attacker.example", "", "", 421},
		{"a rebound name is refused even with the token", "GET", "/v1/export", "attacker.example:8080", bearer, "", 421},
		{"a rebound name cannot post", "POST", change, "attacker.example", "", "application/x-www-form-urlencoded", 421},
		{"a form post without the token", "POST", change, "localhost:8080", "", "application/x-www-form-urlencoded", 401},
		{"a text post without the token", "POST", change, "127.0.0.1:8080", "", "text/plain", 401},
		{"a form post with the token", "POST", change, "localhost:8080", bearer, "application/x-www-form-urlencoded", 415},
		{"a multipart post with the token", "POST", change, "localhost:8080", bearer, "multipart/form-data; boundary=x", 415},
		{"a post without a content type", "POST", change, "localhost:8080", bearer, "", 415},
		{"a JSON post with the token reaches the handler", "POST", change, "localhost:8080", bearer, "application/json", 409},
		{"localhost", "GET", "/v1/export", "localhost", bearer, "", 200},
		{"loopback v4", "GET", "/v1/export", "127.0.0.1:8080", bearer, "", 200},
		{"loopback v6", "GET", "/v1/export", "[::1]:8080", bearer, "", 200},
		{"the listen host", "GET", "/v1/export", "10.1.2.3:8080", bearer, "", 200},
		{"an allowed name", "GET", "/v1/export", "DSYNCD.internal:9000", bearer, "", 200},
		{"an allowed name:port", "GET", "/v1/export", "ops.example:8443", bearer, "", 200},
		{"an allowed name on another port", "GET", "/v1/export", "ops.example:8080", bearer, "", 421},
		{"no Host", "GET", "/v1/export", "", bearer, "", 421},
		{"health answers any Host", "GET", "/healthz", "attacker.example", "", "", 200},
		{"readiness answers any Host", "GET", "/readyz", "attacker.example", "", "", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := do(tc.method, tc.path, tc.host, tc.auth, tc.ct); got != tc.want {
				t.Errorf("%s %s, Host %q, Authorization %q, Content-Type %q: %d, want %d", tc.method, tc.path, tc.host, tc.auth, tc.ct, got, tc.want)
			}
		})
	}
}

// TestReasonsListsEveryRefusalReason: Reasons, which the metrics start at
// 0, has every Reason constant of the package.
func TestReasonsListsEveryRefusalReason(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "server.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var consts []string
	ast.Inspect(f, func(n ast.Node) bool {
		if vs, ok := n.(*ast.ValueSpec); ok {
			for i, name := range vs.Names {
				if strings.HasPrefix(name.Name, "Reason") && i < len(vs.Values) {
					if lit, ok := vs.Values[i].(*ast.BasicLit); ok {
						v, _ := strconv.Unquote(lit.Value)
						consts = append(consts, v)
					}
				}
			}
		}
		return true
	})
	got := server.Reasons()
	slices.Sort(got)
	slices.Sort(consts)
	if len(consts) == 0 || !slices.Equal(got, consts) {
		t.Errorf("Reasons() = %v, want the constants %v", got, consts)
	}
}
