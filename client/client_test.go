package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/client"
	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/server"
	"github.com/dsyncd/dsyncd/storage"
)

const token = "tok_client_test"

// rig is a real dsyncd server on a real store, listening on loopback; its
// events are applied to the store directly.
type rig struct {
	st  *storage.Store
	srv *server.Server
	n   int
	mu  sync.Mutex
}

func newRig(t testing.TB, opts storage.Options) *rig {
	t.Helper()
	opts.Path = filepath.Join(t.TempDir(), "dsyncd.db")
	opts.NoSync = true
	opts.Mapping = mapping.Config{AdminBadge: "admin", DefaultBadges: []mapping.Badge{"member"},
		Roles: []mapping.RoleRule{{Slug: "billing", Badges: []mapping.Badge{"billing"}}}}
	st, err := storage.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	srv := server.New(server.Options{Listen: "127.0.0.1:0", APIToken: token}, events.NewVerifier([]string{"whsec_x"}, 0), nil, st, zap.NewNop())
	if err := srv.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return &rig{st: st, srv: srv}
}

// user applies a dsync.user.created (or updated) for id in org_1.
func (r *rig) user(t testing.TB, typ, id, state string, roles ...string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	rs := []map[string]string{}
	for _, s := range roles {
		rs = append(rs, map[string]string{"slug": s})
	}
	body, _ := json.Marshal(map[string]any{"id": fmt.Sprintf("event_%03d", r.n), "event": typ,
		"created_at": time.Date(2024, 1, 1, 0, 0, r.n, 0, time.UTC).Format(time.RFC3339),
		"data": map[string]any{"id": id, "directory_id": "dir_1", "organization_id": "org_1", "idp_id": "idp-" + id,
			"email": strings.ToUpper(id[:1]) + id[1:] + "@X.example", "state": state, "roles": rs}})
	ev, err := events.Decode(body)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.st.Apply([]*events.Event{ev}); err != nil {
		t.Fatal(err)
	}
}

// TestReadMethodsAnswerWhatTheStoreHolds: each typed method answers the
// store's users and organisation; unknown ones and a wrong token are
// errors that errors.Is tells apart.
func TestReadMethodsAnswerWhatTheStoreHolds(t *testing.T) {
	r := newRig(t, storage.Options{})
	for _, id := range []string{"u1", "u2", "u3", "u4", "u5"} {
		r.user(t, "dsync.user.created", id, "active")
	}
	r.user(t, "dsync.user.updated", "u2", "active", "billing")
	r.user(t, "dsync.user.updated", "u5", "inactive")
	c := client.New(r.srv.URL(), token)
	ctx := context.Background()

	u, err := c.User(ctx, "u2")
	if err != nil || u.Email != "U2@X.example" || !u.HasBadge("billing") || !u.Active() || u.IdpID != "idp-u2" || len(u.Grants) == 0 {
		t.Fatalf("User(u2) = %+v, %v", u, err)
	}
	if us, err := c.UsersByEmail(ctx, "u2@x.EXAMPLE"); err != nil || len(us) != 1 || us[0].ID != "u2" {
		t.Fatalf("UsersByEmail in another case = %+v, %v", us, err)
	}
	if us, err := c.UsersByIdpID(ctx, "idp-u3", "dir_1"); err != nil || len(us) != 1 || us[0].ID != "u3" {
		t.Fatalf("UsersByIdpID = %+v, %v", us, err)
	}
	o, err := c.Organization(ctx, "org_1")
	if err != nil || o.ID != "org_1" || o.Users != 5 {
		t.Fatalf("Organization = %+v, %v", o, err)
	}
	var ids []string
	for u, err := range c.OrganizationUsers(ctx, "org_1", client.UserFilter{Limit: 2}) {
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, u.ID)
	}
	if !slices.Equal(ids, []string{"u1", "u2", "u3", "u4", "u5"}) {
		t.Fatalf("OrganizationUsers in pages of 2: %v", ids)
	}
	p, err := c.OrganizationUsersPage(ctx, "org_1", client.UserFilter{State: "inactive"}, "")
	if err != nil || len(p.Users) != 1 || p.Users[0].ID != "u5" || p.NextCursor != "" {
		t.Fatalf("inactive users: %+v, %v", p, err)
	}
	ex, err := c.Export(ctx)
	if err != nil || ex.ChangeSeq != 7 || len(ex.Users) != 5 {
		t.Fatalf("Export: change_seq %d, %d users, %v; want 7 and 5", ex.ChangeSeq, len(ex.Users), err)
	}

	for name, tc := range map[string]struct {
		err  error
		want error
		code string
	}{
		"unknown user":         {func() error { _, err := c.User(ctx, "nobody"); return err }(), client.ErrNotFound, "not_found"},
		"unknown email":        {func() error { _, err := c.UsersByEmail(ctx, "no@x.example"); return err }(), client.ErrNotFound, "not_found"},
		"unknown organisation": {func() error { _, err := c.Organization(ctx, "org_9"); return err }(), client.ErrNotFound, "not_found"},
		"bad cursor":           {func() error { _, err := c.OrganizationUsersPage(ctx, "org_1", client.UserFilter{}, "!!"); return err }(), client.ErrBadRequest, "bad_request"},
		"wrong token":          {func() error { _, err := client.New(r.srv.URL(), "nope").User(ctx, "u1"); return err }(), client.ErrUnauthorized, "unauthorized"},
	} {
		var e *client.Error
		if !errors.Is(tc.err, tc.want) || !errors.As(tc.err, &e) || e.Code != tc.code || e.Message == "" {
			t.Errorf("%s: %v, want %v with code %s", name, tc.err, tc.want, tc.code)
		}
	}
}

