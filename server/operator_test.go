package server_test

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/server"
	"github.com/dsyncd/dsyncd/storage"
)

// TestAnInternalErrorIsLoggedNeverSent: every /v1 route answers a store
// failure with 500 and a generic message; the error's text (here the
// store's "store closed") is in the log, once per request, never in the body.
func TestAnInternalErrorIsLoggedNeverSent(t *testing.T) {
	const token = "s3cret-api-token"
	st, err := storage.Open(storage.Options{Path: filepath.Join(t.TempDir(), "dsyncd.db"),
		Mapping: mapping.Config{AdminBadge: "admin", DefaultBadges: []mapping.Badge{"member"}}})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	h := server.New(server.Options{Listen: "127.0.0.1:0", APIToken: token}, events.NewVerifier([]string{"whsec_api"}, 0),
		nil, st, zap.New(core)).Handler()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	secret := storage.ErrClosed.Error()
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v1/export"},
		{"GET", "/v1/users/u1"},
		{"GET", "/v1/users/u1/why/admin"},
		{"GET", "/v1/directories/d1/users"},
		{"GET", "/v1/audit"},
		{"GET", "/v1/audit?limit=5"},
		{"GET", "/v1/holds"},
		{"GET", "/v1/events/e1"},
		{"GET", "/v1/backup"},
		{"POST", "/v1/holds/1/approve?dry_run=true"},
		{"POST", "/v1/organizations/org_1/resume?dry_run=true"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			before := logs.FilterMessage("api request failed").FilterFieldKey("error").Len()
			req := httptest.NewRequest(tc.method, tc.path, nil)
			req.Host = "localhost"
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			body := rec.Body.String()
			if rec.Code != http.StatusInternalServerError || strings.TrimSpace(body) != `{"error":{"code":"internal","message":"internal error"}}` {
				t.Errorf("%d %s, want 500 with code internal and message \"internal error\"", rec.Code, body)
			}
			if strings.Contains(body, secret) {
				t.Errorf("the body tells the internal error: %s", body)
			}
			logged := logs.FilterMessage("api request failed").FilterFieldKey("error").All()
			if n := len(logged) - before; n != 1 || !strings.Contains(logged[len(logged)-1].ContextMap()["error"].(string), secret) {
				t.Errorf("want the error logged once with its text, got %d new lines", n)
			}
		})
	}
}

// TestOperatorErrorsNameWhatWasAsked: the store's sentinel errors are
// answered with their status and their text; bad ids with 400.
func TestOperatorErrorsNameWhatWasAsked(t *testing.T) {
	const token = "s3cret-api-token"
	h := apiServer(t, token, nil).Handler()
	for _, tc := range []struct {
		name, method, path string
		want               int
		body               string
	}{
		{"an unknown hold is not found", "POST", "/v1/holds/7/approve", 404, "hold 7: not found"},
		{"a hold id that is no number is a bad request", "POST", "/v1/holds/x/reject", 400, "hold id must be a number"},
		{"resuming an organisation that is not paused conflicts", "POST", "/v1/organizations/org_1/resume", 409, "organisation is not paused: org_1"},
		{"an unknown user is not found", "GET", "/v1/users/u9", 404, "no such user"},
		{"why of an unknown user is not found", "GET", "/v1/users/u9/why/admin", 404, "not found"},
		{"a bad audit limit is a bad request", "GET", "/v1/audit?limit=-1", 400, "limit: want a number"},
		{"without a dead-letter stream there is no /v1/dlq", "GET", "/v1/dlq", 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.path, nil)
			req.Host = "localhost"
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.want || !strings.Contains(rec.Body.String(), tc.body) {
				t.Errorf("%d %s, want %d with %q", rec.Code, rec.Body.String(), tc.want, tc.body)
			}
		})
	}
}

