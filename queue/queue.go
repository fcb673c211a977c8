package queue

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Defaults applied by [New] to zero-valued [Options] fields.
const (
	DefaultStream          = "DSYNC"
	DefaultReplicas        = 1
	DefaultSubjectPrefix   = "dsync"
	DefaultDLQStream       = "DSYNC_DLQ"
	DefaultDuplicateWindow = 2 * time.Second
	DefaultConnectTimeout  = 5 * time.Second
	DefaultReconnectWait   = time.Second
	DefaultMaxAckPending   = 1024
	DefaultHealthInterval  = 2 * time.Second
)

// How long Open waits at most for the embedded server to accept clients when
// its context has no deadline.
const defaultStartTimeout = time.Minute

// How long Close waits at most for the connection to drain.
const drainTimeout = 10 * time.Second

var (
	// ErrNotOpen is returned by every operation on a Queue that is not open:
	// before Open succeeded, or after Close.
	ErrNotOpen = errors.New("queue: not open")

	// ErrAlreadyOpen is returned by Open on a Queue that is open or opening.
	ErrAlreadyOpen = errors.New("queue: already open")

	// ErrInvalidOptions is wrapped by Open's errors about unusable Options.
	ErrInvalidOptions = errors.New("queue: invalid options")

	// ErrNotFound is wrapped by errors about a dead letter or consumer that
	// does not exist.
	ErrNotFound = errors.New("queue: not found")

	// ErrTooLarge is wrapped by Publish's error when the event, as stored,
	// is larger than the server's largest message (max_payload): retrying
	// cannot help. Its TooLarge method reports true, so that a caller which
	// does not import queue (the receiver) can tell with errors.As.
	ErrTooLarge error = tooLargeError{}
)

type tooLargeError struct{}

func (tooLargeError) Error() string  { return "queue: larger than the queue's largest message" }
func (tooLargeError) TooLarge() bool { return true }

// Options configures a Queue. Zero values take the defaults documented per
// field.
type Options struct {
	// URL of an external NATS server with JetStream, e.g.
	// "nats://nats.internal:4222" (a comma-separated list is allowed).
	// Empty: run an embedded nats-server in this process.
	URL string

	// StoreDir is the embedded server's JetStream store directory, e.g.
	// "<data_dir>/jetstream". Required when URL is empty, unused otherwise.
	StoreDir string

	// Listen is the embedded server's "host:port" for client connections.
	// Empty means 127.0.0.1 on a random free port; port 0 means a random
	// port too; an empty host (":4222") means every interface.
	Listen string

	// SyncInterval is how often the embedded server fsyncs JetStream files
	// (nats-server's default, 2 minutes, when zero). See the package doc's
	// Caveats for what a 2xx promises.
	SyncInterval time.Duration

	// SyncAlways makes the embedded server fsync every JetStream write before
	// acknowledging it: no loss on power failure, slower publishes.
	SyncAlways bool

	// MaxMemory is the embedded server's JetStream memory limit in bytes;
	// zero lets nats-server choose (75% of the system memory).
	MaxMemory int64

	// MaxStore is the embedded server's JetStream file storage limit in
	// bytes; zero lets nats-server choose (up to 1 TB, bounded by free disk).
	MaxStore int64

	// Creds is the path of a NATS credentials (JWT + nkey) file for an
	// external server. Invalid with the embedded server.
	Creds string

	// User and Password authenticate to an external server. With the
	// embedded server they become its only user, which the Queue itself
	// connects as too.
	User     string
	Password string

	// TLSCA is the path of a PEM CA bundle to verify an external server's
	// TLS certificate. Invalid with the embedded server.
	TLSCA string

	// Stream is the name of the main stream. Default "DSYNC".
	Stream string

	// SubjectPrefix is the first token(s) of the main stream's subjects; the
	// stream holds "<SubjectPrefix>.>". Default "dsync".
	SubjectPrefix string

	// DLQStream is the name of the dead-letter stream, which holds the
	// subjects "<DLQStream>.>"; that namespace must not overlap
	// SubjectPrefix. Default "DSYNC_DLQ".
	DLQStream string

	// Replicas is the number of replicas of both streams (clustered external
	// servers only; the embedded server supports 1). Default 1.
	Replicas int

	// MaxBytes limits the size of each stream in bytes; a full stream
	// refuses new messages (DiscardNew). Zero or negative: unlimited, bounded
	// only by the server's JetStream storage limit.
	MaxBytes int64

	// MaxAge expires main stream messages older than this. Zero keeps them
	// forever, which rebuilding the store with Each needs. Dead letters never
	// expire.
	MaxAge time.Duration

	// DuplicateWindow is how long JetStream remembers message ids to drop
	// duplicate publishes; it holds each id of the window in memory. Default
	// 2 seconds, cut to MaxAge if that is shorter.
	DuplicateWindow time.Duration

	// ConnectTimeout bounds the initial TCP/TLS connection and is the
	// JetStream API timeout for calls whose context has no deadline.
	// Default 5 s.
	ConnectTimeout time.Duration

	// ReconnectWait is the pause between reconnection attempts (which go on
	// forever). Default 1 s.
	ReconnectWait time.Duration

	// Encoding is how Publish stores event data in the main stream:
	// EncodingJSON (as received) or EncodingS2 (compressed, marked with
	// HeaderEncoding). Readers decode with Data whatever the setting, so it
	// can change at any time. Default EncodingJSON.
	Encoding string

	// MaxAckPending is the most messages a consumer from Consumer may have
	// delivered but unacknowledged; make it a few times the worker's batch
	// size. Default 1024.
	MaxAckPending int

	// HealthInterval is how often the embedded server's JetStream health is
	// checked (and, after a failed publish, at once): see the package doc's
	// "Write errors". Default 2 s.
	HealthInterval time.Duration
}

