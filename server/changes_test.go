package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/server"
	"github.com/dsyncd/dsyncd/storage"
)

// feedRig is a real server on a real store, listening on loopback.
type feedRig struct {
	st  *storage.Store
	srv *server.Server
	n   int
}

func newFeedRig(t *testing.T, opts storage.Options) *feedRig {
	t.Helper()
	opts.Path = filepath.Join(t.TempDir(), "dsyncd.db")
	opts.Mapping = mapping.Config{AdminBadge: "admin", DefaultBadges: []mapping.Badge{"member"}}
	st, err := storage.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	srv := server.New(server.Options{Listen: "127.0.0.1:0", APIToken: "tok"}, events.NewVerifier([]string{"whsec_api"}, 0), nil, st, zaptest.NewLogger(t))
	if err := srv.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return &feedRig{st: st, srv: srv}
}

// createUser applies a dsync.user.created for id.
func (r *feedRig) createUser(t *testing.T, id string) {
	t.Helper()
	r.n++
	body, _ := json.Marshal(map[string]any{"id": fmt.Sprintf("event_%d", r.n), "event": "dsync.user.created",
		"created_at": time.Date(2024, 1, 1, 0, 0, r.n, 0, time.UTC).Format(time.RFC3339),
		"data":       map[string]any{"id": id, "directory_id": "dir_1", "organization_id": "org_1", "email": id + "@x.example", "state": "active"}})
	ev, err := events.Decode(body)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.st.Apply([]*events.Event{ev}); err != nil {
		t.Fatal(err)
	}
}

type changesAnswer struct {
	status int
	header http.Header
	Body   struct {
		Changes []storage.Change `json:"changes"`
		Next    uint64           `json:"next"`
		Error   any              `json:"error"`
	}
}

func (r *feedRig) get(t *testing.T, query string) changesAnswer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, r.srv.URL()+"/v1/changes?"+query, nil)
	req.Header.Set("Authorization", "Bearer tok")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("GET /v1/changes?%s: %v", query, err)
		return changesAnswer{}
	}
	defer resp.Body.Close()
	a := changesAnswer{status: resp.StatusCode, header: resp.Header}
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &a.Body); err != nil {
		t.Errorf("decode %s: %v", b, err)
	}
	return a
}

// TestLongPollAnswersAtOnceWhenChangesExist: changes after the position
// come back at once, however long the client would wait, limited and in order.
func TestLongPollAnswersAtOnceWhenChangesExist(t *testing.T) {
	r := newFeedRig(t, storage.Options{NoSync: true})
	r.createUser(t, "u1")
	r.createUser(t, "u2")
	r.createUser(t, "u3")
	start := time.Now()
	a := r.get(t, "after=0&limit=2&wait=60s")
	if a.status != 200 || len(a.Body.Changes) != 2 || a.Body.Changes[0].Seq != 1 || a.Body.Changes[1].Seq != 2 || a.Body.Next != 2 {
		t.Fatalf("after=0&limit=2: %d %+v", a.status, a.Body)
	}
	if a.Body.Changes[0].Kind != storage.ChangeUserCreated || a.Body.Changes[0].User.ID != "u1" || a.Body.Changes[0].User.Email != "u1@x.example" {
		t.Fatalf("first change: %+v", a.Body.Changes[0])
	}
	if a.header.Get(server.HeaderChangeSeq) != "3" {
		t.Fatalf("%s: %q", server.HeaderChangeSeq, a.header.Get(server.HeaderChangeSeq))
	}
	a = r.get(t, "after=2&wait=60s")
	if len(a.Body.Changes) != 1 || a.Body.Changes[0].User.ID != "u3" || a.Body.Next != 3 {
		t.Fatalf("after=2: %+v", a.Body)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("answered after %s: it waited though changes existed", took)
	}
}

// TestLongPollWaitsForTheNextCommit: with nothing after the position, the
// answer comes when a change is committed, long before wait ends.
func TestLongPollWaitsForTheNextCommit(t *testing.T) {
	r := newFeedRig(t, storage.Options{NoSync: true})
	r.createUser(t, "u1")
	got := make(chan changesAnswer, 1)
	start := time.Now()
	go func() { got <- r.get(t, "after=1&wait=60s") }()
	select {
	case a := <-got:
		t.Fatalf("answered before any change: %+v", a.Body)
	case <-time.After(200 * time.Millisecond): // the long-poll is waiting
	}
	r.createUser(t, "u2")
	a := <-got
	if a.status != 200 || len(a.Body.Changes) != 1 || a.Body.Changes[0].User.ID != "u2" || a.Body.Next != 2 {
		t.Fatalf("woken answer: %d %+v", a.status, a.Body)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("answered after %s", took)
	}
}

