package server

import (
	"container/list"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Bounded resources against unauthenticated clients.
//
// Connections: at most Options.MaxConnections are open at once. A
// connection is "proven" while its current (or last) request carries a
// well-formed WorkOS-Signature header with a fresh timestamp and has not
// been refused; every other connection between requests (reading its first
// headers, trickling them, idle after a refusal or a /healthz) is
// evictable. At the limit, a new connection closes the evictable connection
// that has waited longest, if it has waited evictGrace at least; when none
// has (every connection is in a handler, proven, or just arrived) the new
// one is closed at once, unread. A flood of slow or idle connections thus
// cannot keep out WorkOS, whose connections send their headers at once and
// prove themselves within the grace: without it, a flood redialling as
// fast as it is closed evicted every new connection before its headers
// were read, WorkOS's too.
//
// Bodies: a request's declared length (webhook.max_body_bytes when chunked)
// is reserved from Options.MaxInflightBytes before its body is read, and
// released when its answer is written; when the reservation does not fit,
// 503 with Retry-After. Requests without a well-formed, fresh signature
// header never get that far (401 before the body is read). Bodies over
// smallBody may use three quarters of the budget only: the rest is kept for
// the small bodies WorkOS sends.

// evictGrace is how long a new connection may stay unproven before a newer
// one can evict it.
const evictGrace = 250 * time.Millisecond

// smallBody is the largest body that may use the whole in-flight budget.
const smallBody = 64 << 10

// connLimiter is a net.Listener that bounds the open connections.
type connLimiter struct {
	net.Listener
	max    int
	refuse func(reason, remote string) // counts and logs a refused or evicted connection

	mu        sync.Mutex
	open      int
	evictable list.List // of *limitedConn, longest waiting first
}

func newConnLimiter(ln net.Listener, max int, refuse func(reason, remote string)) *connLimiter {
	return &connLimiter{Listener: ln, max: max, refuse: refuse}
}

// Accept returns the next connection admitted under the limit.
func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		var victim *limitedConn
		if l.open >= l.max {
			if e := l.evictable.Front(); e != nil && time.Since(e.Value.(*limitedConn).since) >= evictGrace {
				victim = e.Value.(*limitedConn)
				l.dropLocked(victim)
			}
		}
		if l.open >= l.max {
			l.mu.Unlock()
			// Closed unread: answering would mean reading the request,
			// holding what the limit is there to spare.
			_ = c.Close()
			l.refuse(ReasonTooManyConnections, c.RemoteAddr().String())
			continue
		}
		lc := &limitedConn{Conn: c, l: l, since: time.Now()}
		l.open++
		lc.elem = l.evictable.PushBack(lc)
		l.mu.Unlock()
		if victim != nil {
			_ = victim.Conn.Close()
			l.refuse(ReasonConnectionEvicted, victim.RemoteAddr().String())
		}
		return lc, nil
	}
}

// Open returns the number of open connections.
func (l *connLimiter) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// dropLocked forgets c: it no longer counts (it is being closed).
func (l *connLimiter) dropLocked(c *limitedConn) {
	if c.gone {
		return
	}
	c.gone = true
	l.open--
	if c.elem != nil {
		l.evictable.Remove(c.elem)
		c.elem = nil
	}
}

// limitedConn is a connection admitted by a connLimiter.
type limitedConn struct {
	net.Conn
	l *connLimiter
	// Guarded by l.mu.
	elem      *list.Element // in l.evictable, or nil
	since     time.Time     // when it became evictable
	proven    bool
	inHandler bool
	gone      bool
}

func (c *limitedConn) Close() error {
	c.l.mu.Lock()
	c.l.dropLocked(c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

// CloseWrite half-closes the connection as net/http does before closing it
// after an early answer (a refusal before the body is read): the client,
// still sending, then reads the answer instead of a reset.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// enter marks the start of a request's handler: the connection is not
// evictable while a handler runs.
func (c *limitedConn) enter() {
	c.l.mu.Lock()
	c.inHandler = true
	if c.elem != nil {
		c.l.evictable.Remove(c.elem)
		c.elem = nil
	}
	c.l.mu.Unlock()
}

// leave marks the end of a handler: an unproven connection becomes
// evictable again, as the one that waited least.
func (c *limitedConn) leave() {
	c.l.mu.Lock()
	c.inHandler = false
	if !c.proven && !c.gone && c.elem == nil {
		c.elem = c.l.evictable.PushBack(c)
		c.since = time.Now()
	}
	c.l.mu.Unlock()
}

// prove records that the current request carries a well-formed, fresh
// signature header; refuse that it was refused after all.
func (c *limitedConn) prove(ok bool) {
	c.l.mu.Lock()
	c.proven = ok
	c.l.mu.Unlock()
}

type connKey struct{}

// connOf returns the limitedConn a request arrived on, or nil (a request
// not served by Open's listener, e.g. from Handler in a test).
func connOf(r *http.Request) *limitedConn {
	c, _ := r.Context().Value(connKey{}).(*limitedConn)
	return c
}

// budget is a count of bytes reserved by bodies in flight.
type budget struct {
	max  int64
	used atomic.Int64
}

// take reserves n bytes if they fit under limit; it reports whether it did.
func (b *budget) take(n, limit int64) bool {
	for {
		cur := b.used.Load()
		if cur+n > limit {
			return false
		}
		if b.used.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

func (b *budget) give(n int64) { b.used.Add(-n) }

// refusalLog logs refusals sampled: per reason, the first burst of each
// window, then one line saying how many were not logged. The counters
// (Stats.Refused) count every refusal.
type refusalLog struct {
	log    *zap.Logger
	burst  int
	window time.Duration

	mu      sync.Mutex
	start   time.Time
	logged  map[string]int
	dropped map[string]int
	timer   *time.Timer
}

func newRefusalLog(log *zap.Logger, burst int, window time.Duration) *refusalLog {
	return &refusalLog{log: log, burst: burst, window: window, logged: map[string]int{}, dropped: map[string]int{}}
}

// allow reports whether a refusal for reason may be logged now.
func (l *refusalLog) allow(reason string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if now.Sub(l.start) >= l.window {
		l.flushLocked()
		l.start = now
		clear(l.logged)
	}
	if l.logged[reason] < l.burst {
		l.logged[reason]++
		return true
	}
	if len(l.dropped) == 0 {
		d := l.window - now.Sub(l.start)
		if l.timer == nil {
			l.timer = time.AfterFunc(d, l.flush)
		} else {
			l.timer.Reset(d)
		}
	}
	l.dropped[reason]++
	return false
}

func (l *refusalLog) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked()
}

func (l *refusalLog) flushLocked() {
	for reason, n := range l.dropped {
		l.log.Warn("webhook refusals not logged", zap.String("reason", reason), zap.Int("suppressed", n),
			zap.Duration("window", l.window), zap.Int("logged", l.logged[reason]))
	}
	clear(l.dropped)
}

// stop logs what is still suppressed and stops the timer.
func (l *refusalLog) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.timer != nil {
		l.timer.Stop()
	}
	l.flushLocked()
}

// fileLimit returns the process's soft limit of open files (0 if unknown).
func fileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return rl.Cur
}
