// Package server is dsyncd's HTTP face: the WorkOS webhook receiver, the
// read API (/v1) and the health endpoints, on one listener.
//
// # Basics
//
// The receiver verifies the WorkOS-Signature header against every configured
// secret, decodes the event, and publishes it to JetStream with the event id
// as the message id. It answers 200 only after JetStream acknowledged the
// message (a duplicate ack is a 200 too); 503 when JetStream does not answer
// in time, so WorkOS retries. It never answers 2xx for an event that is not
// stored.
//
// It runs the worker's own validation (events.Decode) before it answers: what
// the worker would park for the event's content gets 400 with a reason, and
// 503 is left for transient trouble. Unauthenticated clients get bounded
// resources: at most Options.MaxConnections connections, a 401 decided from
// the headers before any body is read, bodies reserved from
// Options.MaxInflightBytes, and refusal logs sampled (see limits.go).
//
// # Caveats
//
// /v1 always requires the bearer token (Options.APIToken; without one it
// answers 401 to everyone), a Host header naming this server (DNS
// rebinding), and a JSON content type on requests that change something
// (cross-site form posts).
package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/storage"
)

// Publisher stores an event durably; queue.Queue implements it. An error
// with a TooLarge method reporting true (queue.ErrTooLarge: the event is
// larger than the queue's largest message) is answered 413, any other 503.
type Publisher interface {
	Publish(ctx context.Context, directoryID, eventType, msgID string, data []byte) (duplicate bool, err error)
}

// Options configures a Server. Zero values take the documented defaults.
type Options struct {
	// Listen is the TCP address, e.g. "127.0.0.1:8080" or "127.0.0.1:0".
	Listen string
	// WebhookPath is where WorkOS posts. Default "/webhooks/workos".
	WebhookPath string
	// WebhookDisabled turns the receiver off (404), for products that only poll.
	WebhookDisabled bool
	// MaxBodyBytes caps a webhook body; larger ones get 413. Default 1 MiB.
	MaxBodyBytes int64
	// PublishTimeout bounds the wait for JetStream's ack; past it, 503. Default 5s.
	PublishTimeout time.Duration
	// APIToken is required as "Authorization: Bearer <token>" on /v1
	// (compared in constant time). When empty, /v1 answers 401 to everyone.
	APIToken string
	// AllowedHosts are the names, besides the Listen host, loopback
	// addresses and "localhost", that /v1 accepts in the Host header (a
	// name, or name:port). A request naming another host gets 421, so that
	// a web page whose name was rebound to this address cannot read /v1.
	AllowedHosts []string
	// ReadTimeout and WriteTimeout bound each request. Defaults 10s.
	ReadTimeout, WriteTimeout time.Duration
	// ReadHeaderTimeout bounds reading a request's headers (slow or
	// half-open connections are closed past it). Default 5s, at most ReadTimeout.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection idle this long. Default 60s.
	IdleTimeout time.Duration
	// MaxConnections bounds the open connections (see limits.go). Default 1024.
	MaxConnections int
	// MaxInflightBytes bounds the bytes of webhook bodies being read or
	// published at once; past it, 503 with Retry-After. Default 64 MiB.
	MaxInflightBytes int64
	// RefusalLogBurst is how many refusals of one reason are logged each
	// second; the others are counted and summed up in one line. Default 5.
	RefusalLogBurst int
	// Ready reports whether the daemon can do its work (store open,
	// JetStream reachable, worker consuming); /readyz answers 503 with its error.
	Ready func(ctx context.Context) error
	// Degraded, if set, lists what works but needs an operator's attention
	// (the Events API refusing the poller's cursor): /readyz shows it as
	// "degraded" next to its status, and its status code stays Ready's.
	Degraded func() []string
	// Detail, if set, adds its entries to /readyz's body (a node's place in
	// a cluster: its id, whether it leads).
	Detail func() map[string]any
	// Metrics, when set, is served at GET /metrics, without the token
	// (what Prometheus scrapes).
	Metrics http.Handler
	// DeadLetters, when set, backs /v1/dlq (operator.go); without it those
	// routes do not exist.
	DeadLetters DeadLetters
	// Decisions, when set, takes the operator's decisions on holds and
	// paused organisations (operator.go) instead of the store: the daemon
	// sends them through the stream, so that every node of a cluster
	// applies them at the same position, and answers once this node did.
	// Dry runs always ask the store.
	Decisions Decisions
	// NoStore makes every /v1 route answer 503: a receiver-only node
	// (worker.enabled: false) stores webhooks but applies nothing, so it
	// has nothing current to read or decide.
	NoStore bool
	// Snapshots, when set, backs /v1/snapshots (snapshots.go).
	Snapshots Snapshots
}