var errEnough = errors.New("enough")

// TestFollowDeliversEachChangeOnceInOrderAndStopsOnTheCallbacksError:
// changes committed while Follow waits reach the callback in seq order,
// each once, and the callback's error ends Follow.
func TestFollowDeliversEachChangeOnceInOrderAndStopsOnTheCallbacksError(t *testing.T) {
	r := newRig(t, storage.Options{})
	r.user(t, "dsync.user.created", "u0", "active")
	c := client.New(r.srv.URL(), token, client.WithWait(5*time.Second), client.WithBatch(3))
	var got []client.Change
	done := make(chan error, 1)
	go func() {
		done <- c.Follow(context.Background(), 1, func(ch client.Change) error {
			got = append(got, ch)
			if len(got) == 10 {
				return errEnough
			}
			return nil
		})
	}()
	for i := 1; i <= 12; i++ {
		r.user(t, "dsync.user.created", fmt.Sprintf("u%d", i), "active")
	}
	select {
	case err := <-done:
		if !errors.Is(err, errEnough) {
			t.Fatalf("Follow returned %v, want the callback's error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Follow did not stop on the callback's error")
	}
	for i, ch := range got {
		if ch.Seq != uint64(i+2) || ch.Kind != client.ChangeUserCreated || ch.User == nil || ch.User.ID != fmt.Sprintf("u%d", i+1) {
			t.Fatalf("record %d: seq %d %s %+v", i, ch.Seq, ch.Kind, ch.User)
		}
	}
}

// faulty answers 503 to the first fail503 requests and cuts the
// connection of the next cut ones, then passes to the real handler.
type faulty struct {
	h            http.Handler
	fail503, cut int32
	seen         atomic.Int32
}

func (f *faulty) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := f.seen.Add(1)
	switch {
	case n <= f.fail503:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error":{"code":"unavailable","message":"try later"}}`))
	case n <= f.fail503+f.cut:
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			_ = conn.Close()
		}
	default:
		f.h.ServeHTTP(w, r)
	}
}

