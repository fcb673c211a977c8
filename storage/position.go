package storage

import (
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// ErrDamaged is wrapped by Open's error when the file is not a usable store
// (truncated, overwritten, its meta pages invalid) and by Check's.
var ErrDamaged = errors.New("store damaged")

// keyAppliedSeq, in the meta bucket, holds the highest stream sequence the
// store applied (8 bytes big-endian): ApplyAt writes it in the transaction
// that applies the events, so that it can never be ahead of, nor behind, the
// state it describes.
var keyAppliedSeq = []byte("applied_seq")

// AppliedSeq returns the highest stream sequence recorded by ApplyAt or
// MarkApplied; ok is false when none was (a new store, or one written by a
// dsyncd that did not record it).
func (s *Store) AppliedSeq() (seq uint64, ok bool, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bktMeta).Get(keyAppliedSeq)
		switch {
		case v == nil:
			return nil
		case len(v) != 8:
			return fmt.Errorf("%w: meta %s holds %d bytes, not 8", ErrDamaged, keyAppliedSeq, len(v))
		}
		seq, ok = binary.BigEndian.Uint64(v), true
		return nil
	})
	return seq, ok, err
}

// MarkApplied records seq as applied (if higher than what is recorded) for a
// stream message the worker acknowledged without applying it (parked in
// the dead-letter stream), or, at start-up, the position of a store that
// predates the record.
func (s *Store) MarkApplied(seq uint64) error {
	err := s.db.Update(func(tx *bolt.Tx) error { return recordAppliedSeq(tx, seq) })
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// recordAppliedSeq raises the recorded applied sequence to seq (0: nothing).
// Batches come in stream order but a retried event may come after later
// ones: the record only goes up.
func recordAppliedSeq(tx *bolt.Tx, seq uint64) error {
	if seq == 0 {
		return nil
	}
	b := tx.Bucket(bktMeta)
	if v := b.Get(keyAppliedSeq); len(v) == 8 && binary.BigEndian.Uint64(v) >= seq {
		return nil
	}
	return b.Put(keyAppliedSeq, u64(seq))
}

// damaged reports whether err from bbolt means the file is not a usable
// store (as opposed to a missing permission or a lock held elsewhere).
func damaged(err error) bool {
	return errors.Is(err, bolt.ErrInvalid) || errors.Is(err, bolt.ErrChecksum) ||
		errors.Is(err, bolt.ErrVersionMismatch) || errors.Is(err, bolt.ErrInvalidMapping)
}