// Queue is dsyncd's JetStream event queue. Its methods are safe for
// concurrent use.
type Queue struct {
	opts Options
	log  *zap.Logger

	mu      sync.RWMutex
	st      *state // nil unless open
	opening bool

	health health // the embedded server's write health; see recover.go
}

// state is what an open Queue holds.
type state struct {
	// srv is the embedded server (nil with an external one). Once open, only
	// the monitor goroutine replaces it (recover.go), and shutdown reads it
	// after the monitor stopped.
	srv    *server.Server
	sopts  *server.Options // the embedded server's options, its port fixed once started
	mon    *monitor        // nil with an external server
	nc     *nats.Conn
	closed chan struct{} // closed by the connection's ClosedHandler
	js     jetstream.JetStream
	main   jetstream.Stream
	dlq    jetstream.Stream
	url    string
}

// New returns a Queue for opts with defaults filled in. It does no I/O and
// never fails: Open reports bad options.
func New(opts Options, log *zap.Logger) *Queue {
	if log == nil {
		log = zap.NewNop()
	}
	if opts.Stream == "" {
		opts.Stream = DefaultStream
	}
	if opts.SubjectPrefix == "" {
		opts.SubjectPrefix = DefaultSubjectPrefix
	}
	if opts.DLQStream == "" {
		opts.DLQStream = DefaultDLQStream
	}
	if opts.Replicas <= 0 {
		opts.Replicas = DefaultReplicas
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = -1
	}
	if opts.DuplicateWindow <= 0 {
		opts.DuplicateWindow = DefaultDuplicateWindow
		if opts.MaxAge > 0 && opts.MaxAge < opts.DuplicateWindow {
			opts.DuplicateWindow = opts.MaxAge
		}
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	if opts.ReconnectWait <= 0 {
		opts.ReconnectWait = DefaultReconnectWait
	}
	if opts.MaxAckPending <= 0 {
		opts.MaxAckPending = DefaultMaxAckPending
	}
	if opts.Encoding == "" {
		opts.Encoding = EncodingJSON
	}
	if opts.HealthInterval <= 0 {
		opts.HealthInterval = DefaultHealthInterval
	}
	q := &Queue{opts: opts, log: log.Named("queue")}
	q.health.kick = make(chan struct{}, 1)
	return q
}

// Options returns the options in effect, defaults filled in.
func (q *Queue) Options() Options { return q.opts }

func (q *Queue) validate() error {
	o := q.opts
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidOptions, fmt.Sprintf(format, a...))
	}
	if o.URL == "" {
		if o.StoreDir == "" {
			return bad("StoreDir is required for the embedded server")
		}
		if o.Creds != "" || o.TLSCA != "" {
			return bad("Creds and TLSCA apply to an external server only")
		}
		if o.Replicas > 1 {
			return bad("the embedded server supports Replicas 1, not %d", o.Replicas)
		}
	}
	if o.Password != "" && o.User == "" {
		return bad("Password without User")
	}
	for _, n := range []string{o.Stream, o.DLQStream} {
		if !validName(n) {
			return bad("stream name %q must not contain '.', '*', '>', '/', '\\' or white space", n)
		}
	}
	if o.Stream == o.DLQStream {
		return bad("Stream and DLQStream are both %q", o.Stream)
	}
	for _, t := range strings.Split(o.SubjectPrefix, ".") {
		if t == "" || !validName(t) {
			return bad("SubjectPrefix %q is not a literal subject", o.SubjectPrefix)
		}
	}
	if o.SubjectPrefix == o.DLQStream || strings.HasPrefix(o.SubjectPrefix, o.DLQStream+".") {
		return bad("SubjectPrefix %q overlaps the dead-letter subjects %q", o.SubjectPrefix, o.DLQStream+".>")
	}
	if o.Encoding != EncodingJSON && o.Encoding != EncodingS2 {
		return bad("Encoding %q is neither %q nor %q", o.Encoding, EncodingJSON, EncodingS2)
	}
	if o.MaxAge > 0 && o.DuplicateWindow > o.MaxAge {
		return bad("DuplicateWindow %s exceeds MaxAge %s", o.DuplicateWindow, o.MaxAge)
	}
	return nil
}

