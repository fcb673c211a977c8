package worker_test

import (
	"context"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/storage"
	"github.com/dsyncd/dsyncd/worker"
)

// An event dated later than the clock plus the tolerance is parked as a dead
// letter saying why, counted, and does not make the user's later real events
// stale; the directory's other events are applied.
func TestFutureDatedEventIsParkedAndDoesNotFreezeTheUser(t *testing.T) {
	dir := t.TempDir()
	log := zaptest.NewLogger(t)
	q := queue.New(queue.Options{StoreDir: filepath.Join(dir, "js")}, log)
	ctx := context.Background()
	if err := q.Open(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	st, err := storage.Open(storage.Options{Path: filepath.Join(dir, "s.db"), MaxFuture: 3 * time.Minute,
		Mapping: mapping.Config{AdminBadge: "admin", DefaultBadges: []mapping.Badge{"member"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	var future atomic.Int64
	w := worker.New(q, st, worker.Options{BatchSize: 16, MaxAttempts: 2, RetryBackoff: 20 * time.Millisecond, FetchWait: 100 * time.Millisecond,
		OnBatch: func(rep worker.BatchReport) { future.Add(int64(rep.Counts.Future)) }}, log)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(wctx) }()
	t.Cleanup(func() { cancel(); <-done })
	r := &rig{q: q, st: st, w: w, ctx: ctx}

	now := time.Now().UTC()
	r.publish(t, "e1", `{"id":"e1","event":"dsync.user.created","created_at":"`+now.Add(-time.Hour).Format(time.RFC3339)+`","data":{"id":"u1","directory_id":"dir_1","first_name":"Old","state":"active"}}`)
	r.publish(t, "e2099", `{"id":"e2099","event":"dsync.user.updated","created_at":"2099-01-01T00:00:00Z","data":{"id":"u1","directory_id":"dir_1","first_name":"Frozen","state":"inactive"}}`)
	r.publish(t, "e2", `{"id":"e2","event":"dsync.user.updated","created_at":"`+now.Add(-time.Minute).Format(time.RFC3339)+`","data":{"id":"u1","directory_id":"dir_1","first_name":"Real","state":"active"}}`)
	// Within the tolerance (a sender's clock a little ahead): applied.
	r.publish(t, "e3", `{"id":"e3","event":"dsync.user.created","created_at":"`+now.Add(time.Minute).Format(time.RFC3339)+`","data":{"id":"u2","directory_id":"dir_1","state":"active"}}`)
	dl := r.appliedBesidesParked(t, 2)
	if len(dl) != 1 || dl[0].MsgID != "e2099" || !strings.Contains(dl[0].Reason, "future-dated") || !strings.Contains(dl[0].Reason, "webhook.tolerance") {
		t.Fatalf("dead letters = %+v, want e2099 parked as future-dated", dl)
	}
	if future.Load() != 1 {
		t.Fatalf("future-dated count = %d, want 1", future.Load())
	}
	u, err := st.User("u1")
	if err != nil {
		t.Fatal(err)
	}
	if u.FirstName != "Real" || u.State != "active" {
		t.Fatalf("u1 = %s %s, want the real later event (Real, active) applied", u.FirstName, u.State)
	}
	if ok, _ := st.Processed("e2099"); ok {
		t.Fatal("the future-dated event was recorded as processed: replaying the dead letter later would be a duplicate")
	}
}