// Stats counts what the receiver did. Refused is keyed by reason.
type Stats struct {
	Received, Enqueued, Duplicate, Ignored atomic.Uint64
	mu                                     sync.Mutex
	refused                                map[string]uint64
}

// Refused returns a copy of the refusal counts by reason; every reason of
// Reasons is there, at 0 until counted.
func (s *Stats) Refused() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]uint64, len(Reasons()))
	for _, k := range Reasons() {
		out[k] = 0
	}
	for k, v := range s.refused {
		out[k] = v
	}
	return out
}

func (s *Stats) refuse(reason string) {
	s.mu.Lock()
	if s.refused == nil {
		s.refused = map[string]uint64{}
	}
	s.refused[reason]++
	s.mu.Unlock()
}

// Server serves the receiver, the read API and the health endpoints.
type Server struct {
	opts     Options
	verifier *events.Verifier
	pub      Publisher
	st       *storage.Store
	log      *zap.Logger
	stats    Stats
	refusals *refusalLog
	inflight budget

	mu     sync.Mutex
	routes []string // the patterns Handler registered

	ln        *connLimiter
	srv       *http.Server
	done      chan struct{}
	quit      chan struct{} // closed when Shutdown begins: long-polls answer at once
	closeOnce sync.Once
	closeErr  error
}

// The defaults of Options: New uses each for a zero field, and dsyncd's
// configuration (http.*, webhook.*) states them from here.
const (
	DefaultWebhookPath       = "/webhooks/workos"
	DefaultMaxBodyBytes      = 1 << 20
	DefaultPublishTimeout    = 5 * time.Second
	DefaultReadTimeout       = 10 * time.Second
	DefaultWriteTimeout      = 10 * time.Second
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultIdleTimeout       = 60 * time.Second
	DefaultMaxConnections    = 1024
	DefaultMaxInflightBytes  = 64 << 20
)

