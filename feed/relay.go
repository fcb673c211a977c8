package feed

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/storage"
)

// Message is one change record for the stream.
type Message struct {
	Seq            uint64
	OrganizationID string
	UserID         string // "" for an organisation's own records
	Data           []byte
}

// Stream is where the relay publishes: queue.ChangeStream.
type Stream interface {
	// LastChange returns the seq of the last record the stream holds (0: none).
	LastChange(ctx context.Context) (uint64, error)
	// Publish stores msgs in order and returns how many, from the first, it holds.
	Publish(ctx context.Context, msgs []Message) (int, error)
}

// RelayOptions configures a Relay.
type RelayOptions struct {
	// Batch is the most records published at once. Default 256.
	Batch int
	// MinBackoff and MaxBackoff bound the wait after a failure. Defaults 100ms and 30s.
	MinBackoff, MaxBackoff time.Duration
}

// Relay copies the change feed to a JetStream stream, in order. Where it
// goes on from is the stream's own last record (read at start and after
// every failure): a relay killed at any point publishes nothing twice,
// and JetStream's message ids (the seqs) catch a publish whose ack was lost.
type Relay struct {
	src    Source
	stream Stream
	opts   RelayOptions
	log    *zap.Logger

	position atomic.Uint64 // the last seq the stream holds
	failures atomic.Uint64
	gaps     atomic.Uint64 // seqs past the retention before they were relayed
	failing  atomic.Bool
	active   atomic.Bool // Run is relaying
}

// NewRelay returns a relay; Run starts it.
func NewRelay(src Source, stream Stream, opts RelayOptions, log *zap.Logger) *Relay {
	if opts.Batch <= 0 {
		opts.Batch = 256
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	return &Relay{src: src, stream: stream, opts: opts, log: log.Named("feed.relay")}
}

// RelayStatus is what the relay has done, for metrics.
type RelayStatus struct {
	Position uint64 // the last seq relayed
	Failures uint64 // failed publishes
	Gaps     uint64 // seqs pruned from the feed before they were relayed
	Failing  bool   // the last attempt failed
	// Active says Run is relaying (dsyncd runs it while the node leads).
	Active bool
}

// Status returns the relay's counters.
func (r *Relay) Status() RelayStatus {
	return RelayStatus{Position: r.position.Load(), Failures: r.failures.Load(), Gaps: r.gaps.Load(), Failing: r.failing.Load(),
		Active: r.active.Load()}
}

// Run relays until ctx ends. It may be called again after it returned:
// each run goes on from the stream's last record.
func (r *Relay) Run(ctx context.Context) {
	r.active.Store(true)
	defer r.active.Store(false)
	bo := backoff{min: r.opts.MinBackoff, max: r.opts.MaxBackoff}
	known := false
	var pos uint64
	fail := func(what string, err error) {
		r.failures.Add(1)
		r.failing.Store(true)
		known = false
		d := bo.next()
		if ctx.Err() == nil {
			r.log.Warn("change relay: "+what+"; retrying", zap.Error(err), zap.Uint64("after", pos), zap.Duration("in", d))
		}
		sleep(ctx, d)
	}
	msgs := make([]Message, 0, r.opts.Batch)
	for ctx.Err() == nil {
		if !known {
			p, err := r.stream.LastChange(ctx)
			if err != nil {
				fail("read the stream's last change", err)
				continue
			}
			pos, known = p, true
			r.position.Store(pos)
		}
		woken := r.src.ChangesNotify()
		page, next, gap, err := readPage(r.src, pos, r.opts.Batch)
		if errors.Is(err, storage.ErrChangesGone) {
			r.gaps.Add(gap)
			r.log.Error("change relay: the feed no longer has what follows the stream's last change: the stream has a gap (products resync from the export)",
				zap.Uint64("stream_last", pos), zap.Uint64("goes_on_after", next), zap.Error(err))
			pos = next
			continue
		}
		if errors.Is(err, storage.ErrClosed) {
			return
		}
		if err != nil {
			fail("read the feed", err)
			continue
		}
		if len(page.Changes) == 0 {
			select {
			case <-woken:
			case <-ctx.Done():
				return
			}
			continue
		}
		msgs = msgs[:0]
		for _, c := range page.Changes {
			msgs = append(msgs, Message{Seq: c.Seq, OrganizationID: c.OrganizationID, UserID: c.UserID, Data: c.JSON})
		}
		n, err := r.stream.Publish(ctx, msgs)
		if n > 0 {
			pos = msgs[n-1].Seq
			r.position.Store(pos)
		}
		if err != nil {
			fail("publish", err)
			continue
		}
		r.failing.Store(false)
		bo.reset()
	}
}
