package queue

// Positions: where the leader's ways out of dsyncd stand (the webhooks
// out's delivery position, the Events API poller's cursor), in a JetStream
// key-value bucket with the streams' replicas, so that the node that leads
// next goes on from where the last one stopped rather than from its own
// store's idea of it.

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// PositionsBucketBytes is the positions bucket's size cap (a few entries
// of a few dozen bytes); with the lease bucket it fits in the room
// queueOptions leaves for key-value buckets (4 × LeaseBucketBytes).
const PositionsBucketBytes = 1 << 20

// PositionsBucket is the name of the key-value bucket of positions for a
// main stream named stream.
func PositionsBucket(stream string) string { return stream + "_POSITIONS" }

// ErrPositionMoved is returned by Positions.Create and Positions.Update when
// another writer stored the key since the revision given (for Create: at
// all): someone else delivers or polls, or did meanwhile.
var ErrPositionMoved = errors.New("the position was moved by another node")

// Positions is the positions bucket.
type Positions struct {
	kv jetstream.KeyValue
}

// Positions opens (creating it if need be) the positions bucket: entries
// never expire; one revision is kept.
func (q *Queue) Positions(ctx context.Context) (*Positions, error) {
	st, err := q.state()
	if err != nil {
		return nil, err
	}
	kv, err := retryUnanswered(ctx, q.log, "bucket "+PositionsBucket(q.opts.Stream), func(ctx context.Context) (jetstream.KeyValue, error) {
		return st.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      PositionsBucket(q.opts.Stream),
			Description: "dsyncd: the leader's positions (webhooks out, Events API cursor)",
			History:     1,
			MaxBytes:    PositionsBucketBytes,
			Storage:     jetstream.FileStorage,
			Replicas:    q.opts.Replicas,
		})
	})
	if err != nil {
		return nil, fmt.Errorf("queue: positions bucket %s: %w", PositionsBucket(q.opts.Stream), err)
	}
	return &Positions{kv: kv}, nil
}

// Get returns key's value and revision; found is false when the key was
// never stored (or was deleted).
func (p *Positions) Get(ctx context.Context, key string) (value string, rev uint64, found bool, err error) {
	e, err := kvGet(ctx, p.kv, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return "", 0, false, nil
	}
	if err != nil {
		return "", 0, false, fmt.Errorf("queue: position %s: %w", key, err)
	}
	return string(e.Value()), e.Revision(), true, nil
}

// Create stores key's first value; ErrPositionMoved if it has one.
func (p *Positions) Create(ctx context.Context, key, value string) (uint64, error) {
	rev, err := p.kv.Create(ctx, key, []byte(value))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, fmt.Errorf("queue: position %s: %w", key, ErrPositionMoved)
	}
	if err != nil {
		return 0, fmt.Errorf("queue: position %s: %w", key, err)
	}
	return rev, nil
}

// Update stores value if key is still at revision rev; else ErrPositionMoved.
func (p *Positions) Update(ctx context.Context, key, value string, rev uint64) (uint64, error) {
	rev, err := p.kv.Update(ctx, key, []byte(value), rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return 0, fmt.Errorf("queue: position %s: %w", key, ErrPositionMoved)
	}
	if err != nil {
		return 0, fmt.Errorf("queue: position %s: %w", key, err)
	}
	return rev, nil
}

// Put stores value whatever key held.
func (p *Positions) Put(ctx context.Context, key, value string) (uint64, error) {
	rev, err := p.kv.Put(ctx, key, []byte(value))
	if err != nil {
		return 0, fmt.Errorf("queue: position %s: %w", key, err)
	}
	return rev, nil
}
