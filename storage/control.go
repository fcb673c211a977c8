package storage

import (
	"encoding/json"
	"errors"
	"fmt"
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

// ErrControlApplied is wrapped by ApplyControl's error for a control that
// this store recorded as applied or refused (MarkControlApplied).
var ErrControlApplied = errors.New("control applied before")

// ApplyControl applies c. The error of a decision that cannot be taken
// (the hold is closed, the organisation not paused, a removed rule without
// on_unmap, a malformed control) is its answer, the same on every node; the
// caller records the control (MarkControlApplied) then as after a success,
// and only leaves it for later when the store cannot be written.
//
// A control comes once per node in stream order, but its delivery can come
// again (its acknowledgement lost, or the consumer restarted at its ack
// floor), after later ones. A control recorded by MarkControlApplied is
// refused with ErrControlApplied and changes nothing: an older mapping
// delivered again does not come back into force, a refused decision
// delivered again after the state changed is not taken.
func (s *Store) ApplyControl(c Control) (*Plan, error) {
	if c.ID != "" {
		var seen bool
		err := s.db.View(func(tx *bolt.Tx) error {
			seen = tx.Bucket(bktProcessed).Get([]byte(c.ID)) != nil
			return nil
		})
		if errors.Is(err, bolt.ErrDatabaseNotOpen) {
			return nil, ErrClosed
		}
		if err != nil {
			return nil, err
		}
		if seen {
			return nil, fmt.Errorf("%w: %s", ErrControlApplied, c.ID)
		}
	}
	return s.applyControl(c)
}

// MarkControlApplied records, in one transaction, that the control with id
// (its Control.ID; "" records none) was applied or refused, dated at (zero:
// now), and seq as the last stream sequence applied (0: none). Its id is
// remembered as events' ids are, for the processed retention.
func (s *Store) MarkControlApplied(id string, seq uint64, at time.Time) error {
	if at.IsZero() {
		at = s.opts.Now()
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		if id != "" {
			if err := s.markProcessed(newTxn(tx), id, at); err != nil {
				return err
			}
		}
		return recordAppliedSeq(tx, seq)
	})
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
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
