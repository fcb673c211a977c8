package worker_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

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

func newRig(t *testing.T) *rig {
	t.Helper()
	dir := t.TempDir()
	log := zaptest.NewLogger(t)
	q := queue.New(queue.Options{StoreDir: filepath.Join(dir, "js")}, log)
	ctx := context.Background()
	if err := q.Open(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	st, err := storage.Open(storage.Options{Path: filepath.Join(dir, "s.db"), Mapping: mapping.Config{AdminBadge: "admin", DefaultBadges: []string{"member"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	w := worker.New(q, st, worker.Options{BatchSize: 16, MaxAttempts: 2, RetryBackoff: 20 * time.Millisecond, FetchWait: 100 * time.Millisecond}, log)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(wctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return &rig{q: q, st: st, w: w, ctx: ctx}
}

func (r *rig) publish(t *testing.T, id, body string) {
	t.Helper()
	if _, err := r.q.Publish(r.ctx, "dir_1", "dsync.user.created", id, []byte(body)); err != nil {
		t.Fatal(err)
	}
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
	eventually(t, "everything acknowledged", func() bool {
		n, err := r.q.Pending(r.ctx, "dsyncd-worker")
		return err == nil && n == 0
	})
	snap, err := r.st.Export()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Users) != 2 {
		t.Fatalf("users = %+v, want u1 and u3 applied", snap.Users)
	}
	dl, err := r.q.DeadLetters(r.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(dl) != 1 || dl[0].MsgID != "bad" || !strings.Contains(dl[0].Reason, "missing data.directory_id") {
		t.Fatalf("dead letters = %+v, want the bad event with its reason", dl)
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
