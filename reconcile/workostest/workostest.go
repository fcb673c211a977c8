// Package workostest is a fake WorkOS API for tests: the Events API and the
// Directory Sync API's directories, users and groups, with cursor
// pagination, and injectable faults (429 with Retry-After, 5xx, slow
// answers). Its data starts from the responses of the real API recorded in
// testdata/workos/api.
//
// Like net/http/httptest it is a library for tests and imports no testing
// package.
package workostest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dsyncd/dsyncd/events"
)

// Directories of the recorded data.
const (
	// UsersDirectory holds the recorded directory users (with their groups).
	UsersDirectory = "directory_01FAZYMST676QMTFN1DDJZZX87"
	// UsersOrganization is the organisation of UsersDirectory.
	UsersOrganization = "org_01FAZWCWR03DVWA83NCJYKKD54"
	// GroupsDirectory holds the recorded directory groups (and no user).
	GroupsDirectory = "directory_01G2Z8ADK5NPMVTWF48MVVE4HT"
	// GroupsOrganization is the organisation of GroupsDirectory.
	GroupsOrganization = "org_01G2Z8ADK5NPMVTWF48MVVE4HT"
)

// ReferenceDir is the repository's testdata/workos (WorkOS's documented
// examples and recorded API responses), found from this file's location.
func ReferenceDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "testdata", "workos")
}

