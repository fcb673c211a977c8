package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/server"
	"github.com/dsyncd/dsyncd/storage"
)

const readToken = "read-api-token"

// readAPI is the real server, listening on loopback, on a real store whose
// admin badge comes from the group "App Admins".
func readAPI(t *testing.T) (*server.Server, *storage.Store) {
	t.Helper()
	st, err := storage.Open(storage.Options{Path: filepath.Join(t.TempDir(), "dsyncd.db"), Mapping: mapping.Config{
		AdminBadge: "admin", DefaultBadges: []mapping.Badge{"member"},
		Groups: []mapping.GroupRule{{Name: "App Admins", Badges: []mapping.Badge{"admin"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	s := server.New(server.Options{Listen: "127.0.0.1:0", APIToken: readToken}, events.NewVerifier([]string{"whsec_api"}, 0), nil, st, zaptest.NewLogger(t))
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.Close()
		if err := st.Check(); err != nil {
			t.Errorf("store consistency: %v", err)
		}
		_ = st.Close()
	})
	return s, st
}

// apply applies events (JSON bodies, as evt builds them) to st.
func apply(t *testing.T, st *storage.Store, bodies ...string) {
	t.Helper()
	evs := make([]*events.Event, 0, len(bodies))
	for _, b := range bodies {
		ev, err := events.Decode([]byte(b))
		if err != nil {
			t.Fatalf("decode %s: %v", b, err)
		}
		evs = append(evs, ev)
	}
	if _, err := st.Apply(evs); err != nil {
		t.Fatal(err)
	}
}

var evSeq int

// evt is an event of type typ at second at, with data.
func evt(typ string, at int, data map[string]any) string {
	evSeq++
	b, _ := json.Marshal(map[string]any{"id": fmt.Sprintf("event_%d", evSeq), "event": typ,
		"created_at": time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(at) * time.Second).Format(time.RFC3339Nano), "data": data})
	return string(b)
}

func person(id, org, dir, email, idp, state string) map[string]any {
	return map[string]any{"id": id, "directory_id": dir, "organization_id": org, "idp_id": idp, "email": email,
		"first_name": "F", "last_name": "L", "state": state}
}

// call GETs path with the token and decodes the JSON answer into out; it
// returns the status.
func call(t *testing.T, s *server.Server, path string, out any) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.URL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+readToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("GET %s: %d %s: %v", path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

type userList struct {
	Users      []storage.UserView `json:"users"`
	NextCursor string             `json:"next_cursor"`
}

func ids(us []storage.UserView) []string {
	out := []string{}
	for _, u := range us {
		out = append(out, u.ID)
	}
	return out
}

func TestUsersAreFoundByEmailAnyCaseAndByIdpID(t *testing.T) {
	s, st := readAPI(t)
	apply(t, st,
		evt("dsync.user.created", 1, person("u1", "org_1", "dir_1", "Ann.Lee@Corp.Example", "00u1", "active")),
		evt("dsync.user.created", 2, person("u2", "org_2", "dir_2", "ann.lee@corp.example", "00u1", "active")),
		evt("dsync.user.created", 3, person("u3", "org_1", "dir_1", "bob@corp.example", "00u3", "active")),
	)
	var byID storage.UserView
	if code := call(t, s, "/v1/users/u1", &byID); code != 200 {
		t.Fatalf("by id: %d", code)
	}
	for _, c := range []struct {
		name, query string
		want        []string
	}{
		{"an email in another case finds every directory's user", "email=" + url.QueryEscape("ANN.LEE@corp.EXAMPLE"), []string{"u1", "u2"}},
		{"an idp id finds every directory's user", "idp_id=00u1", []string{"u1", "u2"}},
		{"an idp id within a directory finds one", "idp_id=00u1&directory_id=dir_2", []string{"u2"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var got userList
			if code := call(t, s, "/v1/users?"+c.query, &got); code != 200 || !slices.Equal(ids(got.Users), c.want) {
				t.Fatalf("%d %v, want 200 %v", code, ids(got.Users), c.want)
			}
			if c.want[0] == "u1" {
				a, _ := json.Marshal(got.Users[0])
				b, _ := json.Marshal(byID)
				if string(a) != string(b) {
					t.Fatalf("found %s\nwant what GET /v1/users/u1 shows: %s", a, b)
				}
			}
		})
	}
}

func TestUnknownThingsAre404WithTheErrorShape(t *testing.T) {
	s, st := readAPI(t)
	apply(t, st, evt("dsync.user.created", 1, person("u1", "org_1", "dir_1", "a@x.example", "00u1", "active")))
	for _, c := range []struct {
		name, path string
		status     int
		code, msg  string
	}{
		{"an unknown user", "/v1/users/u9", 404, "not_found", "no such user"},
		{"an unknown email", "/v1/users?email=nobody@x.example", 404, "not_found", "no user with that email"},
		{"an unknown idp id", "/v1/users?idp_id=00u9", 404, "not_found", "no user with that idp_id"},
		{"an idp id of another directory", "/v1/users?idp_id=00u1&directory_id=dir_2", 404, "not_found", `in directory "dir_2"`},
		{"an unknown organisation", "/v1/organizations/org_9", 404, "not_found", `organization "org_9": not found`},
		{"an unknown organisation's users", "/v1/organizations/org_9/users", 404, "not_found", `organization "org_9"`},
		{"an unknown directory's users", "/v1/directories/dir_9/users", 404, "not_found", `directory "dir_9": not found`},
		{"a lookup without what to look up", "/v1/users", 400, "bad_request", "want email or idp_id"},
		{"a lookup by email and idp id", "/v1/users?email=a@x.example&idp_id=00u1", 400, "bad_request", "one of them"},
		{"a cursor this API did not give", "/v1/organizations/org_1/users?cursor=%25%25", 400, "bad_request", "cursor"},
		{"a limit past the largest page", "/v1/organizations/org_1/users?limit=1001", 400, "bad_request", "limit"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var got server.ErrorBody
			if code := call(t, s, c.path, &got); code != c.status || got.Error.Code != c.code || !strings.Contains(got.Error.Message, c.msg) {
				t.Fatalf("%d %+v, want %d with code %q and a message with %q", code, got, c.status, c.code, c.msg)
			}
		})
	}
	// The guard's refusals have the same shape.
	resp, err := http.Get(s.URL() + "/v1/organizations/org_1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got server.ErrorBody
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 401 || got.Error.Code != "unauthorized" || got.Error.Message == "" {
		t.Fatalf("without the token: %d %+v (%v), want 401 with code unauthorized", resp.StatusCode, got, err)
	}
}

// TestOrganizationPagesAreStableUnderConcurrentChanges: paging through 250
// users 100 at a time while users are added and deleted before and after
// the cursor between pages, every user present throughout is seen exactly
// once, and no user twice.
func TestOrganizationPagesAreStableUnderConcurrentChanges(t *testing.T) {
	s, st := readAPI(t)
	at := 0
	var bodies []string
	var stable []string
	for i := range 250 {
		id := fmt.Sprintf("u%03d", i*4)
		stable = append(stable, id)
		bodies = append(bodies, evt("dsync.user.created", at, person(id, "org_1", "dir_1", id+"@x.example", "i"+id, "active")))
		// A volatile user beside each: some are deleted while paging.
		v := fmt.Sprintf("u%03d", i*4+1)
		bodies = append(bodies, evt("dsync.user.created", at, person(v, "org_1", "dir_1", v+"@x.example", "i"+v, "active")))
	}
	apply(t, st, bodies...)
	seen := map[string]int{}
	cursor, pages := "", 0
	for {
		var page userList
		path := "/v1/organizations/org_1/users?limit=100"
		if cursor != "" {
			path += "&cursor=" + url.QueryEscape(cursor)
		}
		if code := call(t, s, path, &page); code != 200 {
			t.Fatalf("page %d: %d", pages, code)
		}
		pages++
		if pages > 20 {
			t.Fatalf("page %d: paging does not end", pages)
		}
		for _, u := range page.Users {
			seen[u.ID]++
		}
		if page.NextCursor == "" {
			break
		}
		cursor = page.NextCursor
		// Between pages: users added and volatile ones deleted before and
		// after the cursor.
		at++
		var changes []string
		for _, n := range []int{0, 500, 996} {
			id := fmt.Sprintf("u%03d-%d", n, pages)
			changes = append(changes, evt("dsync.user.created", at, person(id, "org_1", "dir_1", id+"@x.example", "i"+id, "active")))
		}
		for _, n := range []int{pages*4 + 1, 401 + pages*4, 797 + pages*4} {
			v := fmt.Sprintf("u%03d", n)
			changes = append(changes, evt("dsync.user.deleted", at, person(v, "org_1", "dir_1", v+"@x.example", "i"+v, "active")))
		}
		apply(t, st, changes...)
	}
	for _, id := range stable {
		if seen[id] != 1 {
			t.Errorf("%s, present throughout, seen %d times", id, seen[id])
		}
	}
	for id, n := range seen {
		if n > 1 {
			t.Errorf("%s seen %d times", id, n)
		}
	}
	if pages < 4 {
		t.Fatalf("%d pages, want at least 4 of 100 for 250 users, the volatile ones and those added", pages)
	}
}

func TestOrganizationSummaryCountsHeldAdmins(t *testing.T) {
	s, st := readAPI(t)
	admins := map[string]any{"id": "g_adm", "directory_id": "dir_1", "organization_id": "org_1", "idp_id": "gidp", "name": "App Admins"}
	apply(t, st,
		evt("dsync.activated", 0, map[string]any{"id": "dir_1", "organization_id": "org_1", "name": "Corp"}),
		evt("dsync.group.user_added", 1, map[string]any{"directory_id": "dir_1", "user": person("u1", "org_1", "dir_1", "a@x.example", "i1", "active"), "group": admins}),
		evt("dsync.group.user_added", 2, map[string]any{"directory_id": "dir_1", "user": person("u2", "org_1", "dir_1", "b@x.example", "i2", "active"), "group": admins}),
		evt("dsync.user.created", 3, person("u3", "org_1", "dir_1", "c@x.example", "i3", "active")),
		evt("dsync.group.deleted", 4, admins),
	)
	var o storage.OrganizationView
	if code := call(t, s, "/v1/organizations/org_1", &o); code != 200 {
		t.Fatalf("%d", code)
	}
	if o.Admins != 2 || o.HeldAdmins != 2 || o.Users != 3 || o.Paused || len(o.OpenHolds) != 2 || !slices.Equal(o.Directories, []string{"dir_1"}) {
		t.Fatalf("organisation = %+v, want 2 admins both held, 3 users, 2 open holds, not paused", o)
	}
	var admin userList
	if code := call(t, s, "/v1/organizations/org_1/users?badge=admin", &admin); code != 200 || !slices.Equal(ids(admin.Users), []string{"u1", "u2"}) {
		t.Fatalf("admins listed: %d %v, want the held u1 and u2", code, ids(admin.Users))
	}
	if admin.Users[0].HeldBy == 0 {
		t.Fatalf("a held admin is listed without held_by: %+v", admin.Users[0])
	}
	var inactive userList
	apply(t, st, evt("dsync.user.updated", 5, person("u3", "org_1", "dir_1", "c@x.example", "i3", "Inactive")))
	if code := call(t, s, "/v1/organizations/org_1/users?state=inactive", &inactive); code != 200 || !slices.Equal(ids(inactive.Users), []string{"u3"}) {
		t.Fatalf("inactive users: %d %v, want u3", code, ids(inactive.Users))
	}
}

// TestNoRouteAnswersInTheErrorShape: a /v1 path no route has is a 404, a
// route asked with another method a 405 with Allow, both in the one shape.
func TestNoRouteAnswersInTheErrorShape(t *testing.T) {
	s, _ := readAPI(t)
	var got server.ErrorBody
	if code := call(t, s, "/v1/nothing/here", &got); code != 404 || got.Error.Code != "not_found" || !strings.Contains(got.Error.Message, "/v1/nothing/here") {
		t.Fatalf("an unknown /v1 path: %d %+v, want 404 not_found", code, got)
	}
	req, _ := http.NewRequest(http.MethodGet, s.URL()+"/v1/holds/7/approve", nil)
	req.Header.Set("Authorization", "Bearer "+readToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got = server.ErrorBody{}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" || got.Error.Code != "method_not_allowed" {
		t.Fatalf("GET on a POST route: %d Allow %q %+v (%v), want 405, Allow: POST, code method_not_allowed", resp.StatusCode, resp.Header.Get("Allow"), got, err)
	}
}
