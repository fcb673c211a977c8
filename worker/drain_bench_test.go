package worker_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/storage"
	"github.com/dsyncd/dsyncd/worker"
)

// BenchmarkWorkerDrain measures the live worker draining a pre-filled
// JetStream stream (fetch + decode + batched bbolt apply + ack): ~50k events
// of an initial sync, stored as received (json) and compressed (s2, the
// daemon's default).
func BenchmarkWorkerDrain(b *testing.B) {
	stream := synth.Stream(synth.Options{Seed: 3, Users: 12000, Groups: 120, MembershipsPerUser: 3})
	for _, enc := range []string{queue.EncodingJSON, queue.EncodingS2} {
		b.Run("encoding="+enc, func(b *testing.B) { benchmarkDrain(b, stream, enc) })
	}
}

func benchmarkDrain(b *testing.B, stream []synth.Event, encoding string) {
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		q := queue.New(queue.Options{StoreDir: filepath.Join(dir, "js"), Encoding: encoding}, zap.NewNop())
		ctx := context.Background()
		if err := q.Open(ctx); err != nil {
			b.Fatal(err)
		}
		for _, e := range stream {
			ev, err := events.Peek(e.Body)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := q.Publish(ctx, ev.DirectoryID, string(ev.Type), ev.ID, e.Body); err != nil {
				b.Fatal(err)
			}
		}
		st, err := storage.Open(storage.Options{Path: filepath.Join(dir, "s.db"), Mapping: mapping.Config{AdminBadge: "admin",
			DefaultBadges: []mapping.Badge{"member"}, Groups: []mapping.GroupRule{{Name: "App Admins", Badges: []mapping.Badge{"admin"}}}}})
		if err != nil {
			b.Fatal(err)
		}
		w := worker.New(q, st, worker.Options{BatchSize: 512}, zap.NewNop())
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		b.StartTimer()
		start := time.Now()
		go func() { defer close(done); _ = w.Run(wctx) }()
		for {
			n, err := q.Pending(ctx, "dsyncd-worker")
			if err == nil && n == 0 && w.Consuming() {
				break
			}
			time.Sleep(5 * time.Millisecond) // poll interval
		}
		elapsed := time.Since(start)
		b.StopTimer()
		cancel()
		<-done
		b.ReportMetric(float64(len(stream))/elapsed.Seconds(), "events/s")
		_ = st.Close()
		_ = q.Close()
	}
	b.ReportMetric(float64(len(stream)), "events")
}
