package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/events"
)

// Cursor names under which the poller keeps its place in the store.
const (
	// CursorEvents is the id of the last event of the last page JetStream acknowledged.
	CursorEvents = "events"
	// CursorEventsStart is the range_start the first poll resolved events.start
	// to, kept so that polls before the first event do not move it.
	CursorEventsStart = "events.start"
)

// EventsRetention is how long the Events API keeps events (WorkOS's
// documentation says 30 days).
const EventsRetention = 30 * 24 * time.Hour

// StartNow is the Options.Start that starts polling at the first poll's time.
const StartNow = "now"

// Options.OnStaleCursor values.
const (
	OnStaleCursorReconcile = "reconcile"
	OnStaleCursorFail      = "fail"
)

// ErrCursorStale is wrapped by Poll's error when the Events API refuses the
// stored cursor while it answers a request without one: the cursor's event
// is past the API's retention (dsyncd was down, or polling off, longer than
// that). WorkOS does not document that answer; any 400, 404, 410 or 422 to
// a request with a cursor, confirmed by a success without it, counts.
var ErrCursorStale = errors.New("the Events API refused the events cursor (older than it keeps events?)")

// DefaultPublishTimeout bounds the wait for JetStream's ack of one event.
const DefaultPublishTimeout = 10 * time.Second

// Publisher stores an event durably, deduplicating by msgID; *queue.Queue
// implements it.
type Publisher interface {
	Publish(ctx context.Context, directoryID, eventType, msgID string, data []byte) (duplicate bool, err error)
}

// CursorStore keeps named cursors durably; *storage.Store implements it.
type CursorStore interface {
	Cursor(name string) (string, error)
	SetCursor(name, value string) error
}

// Options configures a Poller.
type Options struct {
	ClientOptions
	// Interval is the pause between two polls (each poll reads every page
	// there is). Zero means 30s.
	Interval time.Duration
	// Start is where the very first poll starts, when no cursor is stored:
	// "now" (the default) or an RFC 3339 time within the API's retention.
	Start string
	// PublishTimeout bounds the wait for JetStream's ack of one event.
	PublishTimeout time.Duration
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// OnStaleCursor is what Poll does when the Events API refuses the stored
	// cursor (see ErrCursorStale): OnStaleCursorReconcile (the default) runs
	// Reconcile, then polls from the time it started; OnStaleCursorFail
	// keeps failing. Either way CursorStale says so until polling works.
	OnStaleCursor string
	// Active, if set, is asked before each poll of Run: false skips it
	// (another node of a cluster holds the leader lease).
	Active func() bool
	// Reconcile runs a full reconciliation; without it OnStaleCursorReconcile
	// behaves as OnStaleCursorFail.
	Reconcile func(ctx context.Context) error
	// Applied, if set, reports whether the store already applied the event
	// with this id; such an event is not published again (the store would
	// count it a duplicate anyway), which keeps the stream from holding a
	// second copy of every event the webhooks delivered. An error counts as
	// "not applied": the event is published and deduplicated downstream.
	Applied func(id string) (bool, error)
}

// PollerStats counts what the poller did since it was created.
type PollerStats struct {
	Polls      uint64 `json:"polls"`
	Failures   uint64 `json:"failures"`
	Pages      uint64 `json:"pages"`
	Published  uint64 `json:"published"`
	Duplicates uint64 `json:"duplicates"` // already on the stream (e.g. delivered by webhook)
	// AlreadyApplied counts events skipped because the store had applied them.
	AlreadyApplied uint64 `json:"already_applied"`
	Invalid        uint64 `json:"invalid"` // skipped: not decodable as a dsync event
	Ignored        uint64 `json:"ignored"` // skipped: a type dsyncd does not apply
	// StaleResets counts refused cursors replaced by a reconciliation and
	// polling from then.
	StaleResets uint64 `json:"stale_resets"`
}

// Poller reads the WorkOS Events API and publishes every dsync event onto
// the stream, with the event id as Nats-Msg-Id, so that an event delivered
// both by webhook and by the poller is stored once. It stores its cursor
// only after JetStream acknowledged every event of a page.
//
// An event that does not decode (events.Decode: malformed, or missing an id
// it needs) is skipped, counted and logged with its id and reason: it could
// never be applied, and holding the cursor on it would stop the poller for
// good.
type Poller struct {
	opts   Options
	client *Client
	pub    Publisher
	cursor CursorStore
	log    *zap.Logger
	types  []string

	polls, failures, pages, published, duplicates, applied, invalid, ignored atomic.Uint64
	staleResets                                                              atomic.Uint64

	staleMu sync.Mutex
	stale   string // why the cursor is refused; "" while it is not
}

