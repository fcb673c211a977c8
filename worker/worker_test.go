package worker_test

import (
	"context"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/storage"
	"github.com/dsyncd/dsyncd/worker"
)

type rig struct {
	q   *queue.Queue
	st  *storage.Store
	w   *worker.Worker
	ctx context.Context
}

func newRig(t *testing.T) *rig { return newRigWith(t, nil) }

func newRigWith(t *testing.T, edit func(*worker.Options)) *rig {
	t.Helper()
	return newRigQueue(t, queue.Options{}, edit)
}

// newRigQueue is newRigWith with qopts for the queue (its StoreDir is set).
func newRigQueue(t *testing.T, qopts queue.Options, edit func(*worker.Options)) *rig {
	t.Helper()
	return newRigLog(t, qopts, edit, zaptest.NewLogger(t))
}

// newRigLog is newRigQueue logging to log.
func newRigLog(t *testing.T, qopts queue.Options, edit func(*worker.Options), log *zap.Logger) *rig {
	t.Helper()
	return newRigAt(t, "", qopts, edit, log)
}

// newRigAt is newRigLog on the store file storePath ("": a new one).
func newRigAt(t *testing.T, storePath string, qopts queue.Options, edit func(*worker.Options), log *zap.Logger) *rig {
	t.Helper()
	dir := t.TempDir()
	if storePath == "" {
		storePath = filepath.Join(dir, "s.db")
	}
	qopts.StoreDir = filepath.Join(dir, "js")
	q := queue.New(qopts, log)
	ctx := context.Background()
	if err := q.Open(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	st, err := storage.Open(storage.Options{Path: storePath, Mapping: rigMapping})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	opts := worker.Options{BatchSize: 16, MaxAttempts: 2, RetryBackoff: 20 * time.Millisecond, FetchWait: 100 * time.Millisecond}
	if edit != nil {
		edit(&opts)
	}
	w := worker.New(q, st, opts, log)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(wctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return &rig{q: q, st: st, w: w, ctx: ctx}
}

func (r *rig) publish(t *testing.T, id, body string) { r.publishIn(t, "dir_1", id, body) }

func (r *rig) publishIn(t *testing.T, dir, id, body string) {
	t.Helper()
	if _, err := r.q.Publish(r.ctx, dir, "dsync.user.created", id, []byte(body)); err != nil {
		t.Fatal(err)
	}
}

var rigMapping = mapping.Config{AdminBadge: "admin", DefaultBadges: []mapping.Badge{"member"}}

// storeWithCorruptGroups returns a store file holding the groups ids (of
// directory dir_1), each with a record the store cannot decode: an event
// that touches one fails to apply, for neither its content (events.Decode
// refuses what the store could not take) nor the disk. The store's export
// fails while they are there: check users with Store.User.
func storeWithCorruptGroups(t *testing.T, ids ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "corrupt.db")
	st, err := storage.Open(storage.Options{Path: path, Mapping: rigMapping})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		ev, err := events.Decode([]byte(`{"id":"setup_` + id + `","event":"dsync.group.created","created_at":"2023-01-01T00:00:00Z","data":{"id":"` + id + `","directory_id":"dir_1","name":"G"}}`))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Apply([]*events.Event{ev}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, id := range ids {
			if err := tx.Bucket([]byte("groups")).Put([]byte(id), []byte("\xffnot a record")); err != nil {
				return err
			}
		}
		return nil
	})
	if err2 := db.Close(); err == nil {
		err = err2
	}
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// hasUsers fails t unless the store holds each of ids.
func (r *rig) hasUsers(t *testing.T, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if _, err := r.st.User(id); err != nil {
			t.Errorf("user %s: %v", id, err)
		}
	}
}

// appliedBesidesParked waits until the worker acknowledged everything, checks
// that the store holds users users, and returns the dead letters.
func (r *rig) appliedBesidesParked(t *testing.T, users int) []queue.DeadLetter {
	t.Helper()
	eventually(t, "everything acknowledged", func() bool {
		n, err := r.q.Pending(r.ctx, "dsyncd-worker")
		return err == nil && n == 0
	})
	snap, err := r.st.Export()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Users) != users {
		t.Fatalf("users = %+v, want %d applied", snap.Users, users)
	}
	dl, err := r.q.DeadLetters(r.ctx)
	if err != nil {
		t.Fatal(err)
	}
	return dl
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