// validName reports whether s is usable as a stream or consumer name (and
// so as a subject token).
func validName(s string) bool {
	return s != "" && !strings.ContainsAny(s, ".*>/\\ \t\r\n")
}

// Open starts the embedded server (when Options.URL is empty), connects, and
// creates or updates the main and dead-letter streams. On error everything it
// started is stopped again. A closed Queue may be opened again.
func (q *Queue) Open(ctx context.Context) (err error) {
	q.mu.Lock()
	if q.st != nil || q.opening {
		q.mu.Unlock()
		return ErrAlreadyOpen
	}
	q.opening = true
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		q.opening = false
		q.mu.Unlock()
	}()

	if err := q.validate(); err != nil {
		return err
	}
	st := &state{closed: make(chan struct{})}
	defer func() {
		if err != nil {
			st.shutdown(q.log)
		}
	}()

	st.url = q.opts.URL
	if st.url == "" {
		if st.srv, st.sopts, st.url, err = q.startServer(ctx); err != nil {
			return err
		}
	}
	if st.nc, err = q.connect(st.url, st.closed); err != nil {
		return fmt.Errorf("queue: connect to %s: %w", redact(st.url), err)
	}
	if st.js, err = jetstream.New(st.nc, jetstream.WithDefaultTimeout(q.opts.ConnectTimeout)); err != nil {
		return fmt.Errorf("queue: jetstream: %w", err)
	}
	if st.main, err = retryUnanswered(ctx, q.log, "stream "+q.opts.Stream, func(ctx context.Context) (jetstream.Stream, error) {
		return st.js.CreateOrUpdateStream(ctx, q.mainConfig())
	}); err != nil {
		return fmt.Errorf("queue: create or update stream %s: %w", q.opts.Stream, err)
	}
	if st.dlq, err = retryUnanswered(ctx, q.log, "stream "+q.opts.DLQStream, func(ctx context.Context) (jetstream.Stream, error) {
		return st.js.CreateOrUpdateStream(ctx, q.dlqConfig())
	}); err != nil {
		return fmt.Errorf("queue: create or update stream %s: %w", q.opts.DLQStream, err)
	}

	q.health.reset()
	if st.srv != nil {
		st.mon = q.startMonitor(st)
	}
	q.mu.Lock()
	q.st = st
	q.mu.Unlock()
	q.log.Info("queue open",
		zap.String("url", redact(st.url)),
		zap.Bool("embedded", q.opts.URL == ""),
		zap.String("stream", q.opts.Stream),
		zap.String("dlq_stream", q.opts.DLQStream))
	return nil
}

// mainConfig is the main stream's configuration. DiscardNew: a full stream
// refuses publishes (the receiver answers 503 and WorkOS retries) rather than
// dropping old events that may not have been applied yet.
func (q *Queue) mainConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        q.opts.Stream,
		Description: "dsyncd: WorkOS Directory Sync events",
		Subjects:    []string{q.opts.SubjectPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardNew,
		MaxBytes:    q.opts.MaxBytes,
		MaxAge:      q.opts.MaxAge,
		MaxMsgs:     -1,
		MaxMsgSize:  -1,
		Duplicates:  q.opts.DuplicateWindow,
		Replicas:    q.opts.Replicas,
	}
}

// dlqConfig is the dead-letter stream's configuration: like the main stream,
// but dead letters never expire (an operator deals with each).
func (q *Queue) dlqConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        q.opts.DLQStream,
		Description: "dsyncd: dead-lettered events",
		Subjects:    []string{q.opts.DLQStream + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardNew,
		MaxBytes:    q.opts.MaxBytes,
		MaxMsgs:     -1,
		MaxMsgSize:  -1,
		Duplicates:  q.opts.DuplicateWindow,
		Replicas:    q.opts.Replicas,
	}
}