// New returns a Poller. It does no I/O.
func New(opts Options, pub Publisher, cursor CursorStore, log *zap.Logger) *Poller {
	if log == nil {
		log = zap.NewNop()
	}
	if opts.Interval <= 0 {
		opts.Interval = 30 * time.Second
	}
	if opts.Start == "" {
		opts.Start = StartNow
	}
	if opts.PublishTimeout <= 0 {
		opts.PublishTimeout = DefaultPublishTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.OnStaleCursor == "" {
		opts.OnStaleCursor = OnStaleCursorReconcile
	}
	var types []string
	for _, t := range events.HandledTypes() {
		types = append(types, string(t))
	}
	log = log.Named("poller")
	return &Poller{opts: opts, client: NewClient(opts.ClientOptions, log), pub: pub, cursor: cursor, log: log, types: types}
}

// Stats returns the poller's counters.
func (p *Poller) Stats() PollerStats {
	return PollerStats{Polls: p.polls.Load(), Failures: p.failures.Load(), Pages: p.pages.Load(),
		Published: p.published.Load(), Duplicates: p.duplicates.Load(), AlreadyApplied: p.applied.Load(),
		Invalid: p.invalid.Load(), Ignored: p.ignored.Load(), StaleResets: p.staleResets.Load()}
}

// CursorStale returns why the Events API refuses the poller's cursor, or ""
// while it does not (see ErrCursorStale).
func (p *Poller) CursorStale() string {
	p.staleMu.Lock()
	defer p.staleMu.Unlock()
	return p.stale
}

func (p *Poller) setStale(why string) {
	p.staleMu.Lock()
	defer p.staleMu.Unlock()
	p.stale = why
}

// Run polls at once, then every Interval after the previous poll ended,
// until ctx is cancelled; it returns nil then. A failed poll is logged and
// tried again at the next interval (each request has already been retried).
func (p *Poller) Run(ctx context.Context) error {
	p.log.Info("polling the WorkOS Events API", zap.Duration("interval", p.opts.Interval), zap.String("endpoint", redactURL(p.client.opts.Endpoint)))
	for {
		if p.opts.Active != nil && !p.opts.Active() {
			if sleep(ctx, p.opts.Interval) != nil {
				return nil
			}
			continue
		}
		if err := p.Poll(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			p.log.Error("events poll failed; retrying at the next interval", zap.Error(err))
		}
		if sleep(ctx, p.opts.Interval) != nil {
			return nil
		}
	}
}

// Poll reads every page of events after the stored cursor and publishes
// them, storing the cursor after each page. It stops at the first error,
// with the cursor on the last page fully acknowledged.
func (p *Poller) Poll(ctx context.Context) error {
	p.polls.Add(1)
	err := p.poll(ctx)
	if errors.Is(err, ErrCursorStale) && ctx.Err() == nil {
		err = p.onStale(ctx, err)
	}
	if err == nil {
		p.setStale("")
	}
	if err != nil && ctx.Err() == nil {
		p.failures.Add(1)
	}
	return err
}

// onStale handles a refused cursor (err): with OnStaleCursorReconcile, a
// full reconciliation brings the store up to date, then the cursor is
// dropped and polling starts again from the time the reconciliation
// started (what changed meanwhile comes by webhook or by the next poll).
func (p *Poller) onStale(ctx context.Context, err error) error {
	if p.opts.OnStaleCursor != OnStaleCursorReconcile || p.opts.Reconcile == nil {
		p.setStale(err.Error() + "; events.on_stale_cursor is fail: stop dsyncd and run dsyncd reconcile --reset-events-cursor")
		return err
	}
	p.setStale(err.Error() + "; reconciling every directory, then polling from now")
	p.log.Warn("the Events API refused the events cursor: running a full reconciliation, then polling from now", zap.Error(err))
	start := p.opts.Now()
	if rerr := p.opts.Reconcile(ctx); rerr != nil {
		p.setStale(err.Error() + "; the reconciliation failed, tried again at the next poll: " + rerr.Error())
		return fmt.Errorf("%w; reconciliation failed: %w", err, rerr)
	}
	if err := p.ResetCursor(start); err != nil {
		return err
	}
	p.staleResets.Add(1)
	p.log.Info("reconciled; polling the Events API again from the reconciliation's start", zap.Time("range_start", start))
	return nil
}

// ResetCursor drops the stored cursor: the next poll starts at at.
func (p *Poller) ResetCursor(at time.Time) error {
	if err := p.cursor.SetCursor(CursorEventsStart, at.UTC().Format(rangeStartLayout)); err != nil {
		return fmt.Errorf("store events start: %w", err)
	}
	if err := p.cursor.SetCursor(CursorEvents, ""); err != nil {
		return fmt.Errorf("store events cursor: %w", err)
	}
	return nil
}

// rangeStartLayout is how range_start is sent.
const rangeStartLayout = "2006-01-02T15:04:05.000Z07:00"

// cursorRefused reports whether err, the answer to a list of events after a
// cursor, may be a refusal of the cursor; staleCursor confirms it.
func cursorRefused(err error) bool {
	var ae *APIError
	if !errors.As(err, &ae) {
		return false
	}
	switch ae.Status {
	case http.StatusBadRequest, http.StatusNotFound, http.StatusGone, http.StatusUnprocessableEntity:
		return true
	}
	return false
}

func (p *Poller) poll(ctx context.Context) error {
	after, err := p.cursor.Cursor(CursorEvents)
	if err != nil {
		return fmt.Errorf("read events cursor: %w", err)
	}
	start := ""
	if after == "" {
		if start, err = p.rangeStart(); err != nil {
			return err
		}
	}
	for ctx.Err() == nil {
		page, err := p.client.ListEvents(ctx, p.types, after, start)
		if err != nil {
			if after != "" && cursorRefused(err) {
				// The same list from now, without the cursor: if that
				// works, the cursor was what the API refused.
				if _, cerr := p.client.ListEvents(ctx, p.types, "", p.opts.Now().UTC().Format(rangeStartLayout)); cerr == nil {
					return fmt.Errorf("%w: cursor %s: %w", ErrCursorStale, after, err)
				}
			}
			return fmt.Errorf("list events: %w", err)
		}
		p.pages.Add(1)
		if len(page.Events) == 0 {
			return nil
		}
		last, err := p.publishPage(ctx, page.Events)
		if err != nil {
			return err
		}
		next := page.After
		if next == "" || next == after {
			next = last // the end of the list: go on from its last event
		}
		if next == "" || next == after {
			return fmt.Errorf("events page without a cursor to go on from (after %q)", after)
		}
		if err := p.cursor.SetCursor(CursorEvents, next); err != nil {
			return fmt.Errorf("store events cursor: %w", err)
		}
		p.log.Debug("events page published", zap.Int("events", len(page.Events)), zap.String("cursor", next))
		after, start = next, ""
		if len(page.Events) < p.client.opts.PageSize {
			return nil // caught up
		}
	}
	return ctx.Err()
}

// rangeStart resolves events.start once and keeps it, so that "now" means
// the first poll's time even if nothing happens for a while.
func (p *Poller) rangeStart() (string, error) {
	s, err := p.cursor.Cursor(CursorEventsStart)
	if err != nil {
		return "", fmt.Errorf("read events start: %w", err)
	}
	if s != "" {
		return s, nil
	}
	var at time.Time
	if p.opts.Start == StartNow {
		at = p.opts.Now()
	} else if at, err = time.Parse(time.RFC3339, p.opts.Start); err != nil {
		return "", fmt.Errorf("events.start %q: not %q or an RFC 3339 time", p.opts.Start, StartNow)
	} else if now := p.opts.Now(); at.Before(now.Add(-EventsRetention)) {
		// Not an error: the API lists what it still has (some of its pages
		// say it keeps 90 days). But what it dropped only a reconcile finds.
		p.log.Warn("events.start is older than the Events API keeps events: earlier changes may be missing; run dsyncd reconcile to backfill them",
			zap.Time("events_start", at), zap.Duration("retention", EventsRetention))
	} else if at.After(now) {
		p.log.Warn("events.start is in the future: events until then are not polled", zap.Time("events_start", at))
	}
	s = at.UTC().Format(rangeStartLayout)
	if err := p.cursor.SetCursor(CursorEventsStart, s); err != nil {
		return "", fmt.Errorf("store events start: %w", err)
	}
	p.log.Info("first poll of the Events API", zap.String("range_start", s))
	return s, nil
}

// publishPage publishes each event of a page, as the API sent it, and
// returns the id of the page's last event.
func (p *Poller) publishPage(ctx context.Context, page []json.RawMessage) (string, error) {
	last := ""
	for _, raw := range page {
		id := envelopeID(raw)
		if id != "" {
			last = id
		}
		ev, err := events.Decode(raw)
		if err != nil {
			p.invalid.Add(1)
			p.log.Warn("event from the Events API skipped: it cannot be applied", zap.String("event_id", id), zap.Error(err))
			continue
		}
		if ev.Ignored() {
			p.ignored.Add(1)
			continue
		}
		if p.alreadyApplied(ev.ID) {
			p.applied.Add(1)
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, p.opts.PublishTimeout)
		dup, err := p.pub.Publish(pctx, ev.DirectoryID, string(ev.Type), ev.ID, raw)
		cancel()
		if err != nil {
			return "", fmt.Errorf("publish %s %s: %w", ev.Type, ev.ID, err)
		}
		if dup {
			p.duplicates.Add(1)
		} else {
			p.published.Add(1)
		}
	}
	if last == "" {
		return "", errors.New("events page without event ids")
	}
	return last, nil
}

// alreadyApplied reports whether Options.Applied knows the event applied.
func (p *Poller) alreadyApplied(id string) bool {
	if p.opts.Applied == nil {
		return false
	}
	done, err := p.opts.Applied(id)
	if err != nil {
		p.log.Warn("cannot tell whether an event was applied; publishing it", zap.String("event_id", id), zap.Error(err))
		return false
	}
	return done
}

// envelopeID returns an event's id, whether or not it decodes as a dsync event.
func envelopeID(raw []byte) string {
	var e struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(raw, &e)
	return e.ID
}
