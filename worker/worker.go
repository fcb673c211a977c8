// Package worker applies queued WorkOS events to the store.
//
// The live worker is a durable pull consumer of the queue (queue.Consumer):
// it takes the deliveries in stream order, decodes their events and applies
// them in batches through Apply (applier.go) — the one apply path, which
// Replay, "dsyncd rebuild" and the reconciler use too — and acknowledges
// each delivery only after the transaction that applied it has committed.
// When an event fails to apply, the later events of its directory wait
// behind its retries, so each directory's events apply in stream order;
// other directories carry on. A message that cannot be decoded, or whose
// event keeps failing to apply, is parked in the dead-letter stream with the
// reason; a store that cannot be written (disk full, read-only) is retried
// with backoff, forever, without acknowledging anything.
//
// During a flood that the webhook receiver takes faster when the worker
// steps aside (they share the CPU), the worker pauses after each batch and
// lets the stream absorb the flood, within Options.MaxYieldLag; see
// Options.Inflow and governor.
package worker

import (
	"context"
	"fmt"
	"runtime/metrics"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/storage"
)

// Options configures a Worker. Zero values take the documented defaults.
type Options struct {
	// Durable is the consumer's durable name. Default "dsyncd-worker".
	Durable string
	// StartAfter is the stream sequence a consumer the worker creates
	// starts after: the store's applied position. An existing consumer
	// keeps its own.
	StartAfter uint64
	// Control applies a control message (queue.Delivery.Control set) at its
	// place in the stream, after the events before it and before those
	// after it. It reports retry when the store cannot be written: the
	// control and what follows it are delivered again later. Otherwise the
	// worker acknowledges it. Without Control, a control message is parked.
	Control func(d *queue.Delivery) (retry bool)
	// BatchSize is the most events applied in one transaction. Default 1024.
	BatchSize int
	// MaxAttempts is how many times an event that fails to apply is tried
	// before it is parked. Default 5. Only the event's own failed applies
	// count: not its redeliveries while it waits behind an earlier failing
	// event of its directory, nor retries while the store cannot be written.
	// The count is kept in memory: after a restart a failing event has its
	// attempts afresh.
	MaxAttempts int
	// RetryBackoff is the first wait after a failure; it doubles up to 30s. Default 1s.
	RetryBackoff time.Duration
	// AckWait is how long JetStream waits for an ack before redelivering. Default 30s.
	AckWait time.Duration
	// FetchWait is how long one pull waits for messages. Default 1s.
	FetchWait time.Duration
	// CommitInterval is the least time between two commits while events
	// keep arriving: what arrives meanwhile joins the next batch, so a
	// flood is applied in fewer, larger transactions (each commit writes
	// the tree's touched pages and fsyncs). A full batch, or an event
	// arriving after a quiet spell, commits at once. Default 5ms; negative
	// commits whenever the fetched messages run dry.
	CommitInterval time.Duration
	// Inflow, if set, counts the events arriving upstream (the webhooks
	// received so far). During a flood that the receiver takes faster when
	// the worker steps aside (they share the CPU), the worker yields: after
	// each batch it pauses YieldRatio times as long as the batch took, so
	// that the flood is answered fast and applied later in full batches,
	// the cheapest per event. When to yield is measured in phases of
	// YieldWindow (see governor). When the inflow stops it applies as fast
	// as it can; once the events it applies have waited MaxYieldLag in the
	// stream, it does until less than a batch waits.
	Inflow func() uint64
	// YieldRatio is the pause after each batch while yielding, as a
	// multiple of the time the batch took: with 5 the worker applies at
	// most a sixth of the time. Default 5.
	YieldRatio float64
	// YieldWindow is how long each phase of the yield measurement lasts.
	// Default 1s.
	YieldWindow time.Duration
	// MaxYieldLag bounds how stale yielding may leave the store: the worker
	// stops yielding once the last event it applied had waited this long
	// in the stream. Default 30s; negative never yields.
	MaxYieldLag time.Duration
	// OnBatch, if set, is called after each committed batch (for metrics).
	OnBatch func(BatchReport)
	// OnYield, if set, is called with each pause made while yielding.
	OnYield func(time.Duration)
	// Hurry, if set and true, stops the yielding: the events waiting in
	// the stream near its cap (MaxBytes), which only applying them frees.
	Hurry func() bool
	// CPU returns the CPU-seconds the process left unused and had in all
	// so far: a yielding phase that left more than 15% unused ends the
	// yielding (the CPU is not what limits the receiver). Default: the Go
	// runtime's counters (/cpu/classes/idle and /cpu/classes/total of
	// runtime/metrics), which it updates at each garbage collection — a
	// flood makes several a second; a phase without one reads none unused.
	CPU func() (idle, total float64)
}