// startServer runs the embedded nats-server and waits until it accepts
// clients. It returns the server, its options (with the port it listens on,
// for a restart in place) and the URL to connect to.
func (q *Queue) startServer(ctx context.Context) (*server.Server, *server.Options, string, error) {
	host, port := "127.0.0.1", server.RANDOM_PORT
	if q.opts.Listen != "" {
		h, p, err := net.SplitHostPort(q.opts.Listen)
		if err != nil {
			return nil, nil, "", fmt.Errorf("%w: Listen %q: %v", ErrInvalidOptions, q.opts.Listen, err)
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 65535 {
			return nil, nil, "", fmt.Errorf("%w: Listen %q: bad port", ErrInvalidOptions, q.opts.Listen)
		}
		if n == 0 {
			n = server.RANDOM_PORT // nats-server takes 0 as its default port, 4222
		}
		host, port = h, n
		if host == "" {
			host = "0.0.0.0"
		}
	}
	if ip := net.ParseIP(host); (ip == nil || !ip.IsLoopback()) && host != "localhost" && q.opts.User == "" {
		q.log.Warn("embedded NATS server listens beyond loopback without authentication; set a user and password",
			zap.String("listen", net.JoinHostPort(host, strconv.Itoa(port))))
	}
	sopts := &server.Options{
		ServerName:         "dsyncd",
		Host:               host,
		Port:               port,
		Username:           q.opts.User,
		Password:           q.opts.Password,
		NoSigs:             true, // the daemon handles SIGTERM itself
		JetStream:          true,
		StoreDir:           q.opts.StoreDir,
		SyncInterval:       q.opts.SyncInterval,
		SyncAlways:         q.opts.SyncAlways,
		JetStreamMaxMemory: q.opts.MaxMemory,
		JetStreamMaxStore:  q.opts.MaxStore,
	}
	wait := defaultStartTimeout
	if dl, ok := ctx.Deadline(); ok {
		wait = time.Until(dl)
	}
	srv, err := q.launch(sopts, wait)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return nil, nil, "", fmt.Errorf("%w: %w", err, cerr)
		}
		return nil, nil, "", err
	}
	addr, ok := srv.Addr().(*net.TCPAddr)
	if !ok {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, nil, "", errors.New("queue: embedded server has no TCP address")
	}
	fixed := *sopts
	fixed.Port = addr.Port
	chost := host
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		chost = "127.0.0.1"
		if ip.To4() == nil {
			chost = "::1"
		}
	}
	u := url.URL{Scheme: "nats", Host: net.JoinHostPort(chost, strconv.Itoa(addr.Port))}
	return srv, &fixed, u.String(), nil
}

// launch starts an embedded server with a copy of sopts and waits up to wait
// for it to accept clients with JetStream enabled.
func (q *Queue) launch(sopts *server.Options, wait time.Duration) (*server.Server, error) {
	o := *sopts
	srv, err := server.NewServer(&o)
	if err != nil {
		return nil, fmt.Errorf("queue: embedded server: %w", err)
	}
	slog := q.log.Named("nats-server")
	srv.SetLogger(serverLogger{slog.Sugar()}, slog.Core().Enabled(zap.DebugLevel), false)
	srv.Start()
	if !srv.ReadyForConnections(wait) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("queue: embedded server not ready within %s", wait)
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, errors.New("queue: embedded server started without JetStream (see its log)")
	}
	return srv, nil
}

// connect dials url; closed is closed once the connection is closed for good.
func (q *Queue) connect(url string, closed chan struct{}) (*nats.Conn, error) {
	var once sync.Once
	opts := []nats.Option{
		nats.Name("dsyncd"),
		nats.Timeout(q.opts.ConnectTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(q.opts.ReconnectWait),
		// No buffering while disconnected: publishes fail at once instead of
		// being sent after the caller already answered 503.
		nats.ReconnectBufSize(-1),
		nats.DrainTimeout(drainTimeout),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				q.log.Warn("NATS disconnected", zap.Error(err))
			} else {
				q.log.Debug("NATS disconnected")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			q.log.Info("NATS reconnected", zap.String("url", redact(nc.ConnectedUrl())))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			f := []zap.Field{zap.Error(err)}
			if sub != nil {
				f = append(f, zap.String("subject", sub.Subject))
			}
			q.log.Error("NATS async error", f...)
		}),
		nats.ClosedHandler(func(*nats.Conn) { once.Do(func() { close(closed) }) }),
	}
	if q.opts.User != "" {
		opts = append(opts, nats.UserInfo(q.opts.User, q.opts.Password))
	}
	if q.opts.Creds != "" {
		opts = append(opts, nats.UserCredentials(q.opts.Creds))
	}
	if q.opts.TLSCA != "" {
		opts = append(opts, nats.RootCAs(q.opts.TLSCA))
	}
	return nats.Connect(url, opts...)
}

// shutdown drains the connection and stops the embedded server, whatever of
// them exists.
func (st *state) shutdown(log *zap.Logger) {
	st.mon.stop()
	if st.nc != nil {
		if err := st.nc.Drain(); err != nil {
			st.nc.Close()
		}
		select {
		case <-st.closed:
		case <-time.After(drainTimeout + time.Second):
			log.Warn("NATS connection did not drain in time; closing")
			st.nc.Close()
		}
	}
	if st.srv != nil {
		st.srv.Shutdown()
		st.srv.WaitForShutdown()
	}
}

