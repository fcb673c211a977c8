package feed

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/storage"
)

// HeaderSignature signs each webhook out: "t=<unix ms>, v1=<hex
// HMAC-SHA256(secret, t + "." + body)>", the way WorkOS signs its own.
const HeaderSignature = "Dsyncd-Signature"

// The defaults of WebhookOptions.
const (
	DefaultWebhookMaxAge     = 72 * time.Hour
	DefaultWebhookBatch      = 100
	DefaultWebhookTimeout    = 10 * time.Second
	DefaultWebhookMinBackoff = time.Second
	DefaultWebhookMaxBackoff = 5 * time.Minute
	// DefaultWebhookBehind is how old the oldest undelivered record may get
	// before readiness says the webhooks out are behind.
	DefaultWebhookBehind = time.Minute
)

// WebhookOptions configures the webhooks out.
type WebhookOptions struct {
	// URL receives the POSTs. Required.
	URL string
	// Secret signs them. Required.
	Secret string
	// MaxAge is how long a record is retried: one older is skipped (a
	// log line, dsyncd_changes_webhook_skipped_total, and a seq gap the
	// product sees). Default 72h.
	MaxAge time.Duration
	// Batch is the most records in one POST. Default 100.
	Batch int
	// Timeout bounds each POST. Default 10s.
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the wait after a failure. Defaults 1s and 5m.
	MinBackoff, MaxBackoff time.Duration
	// Behind is how old the oldest undelivered record may get before
	// Status says Behind. Default 1m.
	Behind time.Duration
	// Client sends the POSTs. Nil: a client with Timeout and no redirects.
	Client *http.Client
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Positions, if set, keeps the delivery position where every node of a
	// cluster finds it (dsyncd: the positions bucket in NATS), so that the
	// node that delivers next goes on after it; the store's cursor is then
	// a copy. A position stored only in the store (an upgrade in place) is
	// moved there when Positions has none. Nil: the store's cursor alone.
	Positions PositionStore
	// CatchingUp, if set with Positions, reports whether this node's store
	// is still applying the stream's backlog: while it is, a feed that has
	// not reached the shared position is waited for (the records up to it
	// were delivered by another node) rather than taken for a replaced store.
	CatchingUp func() bool
}

// PositionStore keeps delivery positions by key, shared between the nodes
// that take turns delivering.
type PositionStore interface {
	// Load returns the position stored under key; found is false when
	// none is.
	Load(ctx context.Context, key string) (pos uint64, found bool, err error)
	// Save stores pos under key. It returns an error wrapping
	// ErrPositionMoved when another writer stored the key since this one's
	// last Load or Save: another node delivered meanwhile.
	Save(ctx context.Context, key string, pos uint64) error
}

// ErrPositionMoved is what PositionStore.Save wraps when another node moved
// the position.
var ErrPositionMoved = errors.New("the delivery position was moved by another node")

// Webhook POSTs the change feed, in seq order, in signed batches
// {"changes":[…]}, to one URL, retrying each batch with exponential backoff
// until it is answered 2xx. The position delivered is kept in the store
// (a cursor per URL), and in Options.Positions when set, after each 2xx: a
// process killed at any point sends the last batch again, never skips one.
// Run may be called again after it returned (dsyncd runs it while the node
// leads): each run starts from the stored position.
type Webhook struct {
	src  Source
	opts WebhookOptions
	log  *zap.Logger
	key  string // the store cursor holding the position

	position  atomic.Uint64 // the last seq delivered
	last      atomic.Uint64 // the feed's last seq when last read
	failures  atomic.Uint64
	skipped   atomic.Uint64
	delivered atomic.Uint64
	failing   atomic.Bool
	active    atomic.Bool // Run is delivering
	moved     bool        // Run's last save found the shared position moved (Run's own)
	mu        sync.Mutex
	oldest    time.Time // the time of the oldest undelivered record, zero when none
	lastError string
}

