package main

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/storage"
)

// TestRebuildReportsAndSkipsAnEventThatFailsToApply: rebuild applies the
// stream through the worker's apply path: an event the store cannot take
// (its group's record is corrupt in the store rebuilt from) is reported
// with its sequence and skipped, every other event of its batch applied;
// and a store that cannot be written stops the rebuild with the error.
func TestRebuildReportsAndSkipsAnEventThatFailsToApply(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q := queue.New(queue.Options{StoreDir: t.TempDir()}, zap.NewNop())
	mustf(t, q.Open(ctx), "open queue")
	defer q.Close()
	bodies := []string{
		`{"id":"e1","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"u1","directory_id":"dir_1","state":"active"}}`,
		`{"id":"bad","event":"dsync.group.updated","created_at":"2024-01-02T00:00:00Z","data":{"id":"g2","directory_id":"dir_1","name":"G2"}}`,
		`{"id":"e3","event":"dsync.user.created","created_at":"2024-01-03T00:00:00Z","data":{"id":"u3","directory_id":"dir_1","state":"active"}}`,
	}
	for _, b := range bodies {
		ev, err := events.Peek([]byte(b))
		mustf(t, err, "peek")
		_, err = q.Publish(ctx, ev.DirectoryID, string(ev.Type), ev.ID, []byte(b))
		mustf(t, err, "publish")
	}

	// The store rebuilt from holds group g2 with a record it cannot decode.
	path := filepath.Join(t.TempDir(), "from.db")
	st, err := storage.Open(storage.Options{Path: path})
	mustf(t, err, "open store")
	g, err := events.Decode([]byte(`{"id":"setup","event":"dsync.group.created","created_at":"2023-01-01T00:00:00Z","data":{"id":"g2","directory_id":"dir_1","name":"G"}}`))
	mustf(t, err, "decode")
	_, err = st.Apply([]*events.Event{g})
	mustf(t, err, "apply")
	mustf(t, st.Close(), "close")
	db, err := bolt.Open(path, 0o600, nil)
	mustf(t, err, "bolt open")
	mustf(t, db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("groups")).Put([]byte("g2"), []byte("\xffnot a record"))
	}), "corrupt")
	mustf(t, db.Close(), "bolt close")
	st, err = storage.Open(storage.Options{Path: path})
	mustf(t, err, "reopen store")
	defer st.Close()

	rep := &rebuildReport{}
	mustf(t, applyStream(ctx, q, st, 0, map[uint64]bool{}, map[string]bool{}, map[string]bool{}, rep), "applyStream")
	if len(rep.Failed) != 1 || rep.Failed[0].Seq != 2 || rep.Failed[0].EventID != "bad" || rep.Failed[0].Error == "" {
		t.Fatalf("failed = %+v, want event bad at seq 2 with its error", rep.Failed)
	}
	if rep.Outcomes.Applied != 2 {
		t.Errorf("outcomes %v, want the two other events applied", rep.Outcomes)
	}
	for _, u := range []string{"u1", "u3"} {
		if _, err := st.User(u); err != nil {
			t.Errorf("user %s: %v", u, err)
		}
	}

	mustf(t, st.Close(), "close")
	err = applyStream(ctx, q, st, 0, map[uint64]bool{}, map[string]bool{}, map[string]bool{}, &rebuildReport{})
	if !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("applyStream into a closed store = %v, want it to stop with ErrClosed", err)
	}
}