// BatchReport describes one committed batch.
type BatchReport struct {
	Counts   Counts
	Parked   int
	Duration time.Duration
	// CreatedAt are the created_at times of the applied events (for event-age metrics).
	CreatedAt []time.Time
}

// Worker consumes the stream and applies events to the store.
type Worker struct {
	q    *queue.Queue
	st   *storage.Store
	log  *zap.Logger
	opts Options

	consuming atomic.Bool
	healthy   atomic.Bool

	// blocked holds, per directory, the event that failed to apply and
	// waits for its retry: the directory's later events wait behind it, so
	// that each directory's events apply in stream order. Only Run's
	// goroutine touches it.
	blocked map[string]blockedEvent
	// failures counts, per stream sequence, the failed applies of an event
	// not yet applied or parked. Only Run's goroutine touches it.
	failures map[uint64]int

	// behind and waited describe the last message of the last committed
	// batch: how many messages were still undelivered after it, and how
	// long it had been in the stream. gov decides the pauses. Only Run's
	// goroutine touches them.
	behind  uint64
	waited  time.Duration
	gov     *governor
	catchUp bool // MaxYieldLag was reached: no pause until the backlog is applied
}

// blockedEvent is an event waiting for a retry.
type blockedEvent struct {
	seq   uint64    // its sequence in the stream
	until time.Time // when it is redelivered
}

// New returns a Worker. It does no I/O.
func New(q *queue.Queue, st *storage.Store, opts Options, log *zap.Logger) *Worker {
	if opts.Durable == "" {
		opts.Durable = "dsyncd-worker"
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = DefaultBatchSize
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = DefaultMaxAttempts
	}
	if opts.RetryBackoff <= 0 {
		opts.RetryBackoff = DefaultRetryBackoff
	}
	if opts.AckWait <= 0 {
		opts.AckWait = DefaultAckWait
	}
	if opts.FetchWait <= 0 {
		opts.FetchWait = time.Second
	}
	if opts.CommitInterval == 0 {
		opts.CommitInterval = 5 * time.Millisecond
	}
	if opts.YieldRatio <= 0 {
		opts.YieldRatio = 5
	}
	if opts.YieldWindow <= 0 {
		opts.YieldWindow = time.Second
	}
	if opts.MaxYieldLag == 0 {
		opts.MaxYieldLag = DefaultMaxYieldLag
	}
	if opts.CPU == nil {
		opts.CPU = processCPU
	}
	gov := newGovernor(opts.YieldRatio, opts.YieldWindow)
	gov.cpu = opts.CPU
	return &Worker{q: q, st: st, log: log.Named("worker"), opts: opts, blocked: map[string]blockedEvent{}, failures: map[uint64]int{}, gov: gov}
}