// New returns a Server. It does no I/O.
func New(opts Options, verifier *events.Verifier, pub Publisher, st *storage.Store, log *zap.Logger) *Server {
	if opts.WebhookPath == "" {
		opts.WebhookPath = DefaultWebhookPath
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.PublishTimeout <= 0 {
		opts.PublishTimeout = DefaultPublishTimeout
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = DefaultReadTimeout
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.ReadHeaderTimeout <= 0 {
		opts.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	opts.ReadHeaderTimeout = min(opts.ReadHeaderTimeout, opts.ReadTimeout)
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = DefaultMaxConnections
	}
	if opts.MaxInflightBytes <= 0 {
		opts.MaxInflightBytes = DefaultMaxInflightBytes
	}
	if opts.RefusalLogBurst <= 0 {
		opts.RefusalLogBurst = 5
	}
	log = log.Named("http")
	return &Server{opts: opts, verifier: verifier, pub: pub, st: st, log: log, done: make(chan struct{}), quit: make(chan struct{}),
		refusals: newRefusalLog(log, opts.RefusalLogBurst, time.Second), inflight: budget{max: opts.MaxInflightBytes}}
}

// Stats returns the receiver's counters.
func (s *Server) Stats() *Stats { return &s.stats }

// Handler returns the server's routes.
func (s *Server) Handler() http.Handler {
	mux := &router{ServeMux: http.NewServeMux()}
	if !s.opts.WebhookDisabled {
		mux.HandleFunc(s.opts.WebhookPath, s.handleWebhook)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.handleReady)
	mux.HandleFunc("GET /v1/openapi.json", handleOpenAPI) // a schema: no token (readapi.go)
	mux.HandleFunc("GET /v1/export", s.authed(s.handleExport))
	mux.HandleFunc("GET /v1/users/{id}", s.authed(s.handleUser))
	mux.HandleFunc("GET /v1/directories/{id}/users", s.authed(s.handleDirectoryUsers))
	mux.HandleFunc("GET /v1/audit", s.authed(s.handleAudit))
	mux.HandleFunc("GET /v1/changes", s.authed(s.handleChanges))
	s.readRoutes(mux)
	s.operatorRoutes(mux)
	if s.opts.Metrics != nil {
		mux.Handle("GET /metrics", s.opts.Metrics)
	}
	// Not a route: what /v1 answers when none matches, in the one error shape.
	mux.ServeMux.HandleFunc("/v1/", s.authed(func(w http.ResponseWriter, r *http.Request) { s.noRoute(w, r, mux.ServeMux) }))
	s.mu.Lock()
	s.routes = mux.patterns
	s.mu.Unlock()
	return mux
}

// Routes returns the pattern of every route the last Handler registered
// ("GET /v1/users/{id}", the webhook path, …), in the order registered:
// what the OpenAPI document must describe.
func (s *Server) Routes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.routes)
}

// noRoute answers a /v1 request no route matches: 405 with Allow when the
// path has routes for other methods, else 404.
func (s *Server) noRoute(w http.ResponseWriter, r *http.Request, mux *http.ServeMux) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, p := mux.Handler(probe); p != "/v1/" && p != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		s.fail(w, r, &publicError{http.StatusMethodNotAllowed, ReasonMethod, r.Method + " " + r.URL.Path + ": allowed " + strings.Join(allow, ", ")})
		return
	}
	s.fail(w, r, notFound("no such route: "+r.URL.Path))
}

// router is the server's ServeMux, noting every pattern registered.
type router struct {
	*http.ServeMux
	patterns []string
}

func (r *router) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	r.ServeMux.HandleFunc(pattern, h)
	r.patterns = append(r.patterns, pattern)
}

func (r *router) Handle(pattern string, h http.Handler) {
	r.ServeMux.Handle(pattern, h)
	r.patterns = append(r.patterns, pattern)
}

// handler is Handler, with the panic http.ServeMux raises on a pattern it
// refuses (a webhook path config did not vet) turned into an error.
func (s *Server) handler() (h http.Handler, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("http: webhook path %q: %v", s.opts.WebhookPath, r)
		}
	}()
	return s.Handler(), nil
}

// Open binds the listener (synchronously, so ":0" has a port when it
// returns) and starts serving in the background.
func (s *Server) Open() error {
	handler, err := s.handler()
	if err != nil {
		return err
	}
	inner, err := net.Listen("tcp", s.opts.Listen)
	if err != nil {
		return fmt.Errorf("http: listen %s: %w", s.opts.Listen, err)
	}
	ln := newConnLimiter(inner, s.opts.MaxConnections, s.refuseConn)
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s.tracked(handler),
		ReadTimeout:       s.opts.ReadTimeout,
		ReadHeaderTimeout: s.opts.ReadHeaderTimeout,
		WriteTimeout:      s.opts.WriteTimeout,
		IdleTimeout:       s.opts.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          zap.NewStdLog(s.log.Named("net")),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if lc, ok := c.(*limitedConn); ok {
				return context.WithValue(ctx, connKey{}, lc)
			}
			return ctx
		},
	}
	if n := fileLimit(); n > 0 && n < uint64(s.opts.MaxConnections)+256 {
		s.log.Warn("the open-files limit leaves little room above http.max_connections: raise it (LimitNOFILE) or lower http.max_connections",
			zap.Uint64("open_files_limit", n), zap.Int("max_connections", s.opts.MaxConnections))
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("serve", zap.Error(err))
		}
	}()
	s.log.Info("listening", zap.String("addr", ln.Addr().String()), zap.String("webhook_path", s.opts.WebhookPath),
		zap.Int("max_connections", s.opts.MaxConnections), zap.Int64("max_inflight_bytes", s.opts.MaxInflightBytes))
	return nil
}

