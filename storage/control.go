package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dsyncd/dsyncd/mapping"
)

// ControlKind names a decision that changes the store besides WorkOS's
// events. Each travels through the stream as a control message, so that
// every node that applies the stream applies it at the same position.
type ControlKind string

// The control kinds.
const (
	// ControlHold approves (Approve) or rejects an open hold (Hold).
	ControlHold ControlKind = "hold"
	// ControlResume resumes a paused organisation (Organization).
	ControlResume ControlKind = "resume"
	// ControlMapping makes Mapping the mapping in force, with OnUnmap for
	// the group rules it removes.
	ControlMapping ControlKind = "mapping"
	// ControlDrop records that an operator dropped a dead letter (DeadLetter).
	ControlDrop ControlKind = "dlq_drop"
)

// ControlKinds lists every kind, in the order of the constants.
var ControlKinds = []ControlKind{ControlHold, ControlResume, ControlMapping, ControlDrop}

// Control is a decision as the stream carries it (JSON).
type Control struct {
	// ID identifies this decision (the message id in the stream): the node
	// that published it waits for it by this id.
	ID   string      `json:"id"`
	Kind ControlKind `json:"kind"`
	// Node names the node that published it (for the log).
	Node string `json:"node,omitempty"`

	Hold         uint64          `json:"hold,omitempty"`
	Approve      bool            `json:"approve,omitempty"`
	Organization string          `json:"organization,omitempty"`
	Mapping      *mapping.Config `json:"mapping,omitempty"`
	OnUnmap      string          `json:"on_unmap,omitempty"`
	DeadLetter   *AuditEntry     `json:"dead_letter,omitempty"`

	// At is when the stream stored the control (set by its reader, not
	// carried in the JSON): what the decision does is dated by it, so that
	// every node dates it alike. Zero: the store's clock.
	At time.Time `json:"-"`
}

// ErrBadControl is wrapped by DecodeControl's and ApplyControl's errors
// about a control that cannot be applied as written.
var ErrBadControl = errors.New("invalid control message")

// DecodeControl decodes a control message.
func DecodeControl(data []byte) (Control, error) {
	var c Control
	if err := json.Unmarshal(data, &c); err != nil {
		return c, fmt.Errorf("%w: %v", ErrBadControl, err)
	}
	return c, nil
}

// ErrControlApplied is wrapped by ApplyControl's error for a control (by
// its ID) this store applied, or refused, before.
var ErrControlApplied = errors.New("control applied before")

// ApplyControl applies c. The error of a decision that cannot be taken
// (the hold is closed, the organisation not paused, a removed rule without
// on_unmap, a malformed control) is its answer, the same on every node; the
// caller records the control's stream position (MarkApplied) then as after
// a success, and only leaves it for later when the store cannot be written.
//
// A control comes once per node in stream order, but its delivery can come
// again (its acknowledgement lost, or the consumer restarted at its ack
// floor), after later ones: the store remembers the ID of each control it
// applied or refused, as it remembers events' (for the processed
// retention), and refuses it again with ErrControlApplied, changing
// nothing. A crash between a control's effect and that record lets it be
// applied again, as every control was before.
func (s *Store) ApplyControl(c Control) (*Plan, error) {
	if c.ID != "" {
		var seen bool
		err := s.db.View(func(tx *bolt.Tx) error {
			seen = tx.Bucket(bktProcessed).Get([]byte(c.ID)) != nil
			return nil
		})
		if err != nil {
			return nil, err
		}
		if seen {
			return nil, fmt.Errorf("%w: %s", ErrControlApplied, c.ID)
		}
	}
	plan, err := s.applyControl(c)
	if c.ID != "" && !writeFailure(err) {
		at := c.At
		if at.IsZero() {
			at = s.opts.Now()
		}
		if merr := s.db.Update(func(tx *bolt.Tx) error { return s.markProcessed(newTxn(tx), c.ID, at) }); merr != nil {
			return plan, merr
		}
	}
	return plan, err
}

// writeFailure reports whether err says the store could not be written
// (rather than answering the control).
func writeFailure(err error) bool {
	var errno syscall.Errno
	var pe *fs.PathError
	return errors.As(err, &errno) || errors.As(err, &pe) || errors.Is(err, ErrClosed) || errors.Is(err, bolt.ErrDatabaseNotOpen)
}

func (s *Store) applyControl(c Control) (*Plan, error) {
	switch c.Kind {
	case ControlHold:
		return s.decideHold(c.At, c.Hold, c.Approve, false)
	case ControlResume:
		return s.resumeAt(c.At, c.Organization, false)
	case ControlMapping:
		if c.Mapping == nil {
			return nil, fmt.Errorf("%w: mapping control without a mapping", ErrBadControl)
		}
		return s.applyMapping(c.At, *c.Mapping, c.OnUnmap, false)
	case ControlDrop:
		if c.DeadLetter == nil {
			return nil, fmt.Errorf("%w: drop control without its audit entry", ErrBadControl)
		}
		e := *c.DeadLetter
		if e.Time.IsZero() {
			e.Time = c.At // zero: RecordAudit dates it
		}
		return &Plan{Organizations: []OrgPlan{}}, s.RecordAudit(e)
	}
	return nil, fmt.Errorf("%w: unknown kind %q", ErrBadControl, c.Kind)
}
