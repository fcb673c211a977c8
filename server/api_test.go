package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
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
		Mapping: mapping.Config{AdminBadge: "admin", DefaultBadges: []string{"member"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return server.New(server.Options{Listen: "127.0.0.1:0", APIToken: token, Ready: ready},
		events.NewVerifier([]string{"whsec_api"}, 0), nil, st, zaptest.NewLogger(t))
}

// get serves one request from remote through the server's routes.
func get(h http.Handler, path, remote, auth string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.RemoteAddr = remote
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestAPIAuthorization: without api.token /v1 answers loopback clients
// only; with one, every client must send it as a bearer token.
func TestAPIAuthorization(t *testing.T) {
	open := apiServer(t, "", nil).Handler()
	for remote, want := range map[string]int{
		"127.0.0.1:5000": 200, "[::1]:5000": 200, "127.9.9.9:1": 200,
		"192.0.2.10:5000": 403, "[2001:db8::1]:5000": 403, "10.0.0.1:80": 403, "garbage": 403,
	} {
		if got := get(open, "/v1/export", remote, "").Code; got != want {
			t.Errorf("no token, client %s: %d, want %d", remote, got, want)
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
		Mapping: mapping.Config{AdminBadge: "admin", DefaultBadges: []string{"member"}}})
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
		Mapping: mapping.Config{AdminBadge: "admin", DefaultBadges: []string{"member"}}})
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
	h := server.New(server.Options{Listen: "127.0.0.1:0"}, events.NewVerifier([]string{"whsec_api"}, 0), nil, st, zaptest.NewLogger(t)).Handler()
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
			rec := get(h, "/v1/audit"+tc.query, "127.0.0.1:4000", "")
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
