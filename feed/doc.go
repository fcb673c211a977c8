// Package feed carries the product's change feed out of the store: the
// relay to a JetStream stream (Relay) and the signed webhooks out
// (Webhook). Both read the outbox the store writes in each apply
// transaction (storage.Store.Changes), from a durable position, in seq
// order, at least once, each in its own goroutine with bounded memory: a
// way out that fails, however long, holds up neither the worker nor the
// other ways out. The third way out, the long-poll, is server's
// /v1/changes.
//
// It imports neither NATS nor bbolt: the relay publishes through the Stream
// interface (queue.ChangeStream, adapted in cmd/dsyncd), and positions are
// kept by the store.
package feed

import (
	"context"
	"errors"
	"time"

	"github.com/dsyncd/dsyncd/storage"
)

// Source is what the feed reads: *storage.Store.
type Source interface {
	Changes(after uint64, limit int) (*storage.ChangesPage, error)
	ChangesNotify() <-chan struct{}
	Cursor(name string) (string, error)
	SetCursor(name, value string) error
}

// backoff doubles from min to max.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// readPage reads the changes after pos; a position the feed no longer has
// moves on to the oldest record kept (gap says how many seqs were lost),
// and ErrClosed or ctx ending is returned as is.
func readPage(src Source, pos uint64, limit int) (page *storage.ChangesPage, newPos uint64, gap uint64, err error) {
	page, err = src.Changes(pos, limit)
	var gone *storage.GoneError
	if errors.As(err, &gone) {
		if gone.After > gone.Last {
			// The store's feed is behind the position (a store replaced
			// or rebuilt): go on from its end.
			return nil, gone.Last, 0, err
		}
		return nil, gone.Oldest - 1, gone.Oldest - 1 - pos, err
	}
	return page, pos, 0, err
}
