package queue

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Usage is how full the main stream is, and how far its durable consumer
// acknowledged it.
type Usage struct {
	Bytes, MaxBytes  uint64 // MaxBytes 0: no cap
	Msgs             uint64
	FirstSeq         uint64
	LastSeq          uint64
	AckFloor         uint64 // every message at or below it is acknowledged
	ConsumerAttached bool   // the durable consumer exists
}

// Unacked is the number of messages above the ack floor.
func (u Usage) Unacked() uint64 {
	if u.LastSeq <= u.AckFloor {
		return 0
	}
	return u.LastSeq - max(u.AckFloor, u.FirstSeq-min(u.FirstSeq, 1))
}

// BytesAfter estimates the bytes of the messages above seq, at the stream's
// mean message size.
func (u Usage) BytesAfter(seq uint64) uint64 {
	if u.Msgs == 0 || seq >= u.LastSeq {
		return 0
	}
	above := u.LastSeq - max(seq, u.FirstSeq-min(u.FirstSeq, 1))
	return uint64(float64(u.Bytes) * float64(min(above, u.Msgs)) / float64(u.Msgs))
}

// Usage reports the main stream's size and durable's ack floor.
func (q *Queue) Usage(ctx context.Context, durable string) (Usage, error) {
	st, err := q.state()
	if err != nil {
		return Usage{}, err
	}
	info, err := st.main.Info(ctx)
	if err != nil {
		return Usage{}, fmt.Errorf("queue: stream %s: %w", q.opts.Stream, err)
	}
	u := Usage{Bytes: info.State.Bytes, Msgs: info.State.Msgs, FirstSeq: info.State.FirstSeq, LastSeq: info.State.LastSeq}
	if info.Config.MaxBytes > 0 {
		u.MaxBytes = uint64(info.Config.MaxBytes)
	}
	c, err := st.main.Consumer(ctx, durable)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
	case err != nil:
		return Usage{}, fmt.Errorf("queue: consumer %s: %w", durable, err)
	default:
		u.AckFloor, u.ConsumerAttached = c.CachedInfo().AckFloor.Stream, true
	}
	return u, nil
}

// PurgeThrough removes the main stream's messages at or below seq, but never
// one durable, or any other durable consumer of the stream (the other nodes'
// workers), has not acknowledged: at most through the lowest ack floor. It
// returns how many messages went. Dead letters (their own stream) stay.
func (q *Queue) PurgeThrough(ctx context.Context, seq uint64, durable string) (uint64, error) {
	st, err := q.state()
	if err != nil {
		return 0, err
	}
	u, err := q.Usage(ctx, durable)
	if err != nil {
		return 0, err
	}
	seq = min(seq, u.AckFloor)
	// Nor one another durable consumer (another node's worker, in a
	// cluster) has not acknowledged.
	lister := st.main.ListConsumers(ctx)
	for ci := range lister.Info() {
		if ci.Config.Durable != "" {
			seq = min(seq, ci.AckFloor.Stream)
		}
	}
	if err := lister.Err(); err != nil {
		return 0, fmt.Errorf("queue: consumers of %s: %w", q.opts.Stream, err)
	}
	if seq == 0 || seq < u.FirstSeq || u.Msgs == 0 {
		return 0, nil
	}
	if err := st.main.Purge(ctx, jetstream.WithPurgeSequence(seq+1)); err != nil {
		return 0, fmt.Errorf("queue: purge %s through %d: %w", q.opts.Stream, seq, err)
	}
	after, err := st.main.Info(ctx)
	if err != nil {
		return 0, nil
	}
	return u.Msgs - min(u.Msgs, after.State.Msgs), nil
}