// Close drains the connection and shuts the embedded server down. It is safe
// to call more than once, and on a Queue that never opened.
func (q *Queue) Close() error {
	q.mu.Lock()
	st := q.st
	q.st = nil
	q.mu.Unlock()
	if st == nil {
		return nil
	}
	st.shutdown(q.log)
	q.log.Info("queue closed")
	return nil
}

func (q *Queue) state() (*state, error) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.st == nil {
		return nil, ErrNotOpen
	}
	return q.st, nil
}

// ClientURL is the URL clients connect to: the embedded server's address with
// its actual port, or Options.URL. Empty when the Queue is not open.
func (q *Queue) ClientURL() string {
	st, err := q.state()
	if err != nil {
		return ""
	}
	return st.url
}

// Publish stores data under Subject(directoryID, eventType) with msgID as
// Nats-Msg-Id, and returns once JetStream acknowledged it. duplicate reports
// that JetStream already held a message with that id (within the duplicate
// window) and stored nothing. An empty msgID disables deduplication. Publish
// gives up at ctx's deadline (ConnectTimeout when ctx has none) and fails at
// once while disconnected. The data is stored as Options.Encoding says.
func (q *Queue) Publish(ctx context.Context, directoryID, eventType, msgID string, data []byte) (duplicate bool, err error) {
	st, err := q.state()
	if err != nil {
		return false, err
	}
	if err := q.health.fault(); err != nil {
		return false, err // fail at once rather than wait for the deadline
	}
	opts := []jetstream.PublishOpt{jetstream.WithExpectStream(q.opts.Stream)}
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	body, enc, buf := encoded(q.opts.Encoding, data)
	if buf != nil {
		defer encodeBufs.Put(buf)
	}
	m := &nats.Msg{Subject: q.Subject(directoryID, eventType), Data: body}
	if enc != "" {
		m.Header = nats.Header{HeaderEncoding: []string{enc}}
	}
	ack, err := st.js.PublishMsg(ctx, m, opts...)
	if err != nil {
		q.health.publishFailed()
		if errors.Is(err, nats.ErrMaxPayload) {
			return false, fmt.Errorf("queue: publish: %w: %w", ErrTooLarge, err)
		}
		return false, fmt.Errorf("queue: publish: %w", err)
	}
	return ack.Duplicate, nil
}

// PublishControl stores a control message (a decision every node applies at
// its place in the stream: see Delivery.Control) of kind under
// ControlSubject(kind), with msgID as Nats-Msg-Id, as JSON, and returns
// its stream sequence once JetStream acknowledged it.
func (q *Queue) PublishControl(ctx context.Context, kind, msgID string, data []byte) (uint64, error) {
	st, err := q.state()
	if err != nil {
		return 0, err
	}
	if err := q.health.fault(); err != nil {
		return 0, err
	}
	m := &nats.Msg{Subject: q.ControlSubject(kind), Data: data, Header: nats.Header{HeaderControl: []string{kind}}}
	opts := []jetstream.PublishOpt{jetstream.WithExpectStream(q.opts.Stream)}
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	ack, err := st.js.PublishMsg(ctx, m, opts...)
	if err != nil {
		q.health.publishFailed()
		return 0, fmt.Errorf("queue: publish control: %w", err)
	}
	return ack.Sequence, nil
}

// FirstControl returns the first control message of kind (see
// PublishControl) in the main stream at or after sequence from: its
// sequence and its JSON; found is false when the stream holds none.
func (q *Queue) FirstControl(ctx context.Context, kind string, from uint64) (seq uint64, data []byte, found bool, err error) {
	st, err := q.state()
	if err != nil {
		return 0, nil, false, err
	}
	m, err := retryUnanswered(ctx, q.log, "first "+kind+" control", func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
		return st.main.GetMsg(ctx, max(from, 1), jetstream.WithGetMsgSubject(q.ControlSubject(kind)))
	})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil, false, nil
	}
	if err != nil {
		return 0, nil, false, fmt.Errorf("queue: first %s control: %w", kind, err)
	}
	return m.Sequence, m.Data, true, nil
}

// Ready reports whether JetStream answers and the main stream exists.
func (q *Queue) Ready(ctx context.Context) error {
	st, err := q.state()
	if err != nil {
		return err
	}
	if err := q.health.fault(); err != nil {
		return err
	}
	if s := st.nc.Status(); s != nats.CONNECTED {
		return fmt.Errorf("queue: NATS connection %s", s)
	}
	if _, err := st.main.Info(ctx); err != nil {
		return fmt.Errorf("queue: stream %s: %w", q.opts.Stream, err)
	}
	return nil
}