// OpenConnections returns how many connections the listener holds open.
func (s *Server) OpenConnections() int {
	if s.ln == nil {
		return 0
	}
	return s.ln.Open()
}

// tracked marks, around each request, that its connection is in a handler
// (not evictable).
func (s *Server) tracked(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c := connOf(r); c != nil {
			c.enter()
			defer c.leave()
		}
		h.ServeHTTP(w, r)
	})
}

// refuseConn counts and logs (sampled) a connection closed by the listener.
func (s *Server) refuseConn(reason, remote string) {
	s.stats.refuse(reason)
	if s.refusals.allow(reason) {
		s.log.Warn("connection refused", zap.String("reason", reason), zap.String("remote", remote),
			zap.Int("max_connections", s.opts.MaxConnections))
	}
}

// Addr returns the bound address, e.g. "127.0.0.1:41234".
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// URL returns "http://" + Addr().
func (s *Server) URL() string { return "http://" + s.Addr() }

// Shutdown stops accepting connections and waits, until ctx ends, for
// in-flight requests to finish. It is safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeOnce.Do(func() {
		close(s.quit)
		if s.srv == nil {
			return
		}
		s.closeErr = s.srv.Shutdown(ctx)
		if s.closeErr != nil {
			s.closeErr = errors.Join(s.closeErr, s.srv.Close())
		}
		<-s.done
		s.refusals.stop()
	})
	return s.closeErr
}

// Close shuts down with a 15s grace.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return s.Shutdown(ctx)
}

// Refusal reasons, as counted and logged.
const (
	ReasonMethod       = "method_not_allowed"
	ReasonContentType  = "unsupported_content_type"
	ReasonTooLarge     = "body_too_large"
	ReasonBodyRead     = "body_unreadable"
	ReasonNotSigned    = "not_signed"
	ReasonMalformedSig = "malformed_signature"
	ReasonStale        = "stale_signature"
	ReasonBadSignature = "bad_signature"
	ReasonNotEvent     = "not_an_event"
	ReasonInvalidEvent = "invalid_event"
	ReasonQueue        = "queue_unavailable"
	// ReasonBusy: the bodies in flight hold Options.MaxInflightBytes (503).
	ReasonBusy = "inflight_bytes_exceeded"
	// ReasonTooManyConnections: a connection closed on arrival, at
	// Options.MaxConnections with none evictable (closed unread).
	ReasonTooManyConnections = "too_many_connections"
	// ReasonConnectionEvicted: an unproven connection between requests
	// closed to admit a new one at Options.MaxConnections.
	ReasonConnectionEvicted = "connection_evicted"
)

// Reasons lists every refusal reason, so that a counter by reason can
// start each at 0.
func Reasons() []string {
	return []string{ReasonMethod, ReasonContentType, ReasonTooLarge, ReasonBodyRead, ReasonNotSigned,
		ReasonMalformedSig, ReasonStale, ReasonBadSignature, ReasonNotEvent, ReasonInvalidEvent, ReasonQueue,
		ReasonBusy, ReasonTooManyConnections, ReasonConnectionEvicted}
}