func TestPoisonEventIsParkedAndTheRestApplied(t *testing.T) {
	r := newRig(t)
	r.publish(t, "e1", `{"id":"e1","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"u1","directory_id":"dir_1","state":"active"}}`)
	r.publish(t, "bad", `{"id":"bad","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"u2"}}`)
	r.publish(t, "e3", `{"id":"e3","event":"dsync.user.created","created_at":"2024-01-01T00:00:01Z","data":{"id":"u3","directory_id":"dir_1","state":"active"}}`)
	dl := r.appliedBesidesParked(t, 2)
	if len(dl) != 1 || dl[0].MsgID != "bad" || !strings.Contains(dl[0].Reason, "missing data.directory_id") {
		t.Fatalf("dead letters = %+v, want the bad event with its reason", dl)
	}
}

// TestCompressedEventsAreAppliedAndUndecodableOnesParked: with the s2
// encoding the worker applies what the queue stored compressed, and parks a
// message whose compressed data is corrupt with a reason saying so.
func TestCompressedEventsAreAppliedAndUndecodableOnesParked(t *testing.T) {
	r := newRigQueue(t, queue.Options{Encoding: queue.EncodingS2}, nil)
	r.publish(t, "e1", `{"id":"e1","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"u1","directory_id":"dir_1","state":"active","emails":[{"primary":true,"value":"u1@example.com"}],"first_name":"Ada","last_name":"Lovelace"}}`)
	nc, err := nats.Connect(r.q.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	corrupt := &nats.Msg{Subject: r.q.Subject("dir_1", "dsync.user.created"), Header: nats.Header{queue.HeaderEncoding: {"s2"}}, Data: []byte("\x7fgarbage")}
	if _, err := js.PublishMsg(r.ctx, corrupt, jetstream.WithMsgID("corrupt")); err != nil {
		t.Fatal(err)
	}
	r.publish(t, "e3", `{"id":"e3","event":"dsync.user.created","created_at":"2024-01-01T00:00:01Z","data":{"id":"u3","directory_id":"dir_1","state":"active","emails":[{"primary":true,"value":"u3@example.com"}],"first_name":"Grace","last_name":"Hopper"}}`)
	dl := r.appliedBesidesParked(t, 2)
	if len(dl) != 1 || dl[0].MsgID != "corrupt" || !strings.Contains(dl[0].Reason, "undecodable message data") || dl[0].Encoding != "s2" {
		t.Fatalf("dead letters = %+v, want the corrupt message with its reason and encoding", dl)
	}
}

func TestUnwritableStoreAcknowledgesNothing(t *testing.T) {
	r := newRig(t)
	eventually(t, "consuming", r.w.Consuming)
	if err := r.st.Close(); err != nil {
		t.Fatal(err)
	}
	r.publish(t, "e1", `{"id":"e1","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"u1","directory_id":"dir_1","state":"active"}}`)
	eventually(t, "the worker to report itself unhealthy", func() bool { return !r.w.Consuming() })
	n, err := r.q.Pending(r.ctx, "dsyncd-worker")
	if err != nil || n != 1 {
		t.Fatalf("pending = %d (%v), want the event still pending", n, err)
	}
	if dl, _ := r.q.DeadLetters(r.ctx); len(dl) != 0 {
		t.Fatalf("an event was parked because the store was down: %+v", dl)
	}
}

// TestUndecodableMessageIsParkedAndCountedWhileTheStoreIsDown: a message
// that cannot be decoded is parked, and reported to metrics, even when the
// rest of its batch waits for the store to come back.
func TestUndecodableMessageIsParkedAndCountedWhileTheStoreIsDown(t *testing.T) {
	var parked atomic.Int64
	r := newRigWith(t, func(o *worker.Options) {
		o.OnBatch = func(rep worker.BatchReport) { parked.Add(int64(rep.Parked)) }
		// Whatever a fetch brings after the first commit joins one batch:
		// the undecodable message and the redelivered valid event.
		o.CommitInterval = time.Second
	})
	eventually(t, "consuming", r.w.Consuming)
	if err := r.st.Close(); err != nil {
		t.Fatal(err)
	}
	r.publish(t, "e1", `{"id":"e1","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"u1","directory_id":"dir_1","state":"active"}}`)
	r.publish(t, "bad", `{"id":"bad","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"u2"}}`)
	eventually(t, "the undecodable message parked and counted", func() bool {
		dl, err := r.q.DeadLetters(r.ctx)
		return err == nil && len(dl) == 1 && parked.Load() == 1
	})
	if n, err := r.q.Pending(r.ctx, "dsyncd-worker"); err != nil || n != 1 {
		t.Fatalf("pending = %d (%v), want the valid event still waiting for the store", n, err)
	}
}

// TestFailingEventIsRetriedThenParkedInDirectoryOrder: an event the store
// cannot apply (its group's record is corrupt) is retried, then parked
// with the reason after worker.max_attempts; the later events of its
// directory wait behind it, those of other directories do not.
func TestFailingEventIsRetriedThenParkedInDirectoryOrder(t *testing.T) {
	var mu sync.Mutex
	var reports []worker.BatchReport
	r := newRigAt(t, storeWithCorruptGroups(t, "g2"), queue.Options{}, func(o *worker.Options) {
		o.MaxAttempts = 2
		o.OnBatch = func(rep worker.BatchReport) {
			mu.Lock()
			defer mu.Unlock()
			reports = append(reports, rep)
		}
	}, zaptest.NewLogger(t))
	eventually(t, "consuming", r.w.Consuming)
	r.publish(t, "e1", `{"id":"e1","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"u1","directory_id":"dir_1","state":"active"}}`)
	r.publish(t, "bad", `{"id":"bad","event":"dsync.group.updated","created_at":"2024-01-02T00:00:00Z","data":{"id":"g2","directory_id":"dir_1","name":"G2"}}`)
	r.publish(t, "e3", `{"id":"e3","event":"dsync.user.created","created_at":"2024-01-03T00:00:00Z","data":{"id":"u3","directory_id":"dir_1","state":"active"}}`)
	r.publishIn(t, "dir_2", "e4", `{"id":"e4","event":"dsync.user.created","created_at":"2024-01-04T00:00:00Z","data":{"id":"u4","directory_id":"dir_2","state":"active"}}`)
	eventually(t, "everything acknowledged", func() bool {
		n, err := r.q.Pending(r.ctx, "dsyncd-worker")
		return err == nil && n == 0
	})
	dl, err := r.q.DeadLetters(r.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(dl) != 1 || dl[0].MsgID != "bad" || dl[0].Attempts != 2 || !strings.Contains(dl[0].Reason, "apply failed after 2 attempts") {
		t.Fatalf("dead letters = %+v, want the failing event after 2 attempts, with its reason", dl)
	}
	r.hasUsers(t, "u1", "u3", "u4")
	// In which report (batch) each event was applied, and the bad one parked.
	mu.Lock()
	defer mu.Unlock()
	at := func(day int) int {
		want := time.Date(2024, 1, day, 0, 0, 0, 0, time.UTC)
		return slices.IndexFunc(reports, func(rep worker.BatchReport) bool {
			return slices.ContainsFunc(rep.CreatedAt, want.Equal)
		})
	}
	parked := slices.IndexFunc(reports, func(rep worker.BatchReport) bool { return rep.Parked > 0 })
	if parked < 0 || at(3) < parked {
		t.Errorf("e3 applied in batch %d, before its directory's earlier event was parked (batch %d): directory order lost", at(3), parked)
	}
	if at(4) < 0 || at(4) >= parked {
		t.Errorf("e4 (another directory) applied in batch %d, not before the parking (batch %d): it waited for no reason", at(4), parked)
	}
}

// TestEachFailingEventGetsItsOwnAttempts: of two failing events of one
// directory, the second waits (redelivered, not applied) while the first
// uses its attempts; it is then tried max_attempts times itself before it is
// parked, and each dead letter records the tries that really happened.
func TestEachFailingEventGetsItsOwnAttempts(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(zapcore.NewTee(core, zaptest.NewLogger(t).Core()))
	r := newRigAt(t, storeWithCorruptGroups(t, "bad1", "bad2"), queue.Options{}, func(o *worker.Options) { o.MaxAttempts = 3 }, log)
	eventually(t, "consuming", r.w.Consuming)
	for _, id := range []string{"bad1", "bad2"} {
		r.publish(t, id, `{"id":"`+id+`","event":"dsync.group.updated","created_at":"2024-01-01T00:00:00Z","data":{"id":"`+id+`","directory_id":"dir_1","name":"G"}}`)
	}
	r.publish(t, "e3", `{"id":"e3","event":"dsync.user.created","created_at":"2024-01-03T00:00:00Z","data":{"id":"u3","directory_id":"dir_1","state":"active"}}`)
	eventually(t, "everything acknowledged", func() bool {
		n, err := r.q.Pending(r.ctx, "dsyncd-worker")
		return err == nil && n == 0
	})
	r.hasUsers(t, "u3")
	dl, err := r.q.DeadLetters(r.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(dl) != 2 {
		t.Fatalf("dead letters = %+v, want both failing events", dl)
	}
	for _, d := range dl {
		retries := logs.FilterMessage("event failed to apply, will retry").FilterField(zap.String("event_id", d.MsgID)).Len()
		if d.Attempts != 3 || retries+1 != 3 || !strings.Contains(d.Reason, "after 3 attempts") {
			t.Errorf("dead letter %s records %d attempts (%q) and was applied %d time(s); want 3 and 3", d.MsgID, d.Attempts, d.Reason, retries+1)
		}
	}
}

// TestATrickleLandsAtOnceAndAFloodIsBatched: an event arriving after a
// quiet spell is applied at once, not when the pull ends; events arriving
// back to back are applied in a few large transactions, not one each.
func TestATrickleLandsAtOnceAndAFloodIsBatched(t *testing.T) {
	var mu sync.Mutex
	var batches, applied int
	r := newRigWith(t, func(o *worker.Options) {
		o.BatchSize = 1000
		o.FetchWait = 4 * time.Second
		o.CommitInterval = 300 * time.Millisecond
		o.OnBatch = func(rep worker.BatchReport) {
			mu.Lock()
			defer mu.Unlock()
			batches++
			applied += rep.Counts.Applied
		}
	})
	body := func(i int) (string, string) {
		id := "e" + strconv.Itoa(i)
		return id, `{"id":"` + id + `","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"u` +
			strconv.Itoa(i) + `","directory_id":"dir_1","state":"active"}}`
	}
	counts := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return batches, applied
	}

	start := time.Now()
	id, b := body(0)
	r.publish(t, id, b)
	eventually(t, "the first event applied", func() bool { _, a := counts(); return a == 1 })
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("a lone event took %s to apply: it waited for the pull to end", took)
	}

	const flood = 300
	for i := 1; i <= flood; i++ {
		id, b := body(i)
		r.publish(t, id, b)
	}
	eventually(t, "the flood applied", func() bool { _, a := counts(); return a == 1+flood })
	if b, _ := counts(); b-1 > flood/10 {
		t.Errorf("%d events published back to back were applied in %d transactions, want at most %d", flood, b-1, flood/10)
	}
}

// busyReceiver is an Inflow whose webhooks arrive faster while the worker
// pauses, as a receiver short of CPU takes more when the worker steps
// aside: one arrives at each look, a thousand during each pause.
type busyReceiver struct {
	n      atomic.Uint64
	pauses atomic.Int64
}

func (b *busyReceiver) inflow() uint64 { return b.n.Add(1) }

func (b *busyReceiver) onYield(time.Duration) {
	b.pauses.Add(1)
	b.n.Add(1000)
}

func TestWorkerYieldsToABusyReceiver(t *testing.T) {
	tests := []struct {
		name        string
		maxLag      time.Duration
		inflow      func(*busyReceiver) func() uint64
		wantPausing bool
	}{
		{"a flood the receiver takes faster while the worker pauses gets pauses, and every event applied",
			time.Minute, func(b *busyReceiver) func() uint64 { return b.inflow }, true},
		{"events that waited longer than max_yield_lag are applied without pauses",
			time.Nanosecond, func(b *busyReceiver) func() uint64 { return b.inflow }, false},
		{"a negative max_yield_lag never pauses",
			-1, func(b *busyReceiver) func() uint64 { return b.inflow }, false},
		{"no webhook arriving never pauses",
			time.Minute, func(*busyReceiver) func() uint64 { return func() uint64 { return 7 } }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &busyReceiver{}
			const events = 400
			r := newRigWith(t, func(o *worker.Options) {
				o.BatchSize = 10
				o.MaxYieldLag = tt.maxLag
				o.YieldWindow = 5 * time.Millisecond
				o.Inflow = tt.inflow(b)
				o.OnYield = b.onYield
				o.CPU = func() (float64, float64) { return 0, 0 } // never idle: the receiver is short of CPU
			})
			for i := range events {
				id := "e" + strconv.Itoa(i)
				r.publish(t, id, `{"id":"`+id+`","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"u`+
					strconv.Itoa(i)+`","directory_id":"dir_1","state":"active"}}`)
			}
			if dl := r.appliedBesidesParked(t, events); len(dl) != 0 {
				t.Fatalf("dead letters: %+v", dl)
			}
			if got := b.pauses.Load(); (got > 0) != tt.wantPausing {
				t.Fatalf("the worker paused %d times, want pauses: %v", got, tt.wantPausing)
			}
		})
	}
}
