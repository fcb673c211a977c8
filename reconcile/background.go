package reconcile

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/storage"
)

// BackgroundOptions configures StartBackground; dsyncd builds it from its
// configuration (workos.*, events.*, reconcile.*).
type BackgroundOptions struct {
	// Client is how to reach the WorkOS API.
	Client ClientOptions
	// PollInterval runs the Events API poller every interval; 0: no poller.
	PollInterval time.Duration
	// Start and OnStaleCursor are the poller's Options.Start and Options.OnStaleCursor.
	Start         string
	OnStaleCursor string
	// ReconcileInterval reconciles every directory every interval; 0: never.
	ReconcileInterval time.Duration
	// Active, if set, is asked before each poll and each scheduled
	// reconciliation: false skips it (another node of the cluster holds the
	// leader lease).
	Active func() bool
	// PublishCorrections sends the reconciler's corrective events to the
	// stream (the publisher StartBackground is given) instead of applying
	// them to the store: every node of a cluster then applies them.
	PublishCorrections bool
	// Cursors, if set, keeps the poller's cursor instead of the store (in
	// a cluster: where the next leader finds it).
	Cursors CursorStore
}

// Background is what `dsyncd serve` runs besides the webhook receiver: the
// Events API poller and the periodic reconciliation, each when configured.
type Background struct {
	Poller     *Poller     // nil unless events.poll_interval > 0
	Reconciler *Reconciler // nil unless reconcile.interval > 0

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// StartBackground starts the poller (PollInterval > 0), publishing to pub
// with its cursor in opts.Cursors (default st), and the periodic reconciliation
// (ReconcileInterval > 0) against st. It returns nil when neither is
// configured. Stop it before closing pub and st.
func StartBackground(opts BackgroundOptions, pub Publisher, st *storage.Store, log *zap.Logger) *Background {
	if opts.PollInterval <= 0 && opts.ReconcileInterval <= 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Background{cancel: cancel}
	var corrections Publisher
	if opts.PublishCorrections {
		corrections = pub
	}
	if opts.PollInterval > 0 {
		// A reconciler of its own for a refused cursor, which may come
		// with reconcile.interval 0.
		r := NewReconciler(ReconcilerOptions{ClientOptions: opts.Client, Publish: corrections}, st, log)
		var cursors CursorStore = st
		if opts.Cursors != nil {
			cursors = opts.Cursors
		}
		b.Poller = New(Options{ClientOptions: opts.Client, Interval: opts.PollInterval, Start: opts.Start,
			Applied: st.Processed, OnStaleCursor: opts.OnStaleCursor, Active: opts.Active,
			Reconcile: func(ctx context.Context) error {
				_, err := r.Reconcile(ctx, Scope{}, false)
				return err
			}}, pub, cursors, log)
		b.wg.Go(func() { _ = b.Poller.Run(ctx) })
	}
	if opts.ReconcileInterval > 0 {
		b.Reconciler = NewReconciler(ReconcilerOptions{ClientOptions: opts.Client, Interval: opts.ReconcileInterval,
			Active: opts.Active, Publish: corrections}, st, log)
		b.wg.Go(func() { _ = b.Reconciler.Run(ctx) })
	}
	return b
}

// Stop stops the poller and the reconciliation and waits for them: a page
// being published or a directory being applied is abandoned (its cursor or
// transaction not committed). Stop on a nil Background does nothing.
func (b *Background) Stop() {
	if b == nil {
		return
	}
	b.cancel()
	b.wg.Wait()
}