// refuse answers status with {"error":{"code": reason, "message": answer}}
// (answer, when empty, is the reason's own words), counts the refusal and
// logs it (sampled). A refused request's
// connection is closed: an unauthenticated client gets no keep-alive to
// repeat itself on. logDetail is logged and must quote no value of the body.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, status int, reason, logDetail, answer string) {
	s.stats.refuse(reason)
	if c := connOf(r); c != nil {
		c.prove(false)
	}
	if s.refusals.allow(reason) {
		fields := []zap.Field{zap.Int("status", status), zap.String("reason", reason), zap.String("remote", r.RemoteAddr)}
		if logDetail != "" {
			fields = append(fields, zap.String("detail", logDetail))
		}
		s.log.Warn("webhook refused", fields...)
	}
	w.Header().Set("Connection", "close")
	if answer == "" {
		answer = reasonMessages[reason]
	}
	writeError(w, status, reason, answer)
}

// reasonMessages are the words of a webhook refusal whose handler gave none.
var reasonMessages = map[string]string{
	ReasonMethod:       "the webhook takes POST only",
	ReasonContentType:  "the body must be JSON (Content-Type: application/json)",
	ReasonTooLarge:     "the body is larger than the webhook accepts",
	ReasonBodyRead:     "the body could not be read",
	ReasonNotSigned:    "no WorkOS-Signature header",
	ReasonMalformedSig: "the WorkOS-Signature header is malformed",
	ReasonStale:        "the signature's timestamp is outside the tolerance",
	ReasonBadSignature: "the signature matches no webhook secret",
	ReasonNotEvent:     "not an event",
	ReasonInvalidEvent: "not a valid event",
	ReasonQueue:        "the event could not be stored; retry",
	ReasonBusy:         "too many request bodies in flight; retry",
}

func (s *Server) handleWebhook(w http.ResponseWriter, r *http.Request) {
	s.stats.Received.Add(1)
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.refuse(w, r, http.StatusMethodNotAllowed, ReasonMethod, "", "")
		return
	}
	if r.ContentLength > s.opts.MaxBodyBytes {
		s.refuse(w, r, http.StatusRequestEntityTooLarge, ReasonTooLarge, fmt.Sprintf("content length %d", r.ContentLength), "")
		return
	}
	// What the signature header alone decides is decided before the body
	// is read: an unsigned flood costs no memory.
	sig := r.Header.Get(events.HeaderName)
	if err := s.verifier.CheckHeader(sig); err != nil {
		s.refuseSignature(w, r, err)
		return
	}
	conn := connOf(r)
	if conn != nil {
		conn.prove(true)
	}
	// Reserve the body's bytes in the in-flight budget.
	want, limit := s.opts.MaxBodyBytes, s.inflight.max
	if r.ContentLength >= 0 {
		want = r.ContentLength
	}
	if want > smallBody {
		limit = s.inflight.max / 4 * 3
	}
	if !s.inflight.take(want, limit) {
		discardBody(w, r, want)
		w.Header().Set("Retry-After", "1")
		s.refuse(w, r, http.StatusServiceUnavailable, ReasonBusy, fmt.Sprintf("%d bytes of bodies in flight", s.inflight.used.Load()),
			"too many request bodies in flight; retry")
		return
	}
	defer s.inflight.give(want)
	buf := getBodyBuffer()
	defer putBodyBuffer(buf)
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength) + bytes.MinRead) // ReadFrom then needs no second buffer
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes))
	body := buf.Bytes()
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.refuse(w, r, http.StatusRequestEntityTooLarge, ReasonTooLarge, "", "")
			return
		}
		s.refuse(w, r, http.StatusBadRequest, ReasonBodyRead, err.Error(), "")
		return
	}
	if err := s.verifier.Verify(sig, body); err != nil {
		s.refuseSignature(w, r, err)
		return
	}
	// The content type is judged only for a signed body, so that every
	// forged or unsigned request gets its 401 whatever it claims to be.
	if ct := r.Header.Get("Content-Type"); ct != "" && ct != "application/json" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			s.refuse(w, r, http.StatusUnsupportedMediaType, ReasonContentType, fmt.Sprintf("content type %q", ct), "")
			return
		}
	}
	// The worker's own validation: what it would park for the event's
	// content is refused here, with a 400 WorkOS does not retry.
	ev, err := events.Decode(body)
	if err != nil {
		reason := ReasonNotEvent
		if errors.Is(err, events.ErrInvalid) {
			reason = ReasonInvalidEvent
		}
		public := "not an event"
		var de *events.DecodeError
		if errors.As(err, &de) {
			public = de.Public()
		}
		s.refuse(w, r, http.StatusBadRequest, reason, public, public)
		return
	}
	if ev.Ignored() {
		s.stats.Ignored.Add(1)
		s.log.Debug("event type not handled, acknowledged", zap.String("event_id", ev.ID), zap.String("type", string(ev.Type)))
		writeStatus(w, statusIgnored)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.PublishTimeout)
	defer cancel()
	dup, err := s.pub.Publish(ctx, ev.DirectoryID, string(ev.Type), ev.ID, body)
	if tooLarge(err) {
		// Permanent: the stored message would pass the queue's limit.
		s.refuse(w, r, http.StatusRequestEntityTooLarge, ReasonTooLarge, err.Error(), "larger than the queue's largest message")
		return
	}
	if err != nil {
		w.Header().Set("Retry-After", "5")
		s.refuse(w, r, http.StatusServiceUnavailable, ReasonQueue, err.Error(), "")
		return
	}
	if dup {
		s.stats.Duplicate.Add(1)
		writeStatus(w, statusDuplicate)
		return
	}
	s.stats.Enqueued.Add(1)
	writeStatus(w, statusEnqueued)
}