// TestMappingChangeIsCheckedThenApplied: POST /v1/mapping refuses a body
// that is not a valid mapping section with 400 naming the problem, a
// removed rule without an on_unmap choice with 409, and changes nothing
// then; a valid one (without Decisions: on the store) becomes the mapping
// in force and the answer is its plan; dry_run changes nothing.
func TestMappingChangeIsCheckedThenApplied(t *testing.T) {
	const token = "s3cret-api-token"
	start := mapping.Config{AdminBadge: "admin", DefaultBadges: []mapping.Badge{"member"},
		Groups: []mapping.GroupRule{{Name: "App Admins", Badges: []mapping.Badge{"admin"}}}}
	st, err := storage.Open(storage.Options{Path: filepath.Join(t.TempDir(), "dsyncd.db"), Mapping: start})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if _, err := st.ApplyMapping(start, "", false); err != nil {
		t.Fatal(err)
	}
	h := server.New(server.Options{Listen: "127.0.0.1:0", APIToken: token}, events.NewVerifier([]string{"whsec_api"}, 0),
		nil, st, zap.NewNop()).Handler()
	send := func(path, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", path, strings.NewReader(body))
		req.Host = "localhost"
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	const admins = `{"name":"App Admins","badges":["admin"]}`
	const eng = `{"name":"Engineering","badges":["eng"]}`
	withEng := `{"mapping":{"admin_badge":"admin","default_badges":["member"],"groups":[` + admins + `,` + eng + `]}}`
	for _, tc := range []struct {
		name string
		path string
		body string
		want int
		msg  string
		rule bool // Engineering in force afterwards
	}{
		{"not JSON is a bad request", "/v1/mapping", `mapping: {}`, 400, "the body must be", false},
		{"a misspelt key is a bad request naming it", "/v1/mapping", `{"mapping":{"admin_badge":"admin","group":[]}}`, 400, `unknown field \"group\"`, false},
		{"no mapping is a bad request", "/v1/mapping", `{"on_unmap":"keep"}`, 400, "mapping: missing", false},
		{"a rule without badges is a bad request naming its key", "/v1/mapping", `{"mapping":{"admin_badge":"admin","groups":[{"name":"X"}]}}`, 400,
			"mapping.groups[0].badges: must list at least one badge", false},
		{"an on_unmap other than keep or remove is a bad request", "/v1/mapping", `{"mapping":{"admin_badge":"admin"},"on_unmap":"drop"}`, 400,
			`on_unmap: \"drop\" is not keep or remove`, false},
		{"a body over 4 MiB is too large", "/v1/mapping", `{"mapping":{"admin_badge":"` + strings.Repeat("a", 4<<20) + `"}}`, 413, "larger than", false},
		{"a dry run answers the plan and changes nothing", "/v1/mapping?dry_run=true", withEng, 200, `"organizations"`, false},
		{"a valid mapping becomes the one in force", "/v1/mapping", withEng, 200, `"organizations"`, true},
		{"removing a rule without on_unmap conflicts and changes nothing", "/v1/mapping",
			`{"mapping":{"admin_badge":"admin","default_badges":["member"],"groups":[` + admins + `]}}`, 409,
			"a removed group rule needs on_unmap: keep or remove: group:name=Engineering", true},
		{"removing it with on_unmap keep is applied", "/v1/mapping",
			`{"mapping":{"admin_badge":"admin","default_badges":["member"],"groups":[` + admins + `]},"on_unmap":"keep"}`, 200, `"organizations"`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := send(tc.path, tc.body)
			if rec.Code != tc.want || !strings.Contains(rec.Body.String(), tc.msg) {
				t.Errorf("%d %s, want %d with %q", rec.Code, firstN(rec.Body.String(), 300), tc.want, tc.msg)
			}
			m := st.Mapping()
			if has := len(m.Groups) == 2 && m.Groups[1].Name == "Engineering"; has != tc.rule {
				t.Errorf("after it the mapping in force is %+v; want the Engineering rule %v", m, tc.rule)
			}
		})
	}
}

func firstN(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
