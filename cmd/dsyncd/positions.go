package main

// The leader's positions, shared in NATS (queue.Positions) so that the node
// that leads next goes on from them: the webhooks out's delivery position
// and the Events API poller's cursor. Each is also kept in the node's store,
// from where it moves to NATS the first time NATS has none (an upgrade in
// place).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/feed"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/reconcile"
	"github.com/dsyncd/dsyncd/storage"
)

// positionTimeout bounds one read or write of a shared position.
const positionTimeout = 10 * time.Second

// sharedPositions opens the positions bucket on first use, and again after
// a failure: a JetStream cluster electing the bucket's leader (a server
// restarting) delays the webhooks out and the poller, never a node's start.
type sharedPositions struct {
	q  *queue.Queue
	mu sync.Mutex
	ps *queue.Positions
}

func (s *sharedPositions) get(ctx context.Context) (*queue.Positions, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ps != nil {
		return s.ps, nil
	}
	ps, err := s.q.Positions(ctx)
	if err != nil {
		return nil, err
	}
	s.ps = ps
	return ps, nil
}

// webhookPositions is feed.PositionStore on the positions bucket: each
// Save expects the revision this node last read or wrote, so that a node
// that delivered while another took over cannot move the position back.
type webhookPositions struct {
	ps   *sharedPositions
	mu   sync.Mutex
	revs map[string]uint64
}

var _ feed.PositionStore = (*webhookPositions)(nil)

func newWebhookPositions(ps *sharedPositions) *webhookPositions {
	return &webhookPositions{ps: ps, revs: map[string]uint64{}}
}

func (w *webhookPositions) Load(ctx context.Context, key string) (uint64, bool, error) {
	ps, err := w.ps.get(ctx)
	if err != nil {
		return 0, false, err
	}
	v, rev, found, err := ps.Get(ctx, key)
	if err != nil || !found {
		w.mu.Lock()
		delete(w.revs, key)
		w.mu.Unlock()
		return 0, false, err
	}
	pos, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, false, err
	}
	w.mu.Lock()
	w.revs[key] = rev
	w.mu.Unlock()
	return pos, true, nil
}

func (w *webhookPositions) Save(ctx context.Context, key string, pos uint64) error {
	ps, err := w.ps.get(ctx)
	if err != nil {
		return err
	}
	w.mu.Lock()
	rev, known := w.revs[key]
	w.mu.Unlock()
	if known {
		rev, err = ps.Update(ctx, key, strconv.FormatUint(pos, 10), rev)
	} else {
		rev, err = ps.Create(ctx, key, strconv.FormatUint(pos, 10))
	}
	if errors.Is(err, queue.ErrPositionMoved) {
		return errors.Join(feed.ErrPositionMoved, err)
	}
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.revs[key] = rev
	w.mu.Unlock()
	return nil
}

// pollerCursors is reconcile.CursorStore on the positions bucket, copied
// into the store: a cursor NATS has not got yet is taken from the store
// (and moved to NATS) when the store has one.
type pollerCursors struct {
	ps *sharedPositions
	st *storage.Store
}

var _ reconcile.CursorStore = pollerCursors{}

// pollerKey is the positions bucket's key of the poller's cursor name.
func pollerKey(name string) string { return "poller." + name }

func (c pollerCursors) Cursor(name string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), positionTimeout)
	defer cancel()
	ps, err := c.ps.get(ctx)
	if err != nil {
		return "", err
	}
	v, _, found, err := ps.Get(ctx, pollerKey(name))
	if err != nil || found {
		return v, err
	}
	local, err := c.st.Cursor(name)
	if err != nil || local == "" {
		return "", err
	}
	if _, err := ps.Create(ctx, pollerKey(name), local); errors.Is(err, queue.ErrPositionMoved) {
		v, _, _, err = ps.Get(ctx, pollerKey(name)) // another node moved its own first
		return v, err
	} else if err != nil {
		return "", err
	}
	return local, nil
}

func (c pollerCursors) SetCursor(name, value string) error {
	ctx, cancel := context.WithTimeout(context.Background(), positionTimeout)
	defer cancel()
	ps, err := c.ps.get(ctx)
	if err != nil {
		return err
	}
	if _, err := ps.Put(ctx, pollerKey(name), value); err != nil {
		return err
	}
	return c.st.SetCursor(name, value)
}

// resetSharedEventsCursor forgets the poller's cursor in the positions
// bucket too (reconcile --reset-events-cursor): else the next leader would
// poll on from it. Without JetStream data (serve never ran on the embedded
// server) there is nothing to forget.
func resetSharedEventsCursor(ctx context.Context, cfg config.Config, stderr io.Writer) error {
	q, err := openQueueOffline(ctx, cfg, stderr)
	if err != nil {
		if cfg.NATS.URL == "" {
			if _, serr := os.Stat(queueOptions(cfg).StoreDir); errors.Is(serr, os.ErrNotExist) {
				return nil
			}
		}
		return fmt.Errorf("%s: the events cursor shared by the nodes was not reset: %w", natsKeys(cfg), err)
	}
	defer q.Close()
	ctx, cancel := context.WithTimeout(ctx, positionTimeout)
	defer cancel()
	ps, err := q.Positions(ctx)
	if err != nil {
		return err
	}
	for _, name := range []string{reconcile.CursorEvents, reconcile.CursorEventsStart} {
		if _, err := ps.Put(ctx, pollerKey(name), ""); err != nil {
			return fmt.Errorf("%s: the events cursor shared by the nodes was not reset: %w", natsKeys(cfg), err)
		}
	}
	return nil
}