// processCPU returns the CPU-seconds the Go runtime counts as unused and in
// all (GOMAXPROCS × wall time) since the process started, as of the last
// garbage collection.
func processCPU() (idle, total float64) {
	s := []metrics.Sample{{Name: "/cpu/classes/idle:cpu-seconds"}, {Name: "/cpu/classes/total:cpu-seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64 || s[1].Value.Kind() != metrics.KindFloat64 {
		return 0, 0
	}
	return s[0].Value.Float64(), s[1].Value.Float64()
}

// Consuming reports whether the worker is attached to its consumer and its
// last batch (if any) committed.
func (w *Worker) Consuming() bool { return w.consuming.Load() && w.healthy.Load() }

// Attached reports whether the worker is attached to its consumer, even if
// the store cannot be written for now (events then wait in the stream).
func (w *Worker) Attached() bool { return w.consuming.Load() }

// Run consumes until ctx is cancelled. It finishes the batch being applied
// before returning. It returns nil on cancellation.
func (w *Worker) Run(ctx context.Context) error {
	var cons *queue.Consumer
	backoff := w.opts.RetryBackoff
	for {
		var err error
		cons, err = w.q.ConsumerAfter(ctx, w.opts.Durable, w.opts.AckWait, w.opts.StartAfter)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		w.log.Warn("consumer not ready, retrying", zap.Error(err), zap.Duration("in", backoff))
		if !sleep(ctx, backoff) {
			return nil
		}
		backoff = min(backoff*2, 30*time.Second)
	}
	w.consuming.Store(true)
	w.healthy.Store(true)
	defer w.consuming.Store(false)
	w.log.Info("consuming", zap.String("durable", w.opts.Durable), zap.Int("batch_size", w.opts.BatchSize))
	backoff = w.opts.RetryBackoff
	storeBackoff := w.opts.RetryBackoff
	var lastCommit time.Time
	for ctx.Err() == nil {
		batch, err := cons.Fetch(w.opts.BatchSize, w.opts.FetchWait)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			w.log.Warn("fetch failed, retrying", zap.Error(err), zap.Duration("in", backoff))
			if !sleep(ctx, backoff) {
				return nil
			}
			backoff = min(backoff*2, 30*time.Second)
			continue
		}
		backoff = w.opts.RetryBackoff
		start, before := time.Now(), w.inflow()
		whole := w.behind >= uint64(w.opts.BatchSize) // a full batch waits: apply it in one go
		w.behind, w.waited = 0, 0
		storeDown := w.drain(batch, &lastCommit, whole)
		if !storeDown && !w.yield(ctx, time.Since(start), w.inflow()-before) {
			return nil
		}
		if storeDown {
			// The store cannot be written: back off (up to 30s) rather
			// than spin through the stream.
			if !sleep(ctx, storeBackoff) {
				return nil
			}
			storeBackoff = min(storeBackoff*2, 30*time.Second)
		} else {
			storeBackoff = w.opts.RetryBackoff
		}
		if err := batch.Err(); err != nil && ctx.Err() == nil {
			w.log.Debug("fetch ended", zap.Error(err))
		}
	}
	return nil
}

// drain applies the messages of one fetch as they arrive: when they run dry
// (a trickle lands at once), when a batch is full, and otherwise at most
// every CommitInterval (a flood is batched); with whole, only when the batch
// is full or the fetch ends (a backlog is applied in full batches). It
// reports whether the store could not be written.
func (w *Worker) drain(batch *queue.Batch, lastCommit *time.Time, whole bool) (storeDown bool) {
	var ds []queue.Delivery
	var timer *time.Timer
	var due <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	flush := func() {
		if len(ds) > 0 {
			storeDown = !w.process(ds) || storeDown
			clear(ds) // let go of the messages
			ds = ds[:0]
			*lastCommit = time.Now()
		}
		due = nil
	}
	for {
		d, ok := batch.Next(due)
		if !ok {
			flush() // due, or the fetch ended
			if batch.Ended() {
				return storeDown
			}
			continue
		}
		ds = append(ds, d)
		if len(ds) < w.opts.BatchSize && (batch.Buffered() || whole) {
			continue
		}
		wait := w.opts.CommitInterval - time.Since(*lastCommit)
		if len(ds) >= w.opts.BatchSize || wait <= 0 {
			flush()
		} else if due == nil {
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			due = timer.C
		}
	}
}

// process applies one batch. It never returns an error: every delivery ends
// acknowledged (applied or parked) or left for redelivery (retry later).
// It returns false when the store could not be written. A control message
// splits the batch: the events before it are applied first, then it, then
// those after it.
func (w *Worker) process(ds []queue.Delivery) bool {
	if w.opts.Control != nil {
		for i := range ds {
			if ds[i].Control == "" {
				continue
			}
			if !w.processEvents(ds[:i]) || w.opts.Control(&ds[i]) {
				for j := i; j < len(ds); j++ {
					_ = ds[j].RetryLater(w.opts.RetryBackoff)
				}
				w.healthy.Store(false)
				return false
			}
			w.ack(&ds[i])
			return w.process(ds[i+1:])
		}
	}
	return w.processEvents(ds)
}

