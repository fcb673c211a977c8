package queue

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// kvNoRespondersWait bounds how long kvGet waits for a replica to answer.
const kvNoRespondersWait = 10 * time.Second

// kvGet is kv.Get, waiting out the moments when no server answers the
// bucket's direct gets (nats.ErrNoResponders): a replicated bucket just
// created, or whose leader just changed, answers them only once its
// replicas are caught up. It tries again, 20 ms apart at first, until one
// answers, ctx ends or kvNoRespondersWait has passed; then it returns the
// last error.
func kvGet(ctx context.Context, kv jetstream.KeyValue, key string) (jetstream.KeyValueEntry, error) {
	deadline := time.Now().Add(kvNoRespondersWait)
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		e, err := kv.Get(ctx, key)
		if !errors.Is(err, nats.ErrNoResponders) || time.Now().Add(wait).After(deadline) {
			return e, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
	}
}