// TestFollowRetriesThrough5xxAndCutConnections: 503s and connections cut
// without an answer are retried with backoff, and nothing is lost or
// repeated.
func TestFollowRetriesThrough5xxAndCutConnections(t *testing.T) {
	r := newRig(t, storage.Options{})
	for i := 1; i <= 5; i++ {
		r.user(t, "dsync.user.created", fmt.Sprintf("u%d", i), "active")
	}
	f := &faulty{h: r.srv.Handler(), fail503: 2, cut: 2}
	hs := httptest.NewServer(f)
	defer hs.Close()
	var retries []error
	// No kept-alive connections: the transport would itself resend a GET
	// whose reused connection was cut.
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	c := client.New(hs.URL, token, client.WithHTTPClient(hc), client.WithBackoff(time.Millisecond, 20*time.Millisecond), client.WithBatch(2),
		client.WithRetryHook(func(err error, d time.Duration) {
			if d > 20*time.Millisecond {
				t.Errorf("backoff %s beyond the 20ms cap", d)
			}
			retries = append(retries, err)
		}))
	var seqs []uint64
	err := c.Follow(context.Background(), 0, func(ch client.Change) error {
		seqs = append(seqs, ch.Seq)
		if ch.Seq == 5 {
			return errEnough
		}
		return nil
	})
	if !errors.Is(err, errEnough) || !slices.Equal(seqs, []uint64{1, 2, 3, 4, 5}) {
		t.Fatalf("Follow: %v, seqs %v", err, seqs)
	}
	if len(retries) != 4 {
		t.Fatalf("%d retries (%v), want 4: two 503s and two cut connections", len(retries), retries)
	}
	var e *client.Error
	if !errors.As(retries[0], &e) || e.Status != 503 || errors.As(retries[2], &e) && e.Status == 503 {
		t.Fatalf("retries: %v", retries)
	}
}

// TestFollowReturnsErrGoneForAPositionTheFeedNoLongerKeeps: past the
// retention Follow stops with ErrGone at once (no retries), and the
// export's change_seq is where following resumes without a gap.
func TestFollowReturnsErrGoneForAPositionTheFeedNoLongerKeeps(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	r := newRig(t, storage.Options{Now: clock, Changes: storage.ChangesOptions{Retention: time.Hour}})
	r.user(t, "dsync.user.created", "u1", "active")
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	r.user(t, "dsync.user.created", "u2", "active")
	retried := false
	c := client.New(r.srv.URL(), token, client.WithRetryHook(func(error, time.Duration) { retried = true }))
	err := c.Follow(context.Background(), 0, func(client.Change) error { return nil })
	var e *client.Error
	if !errors.Is(err, client.ErrGone) || retried || !errors.As(err, &e) || e.Code != "gone" || !strings.Contains(e.Message, "change_seq") {
		t.Fatalf("Follow from a pruned position: %v (retried %v)", err, retried)
	}
	ex, err := c.Export(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	mirror := map[string]client.User{}
	for _, u := range ex.Users {
		mirror[u.ID] = u
	}
	r.user(t, "dsync.user.deleted", "u1", "active")
	err = c.Follow(context.Background(), ex.ChangeSeq, func(ch client.Change) error {
		client.Fold(mirror, ch)
		return errEnough
	})
	if !errors.Is(err, errEnough) || len(mirror) != 1 || mirror["u2"].ID != "u2" {
		t.Fatalf("after the resync: %v, mirror %v", err, mirror)
	}
}

// TestFollowEndsWithItsContext: a cancelled context ends a waiting Follow.
func TestFollowEndsWithItsContext(t *testing.T) {
	r := newRig(t, storage.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- client.New(r.srv.URL(), token).Follow(ctx, 0, func(client.Change) error { return nil })
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Follow: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Follow outlived its context")
	}
}

// TestFollowDoesNotRetryWhatAskingAgainCannotMend: a wrong token is
// returned at once.
func TestFollowDoesNotRetryWhatAskingAgainCannotMend(t *testing.T) {
	r := newRig(t, storage.Options{})
	err := client.New(r.srv.URL(), "wrong", client.WithRetryHook(func(err error, _ time.Duration) { t.Errorf("retried %v", err) })).
		Follow(context.Background(), 0, func(client.Change) error { return nil })
	if !errors.Is(err, client.ErrUnauthorized) {
		t.Fatalf("Follow with a wrong token: %v", err)
	}
}

// TestFollowRetriesWhileNothingListens: a refused connection is retried
// until the context ends.
func TestFollowRetriesWhileNothingListens(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var n atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	c := client.New("http://"+addr, token, client.WithBackoff(time.Millisecond, 5*time.Millisecond),
		client.WithRetryHook(func(error, time.Duration) {
			if n.Add(1) == 3 {
				cancel()
			}
		}))
	if err := c.Follow(ctx, 0, func(client.Change) error { return nil }); !errors.Is(err, context.Canceled) || n.Load() != 3 {
		t.Fatalf("Follow with nothing listening: %v after %d retries", err, n.Load())
	}
}