// StreamInfo is what the main stream holds (see Queue.StreamInfo).
type StreamInfo struct {
	State StreamState
}

// StreamState counts the main stream's messages.
type StreamState struct {
	Msgs       uint64    // messages held
	Bytes      uint64    // bytes held
	FirstSeq   uint64    // sequence of the oldest message held
	FirstTime  time.Time // when it was stored
	LastSeq    uint64    // sequence of the newest message stored
	LastTime   time.Time // when it was stored
	NumDeleted int       // messages removed between FirstSeq and LastSeq
}

// StreamInfo returns the main stream's current state.
func (q *Queue) StreamInfo(ctx context.Context) (*StreamInfo, error) {
	st, err := q.state()
	if err != nil {
		return nil, err
	}
	info, err := st.main.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("queue: stream %s: %w", q.opts.Stream, err)
	}
	s := info.State
	return &StreamInfo{State: StreamState{Msgs: s.Msgs, Bytes: s.Bytes, FirstSeq: s.FirstSeq, FirstTime: s.FirstTime,
		LastSeq: s.LastSeq, LastTime: s.LastTime, NumDeleted: s.NumDeleted}}, nil
}

// Consumer creates, or updates, the durable pull consumer named durable on
// the main stream: explicit acks, redelivery after ackWait (the server's
// default, 30 s, when zero), at most Options.MaxAckPending unacknowledged
// messages, and unlimited deliveries: the worker decides when to Park.
func (q *Queue) Consumer(ctx context.Context, durable string, ackWait time.Duration) (*Consumer, error) {
	return q.ConsumerAfter(ctx, durable, ackWait, 0)
}

// ConsumerAfter is Consumer, except that a consumer it creates starts after
// stream sequence after (the position of a store that has applied the
// stream up to there, say a node given its own consumer); an existing one
// keeps its position.
func (q *Queue) ConsumerAfter(ctx context.Context, durable string, ackWait time.Duration, after uint64) (*Consumer, error) {
	c, err := q.jsConsumer(ctx, durable, ackWait, after)
	if err != nil {
		return nil, err
	}
	// What it delivered already, so that a gap after it is seen (Batch.Next).
	return &Consumer{q: q, c: c, seen: c.CachedInfo().Delivered.Stream}, nil
}

// jsConsumer is Consumer's JetStream consumer.
func (q *Queue) jsConsumer(ctx context.Context, durable string, ackWait time.Duration, after uint64) (jetstream.Consumer, error) {
	st, err := q.state()
	if err != nil {
		return nil, err
	}
	if !validName(durable) {
		return nil, fmt.Errorf("%w: consumer name %q", ErrInvalidOptions, durable)
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   "dsyncd worker",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    -1,
		MaxAckPending: q.opts.MaxAckPending,
	}
	ex, err := retryUnanswered(ctx, q.log, "consumer "+durable, func(ctx context.Context) (jetstream.Consumer, error) {
		return st.main.Consumer(ctx, durable)
	})
	switch {
	case err == nil && ex.CachedInfo().NumAckPending > 0:
		// Deliveries of a previous process left unacknowledged (it was
		// killed): JetStream would deliver them again only after their ack
		// wait, after the messages behind them. Start again at the ack
		// floor instead, so that they come first, in stream order (what
		// was acknowledged above the floor comes again too, as duplicates).
		floor := ex.CachedInfo().AckFloor.Stream
		if err := st.main.DeleteConsumer(ctx, durable); err != nil {
			return nil, fmt.Errorf("queue: consumer %s: %w", durable, err)
		}
		q.log.Info("consumer restarted at its ack floor: deliveries of a previous process come again in stream order",
			zap.String("consumer", durable), zap.Uint64("ack_floor", floor), zap.Int("ack_pending", ex.CachedInfo().NumAckPending))
		if floor > 0 {
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, floor+1
		}
	case err == nil:
		// The deliver policy of an existing consumer cannot change: keep it.
		cfg.DeliverPolicy, cfg.OptStartSeq = ex.CachedInfo().Config.DeliverPolicy, ex.CachedInfo().Config.OptStartSeq
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		if after > 0 {
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, after+1
		}
	default:
		return nil, fmt.Errorf("queue: consumer %s: %w", durable, err)
	}
	c, err := retryUnanswered(ctx, q.log, "consumer "+durable, func(ctx context.Context) (jetstream.Consumer, error) {
		return st.js.CreateOrUpdateConsumer(ctx, q.opts.Stream, cfg)
	})
	if err == nil && (ex == nil || cfg.DeliverPolicy == jetstream.DeliverByStartSequencePolicy && ex.CachedInfo().NumAckPending > 0) {
		// A consumer created now must find in the stream every message
		// after its start: JetStream would silently start at the first
		// one still held (the others purged behind a snapshot).
		if err := q.checkStart(ctx, st, durable, max(cfg.OptStartSeq, 1)); err != nil {
			return nil, err
		}
	}
	if err != nil {
		return nil, fmt.Errorf("queue: consumer %s: %w", durable, err)
	}
	return c, nil
}

