// Package worker applies queued WorkOS events to the store.
//
// The live worker is a durable JetStream pull consumer. It takes messages in
// stream order, decodes them and applies them in batches through
// storage.Store.Apply — the same path Replay uses for files — and
// acknowledges each message only after the transaction that applied it has
// committed. When an event fails to apply, the later events of its directory
// wait behind its retries, so each directory's events apply in stream order;
// other directories carry on. A message that cannot be decoded, or whose event keeps failing to
// apply, is parked in the dead-letter stream with the reason; a store that
// cannot be written (disk full, read-only) is retried with backoff, forever,
// without acknowledging anything.
//
// During a flood that the webhook receiver takes faster when the worker
// steps aside (they share the CPU), the worker pauses after each batch and
// lets the stream absorb the flood, within Options.MaxYieldLag; see
// Options.Inflow and governor.
package worker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime/metrics"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/storage"
)

// Options configures a Worker. Zero values take the documented defaults.
type Options struct {
	// Durable is the consumer's durable name. Default "dsyncd-worker".
	Durable string
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
		opts.BatchSize = 1024
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 5
	}
	if opts.RetryBackoff <= 0 {
		opts.RetryBackoff = time.Second
	}
	if opts.AckWait <= 0 {
		opts.AckWait = 30 * time.Second
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
		opts.MaxYieldLag = 30 * time.Second
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
	var cons jetstream.Consumer
	backoff := w.opts.RetryBackoff
	for {
		var err error
		cons, err = w.q.Consumer(ctx, w.opts.Durable, w.opts.AckWait)
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
		batch, err := cons.Fetch(w.opts.BatchSize, jetstream.FetchMaxWait(w.opts.FetchWait))
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
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
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
func (w *Worker) drain(batch jetstream.MessageBatch, lastCommit *time.Time, whole bool) (storeDown bool) {
	var msgs []jetstream.Msg
	var timer *time.Timer
	var due <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	flush := func() {
		if len(msgs) > 0 {
			storeDown = !w.process(msgs) || storeDown
			msgs = msgs[:0]
			*lastCommit = time.Now()
		}
		due = nil
	}
	in := batch.Messages()
	for in != nil || len(msgs) > 0 {
		select {
		case m, ok := <-in:
			if !ok {
				in = nil
				flush()
				continue
			}
			msgs = append(msgs, m)
			if len(msgs) < w.opts.BatchSize && (len(in) > 0 || whole) {
				continue
			}
			wait := w.opts.CommitInterval - time.Since(*lastCommit)
			if len(msgs) >= w.opts.BatchSize || wait <= 0 {
				flush()
			} else if due == nil {
				if timer == nil {
					timer = time.NewTimer(wait)
				} else {
					timer.Reset(wait)
				}
				due = timer.C
			}
		case <-due:
			flush()
		}
	}
	return storeDown
}

// process applies one batch. It never returns an error: every message ends
// acknowledged (applied or parked) or left for redelivery (nak with delay).
// It returns false when the store could not be written at all.
func (w *Worker) process(msgs []jetstream.Msg) bool {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var rep BatchReport
	evs := make([]*events.Event, 0, len(msgs))
	valid := make([]jetstream.Msg, 0, len(msgs))
	for _, m := range msgs {
		ev, err := decode(m)
		if err != nil {
			// Poison: retrying cannot help.
			rep.Counts.Invalid++
			if w.park(ctx, m, "undecodable event: "+err.Error(), 1) {
				rep.Parked++
			}
			continue
		}
		evs = append(evs, ev)
		valid = append(valid, m)
	}
	// Events of a directory whose earlier event waits for a retry wait too.
	kept := 0
	for i, m := range valid {
		if w.holdBack(evs[i].DirectoryID, m) {
			continue
		}
		evs[kept], valid[kept] = evs[i], m
		kept++
	}
	evs, valid = evs[:kept], valid[:kept]
	if len(evs) == 0 {
		w.report(rep, start)
		return true
	}
	outs, err := w.st.ApplyAt(evs, lastSeq(valid))
	if err == nil {
		for i, m := range valid {
			rep.Counts.Add(outs[i])
			if outs[i] == storage.Future {
				w.parkFuture(ctx, m, evs[i], &rep)
				continue
			}
			rep.CreatedAt = append(rep.CreatedAt, evs[i].CreatedAt)
			w.ack(m)
			w.unblock(evs[i].DirectoryID, m)
		}
		if md, err := valid[len(valid)-1].Metadata(); err == nil {
			w.behind, w.waited = md.NumPending, time.Since(md.Timestamp)
		}
		w.healthy.Store(true)
		w.report(rep, start)
		return true
	}
	if environmental(err) {
		// Nothing was committed. Leave every message for redelivery and
		// tell readiness; the stream keeps them.
		w.healthy.Store(false)
		w.log.Error("store not writable, events stay queued", zap.Error(err), zap.Int("events", len(evs)))
		for _, m := range valid {
			_ = m.NakWithDelay(w.opts.RetryBackoff)
		}
		if rep.Parked > 0 || rep.Counts.Invalid > 0 {
			w.report(rep, start) // the undecodable ones parked above
		}
		return false
	}
	// A batch failed for a reason tied to its events: apply one by one to
	// find the culprit(s), and park those that have used their attempts.
	w.log.Warn("batch failed, applying its events one by one", zap.Error(err), zap.Int("events", len(evs)))
	for i, m := range valid {
		dir := evs[i].DirectoryID
		if w.holdBack(dir, m) {
			continue
		}
		outs, err := w.st.ApplyAt(evs[i:i+1], lastSeq(valid[i:i+1]))
		if err == nil && outs[0] == storage.Future {
			rep.Counts.Add(outs[0])
			w.parkFuture(ctx, m, evs[i], &rep)
			continue
		}
		if err == nil {
			rep.Counts.Add(outs[0])
			rep.CreatedAt = append(rep.CreatedAt, evs[i].CreatedAt)
			w.ack(m)
			w.unblock(dir, m)
			continue
		}
		seq, hasSeq := streamSeq(m)
		attempts := w.failures[seq]
		if !environmental(err) {
			attempts++ // a store that cannot be written is not the event's failure
		}
		if hasSeq && attempts > 0 {
			w.failures[seq] = attempts
		}
		if environmental(err) || attempts < w.opts.MaxAttempts {
			delay := w.opts.RetryBackoff * time.Duration(1<<min(max(attempts, 1), 5))
			w.log.Warn("event failed to apply, will retry", zap.String("event_id", evs[i].ID), zap.Int("attempt", attempts),
				zap.Duration("in", delay), zap.Error(err))
			_ = m.NakWithDelay(delay)
			if hasSeq {
				w.blocked[dir] = blockedEvent{seq: seq, until: time.Now().Add(delay)}
			}
			continue
		}
		if w.park(ctx, m, fmt.Sprintf("apply failed after %d attempts: %v", attempts, err), attempts) {
			rep.Parked++
			w.unblock(dir, m)
		}
	}
	w.report(rep, start)
	return true
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

// holdBack naks m, an event of directory dir, when an earlier event of dir
// waits for a retry, so that it is redelivered after that one. It reports
// whether it did.
func (w *Worker) holdBack(dir string, m jetstream.Msg) bool {
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
	seq, ok := streamSeq(m)
	if !ok || seq <= b.seq {
		return false
	}
	_ = m.NakWithDelay(max(time.Until(b.until), 0) + w.opts.RetryBackoff)
	return true
}

// unblock releases dir's later events once m, the event they waited
// behind, is applied or parked.
func (w *Worker) unblock(dir string, m jetstream.Msg) {
	if len(w.failures) == 0 && len(w.blocked) == 0 {
		return // the usual case: spare parsing m's metadata
	}
	seq, ok := streamSeq(m)
	if !ok {
		return
	}
	delete(w.failures, seq)
	if b, ok := w.blocked[dir]; ok && seq == b.seq {
		delete(w.blocked, dir)
	}
}

// lastSeq is the highest stream sequence of msgs (0 if none is known): the
// store records it with their effect.
func lastSeq(msgs []jetstream.Msg) uint64 {
	var last uint64
	for _, m := range msgs {
		if seq, ok := streamSeq(m); ok {
			last = max(last, seq)
		}
	}
	return last
}

func streamSeq(m jetstream.Msg) (uint64, bool) {
	md, err := m.Metadata()
	if err != nil {
		return 0, false
	}
	return md.Sequence.Stream, true
}

func (w *Worker) report(rep BatchReport, start time.Time) {
	rep.Duration = time.Since(start)
	if w.opts.OnBatch != nil {
		w.opts.OnBatch(rep)
	}
}

func (w *Worker) ack(m jetstream.Msg) {
	if err := m.Ack(); err != nil {
		// The effect is committed; a redelivery will be a duplicate.
		w.log.Debug("ack failed", zap.Error(err))
	}
}

// park moves m to the dead-letter stream and acknowledges it. If parking
// fails the message is left for redelivery: it is never dropped.
func (w *Worker) park(ctx context.Context, m jetstream.Msg, reason string, attempts int) bool {
	if err := w.q.Park(ctx, m, reason, attempts); err != nil {
		w.log.Error("could not park event, leaving it queued", zap.String("subject", m.Subject()), zap.Error(err))
		_ = m.NakWithDelay(w.opts.RetryBackoff)
		return false
	}
	w.log.Warn("event parked in dead-letter stream", zap.String("subject", m.Subject()), zap.String("reason", reason))
	// The store's applied sequence covers it, so that the acknowledgement
	// does not make the store look behind the stream at the next start.
	if seq, ok := streamSeq(m); ok {
		if err := w.st.MarkApplied(seq); err != nil {
			w.log.Warn("could not record the parked event's sequence in the store", zap.Uint64("seq", seq), zap.Error(err))
		}
	}
	w.ack(m)
	return true
}

// parkFuture parks m, whose event ev the store refused as dated in the
// future, in the dead-letter stream with the reason. The directory's later
// events go on: they do not wait behind an event that may never be due.
func (w *Worker) parkFuture(ctx context.Context, m jetstream.Msg, ev *events.Event, rep *BatchReport) {
	reason := fmt.Sprintf("future-dated: created_at %s is later than this node's clock plus webhook.tolerance; not applied",
		ev.CreatedAt.UTC().Format(time.RFC3339Nano))
	if w.park(ctx, m, reason, 1) {
		rep.Parked++
		w.unblock(ev.DirectoryID, m)
	}
}

// decode decodes a stream message's event: its data as the queue stored it
// (see queue.Data), then the event's JSON.
func decode(m jetstream.Msg) (*events.Event, error) {
	data, err := queue.Data(m.Headers(), m.Data())
	if err != nil {
		return nil, err
	}
	return events.Decode(data)
}

// environmental reports whether err comes from the store's environment
// (disk full, read-only file system, closed store) rather than from the
// events: such errors are retried without counting attempts.
func environmental(err error) bool {
	var errno syscall.Errno
	var pe *fs.PathError
	return errors.As(err, &errno) || errors.As(err, &pe) || errors.Is(err, storage.ErrClosed) || errors.Is(err, os.ErrPermission)
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