// processEvents applies a batch of events (see process).
func (w *Worker) processEvents(ds []queue.Delivery) bool {
	if len(ds) == 0 {
		return true
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var rep BatchReport
	evs := make([]*events.Event, 0, len(ds))
	valid := make([]*queue.Delivery, 0, len(ds))
	for i := range ds {
		d := &ds[i]
		err := d.Err
		var ev *events.Event
		if err == nil {
			ev, err = events.Decode(d.Data)
		}
		if err == nil {
			ev.Stored = d.Stored
		}
		if err != nil {
			// Poison: retrying cannot help.
			rep.Counts.Invalid++
			if w.park(ctx, d, "undecodable event: "+err.Error(), 1) {
				rep.Parked++
			}
			continue
		}
		evs = append(evs, ev)
		valid = append(valid, d)
	}
	if len(evs) == 0 {
		w.report(rep, start)
		return true
	}
	seqs := make([]uint64, len(valid))
	for i, d := range valid {
		seqs[i] = d.Seq
	}
	// settled marks the events the hooks dealt with: held back, or failed
	// (retried later or parked).
	var settled []bool
	settle := func(i int) {
		if settled == nil {
			settled = make([]bool, len(evs))
		}
		settled[i] = true
	}
	res := Apply(w.st, evs, seqs, Hooks{
		// Events of a directory whose earlier event waits for a retry wait too.
		Hold: func(i int) bool {
			if settled != nil && settled[i] {
				return true
			}
			if w.holdBack(evs[i].DirectoryID, valid[i]) {
				settle(i)
				return true
			}
			return false
		},
		// An event at fault: retry it later, or park it once it has used
		// its attempts.
		Failed: func(i int, err error) {
			settle(i)
			w.failed(ctx, valid[i], evs[i], err, &rep)
		},
	})
	last := -1
	for i, o := range res.Outcomes {
		if o == "" {
			continue
		}
		rep.Counts.Add(o)
		last = i
		if o == storage.Future {
			w.parkFuture(ctx, valid[i], evs[i], &rep)
			continue
		}
		rep.CreatedAt = append(rep.CreatedAt, evs[i].CreatedAt)
		w.ack(valid[i])
		w.unblock(evs[i].DirectoryID, valid[i])
	}
	if res.Err != nil {
		// Nothing more was committed. Leave the events for redelivery and
		// tell readiness; the stream keeps them.
		left := 0
		for i, o := range res.Outcomes {
			if o == "" && (settled == nil || !settled[i]) {
				_ = valid[i].RetryLater(w.opts.RetryBackoff)
				left++
			}
		}
		w.healthy.Store(false)
		w.log.Error("store not writable, events stay queued", zap.Error(res.Err), zap.Int("events", left))
		if rep.Parked > 0 || rep.Counts != (Counts{}) {
			w.report(rep, start) // the undecodable ones parked above, or what was applied before
		}
		return false
	}
	if res.Split {
		w.log.Warn("batch failed; applied it in parts to find the events at fault", zap.Int("events", len(evs)))
	} else {
		if last >= 0 {
			w.behind, w.waited = valid[last].Pending, time.Since(valid[last].Stored)
		}
		w.healthy.Store(true)
	}
	w.report(rep, start)
	return true
}

// failed deals with d, whose event ev failed to apply for its own fault
// (err): it is retried later, and the later events of its directory wait
// behind it, until it has used its attempts; then it is parked.
func (w *Worker) failed(ctx context.Context, d *queue.Delivery, ev *events.Event, err error, rep *BatchReport) {
	attempts := w.failures[d.Seq] + 1
	if d.HasSeq {
		w.failures[d.Seq] = attempts
	}
	if attempts < w.opts.MaxAttempts {
		delay := w.opts.RetryBackoff * time.Duration(1<<min(attempts, 5))
		w.log.Warn("event failed to apply, will retry", zap.String("event_id", ev.ID), zap.Int("attempt", attempts),
			zap.Duration("in", delay), zap.Error(err))
		_ = d.RetryLater(delay)
		if d.HasSeq {
			w.blocked[ev.DirectoryID] = blockedEvent{seq: d.Seq, until: time.Now().Add(delay)}
		}
		return
	}
	if w.park(ctx, d, fmt.Sprintf("apply failed after %d attempts: %v", attempts, err), attempts) {
		rep.Parked++
		w.unblock(ev.DirectoryID, d)
	}
}

// inflow reads Options.Inflow (zero without one).
func (w *Worker) inflow() uint64 {
	if w.opts.Inflow == nil {
		return 0
	}
	return w.opts.Inflow()
}

// yield pauses, if the governor says so, after a fetch whose messages
// took took to apply while arrived webhooks came in. Once the last event
// applied had waited MaxYieldLag, it does not until the backlog is applied
// (less than a batch waits). It returns false if ctx ended.
func (w *Worker) yield(ctx context.Context, took time.Duration, arrived uint64) bool {
	if w.opts.Inflow == nil || w.opts.MaxYieldLag < 0 {
		return true
	}
	now, n := time.Now(), w.opts.Inflow()
	if w.waited >= w.opts.MaxYieldLag {
		w.catchUp = true
	} else if w.behind < uint64(w.opts.BatchSize) {
		w.catchUp = false
	}
	if w.catchUp || (w.opts.Hurry != nil && w.opts.Hurry()) {
		w.gov.calm(now, n)
		return true
	}
	d := w.gov.pause(now, took, n, arrived > 0)
	if d <= 0 {
		return true
	}
	if w.opts.OnYield != nil {
		w.opts.OnYield(d)
	}
	return sleep(ctx, d)
}

// holdBack leaves d, an event of directory dir, for redelivery when an
// earlier event of dir waits for a retry, so that it is redelivered after
// that one. It reports whether it did.
func (w *Worker) holdBack(dir string, d *queue.Delivery) bool {
	b, ok := w.blocked[dir]
	if !ok {
		return false
	}
	if time.Now().After(b.until.Add(w.opts.AckWait + 30*time.Second)) {
		// Long overdue: that event left the stream (deleted, aged out).
		delete(w.blocked, dir)
		delete(w.failures, b.seq)
		return false
	}
	if !d.HasSeq || d.Seq <= b.seq {
		return false
	}
	_ = d.RetryLater(max(time.Until(b.until), 0) + w.opts.RetryBackoff)
	return true
}

// unblock releases dir's later events once d, the event they waited
// behind, is applied or parked.
func (w *Worker) unblock(dir string, d *queue.Delivery) {
	if len(w.failures) == 0 && len(w.blocked) == 0 || !d.HasSeq {
		return
	}
	delete(w.failures, d.Seq)
	if b, ok := w.blocked[dir]; ok && d.Seq == b.seq {
		delete(w.blocked, dir)
	}
}

func (w *Worker) report(rep BatchReport, start time.Time) {
	rep.Duration = time.Since(start)
	if w.opts.OnBatch != nil {
		w.opts.OnBatch(rep)
	}
}

func (w *Worker) ack(d *queue.Delivery) {
	if err := d.Ack(); err != nil {
		// The effect is committed; a redelivery will be a duplicate.
		w.log.Debug("ack failed", zap.Error(err))
	}
}

// park moves d to the dead-letter stream and acknowledges it. If parking
// fails the delivery is left for redelivery: it is never dropped.
func (w *Worker) park(ctx context.Context, d *queue.Delivery, reason string, attempts int) bool {
	if err := d.Park(ctx, reason, attempts); err != nil {
		w.log.Error("could not park event, leaving it queued", zap.String("subject", d.Subject), zap.Error(err))
		_ = d.RetryLater(w.opts.RetryBackoff)
		return false
	}
	w.log.Warn("event parked in dead-letter stream", zap.String("subject", d.Subject), zap.String("reason", reason))
	// The store's applied sequence covers it, so that the acknowledgement
	// does not make the store look behind the stream at the next start.
	if d.HasSeq {
		if err := w.st.MarkApplied(d.Seq); err != nil {
			w.log.Warn("could not record the parked event's sequence in the store", zap.Uint64("seq", d.Seq), zap.Error(err))
		}
	}
	w.ack(d)
	return true
}

// parkFuture parks d, whose event ev the store refused as dated in the
// future, in the dead-letter stream with the reason. The directory's later
// events go on: they do not wait behind an event that may never be due.
func (w *Worker) parkFuture(ctx context.Context, d *queue.Delivery, ev *events.Event, rep *BatchReport) {
	reason := fmt.Sprintf("future-dated: created_at %s is later than this node's clock plus webhook.tolerance; not applied",
		ev.CreatedAt.UTC().Format(time.RFC3339Nano))
	if w.park(ctx, d, reason, 1) {
		rep.Parked++
		w.unblock(ev.DirectoryID, d)
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