// refuseSignature answers 401 for Verify's or CheckHeader's error.
func (s *Server) refuseSignature(w http.ResponseWriter, r *http.Request, err error) {
	reason := ReasonBadSignature
	switch {
	case errors.Is(err, events.ErrNotSigned):
		reason = ReasonNotSigned
	case errors.Is(err, events.ErrMalformedSignature):
		reason = ReasonMalformedSig
	case errors.Is(err, events.ErrStale):
		reason = ReasonStale
	}
	s.refuse(w, r, http.StatusUnauthorized, reason, err.Error(), "")
}

// The webhook's 200 bodies, as writeJSON would encode {"status": …}, built
// once instead of per request.
var (
	statusEnqueued  = []byte(`{"status":"enqueued"}` + "\n")
	statusDuplicate = []byte(`{"status":"duplicate"}` + "\n")
	statusIgnored   = []byte(`{"status":"ignored"}` + "\n")
)

// writeStatus answers 200 with one of the status bodies above.
func writeStatus(w http.ResponseWriter, body []byte) {
	h := w.Header()
	h["Content-Type"] = []string{"application/json"}
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// refusedBodyWait bounds how long a refused request's body is read away.
const refusedBodyWait = 2 * time.Second

// discardBody reads what is left of r's body into nothing, at most n bytes
// and for at most refusedBodyWait, before a refusal is answered. The sender
// refused for the budget is likely WorkOS during a flood: a server that
// closes the connection with a body unread resets it, and a client still
// writing the body then sees the reset instead of the 503 and its
// Retry-After. Nothing is kept, so the budget of bodies held is untouched.
func discardBody(w http.ResponseWriter, r *http.Request, n int64) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(refusedBodyWait))
	_, _ = io.CopyN(io.Discard, r.Body, n)
}

// bodyBuffers recycles webhook bodies: a body is only needed until
// JetStream acknowledged it (the NATS client copies it when publishing), and
// reading each into a fresh, growing slice was the receiver's largest
// allocation.
var bodyBuffers = sync.Pool{New: func() any { return bytes.NewBuffer(make([]byte, 0, 4<<10)) }}