// TestLongPollWithNothingNewAnswersEmptyAfterWait: none within wait gives
// an empty page whose next is the position asked from.
func TestLongPollWithNothingNewAnswersEmptyAfterWait(t *testing.T) {
	r := newFeedRig(t, storage.Options{NoSync: true})
	r.createUser(t, "u1")
	start := time.Now()
	a := r.get(t, "after=1&wait=300ms")
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("answered after %s, before wait", took)
	}
	if a.status != 200 || len(a.Body.Changes) != 0 || a.Body.Next != 1 {
		t.Fatalf("empty answer: %d %+v", a.status, a.Body)
	}
	if a = r.get(t, "after=1"); a.status != 200 || len(a.Body.Changes) != 0 {
		t.Fatalf("without wait: %d %+v", a.status, a.Body)
	}
}

// TestLongPollAnswers410ForAPositionTheFeedNoLongerHas: past the retention
// (or past the last seq) the answer is 410 with how to resync; bad
// parameters are 400, and a feed switched off is 404.
func TestLongPollAnswers410ForAPositionTheFeedNoLongerHas(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := make(chan time.Time, 1)
	clock <- now
	nowFn := func() time.Time { t := <-clock; clock <- t; return t }
	r := newFeedRig(t, storage.Options{NoSync: true, Now: nowFn, Changes: storage.ChangesOptions{Retention: time.Hour}})
	r.createUser(t, "u1")
	<-clock
	clock <- now.Add(2 * time.Hour)
	r.createUser(t, "u2")
	for _, tc := range []struct {
		query  string
		status int
	}{
		{"after=0", http.StatusGone},
		{"after=1", http.StatusOK},
		{"after=9", http.StatusGone},
		{"after=x", http.StatusBadRequest},
		{"after=1&limit=0", http.StatusBadRequest},
		{"after=1&limit=1001", http.StatusBadRequest},
		{"after=1&wait=soon", http.StatusBadRequest},
	} {
		if a := r.get(t, tc.query); a.status != tc.status {
			t.Errorf("%s: %d %+v, want %d", tc.query, a.status, a.Body, tc.status)
		}
	}
	a := r.get(t, "after=0")
	if msg := fmt.Sprint(a.Body.Error); !strings.Contains(msg, "/v1/export") || !strings.Contains(msg, "change_seq") {
		t.Fatalf("410 says how to resync: %v", a.Body.Error)
	}

	off := newFeedRig(t, storage.Options{NoSync: true, Changes: storage.ChangesOptions{Off: true}})
	if a := off.get(t, "after=0"); a.status != http.StatusNotFound {
		t.Fatalf("feed off: %d", a.status)
	}
}

// TestExportCarriesTheChangeSeqItReflects: /v1/export's change_seq (and
// header) is the feed's last seq, so following after it misses nothing.
func TestExportCarriesTheChangeSeqItReflects(t *testing.T) {
	r := newFeedRig(t, storage.Options{NoSync: true})
	r.createUser(t, "u1")
	r.createUser(t, "u2")
	req, _ := http.NewRequest(http.MethodGet, r.srv.URL()+"/v1/export", nil)
	req.Header.Set("Authorization", "Bearer tok")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var snap struct {
		ChangeSeq *uint64              `json:"change_seq"`
		Users     []storage.ExportUser `json:"users"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&snap); err != nil {
		t.Fatal(err)
	}
	if snap.ChangeSeq == nil || *snap.ChangeSeq != 2 || resp.Header.Get(server.HeaderChangeSeq) != "2" || len(snap.Users) != 2 {
		t.Fatalf("export: change_seq %v, header %q, %d users", snap.ChangeSeq, resp.Header.Get(server.HeaderChangeSeq), len(snap.Users))
	}
	r.createUser(t, "u3")
	if a := r.get(t, "after="+strconv.FormatUint(*snap.ChangeSeq, 10)); len(a.Body.Changes) != 1 || a.Body.Changes[0].User.ID != "u3" {
		t.Fatalf("after the export: %+v", a.Body)
	}
}

// TestShutdownEndsLongPolls: a waiting long-poll answers (empty) when the
// server shuts down, which then does not wait for it.
func TestShutdownEndsLongPolls(t *testing.T) {
	r := newFeedRig(t, storage.Options{NoSync: true})
	got := make(chan changesAnswer, 1)
	go func() { got <- r.get(t, "after=0&wait=60s") }()
	select {
	case <-got:
		t.Fatal("answered before any change")
	case <-time.After(200 * time.Millisecond):
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := r.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if a := <-got; a.status != 200 || len(a.Body.Changes) != 0 {
		t.Fatalf("answer at shutdown: %d %+v", a.status, a.Body)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("shutdown took %s", took)
	}
}