// ErrPurged is wrapped by ConsumerAfter's error when the stream no longer
// holds the messages the consumer should start with.
var ErrPurged = errors.New("queue: the stream no longer holds the messages to start from")

// checkStart deletes durable, just created to start at seq, and returns an
// error wrapping ErrPurged when the stream's first message is after seq.
func (q *Queue) checkStart(ctx context.Context, st *state, durable string, seq uint64) error {
	info, err := st.main.Info(ctx)
	if err != nil {
		return fmt.Errorf("queue: stream %s: %w", q.opts.Stream, err)
	}
	if info.State.Msgs == 0 && info.State.LastSeq < seq || info.State.FirstSeq <= seq {
		return nil
	}
	_ = st.main.DeleteConsumer(ctx, durable)
	return fmt.Errorf("%w: consumer %s would start at seq %d, the stream %s starts at %d", ErrPurged, durable, seq, q.opts.Stream, info.State.FirstSeq)
}

// Pending is the consumer's lag: messages not yet delivered plus messages
// delivered but not yet acknowledged.
func (q *Queue) Pending(ctx context.Context, consumer string) (uint64, error) {
	st, err := q.state()
	if err != nil {
		return 0, err
	}
	c, err := st.main.Consumer(ctx, consumer)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0, fmt.Errorf("%w: consumer %s", ErrNotFound, consumer)
	}
	if err != nil {
		return 0, fmt.Errorf("queue: consumer %s: %w", consumer, err)
	}
	info := c.CachedInfo()
	pending := info.NumPending + uint64(info.NumAckPending)
	// Right after a delivery the server can report neither pending nor
	// ack-pending for a message not yet acknowledged: the ack floor tells.
	if pending == 0 {
		si, err := st.main.Info(ctx)
		if err != nil {
			return 0, fmt.Errorf("queue: stream info: %w", err)
		}
		if last := si.State.LastSeq; last > info.AckFloor.Stream && si.State.Msgs > 0 && last >= si.State.FirstSeq {
			pending = last - max(info.AckFloor.Stream, si.State.FirstSeq-1)
		}
	}
	return pending, nil
}

// Each calls fn for every message in the main stream, in stream order, up to
// the last sequence present when Each started; messages published meanwhile
// are not visited. It stops at fn's first error and returns it. data is the
// event as Data decodes it; a message Data cannot decode is passed as stored,
// so that fn finds it invalid and counts it. stored is when the stream
// stored the message.
//
// Each keeps its own place in the stream. When nothing arrives for a while
// it asks the stream, not its reader, what is left: messages deleted since
// it started are simply not visited. A reader that stalls while messages
// remain (its server stopped, or lost it rebuilding its copy of the stream)
// is replaced by a new one from the next sequence; Each gives up only when
// none has delivered anything for eachStallBudget.
func (q *Queue) Each(ctx context.Context, fn func(seq uint64, subject string, stored time.Time, data []byte) error) error {
	st, err := q.state()
	if err != nil {
		return err
	}
	info, err := st.main.Info(ctx)
	if err != nil {
		return fmt.Errorf("queue: stream %s: %w", q.opts.Stream, err)
	}
	if info.State.Msgs == 0 {
		return nil
	}
	r := &eachReader{q: q, st: st, last: info.State.LastSeq, fn: fn, progress: time.Now()}
	for {
		err := r.read(ctx)
		if !errors.Is(err, errReaderStalled) {
			return err
		}
		if time.Since(r.progress) > eachStallBudget {
			return fmt.Errorf("queue: read stream: nothing delivered for %s though seq %d..%d remain (last: %v)", eachStallBudget, r.seen+1, r.last, r.cause)
		}
		q.log.Warn("stream reader delivers nothing though messages remain; reading on with a new one",
			zap.Uint64("from_seq", r.seen+1), zap.Uint64("last_seq", r.last), zap.NamedError("cause", r.cause))
	}
}

// How long Each waits for a message before it asks the stream what is left,
// lets a reader deliver nothing while messages remain, and lets all its
// readers together deliver nothing before it fails.
const (
	eachIdle        = 2 * time.Second
	eachStall       = 5 * time.Second
	eachStallBudget = 2 * time.Minute
)

// errReaderStalled: Each's reader delivered nothing for eachStall while
// messages up to the last remain, or failed (the cause is kept).
var errReaderStalled = errors.New("queue: stream reader stalled")