// maxPooledBody is the largest buffer kept for reuse; a rare big body is
// left to the garbage collector.
const maxPooledBody = 64 << 10

func getBodyBuffer() *bytes.Buffer { return bodyBuffers.Get().(*bytes.Buffer) }

func putBodyBuffer(b *bytes.Buffer) {
	if b.Cap() > maxPooledBody {
		return
	}
	b.Reset()
	bodyBuffers.Put(b)
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	body := map[string]any{"status": "ready"}
	if s.opts.Detail != nil {
		for k, v := range s.opts.Detail() {
			body[k] = v
		}
	}
	if s.opts.Degraded != nil {
		if d := s.opts.Degraded(); len(d) > 0 {
			body["degraded"] = d
		}
	}
	if s.opts.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.opts.Ready(ctx); err != nil {
			body["status"], body["reason"] = "not ready", err.Error()
			writeJSON(w, http.StatusServiceUnavailable, body)
			return
		}
	}
	writeJSON(w, http.StatusOK, body)
}

// authed guards a /v1 handler, in this order: the Host header must name
// this server (else 421, against DNS rebinding); the bearer token must match
// (else 401); a request that changes something must be JSON (else 415: a
// browser posts forms and text cross-site without asking, never JSON).
func (s *Server) authed(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.hostAllowed(r) {
			s.refuseAPI(w, r, http.StatusMisdirectedRequest, CodeForeignHost,
				"Host "+strconv.Quote(r.Host)+" is not this server: /v1 answers requests for its listen address, loopback or http.allowed_hosts")
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || s.opts.APIToken == "" || subtle.ConstantTimeCompare([]byte(got), []byte(s.opts.APIToken)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="dsyncd"`)
			s.refuseAPI(w, r, http.StatusUnauthorized, CodeToken, "missing or wrong bearer token")
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead && !isJSON(r.Header.Get("Content-Type")) {
			s.refuseAPI(w, r, http.StatusUnsupportedMediaType, CodeContentType,
				"a request that changes something must have Content-Type: application/json")
			return
		}
		if s.opts.NoStore {
			s.refuseAPI(w, r, http.StatusServiceUnavailable, CodeUnavailable,
				"this node only receives webhooks (worker.enabled: false) and keeps no store: ask a node that applies events")
			return
		}
		h(w, r)
	}
}

// refuseAPI answers a refused /v1 request, with its code, and logs why.
func (s *Server) refuseAPI(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	s.log.Warn("api request refused", zap.Int("status", status), zap.String("reason", code),
		zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.String("host", r.Host), zap.String("remote", r.RemoteAddr))
	writeError(w, status, code, msg)
}

// isJSON reports whether a Content-Type is application/json or a +json type.
func isJSON(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// hostAllowed reports whether r's Host names this server: "localhost", a
// loopback address, the address the connection reached, the listen host,
// or one of AllowedHosts. A name an attacker's DNS can point here is none
// of these unless an operator listed it.
func (s *Server) hostAllowed(r *http.Request) bool {
	host := strings.ToLower(r.Host)
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	name = strings.TrimSuffix(strings.Trim(name, "[]"), ".")
	if name == "" {
		return false
	}
	if name == "localhost" {
		return true
	}
	if ip := net.ParseIP(name); ip != nil {
		if ip.IsLoopback() {
			return true
		}
		if la, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); ok && la.IP.Equal(ip) {
			return true
		}
	}
	if lh, _, err := net.SplitHostPort(s.opts.Listen); err == nil && lh != "" && strings.EqualFold(strings.Trim(lh, "[]"), name) {
		return true
	}
	for _, a := range s.opts.AllowedHosts {
		a = strings.ToLower(strings.TrimSpace(a))
		if a != "" && (a == host || a == name) {
			return true
		}
	}
	return false
}

// handleExport streams the snapshot as the store is read (storage.ExportFeedTo,
// with change_seq first and in the Dsyncd-Change-Seq header):
// memory stays bounded whatever the store's size. An error before the first
// bytes went out is an error answer; after, the connection is cut, so that a
// client never takes a truncated body for a complete one.
func (s *Server) handleExport(w http.ResponseWriter, r *http.Request) {
	// A large store outlasts http.write_timeout (1M users: ~550 MB).
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", "application/json")
	sw := &startedWriter{w: w}
	err := s.st.ExportFeedTo(sw, func(seq uint64) { w.Header().Set(HeaderChangeSeq, strconv.FormatUint(seq, 10)) })
	if err != nil {
		if !sw.started {
			w.Header().Del("Content-Type")
			s.fail(w, r, err)
			return
		}
		s.log.Error("export cut short", zap.Error(err))
		panic(http.ErrAbortHandler)
	}
}

// startedWriter records whether anything was written to w.
type startedWriter struct {
	w       io.Writer
	started bool
}

func (s *startedWriter) Write(p []byte) (int, error) {
	s.started = true
	return s.w.Write(p)
}

func (s *Server) handleUser(w http.ResponseWriter, r *http.Request) {
	u, err := s.st.User(r.PathValue("id"))
	if errors.Is(err, storage.ErrNotFound) {
		err = notFound("no such user")
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, u)
}

func (s *Server) handleDirectoryUsers(w http.ResponseWriter, r *http.Request) {
	users, err := s.st.UsersWithBadge(r.PathValue("id"), mapping.Badge(r.URL.Query().Get("badge")))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"users": users})
}

func (s *Server) handleAudit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := storage.AuditFilter{UserID: q.Get("user"), OrganizationID: q.Get("org"), Badge: mapping.Badge(q.Get("badge"))}
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			s.fail(w, r, badRequest("since: want an RFC 3339 time"))
			return
		}
		f.Since = t
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			s.fail(w, r, badRequest("limit: want a number >= 0 (0: every entry)"))
			return
		}
		f.Limit = n
	}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			s.fail(w, r, badRequest("after: want an entry's seq"))
			return
		}
		f.After = n
	}
	if f.Limit > 0 {
		entries, err := s.st.Audit(f)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"entries": entries})
		return
	}
	s.streamAudit(w, r, f)
}

// auditPage is how many entries streamAudit reads in one store transaction.
const auditPage = 1000

// streamAudit writes every entry matching f (as writeJSON would write them
// all), a page at a time: the answer's size is not held in memory, and no
// read transaction stays open while a slow client reads.
func (s *Server) streamAudit(w http.ResponseWriter, r *http.Request, f storage.AuditFilter) {
	f.Limit, f.Oldest = auditPage, true
	page, err := s.st.Audit(f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	_, _ = bw.WriteString(`{"entries":[`)
	for first := true; ; {
		for _, e := range page {
			b, err := json.Marshal(e)
			if err != nil {
				s.log.Error("audit: encode entry", zap.Uint64("seq", e.Seq), zap.Error(err))
				return // the client sees a truncated answer, not a complete wrong one
			}
			if !first {
				_ = bw.WriteByte(',')
			}
			first = false
			_, _ = bw.Write(b)
		}
		if len(page) < auditPage {
			break
		}
		f.After = page[len(page)-1].Seq
		if page, err = s.st.Audit(f); err != nil {
			s.log.Error("audit: read the next page", zap.Uint64("after", f.After), zap.Error(err))
			return
		}
	}
	_, _ = bw.WriteString("]}\n")
	_ = bw.Flush()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// tooLarge reports whether err says the event is larger than the queue's
// largest message (queue.ErrTooLarge, which has a TooLarge method: the
// server does not import the queue).
func tooLarge(err error) bool {
	var tl interface{ TooLarge() bool }
	return errors.As(err, &tl) && tl.TooLarge()
}
