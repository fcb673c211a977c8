package feed_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/feed"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/storage"
)

const secret = "whsec_out"

func openStore(t *testing.T) *storage.Store {
	t.Helper()
	st, err := storage.Open(storage.Options{Path: filepath.Join(t.TempDir(), "dsyncd.db"), NoSync: true,
		Mapping: mapping.Config{AdminBadge: "admin", DefaultBadges: []mapping.Badge{"member"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// createUsers applies one dsync.user.created per id, each in its own
// transaction (one change record each).
func createUsers(t *testing.T, st *storage.Store, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		body, _ := json.Marshal(map[string]any{"id": fmt.Sprintf("event_%06d", i), "event": "dsync.user.created",
			"created_at": time.Date(2024, 1, 1, 0, 0, 0, i*1000, time.UTC).Format(time.RFC3339Nano),
			"data":       map[string]any{"id": fmt.Sprintf("u%06d", i), "directory_id": "dir_1", "organization_id": "org_1", "state": "active"}})
		ev, err := events.Decode(body)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Apply([]*events.Event{ev}); err != nil {
			t.Error(err) // called from goroutines too
			return
		}
	}
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition with a deadline
	}
}

// receiver is a product's webhook endpoint: it verifies each POST's
// signature as events verifies WorkOS's, fails the first fail ones (or
// all while down), and keeps the seqs it accepted.
type receiver struct {
	mu       sync.Mutex
	fail     int
	down     bool
	posts    int
	seqs     []uint64
	badSig   int
	verifier *events.Verifier
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.posts++
	if err := r.verifier.Verify(req.Header.Get(feed.HeaderSignature), body); err != nil {
		r.badSig++
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	if r.down || r.fail > 0 {
		r.fail--
		http.Error(w, "not now", http.StatusServiceUnavailable)
		return
	}
	var batch struct {
		Changes []storage.Change `json:"changes"`
	}
	if err := json.Unmarshal(body, &batch); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	for _, c := range batch.Changes {
		r.seqs = append(r.seqs, c.Seq)
	}
}

func (r *receiver) got() (seqs []uint64, posts, badSig int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]uint64(nil), r.seqs...), r.posts, r.badSig
}

func (r *receiver) setDown(down bool) {
	r.mu.Lock()
	r.down = down
	r.mu.Unlock()
}

func newReceiver(t *testing.T, fail int) (*receiver, *httptest.Server) {
	r := &receiver{fail: fail, verifier: events.NewVerifier([]string{secret}, 5*time.Minute)}
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return r, srv
}

// checkOnceInOrder: seqs are 1..n, each once, in order.
func checkOnceInOrder(t *testing.T, seqs []uint64, n int) {
	t.Helper()
	if len(seqs) != n {
		t.Fatalf("%d records, want %d", len(seqs), n)
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("record %d has seq %d: out of order, repeated or missing", i, s)
		}
	}
}

func runWebhook(t *testing.T, st *storage.Store, url string) (*feed.Webhook, context.CancelFunc) {
	w := feed.NewWebhook(st, feed.WebhookOptions{URL: url, Secret: secret, MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Batch: 7},
		zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return w, stop
}

// TestWebhookRetriesWithBackoffThenDeliversInOrder: an endpoint that fails
// its first POSTs receives every record afterwards, signed, once, in seq
// order; the failures are counted.
func TestWebhookRetriesWithBackoffThenDeliversInOrder(t *testing.T) {
	st := openStore(t)
	rcv, srv := newReceiver(t, 4)
	w, _ := runWebhook(t, st, srv.URL)
	createUsers(t, st, 1, 30)
	waitFor(t, "30 records delivered", 10*time.Second, func() bool { s, _, _ := rcv.got(); return len(s) == 30 })
	seqs, posts, badSig := rcv.got()
	checkOnceInOrder(t, seqs, 30)
	if badSig != 0 || posts < 4+30/7 {
		t.Fatalf("%d posts, %d badly signed", posts, badSig)
	}
	waitFor(t, "the position stored", 10*time.Second, func() bool { return w.Status().Position == 30 })
	s := w.Status()
	if s.Failures != 4 || s.Position != 30 || s.Pending != 0 || s.Delivered != 30 {
		t.Fatalf("status %+v", s)
	}
}

// TestWebhookDownThenUpReceivesEverythingAfterARestart: while the endpoint
// is down records wait (pending, oldest age); the delivery position
// survives a restart of the sender, and once up the endpoint gets every
// record, in order, none twice past what it accepted.
func TestWebhookDownThenUpReceivesEverythingAfterARestart(t *testing.T) {
	st := openStore(t)
	rcv, srv := newReceiver(t, 0)
	_, stop := runWebhook(t, st, srv.URL)
	createUsers(t, st, 1, 10)
	waitFor(t, "10 delivered", 10*time.Second, func() bool { s, _, _ := rcv.got(); return len(s) == 10 })
	rcv.setDown(true)
	createUsers(t, st, 11, 15)
	stop()
	w, _ := runWebhook(t, st, srv.URL) // a restart
	waitFor(t, "the down endpoint to be retried", 10*time.Second, func() bool { return w.Status().Failures >= 2 })
	if s := w.Status(); s.Pending != 15 || s.OldestAge <= 0 || s.Position != 10 {
		t.Fatalf("while down: %+v", s)
	}
	rcv.setDown(false)
	waitFor(t, "25 delivered", 10*time.Second, func() bool { s, _, _ := rcv.got(); return len(s) == 25 })
	seqs, _, _ := rcv.got()
	checkOnceInOrder(t, seqs, 25)
}

// streamAdapter is cmd/dsyncd's adapter of the queue's change stream.
type streamAdapter struct{ cs *queue.ChangeStream }

func (a streamAdapter) LastChange(ctx context.Context) (uint64, error) { return a.cs.LastChange(ctx) }
func (a streamAdapter) Publish(ctx context.Context, msgs []feed.Message) (int, error) {
	out := make([]queue.ChangeMsg, len(msgs))
	for i, m := range msgs {
		out[i] = queue.ChangeMsg(m)
	}
	return a.cs.Publish(ctx, out)
}

func openQueue(t *testing.T) (*queue.Queue, jetstream.JetStream) {
	t.Helper()
	q := queue.New(queue.Options{StoreDir: t.TempDir()}, zaptest.NewLogger(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := q.Open(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	nc, err := natsConnect(q.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return q, js
}

// streamSeqs returns the change seqs the stream holds, in stream order.
func streamSeqs(t *testing.T, js jetstream.JetStream) []uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, queue.DefaultChangesStream)
	if err != nil {
		return nil
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for i := info.State.FirstSeq; i <= info.State.LastSeq && info.State.Msgs > 0; i++ {
		m, err := s.GetMsg(ctx, i)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		seq, _ := strconv.ParseUint(m.Header.Get(jetstream.MsgIDHeader), 10, 64)
		out = append(out, seq)
	}
	return out
}

func runRelay(t *testing.T, st *storage.Store, q *queue.Queue) (*feed.Relay, context.CancelFunc) {
	r := feed.NewRelay(st, streamAdapter{q.Changes(queue.ChangesOptions{})}, feed.RelayOptions{Batch: 16, MinBackoff: 5 * time.Millisecond}, zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return r, stop
}

// TestRelayPublishesEachChangeOnceAcrossRestarts: relays stopped at random
// points while records are written, and started again, leave the stream
// holding every record once, in order.
func TestRelayPublishesEachChangeOnceAcrossRestarts(t *testing.T) {
	st := openStore(t)
	q, js := openQueue(t)
	written := make(chan struct{})
	go func() { defer close(written); createUsers(t, st, 1, 200) }()
	for i := 0; i < 5; i++ {
		r, stop := runRelay(t, st, q)
		want := uint64(10 * (i + 1))
		waitFor(t, "the relay to move", 10*time.Second, func() bool { return r.Status().Position >= want })
		stop()
	}
	<-written
	r, _ := runRelay(t, st, q)
	waitFor(t, "200 relayed", 10*time.Second, func() bool { return r.Status().Position == 200 })
	checkOnceInOrder(t, streamSeqs(t, js), 200)
}

// TestAFailingEndpointBlocksNoOtherWayOut: an endpoint answering 500
// forever leaves the store applying, the relay relaying and the feed
// readable; the webhook only falls behind, and says so.
func TestAFailingEndpointBlocksNoOtherWayOut(t *testing.T) {
	st := openStore(t)
	q, js := openQueue(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "broken", http.StatusInternalServerError)
	}))
	t.Cleanup(srv.Close)
	w := feed.NewWebhook(st, feed.WebhookOptions{URL: srv.URL, Secret: secret, MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond,
		Behind: time.Millisecond}, zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	r, _ := runRelay(t, st, q)

	start := time.Now()
	createUsers(t, st, 1, 100)
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("applying 100 events took %s", took)
	}
	waitFor(t, "100 relayed", 10*time.Second, func() bool { return r.Status().Position == 100 })
	checkOnceInOrder(t, streamSeqs(t, js), 100)
	page, err := st.Changes(0, 1000)
	if err != nil || len(page.Changes) != 100 {
		t.Fatalf("long-poll read: %v", err)
	}
	waitFor(t, "the webhook to say it is behind", 10*time.Second, func() bool { s := w.Status(); return s.Behind && s.Failures > 3 })
	if s := w.Status(); s.Position != 0 || s.Pending != 100 || s.LastError == "" {
		t.Fatalf("failing webhook: %+v", s)
	}
}