// Recorded returns the body of a recorded response in testdata/workos/api.
func Recorded(name string) (json.RawMessage, error) {
	b, err := os.ReadFile(filepath.Join(ReferenceDir(), "api", name))
	if err != nil {
		return nil, err
	}
	var r struct {
		Body json.RawMessage `json:"body"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return r.Body, nil
}

// Fault is what the server does instead of (or before) answering a request.
type Fault struct {
	// Status, if not 0, is answered with a JSON error body (and RetryAfter).
	Status     int
	RetryAfter string
	// Delay is waited before answering (the fault's Status, or the real
	// answer when Status is 0); the wait ends if the client goes away.
	Delay time.Duration
}

// Request is one request the server received.
type Request struct {
	Path   string
	Query  url.Values
	At     time.Time // when it arrived
	Status int       // 499: the client gave up first
}

// Server is a fake WorkOS API. Its methods are safe for concurrent use.
type Server struct {
	*httptest.Server
	key string

	mu          sync.Mutex
	directories []json.RawMessage
	users       map[string][]json.RawMessage // directory -> users, API order
	groups      map[string][]json.RawMessage // directory -> groups, API order
	members     map[string][]string          // group -> user ids
	events      []json.RawMessage            // oldest first
	faults      map[string][]Fault           // path -> pending faults
	requests    []Request
}

// New starts a server accepting apiKey, loaded with the recorded
// directories, users and groups (see UsersDirectory and GroupsDirectory),
// and no event. Close it when done.
func New(apiKey string) (*Server, error) {
	s := &Server{key: apiKey, users: map[string][]json.RawMessage{}, groups: map[string][]json.RawMessage{},
		members: map[string][]string{}, faults: map[string][]Fault{}}
	if err := s.load(); err != nil {
		return nil, err
	}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s, nil
}

func (s *Server) load() error {
	var dirs struct {
		Data []map[string]any `json:"data"`
	}
	if err := recordedInto("directory_sync_list_directories_with_no_options.response.json", &dirs); err != nil {
		return err
	}
	// The recorded users and groups belong to directories the recorded
	// directory list does not show: add them, shaped like the others.
	for _, add := range []struct{ id, org, name string }{
		{UsersDirectory, UsersOrganization, "Recorded users"},
		{GroupsDirectory, GroupsOrganization, "Recorded groups"},
	} {
		d := map[string]any{}
		for k, v := range dirs.Data[0] {
			d[k] = v
		}
		d["id"], d["organization_id"], d["name"] = add.id, add.org, add.name
		dirs.Data = append(dirs.Data, d)
	}
	for _, d := range dirs.Data {
		b, _ := json.Marshal(d)
		s.directories = append(s.directories, b)
	}

	var users struct {
		Data []json.RawMessage `json:"data"`
	}
	if err := recordedInto("directory_sync_list_users_with_directory.response.json", &users); err != nil {
		return err
	}
	full, err := Recorded("directory_sync_get_user.response.json")
	if err != nil {
		return err
	}
	fullID := idOf(full)
	groups := map[string]json.RawMessage{}
	var groupOrder []string
	for _, u := range users.Data {
		if idOf(u) == fullID {
			u = full // the same user, recorded later with its roles and organisation
		}
		s.users[UsersDirectory] = append(s.users[UsersDirectory], u)
		var ug struct {
			Groups []json.RawMessage `json:"groups"`
		}
		if err := json.Unmarshal(u, &ug); err != nil {
			return err
		}
		for _, g := range ug.Groups {
			gid := idOf(g)
			if prev, ok := groups[gid]; !ok || (!strings.Contains(string(prev), `"idp_id"`) && strings.Contains(string(g), `"idp_id"`)) {
				if !ok {
					groupOrder = append(groupOrder, gid)
				}
				groups[gid] = g
			}
			s.members[gid] = append(s.members[gid], idOf(u))
		}
	}
	for _, gid := range groupOrder {
		s.groups[UsersDirectory] = append(s.groups[UsersDirectory], groups[gid])
	}
	var recGroups struct {
		Data []json.RawMessage `json:"data"`
	}
	if err := recordedInto("directory_sync_list_groups_with_directory.response.json", &recGroups); err != nil {
		return err
	}
	s.groups[GroupsDirectory] = recGroups.Data
	return nil
}

func recordedInto(name string, v any) error {
	b, err := Recorded(name)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func idOf(raw []byte) string {
	var v struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(raw, &v)
	return v.ID
}

// AddEvents appends events (oldest last) to the Events API.
func (s *Server) AddEvents(raws ...[]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range raws {
		s.events = append(s.events, append(json.RawMessage(nil), r...))
	}
}

// ExpireEvents drops the n oldest events, as the Events API does past its
// retention: a cursor naming one of them is then refused (400).
func (s *Server) ExpireEvents(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = s.events[min(n, len(s.events)):]
}

// Fail makes the next len(faults) requests to path (such as "/events" or
// "/directory_users") fail, one fault each, in order.
func (s *Server) Fail(path string, faults ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[path] = append(s.faults[path], faults...)
}

// Requests returns the requests received for path ("" for all), in order.
func (s *Server) Requests(path string) []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Request
	for _, r := range s.requests {
		if path == "" || r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

// Users returns the ids of directory dir's users.
func (s *Server) Users(dir string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for _, u := range s.users[dir] {
		ids = append(ids, idOf(u))
	}
	return ids
}

// Groups returns the ids of directory dir's groups.
func (s *Server) Groups(dir string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for _, g := range s.groups[dir] {
		ids = append(ids, idOf(g))
	}
	return ids
}

// Members returns the ids of group's members, sorted.
func (s *Server) Members(group string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.members[group])
	slices.Sort(out)
	return slices.Compact(out)
}

// User returns the JSON of user id, as the API lists it.
func (s *Server) User(id string) json.RawMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, us := range s.users {
		for _, u := range us {
			if idOf(u) == id {
				return u
			}
		}
	}
	return nil
}

// Group returns the JSON of group id, as the API lists it.
func (s *Server) Group(id string) json.RawMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, gs := range s.groups {
		for _, g := range gs {
			if idOf(g) == id {
				return g
			}
		}
	}
	return nil
}

// SetUser replaces (or adds) a user of directory dir.
func (s *Server) SetUser(dir string, raw []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := idOf(raw)
	for i, u := range s.users[dir] {
		if idOf(u) == id {
			s.users[dir][i] = raw
			return
		}
	}
	s.users[dir] = append(s.users[dir], raw)
}

// RemoveUser removes a user and its memberships.
func (s *Server) RemoveUser(dir, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users[dir] = slices.DeleteFunc(s.users[dir], func(u json.RawMessage) bool { return idOf(u) == id })
	for g, ms := range s.members {
		s.members[g] = slices.DeleteFunc(ms, func(m string) bool { return m == id })
	}
}

// SetMember adds or removes a membership.
func (s *Server) SetMember(group, user string, member bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ms := slices.DeleteFunc(s.members[group], func(m string) bool { return m == user })
	if member {
		ms = append(ms, user)
	}
	s.members[group] = ms
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	status := http.StatusOK
	arrived := time.Now()
	defer func() {
		s.mu.Lock()
		s.requests = append(s.requests, Request{Path: reqPath(path), Query: r.URL.Query(), At: arrived, Status: status})
		s.mu.Unlock()
	}()
	if r.Header.Get("Authorization") != "Bearer "+s.key {
		status = http.StatusUnauthorized
		writeJSON(w, status, map[string]string{"message": "Unauthorized"})
		return
	}
	s.mu.Lock()
	var f *Fault
	if fs := s.faults[reqPath(path)]; len(fs) > 0 {
		f = &fs[0]
		s.faults[reqPath(path)] = fs[1:]
	}
	s.mu.Unlock()
	if f != nil {
		if f.Delay > 0 {
			select {
			case <-time.After(f.Delay):
			case <-r.Context().Done():
				status = 499
				return
			}
		}
		if f.Status != 0 {
			status = f.Status
			if f.RetryAfter != "" {
				w.Header().Set("Retry-After", f.RetryAfter)
			}
			writeJSON(w, status, map[string]string{"message": http.StatusText(status)})
			return
		}
	}
	q := r.URL.Query()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case path == "/events":
		status = s.listEvents(w, q)
	case path == "/directories":
		var items []json.RawMessage
		for _, d := range s.directories {
			if org := q.Get("organization_id"); org == "" || orgOf(d) == org {
				items = append(items, d)
			}
		}
		status = page(w, items, q, true)
	case strings.HasPrefix(path, "/directories/"):
		id := strings.TrimPrefix(path, "/directories/")
		for _, d := range s.directories {
			if idOf(d) == id {
				writeRaw(w, http.StatusOK, d)
				return
			}
		}
		status = http.StatusNotFound
		writeJSON(w, status, map[string]string{"message": "Directory not found: '" + id + "'."})
	case path == "/directory_groups":
		status = page(w, s.groups[q.Get("directory")], q, true)
	case path == "/directory_users":
		switch dir, group := q.Get("directory"), q.Get("group"); {
		case group != "":
			var items []json.RawMessage
			for _, us := range s.users {
				for _, u := range us {
					if slices.Contains(s.members[group], idOf(u)) {
						items = append(items, u)
					}
				}
			}
			status = page(w, items, q, false)
		case dir != "":
			status = page(w, s.users[dir], q, false)
		default:
			body, _ := Recorded("directory_sync_list_users_with_no_options.response.json")
			status = http.StatusUnprocessableEntity
			writeRaw(w, status, body)
		}
	default:
		status = http.StatusNotFound
		writeJSON(w, status, map[string]string{"message": "Not found"})
	}
}

// reqPath groups /directories/{id} under "/directories/".
func reqPath(p string) string {
	if strings.HasPrefix(p, "/directories/") {
		return "/directories/"
	}
	return p
}

func orgOf(raw []byte) string {
	var v struct {
		OrganizationID string `json:"organization_id"`
	}
	_ = json.Unmarshal(raw, &v)
	return v.OrganizationID
}

func (s *Server) listEvents(w http.ResponseWriter, q url.Values) int {
	types := q["events"]
	if len(types) == 0 {
		body, _ := Recorded("events_list_events_with_no_options.response.json")
		writeRaw(w, http.StatusBadRequest, body)
		return http.StatusBadRequest
	}
	var items []json.RawMessage
	var start time.Time
	if rs := q.Get("range_start"); rs != "" {
		t, err := time.Parse(time.RFC3339, rs)
		if err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"message": "invalid range_start"})
			return http.StatusUnprocessableEntity
		}
		start = t
	}
	for _, e := range s.events {
		var env struct {
			Event     string `json:"event"`
			CreatedAt string `json:"created_at"`
		}
		_ = json.Unmarshal(e, &env)
		if !slices.Contains(types, env.Event) {
			continue
		}
		if !start.IsZero() {
			if at, err := events.ParseTime(env.CreatedAt); err == nil && at.Before(start) {
				continue
			}
		}
		items = append(items, e)
	}
	if a := q.Get("after"); a != "" && !slices.ContainsFunc(items, func(e json.RawMessage) bool { return idOf(e) == a }) {
		// WorkOS does not document this answer; it is shaped like its
		// other 400s ({"message", "code"}, as recorded in
		// events_list_events_with_no_options).
		writeJSON(w, http.StatusBadRequest, map[string]string{"code": "invalid_pagination_cursor",
			"message": "The 'after' cursor does not refer to an event the API still has."})
		return http.StatusBadRequest
	}
	limit := limitOf(q)
	from := afterIndex(items, q.Get("after"))
	to := min(from+limit, len(items))
	after := []byte("null")
	if to < len(items) {
		after, _ = json.Marshal(idOf(items[to-1]))
	}
	// Written by hand so that each event goes out byte for byte as added.
	var b strings.Builder
	b.WriteString(`{"object":"list","data":[`)
	for i, e := range items[from:to] {
		if i > 0 {
			b.WriteString(",")
		}
		b.Write(e)
	}
	fmt.Fprintf(&b, `],"list_metadata":{"after":%s}}`, after)
	writeRaw(w, http.StatusOK, []byte(b.String()))
	return http.StatusOK
}

func limitOf(q url.Values) int {
	limit, err := strconv.Atoi(q.Get("limit"))
	if err != nil || limit <= 0 {
		limit = 10
	}
	return min(limit, 100)
}

func afterIndex(items []json.RawMessage, after string) int {
	if after == "" {
		return 0
	}
	for i, it := range items {
		if idOf(it) == after {
			return i + 1
		}
	}
	return len(items)
}

// page answers one page of items. The recorded user lists carry only the
// legacy "listMetadata"; the others carry both spellings.
func page(w http.ResponseWriter, items []json.RawMessage, q url.Values, both bool) int {
	from := afterIndex(items, q.Get("after"))
	to := min(from+limitOf(q), len(items))
	var after any
	if to < len(items) {
		after = idOf(items[to-1])
	}
	meta := map[string]any{"before": nil, "after": after}
	body := map[string]any{"object": "list", "data": nonNil(items[from:to]), "listMetadata": meta}
	if both {
		body["list_metadata"] = meta
	}
	writeJSON(w, http.StatusOK, body)
	return http.StatusOK
}

func nonNil(s []json.RawMessage) []json.RawMessage {
	if s == nil {
		return []json.RawMessage{}
	}
	return s
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	writeRaw(w, status, b)
}

func writeRaw(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