// NewWebhook returns the webhooks out; Run starts them.
func NewWebhook(src Source, opts WebhookOptions, log *zap.Logger) *Webhook {
	if opts.MaxAge <= 0 {
		opts.MaxAge = DefaultWebhookMaxAge
	}
	if opts.Batch <= 0 {
		opts.Batch = DefaultWebhookBatch
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultWebhookTimeout
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = DefaultWebhookMinBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultWebhookMaxBackoff
	}
	if opts.Behind <= 0 {
		opts.Behind = DefaultWebhookBehind
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Client == nil {
		opts.Client = &http.Client{Timeout: opts.Timeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	sum := sha256.Sum256([]byte(opts.URL))
	return &Webhook{src: src, opts: opts, log: log.Named("feed.webhook"), key: "changes.webhook." + hex.EncodeToString(sum[:8])}
}

// WebhookStatus is what the webhooks out have done, for metrics and readiness.
type WebhookStatus struct {
	Position  uint64        // the last seq delivered
	Pending   uint64        // records after it
	OldestAge time.Duration // age of the oldest undelivered record (0: none)
	Delivered uint64        // records delivered
	Failures  uint64        // failed POSTs
	Skipped   uint64        // records skipped past MaxAge (or pruned before delivery)
	Behind    bool          // the oldest undelivered record is older than Options.Behind
	LastError string        // why the last POST failed, while failing
	// Active says Run is delivering. While it is not (on a node of a
	// cluster: another node leads and delivers), Pending, OldestAge and
	// Behind are zero: what is pending is not this node's to deliver.
	Active bool
}

// Status returns the counters.
func (w *Webhook) Status() WebhookStatus {
	s := WebhookStatus{Position: w.position.Load(), Failures: w.failures.Load(), Skipped: w.skipped.Load(), Delivered: w.delivered.Load(),
		Active: w.active.Load()}
	if !s.Active {
		return s
	}
	if last := w.last.Load(); last > s.Position {
		s.Pending = last - s.Position
	}
	w.mu.Lock()
	if !w.oldest.IsZero() && s.Pending > 0 {
		s.OldestAge = max(0, w.opts.Now().Sub(w.oldest))
	}
	if w.failing.Load() {
		s.LastError = w.lastError
	}
	w.mu.Unlock()
	s.Behind = s.OldestAge > w.opts.Behind
	return s
}

func (w *Webhook) setOldest(t time.Time) {
	w.mu.Lock()
	w.oldest = t
	w.mu.Unlock()
}

// Key is the name under which the position is kept (in the store's cursors
// and in Options.Positions).
func (w *Webhook) Key() string { return w.key }

// start returns the position to deliver after: the shared one when
// Options.Positions has it, else the store's, else (a URL never delivered
// to) the oldest record the feed keeps; stored at once where it was not.
func (w *Webhook) start(ctx context.Context) (uint64, error) {
	ps := w.opts.Positions
	if ps == nil {
		return w.startLocal()
	}
	for {
		pos, found, err := ps.Load(ctx, w.key)
		if err != nil {
			return 0, err
		}
		if found {
			return pos, nil
		}
		if pos, err = w.startLocal(); err != nil {
			return 0, err
		}
		err = ps.Save(ctx, w.key, pos)
		if errors.Is(err, ErrPositionMoved) {
			continue // another node stored one first: go on from it
		}
		if err != nil {
			return 0, err
		}
		w.log.Info("webhooks out: the delivery position is now shared by the nodes", zap.Uint64("position", pos))
		return pos, nil
	}
}

// startLocal is start from the store's cursor alone.
func (w *Webhook) startLocal() (uint64, error) {
	v, err := w.src.Cursor(w.key)
	if err != nil {
		return 0, err
	}
	if v != "" {
		return strconv.ParseUint(v, 10, 64)
	}
	var pos uint64
	_, err = w.src.Changes(0, 1)
	var gone *storage.GoneError
	switch {
	case errors.As(err, &gone):
		pos = gone.Oldest - 1
	case err != nil:
		return 0, err
	}
	return pos, w.src.SetCursor(w.key, strconv.FormatUint(pos, 10))
}

// Run delivers until ctx ends.
func (w *Webhook) Run(ctx context.Context) {
	w.active.Store(true)
	defer w.active.Store(false)
	w.moved = false // start reads the shared position anyway
	bo := backoff{min: w.opts.MinBackoff, max: w.opts.MaxBackoff}
	var pos uint64
	for {
		p, err := w.start(ctx)
		if err == nil {
			pos = p
			break
		}
		if errors.Is(err, storage.ErrClosed) || ctx.Err() != nil {
			return
		}
		w.log.Error("webhooks out: read the delivery position", zap.Error(err))
		if !sleep(ctx, bo.next()) {
			return
		}
	}
	bo.reset()
	w.position.Store(pos)
	w.log.Info("webhooks out", zap.String("url", redactURL(w.opts.URL)), zap.Uint64("after", pos))
	var body bytes.Buffer
	waiting := false
	for ctx.Err() == nil {
		if w.moved {
			// Another node delivered meanwhile: go on after what it delivered.
			w.moved = false
			p, err := w.start(ctx)
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, storage.ErrClosed) {
					return
				}
				w.log.Error("webhooks out: read the delivery position", zap.Error(err))
				w.moved = true
				if !sleep(ctx, bo.next()) {
					return
				}
				continue
			}
			w.log.Warn("webhooks out: another node moved the delivery position; going on from it", zap.Uint64("was", pos), zap.Uint64("now", p))
			pos = p
			w.position.Store(pos)
		}
		woken := w.src.ChangesNotify()
		page, next, gap, err := readPage(w.src, pos, w.opts.Batch)
		if errors.Is(err, storage.ErrChangesGone) && next < pos && w.opts.Positions != nil && w.opts.CatchingUp != nil && w.opts.CatchingUp() {
			// Another node delivered past this node's feed, which is still
			// catching up: wait for it.
			if !waiting {
				w.log.Info("webhooks out: this node's feed has not reached the position delivered; waiting for its worker to catch up",
					zap.Uint64("delivered", pos), zap.Uint64("feed_last", next))
				waiting = true
			}
			select {
			case <-woken:
			case <-time.After(time.Second): // the backlog may be events that change nothing
			case <-ctx.Done():
				return
			}
			continue
		}
		waiting = false
		if errors.Is(err, storage.ErrChangesGone) {
			w.skipped.Add(gap)
			w.log.Error("webhooks out: the feed no longer has the records after the position delivered; going on after a gap the product sees",
				zap.Uint64("delivered", pos), zap.Uint64("goes_on_after", next), zap.Error(err))
			pos = next
			w.savePosition(ctx, pos)
			continue
		}
		if errors.Is(err, storage.ErrClosed) {
			return
		}
		if err != nil {
			w.log.Error("webhooks out: read the feed", zap.Error(err))
			if !sleep(ctx, bo.next()) {
				return
			}
			continue
		}
		w.last.Store(page.Last)
		cs := page.Changes
		// Records past MaxAge are skipped: the product sees the gap in seq.
		now := w.opts.Now()
		skip := 0
		for skip < len(cs) && now.Sub(cs[skip].Time) > w.opts.MaxAge {
			skip++
		}
		if skip > 0 {
			w.skipped.Add(uint64(skip))
			w.log.Error("webhooks out: records older than changes.webhook.max_age skipped: the product sees a gap in seq and must resync from the export",
				zap.Uint64("first", cs[0].Seq), zap.Uint64("last", cs[skip-1].Seq), zap.Duration("max_age", w.opts.MaxAge))
			pos = cs[skip-1].Seq
			w.savePosition(ctx, pos)
			continue
		}
		if len(cs) == 0 {
			w.setOldest(time.Time{})
			select {
			case <-woken:
			case <-ctx.Done():
				return
			}
			continue
		}
		w.setOldest(cs[0].Time)
		body.Reset()
		body.WriteString(`{"changes":[`)
		for i, c := range cs {
			if i > 0 {
				body.WriteByte(',')
			}
			body.Write(c.JSON)
		}
		body.WriteString("]}\n")
		if err := w.post(ctx, body.Bytes()); err != nil {
			w.failures.Add(1)
			w.failing.Store(true)
			w.mu.Lock()
			w.lastError = err.Error()
			w.mu.Unlock()
			d := bo.next()
			if ctx.Err() == nil {
				w.log.Warn("webhooks out: POST failed; retrying", zap.String("url", redactURL(w.opts.URL)), zap.Uint64("first", cs[0].Seq),
					zap.Int("records", len(cs)), zap.Duration("in", d), zap.Error(err))
			}
			if !sleep(ctx, d) {
				return
			}
			continue
		}
		bo.reset()
		w.failing.Store(false)
		pos = cs[len(cs)-1].Seq
		w.delivered.Add(uint64(len(cs)))
		w.savePosition(ctx, pos)
	}
}

func (w *Webhook) savePosition(ctx context.Context, pos uint64) {
	w.position.Store(pos)
	if err := w.src.SetCursor(w.key, strconv.FormatUint(pos, 10)); err != nil && !errors.Is(err, storage.ErrClosed) {
		// Not fatal: a restart sends again what followed the stored position.
		w.log.Warn("webhooks out: store the delivery position", zap.Uint64("position", pos), zap.Error(err))
	}
	if w.opts.Positions == nil {
		return
	}
	// The shared copy outlives a context cancelled just after a 2xx: the
	// next node must not send the batch again for want of a save.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.opts.Timeout)
	defer cancel()
	err := w.opts.Positions.Save(sctx, w.key, pos)
	switch {
	case errors.Is(err, ErrPositionMoved):
		w.moved = true
	case err != nil:
		// Not fatal either: the next node sends again what followed the
		// shared position.
		w.log.Warn("webhooks out: share the delivery position", zap.Uint64("position", pos), zap.Error(err))
	}
}

// post sends one signed batch; any answer but 2xx is an error.
func (w *Webhook) post(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.opts.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "dsyncd")
	req.Header.Set(HeaderSignature, events.Sign(w.opts.Secret, w.opts.Now(), body))
	resp, err := w.opts.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("answered %s", resp.Status)
	}
	return nil
}

// redactURL hides a URL's user info and query (which may carry a token).
func redactURL(u string) string {
	for i := 0; i < len(u); i++ {
		if u[i] == '?' {
			return u[:i] + "?…"
		}
	}
	if at := bytes.LastIndexByte([]byte(u), '@'); at > 0 {
		if scheme := bytes.Index([]byte(u), []byte("://")); scheme >= 0 && scheme < at {
			return u[:scheme+3] + "…@" + u[at+1:]
		}
	}
	return u
}
