package main

import (
	"context"
	"errors"
	"time"

	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/server"
	"github.com/dsyncd/dsyncd/storage"
)

// dlqStore is the dead-letter stream as /v1/dlq and the offline dlq
// commands use it (server.DeadLetters): the queue's dead letters, and the
// store for the audit entry of a drop.
type dlqStore struct {
	q  *queue.Queue
	st *storage.Store
	// ctl, when set (serve), sends the drop's audit entry through the
	// stream, so that every node records it.
	ctl *controls
}

var _ server.DeadLetters = dlqStore{}

func (d dlqStore) List(ctx context.Context) ([]server.DeadLetter, error) {
	dls, err := d.q.DeadLetters(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]server.DeadLetter, 0, len(dls))
	for _, dl := range dls {
		out = append(out, server.DeadLetter(dl))
	}
	return out, nil
}

func (d dlqStore) Get(ctx context.Context, seq uint64) (server.DeadLetter, error) {
	dl, err := d.q.DeadLetter(ctx, seq)
	return server.DeadLetter(dl), notFound(err)
}

func (d dlqStore) Replay(ctx context.Context, seq uint64) error {
	return notFound(d.q.ReplayDeadLetter(ctx, seq))
}

func (d dlqStore) ReplayAll(ctx context.Context) ([]uint64, error) {
	dls, err := d.q.DeadLetters(ctx)
	if err != nil {
		return nil, err
	}
	done := []uint64{}
	for _, dl := range dls {
		if err := d.q.ReplayDeadLetter(ctx, dl.Seq); err != nil {
			return done, notFound(err)
		}
		done = append(done, dl.Seq)
	}
	return done, nil
}

// Drop deletes the dead letter and records the drop in the audit trail.
func (d dlqStore) Drop(ctx context.Context, seq uint64) error {
	dl, err := d.q.DeadLetter(ctx, seq)
	if err != nil {
		return notFound(err)
	}
	if err := d.q.DropDeadLetter(ctx, seq); err != nil {
		return notFound(err)
	}
	e := dropAudit(dl.MsgID, dl.Subject, dl.Reason)
	if d.ctl != nil {
		e.Time = time.Now().UTC()
		_, err := d.ctl.do(ctx, storage.Control{Kind: storage.ControlDrop, DeadLetter: &e})
		return err
	}
	return d.st.RecordAudit(e)
}

// dropAudit is the audit entry of a dead letter an operator dropped
// (rebuild recognises it by dropReasonPrefix).
func dropAudit(msgID, subject, reason string) storage.AuditEntry {
	return storage.AuditEntry{EventID: msgID, Action: storage.ActionDrop,
		Reason: "dead letter dropped by an operator (subject " + subject + "; parked because: " + reason + ")"}
}

// queueNotFound is the queue's "not found" as the server and the CLI know
// it, storage.ErrNotFound, with the queue's text.
type queueNotFound struct{ error }

func (e queueNotFound) Is(target error) bool { return target == storage.ErrNotFound }
func (e queueNotFound) Unwrap() error        { return e.error }

func notFound(err error) error {
	if errors.Is(err, queue.ErrNotFound) {
		return queueNotFound{err}
	}
	return err
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