// eachReader is Each's place in the stream: the last sequence visited, and
// when a message last arrived.
type eachReader struct {
	q        *Queue
	st       *state
	last     uint64
	seen     uint64
	progress time.Time
	cause    error // why the last reader was given up
	fn       func(seq uint64, subject string, stored time.Time, data []byte) error
}

// read visits the messages after r.seen with one ordered consumer. It
// returns nil once r.last is visited or nothing up to it is left,
// errReaderStalled when the consumer delivers nothing for eachStall though
// something is left, and any other error as it is.
func (r *eachReader) read(ctx context.Context) error {
	// A reader that cannot recreate its consumer a few times is given up
	// here, not retried for ever inside the client.
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy, InactiveThreshold: time.Minute, MaxResetAttempts: 3}
	if r.seen > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, r.seen+1
	}
	c, err := r.st.main.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("queue: ordered consumer: %w", err)
	}
	it, err := c.Messages()
	if err != nil {
		return r.stalled(ctx, err)
	}
	defer it.Stop()

	idle := time.Now()
	for {
		msg, err := r.q.next(ctx, it)
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			// Nothing came for a while: the messages up to last may have
			// been deleted since Each started.
			if left, known := r.left(ctx); known && !left {
				return nil
			}
			if time.Since(idle) >= eachStall {
				return r.stalled(ctx, fmt.Errorf("nothing delivered for %s", eachStall))
			}
			continue
		}
		if err != nil {
			return r.stalled(ctx, err)
		}
		md, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("queue: read stream: %w", err)
		}
		seq := md.Sequence.Stream
		if seq > r.last {
			return nil
		}
		if seq <= r.seen {
			continue // already visited by an earlier reader
		}
		r.seen, r.progress, idle = seq, time.Now(), time.Now()
		data, derr := dataOf(msg.Headers(), msg.Data())
		if derr != nil {
			r.q.log.Warn("stream message undecodable, passed on as stored", zap.Uint64("seq", seq), zap.Error(derr))
			data = msg.Data()
		}
		if err := r.fn(seq, msg.Subject(), md.Timestamp, data); err != nil {
			return err
		}
		if seq >= r.last {
			return nil
		}
		if md.NumPending == 0 {
			// The reader's copy of the stream holds nothing more; the
			// stream itself says whether that is all (a follower's copy
			// can lag behind).
			if left, known := r.left(ctx); known && !left {
				return nil
			}
		}
	}
}

// stalled gives the reader up for cause, unless ctx ended.
func (r *eachReader) stalled(ctx context.Context, cause error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if errors.Is(cause, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("queue: read stream: %w", cause)
	}
	r.cause = cause
	return errReaderStalled
}

// left asks the stream whether a message after r.seen and up to r.last is
// still stored; known is false when the stream did not say.
func (r *eachReader) left(ctx context.Context) (left, known bool) {
	gctx, cancel := context.WithTimeout(ctx, eachIdle)
	defer cancel()
	m, err := r.st.main.GetMsg(gctx, r.seen+1, jetstream.WithGetMsgSubject(r.q.opts.SubjectPrefix+".>"))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, true
	}
	if err != nil {
		return false, false
	}
	return m.Sequence <= r.last, true
}

// next waits for the iterator's next message a few seconds at most.
func (q *Queue) next(ctx context.Context, it jetstream.MessagesContext) (jetstream.Msg, error) {
	wctx, cancel := context.WithTimeout(ctx, eachIdle)
	defer cancel()
	return it.Next(jetstream.NextContext(wctx))
}

// redact hides a password in a URL for logs and errors.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	return u.Redacted()
}

// serverLogger routes the embedded nats-server's log to zap: errors and
// warnings as such, everything else at debug level.
type serverLogger struct{ s *zap.SugaredLogger }

func (l serverLogger) Noticef(format string, v ...any) { l.s.Debugf(format, v...) }
func (l serverLogger) Warnf(format string, v ...any)   { l.s.Warnf(format, v...) }
func (l serverLogger) Fatalf(format string, v ...any)  { l.s.Errorf(format, v...) }
func (l serverLogger) Errorf(format string, v ...any)  { l.s.Errorf(format, v...) }
func (l serverLogger) Debugf(format string, v ...any)  { l.s.Debugf(format, v...) }
func (l serverLogger) Tracef(format string, v ...any)  { l.s.Debugf(format, v...) }

// AckFloor returns the stream sequence up to which the durable consumer
// has acknowledged every message: 0 when the consumer does not exist.
func (q *Queue) AckFloor(ctx context.Context, durable string) (uint64, error) {
	st, err := q.state()
	if err != nil {
		return 0, err
	}
	c, err := st.main.Consumer(ctx, durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("queue: consumer %s: %w", durable, err)
	}
	return c.CachedInfo().AckFloor.Stream, nil
}
