package reconcile

import (
	"context"
	"sync"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/storage"
)

// ClientOptionsFrom returns the API client options the configuration sets.
func ClientOptionsFrom(cfg config.Config) ClientOptions {
	return ClientOptions{APIKey: cfg.WorkOS.APIKey, Endpoint: cfg.WorkOS.Endpoint}
}

// Background is what `dsyncd serve` runs besides the webhook receiver: the
// Events API poller and the periodic reconciliation, each when configured.
type Background struct {
	Poller     *Poller     // nil unless events.poll_interval > 0
	Reconciler *Reconciler // nil unless reconcile.interval > 0

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// StartBackground starts the poller (events.poll_interval > 0), publishing
// to pub with its cursor in st, and the periodic reconciliation
// (reconcile.interval > 0) against st. It returns nil when neither is
// configured. Stop it before closing pub and st.
func StartBackground(cfg config.Config, pub Publisher, st *storage.Store, log *zap.Logger) *Background {
	if cfg.Events.PollInterval <= 0 && cfg.Reconcile.Interval <= 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Background{cancel: cancel}
	if cfg.Events.PollInterval > 0 {
		// A reconciler of its own for a refused cursor, which may come
		// with reconcile.interval 0.
		r := NewReconciler(ReconcilerOptions{ClientOptions: ClientOptionsFrom(cfg)}, st, log)
		b.Poller = New(Options{ClientOptions: ClientOptionsFrom(cfg), Interval: cfg.Events.PollInterval, Start: cfg.Events.Start,
			Applied: st.Processed, OnStaleCursor: cfg.Events.OnStaleCursor,
			Reconcile: func(ctx context.Context) error {
				_, err := r.Reconcile(ctx, Scope{}, false)
				return err
			}}, pub, st, log)
		b.wg.Go(func() { _ = b.Poller.Run(ctx) })
	}
	if cfg.Reconcile.Interval > 0 {
		b.Reconciler = NewReconciler(ReconcilerOptions{ClientOptions: ClientOptionsFrom(cfg), Interval: cfg.Reconcile.Interval}, st, log)
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
