package storage_test

import (
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/storage"
)

// blockingWriter blocks its first Write until release is closed.
type blockingWriter struct {
	started chan struct{}
	release chan struct{}
	once    bool
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	if !w.once {
		w.once = true
		close(w.started)
		<-w.release
	}
	return len(p), nil
}

// A snapshot copies the store in one read transaction that lasts as long as
// the upload; commits that grow the file must not wait for it.
func TestCommitsThatGrowTheFileDoNotWaitForALongCopy(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	applyStream(t, st, synth.Stream(synth.Options{Seed: 1, Users: 50, Groups: 2, MembershipsPerUser: 1}))
	w := &blockingWriter{started: make(chan struct{}), release: make(chan struct{})}
	copied := make(chan error, 1)
	go func() {
		_, err := st.BackupTo(w)
		copied <- err
	}()
	<-w.started // the copy's read transaction is open, its writer stuck
	applied := make(chan struct{})
	go func() {
		defer close(applied)
		// Megabytes more than the file held: bbolt must grow it.
		applyStream(t, st, synth.Stream(synth.Options{Seed: 2, Users: 6000, Groups: 20, MembershipsPerUser: 2}))
	}()
	select {
	case <-applied:
	case <-time.After(60 * time.Second):
		close(w.release)
		t.Fatal("commits waited for the copy's read transaction")
	}
	close(w.release)
	if err := <-copied; err != nil {
		t.Fatal(err)
	}
}
