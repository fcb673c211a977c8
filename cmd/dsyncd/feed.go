package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dsyncd/dsyncd/feed"
	"github.com/dsyncd/dsyncd/queue"
)

// changeStream adapts the queue's change stream to feed.Stream (feed does
// not import the queue).
type changeStream struct{ cs *queue.ChangeStream }

func (a changeStream) LastChange(ctx context.Context) (uint64, error) { return a.cs.LastChange(ctx) }

func (a changeStream) Publish(ctx context.Context, msgs []feed.Message) (int, error) {
	out := make([]queue.ChangeMsg, len(msgs))
	for i, m := range msgs {
		out[i] = queue.ChangeMsg(m)
	}
	return a.cs.Publish(ctx, out)
}

// feedRunner runs the change feed's ways out besides the long-poll: the
// JetStream relay and the webhooks out, each in its own goroutine.
type feedRunner struct {
	relay   *feed.Relay
	webhook *feed.Webhook
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// startFeed starts what changes.* asks for; the change stream is created
// (or updated) before it returns, so that products can subscribe at once.
func (d *daemon) startFeed(ctx context.Context) error {
	c := d.cfg.Changes
	if !c.Enabled || (!c.JetStream && c.Webhook.URL == "") {
		return nil
	}
	var cs *queue.ChangeStream
	if c.JetStream {
		cs = d.q.Changes(queue.ChangesOptions{Stream: c.Stream, SubjectPrefix: c.SubjectPrefix, MaxAge: c.Retention, MaxBytes: d.cfg.NATS.MaxBytes})
		if _, err := cs.LastChange(ctx); err != nil {
			return fmt.Errorf("changes.stream %s, changes.subject_prefix %s: %w", c.Stream, c.SubjectPrefix, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &feedRunner{cancel: cancel}
	if c.JetStream {
		f.relay = feed.NewRelay(d.st, changeStream{cs}, feed.RelayOptions{}, d.log)
		f.wg.Go(func() { d.whileLeader(ctx, f.relay.Run) })
	}
	if c.Webhook.URL != "" {
		f.webhook = feed.NewWebhook(d.st, feed.WebhookOptions{URL: c.Webhook.URL, Secret: c.Webhook.Secret, MaxAge: c.Webhook.MaxAge,
			Positions: newWebhookPositions(d.positions), CatchingUp: d.catchingUp}, d.log)
		f.wg.Go(func() { d.whileLeader(ctx, f.webhook.Run) })
	}
	d.feed = f
	return nil
}

// whileLeader runs a way out of the change feed (the webhooks out, the
// relay) while this node holds the leader lease, so that a product gets
// each change from one node. Each goes on where the last leader left it:
// the webhooks after the position in the positions bucket, the relay after
// the change stream's last record. It returns when ctx ends.
func (d *daemon) whileLeader(ctx context.Context, run func(context.Context)) {
	for ctx.Err() == nil {
		changed := d.leadershipChange()
		if !d.Leader() {
			select {
			case <-changed:
			case <-ctx.Done():
			}
			continue
		}
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); run(wctx) }()
		for d.Leader() {
			select {
			case <-changed:
				changed = d.leadershipChange()
				continue
			case <-done:
			case <-ctx.Done():
			}
			break
		}
		cancel()
		<-done
		if d.Leader() && ctx.Err() == nil {
			return // Run ended by itself: the store is closed
		}
	}
}

// catchingUp reports whether this node's worker has a backlog (or its
// consumer cannot be read): the webhooks out then wait for its feed to
// reach the position another node delivered.
func (d *daemon) catchingUp() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n, err := d.q.Pending(ctx, d.durable)
	return err != nil || n > 0
}

// stopFeed stops the relay and the webhooks out and waits for them.
func (d *daemon) stopFeed() {
	if d.feed == nil {
		return
	}
	d.feed.cancel()
	d.feed.wg.Wait()
}

// feedDegraded says when a way out falls behind.
func (d *daemon) feedDegraded() []string {
	if d.feed == nil {
		return nil
	}
	var out []string
	if r := d.feed.relay; r != nil && r.Status().Active && r.Status().Failing {
		out = append(out, fmt.Sprintf("change relay: publishing to the stream %s fails (relayed up to seq %d; see the log)", d.cfg.Changes.Stream, r.Status().Position))
	}
	if w := d.feed.webhook; w != nil {
		// A node that does not lead delivers nothing: nothing is behind here
		// (/readyz's "webhooks_out" says who delivers).
		if s := w.Status(); s.Active && s.Behind {
			msg := fmt.Sprintf("webhooks out: %d changes pending, the oldest for %s", s.Pending, s.OldestAge.Round(1e9))
			if s.LastError != "" {
				msg += " (last POST: " + s.LastError + ")"
			}
			out = append(out, msg)
		}
	}
	return out
}

// registerFeed adds the change feed's metrics.
func (m *metrics) registerFeed(d *daemon) {
	if !d.cfg.Changes.Enabled {
		return
	}
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	last := func() float64 {
		seq, err := d.st.LastChangeSeq()
		if err != nil {
			return -1
		}
		return float64(seq)
	}
	m.reg.MustRegister(gauge("dsyncd_changes_last_seq", "The seq of the change feed's last record.", last))
	if d.feed == nil {
		return
	}
	if r := d.feed.relay; r != nil {
		m.reg.MustRegister(
			gauge("dsyncd_changes_relay_pending", "Change records not yet in the JetStream stream (changes.stream); 0 on a node that does not lead (the leader relays).", func() float64 {
				if !r.Status().Active {
					return 0
				}
				return max(0, last()-float64(r.Status().Position))
			}),
			counter("dsyncd_changes_relay_failures_total", "Failed attempts to publish change records to JetStream (retried with backoff).",
				func() float64 { return float64(r.Status().Failures) }),
			counter("dsyncd_changes_relay_gaps_total", "Change records pruned (changes.retention) before the relay published them: a gap in the stream.",
				func() float64 { return float64(r.Status().Gaps) }),
		)
	}
	if w := d.feed.webhook; w != nil {
		m.reg.MustRegister(
			gauge("dsyncd_changes_webhook_delivering", "1 while this node delivers the webhooks out (it holds the leader lease), else 0: another node does.",
				func() float64 {
					if w.Status().Active {
						return 1
					}
					return 0
				}),
			gauge("dsyncd_changes_webhook_pending", "Change records not yet delivered to changes.webhook.url (0 on a node that does not deliver).", func() float64 { return float64(w.Status().Pending) }),
			gauge("dsyncd_changes_webhook_oldest_pending_seconds", "Age of the oldest change record not yet delivered to changes.webhook.url (0: none).",
				func() float64 { return w.Status().OldestAge.Seconds() }),
			counter("dsyncd_changes_webhook_delivered_total", "Change records delivered to changes.webhook.url (2xx).",
				func() float64 { return float64(w.Status().Delivered) }),
			counter("dsyncd_changes_webhook_failures_total", "POSTs to changes.webhook.url that failed (retried with backoff).",
				func() float64 { return float64(w.Status().Failures) }),
			counter("dsyncd_changes_webhook_skipped_total", "Change records never delivered: older than changes.webhook.max_age, or pruned first (a gap the product sees in seq).",
				func() float64 { return float64(w.Status().Skipped) }),
		)
	}
}
