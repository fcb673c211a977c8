package worker

import (
	"errors"
	"io/fs"
	"os"
	"syscall"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/storage"
)

// This file is the one apply path: the live worker, Replay, "dsyncd
// rebuild" and the reconciler's corrections all apply events through Apply,
// and tell a store that cannot be written from an event at fault with
// Classify.

// Verdict is what to do about an error of applying events (Classify).
type Verdict int

const (
	// RetryLater: the store cannot be written for now (disk full,
	// read-only file system, permissions, closed store). Not the events'
	// fault: apply them again later, without counting an attempt against
	// them; nothing of the failed transaction was committed.
	RetryLater Verdict = iota + 1
	// Park: the event's own fault (the store cannot take it). Retrying may
	// not help: the live worker retries it up to Options.MaxAttempts, then
	// parks it as a dead letter; rebuild reports and skips it.
	Park
)

func (v Verdict) String() string {
	switch v {
	case RetryLater:
		return "retry later"
	case Park:
		return "park"
	}
	return "none"
}

// Classify says whether err, from applying events, is the store's
// environment (RetryLater) or the events' fault (Park). nil is neither
// (0).
func Classify(err error) Verdict {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	var pe *fs.PathError
	if errors.As(err, &errno) || errors.As(err, &pe) || errors.Is(err, storage.ErrClosed) || errors.Is(err, os.ErrPermission) {
		return RetryLater
	}
	return Park
}

// Store is what Apply applies through; *storage.Store implements it.
type Store interface {
	// ApplyAt applies evs in one transaction and records seq (0: none) as
	// the last stream sequence applied, in the same transaction.
	ApplyAt(evs []*events.Event, seq uint64) ([]storage.Outcome, error)
}

// Hooks steer how Apply looks for the events at fault of a failed batch.
// Both are optional.
type Hooks struct {
	// Hold is asked, for each event (by its index in the batch), before a
	// transaction holding it is tried: true leaves the event out, neither
	// applied nor failed (the worker holds back the events of a directory
	// whose earlier event failed; Replay stops at the first failure).
	Hold func(i int) bool
	// Failed is told each event found at fault (Classify says Park), in
	// batch order, as soon as it is found: Hold may depend on it.
	Failed func(i int, err error)
}

// Result is what Apply did.
type Result struct {
	// Outcomes holds one outcome per event of the batch: "" for an event
	// not applied (failed, held, or left because the store is unavailable).
	Outcomes []storage.Outcome
	// Split reports that the batch's single transaction failed, and the
	// events were applied in parts to find those at fault.
	Split bool
	// Err is set when the store could not be written (Classify says
	// RetryLater): the events without an outcome that were neither held nor
	// failed were left, to be applied again later.
	Err error
}

// Apply applies evs, in order, through st, in one transaction that also
// records the highest of seqs (the events' stream sequences; nil outside
// the stream). When that transaction fails because of one or more events,
// Apply finds them: it splits the batch in halves and applies each (the
// earlier first) the same way, down to single events, so that every event
// not at fault is applied, in order, and each event at fault is reported to
// hooks.Failed once. When the store cannot be written Apply stops at once.
func Apply(st Store, evs []*events.Event, seqs []uint64, hooks Hooks) Result {
	var err error
	if hooks.Hold == nil {
		// The usual case, and everything but the live worker: one
		// transaction, no index bookkeeping.
		outs, e := st.ApplyAt(evs, maxSeq(seqs, nil))
		if err = e; err == nil {
			return Result{Outcomes: outs}
		}
		if Classify(err) == RetryLater {
			return Result{Outcomes: make([]storage.Outcome, len(evs)), Err: err}
		}
	}
	a := &split{st: st, evs: evs, seqs: seqs, hooks: hooks, res: Result{Outcomes: make([]storage.Outcome, len(evs))}}
	idx := make([]int, len(evs))
	for i := range idx {
		idx[i] = i
	}
	if hooks.Hold == nil {
		a.known = err // the whole batch was tried above
	}
	a.apply(idx)
	return a.res
}

// split is one Apply that looks for the events at fault.
type split struct {
	st    Store
	evs   []*events.Event
	seqs  []uint64
	hooks Hooks
	res   Result
	known error // the error of the whole batch, tried already: split it at once
}

// apply applies the events of idx (indexes into evs, ascending) in one
// transaction, or in halves when that fails because of an event. It
// returns false once the store could not be written.
func (a *split) apply(idx []int) bool {
	if a.hooks.Hold != nil {
		kept := make([]int, 0, len(idx))
		for _, i := range idx {
			if !a.hooks.Hold(i) {
				kept = append(kept, i)
			}
		}
		idx = kept
	}
	if len(idx) == 0 {
		return true
	}
	err := a.known
	a.known = nil
	if err == nil {
		evs := a.evs
		if len(idx) < len(evs) {
			evs = make([]*events.Event, len(idx))
			for k, i := range idx {
				evs[k] = a.evs[i]
			}
		}
		var outs []storage.Outcome
		outs, err = a.st.ApplyAt(evs, maxSeq(a.seqs, idx))
		if err == nil {
			for k, i := range idx {
				a.res.Outcomes[i] = outs[k]
			}
			return true
		}
		if Classify(err) == RetryLater {
			a.res.Err = err
			return false
		}
	}
	a.res.Split = true
	if len(idx) == 1 {
		if a.hooks.Failed != nil {
			a.hooks.Failed(idx[0], err)
		}
		return true
	}
	mid := len(idx) / 2
	return a.apply(idx[:mid]) && a.apply(idx[mid:])
}

// maxSeq is the highest of seqs (of those at idx, when idx is not nil), 0
// for none: the store records it with the events' effect.
func maxSeq(seqs []uint64, idx []int) uint64 {
	var m uint64
	if idx == nil {
		for _, s := range seqs {
			m = max(m, s)
		}
		return m
	}
	if seqs == nil {
		return 0
	}
	for _, i := range idx {
		m = max(m, seqs[i])
	}
	return m
}
