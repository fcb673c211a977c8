package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dsyncd/dsyncd/cmd/dsyncd-load/harness"
)

// The slow-connections phase's bounds: the daemon's resident memory, and
// its open files above the connections it admits (http.max_connections,
// 1024 by default: the store, the stream's files, NATS clients, a margin).
const (
	slowConns     = 5000
	slowMaxRSS    = 300 << 20
	slowFileSlack = 256
)

// slowConnsPhase (f): slowConns connections trickle request headers (one
// byte a second, redialling as soon as the daemon closes one) while signed
// webhooks are delivered WorkOS-style. Every webhook must be stored and
// applied, the daemon's RSS must stay under 300 MB and its open files near
// http.max_connections.
func (e *env) slowConnsPhase(ctx context.Context, o options) *result {
	r := &result{phase: "f. 5,000 slow connections"}
	if err := raiseFileLimit(2*slowConns + 1024); err != nil {
		r.skipped = fmt.Sprintf("cannot raise the open-files limit to hold %d connections (%v; run as root or raise ulimit -n)", slowConns, err)
		return r
	}
	dir, err := e.phaseDir("slowconns")
	if err != nil {
		r.fail("%v", err)
		return r
	}
	d, _, err := e.boot(ctx, dir, harness.Config{}, nil)
	if err != nil {
		r.fail("%v", err)
		return r
	}
	defer stop(d)
	floodFor := 8 * time.Second
	if !o.short {
		floodFor = 30 * time.Second
	}

	// The flood lasts floodFor, and until the webhooks are delivered.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	posted := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-time.After(floodFor):
		}
		select {
		case <-ctx.Done():
		case <-posted:
		}
		cancel()
	}()
	floodStart := time.Now()
	var open, dials, closedByDaemon, dialErrs atomic.Int64
	var wg sync.WaitGroup
	for range slowConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			trickleUntil(fctx, d.Listen, &open, &dials, &closedByDaemon, &dialErrs)
		}()
	}

	// Memory and files, sampled while the flood lasts.
	var peakRSS, peakFiles, peakOpen atomic.Int64
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for fctx.Err() == nil {
			if st, err := d.Status(); err == nil && st.VmRSS > peakRSS.Load() {
				peakRSS.Store(st.VmRSS)
			}
			if n := openFiles(d.PID()); n > peakFiles.Load() {
				peakFiles.Store(n)
			}
			if n := open.Load(); n > peakOpen.Load() {
				peakOpen.Store(n)
			}
			select {
			case <-fctx.Done():
			case <-time.After(200 * time.Millisecond): // sampling interval
			}
		}
	}()

	// WorkOS, meanwhile: signed events, retried until 2xx, spread over the
	// flood once the connections are up.
	const webhooks = 200
	bodies := make([][]byte, webhooks)
	for i := range bodies {
		bodies[i] = soakUserEvent(fmt.Sprintf("slowconn_%03d", i), nil)
	}
	r.events = webhooks
	select {
	case <-fctx.Done():
	case <-time.After(floodFor / 8): // let the flood build up first
	}
	p := &harness.Poster{Client: harness.NewClient(4, 15*time.Second), URL: d.WebhookURL(), Secret: secret}
	dl := newDelivery(true)
	pctx, pcancel := context.WithTimeout(ctx, floodFor+time.Minute)
	post(pctx, p, bodies, 4, floodFor/2, dl)
	pcancel()
	postedAt := time.Since(floodStart)
	close(posted)
	wg.Wait()
	<-sampled
	floodFor = time.Since(floodStart).Round(100 * time.Millisecond)
	r.posted, r.acked = dl.posted.Load(), dl.acked.Load()
	if n := len(dl.ackedIDs); n != webhooks {
		r.fail("%d of %d signed webhooks got a 2xx (answers: %s)", n, webhooks, dl.statuses())
	}
	if n := dl.count4xx(); n > 0 {
		r.fail("%d answers to valid signed webhooks were 4xx", n)
	}
	var slowest time.Duration
	for _, a := range dl.attempts {
		slowest = max(slowest, a.End.Sub(a.Start))
	}
	r.note("%d slow connections held for %s: %d dials, peak %d open on the client side, %d closed by the daemon, %d dials failed",
		slowConns, floodFor, dials.Load(), peakOpen.Load(), closedByDaemon.Load(), dialErrs.Load())
	r.note("%d signed webhooks during the flood, all sent by %s: answers %s; slowest attempt %s", webhooks,
		postedAt.Round(100*time.Millisecond), dl.statuses(), slowest.Round(time.Millisecond))
	if rss := peakRSS.Load(); rss == 0 || rss >= slowMaxRSS {
		r.fail("peak RSS %s, want under %s", harness.MiB(rss), harness.MiB(slowMaxRSS))
	} else {
		r.note("daemon peak RSS %s (bound %s)", harness.MiB(rss), harness.MiB(slowMaxRSS))
	}
	if files, want := peakFiles.Load(), int64(1024+slowFileSlack); files == 0 || files > want {
		r.fail("daemon peak open files %d, want at most %d (http.max_connections 1024 + %d)", files, want, slowFileSlack)
	} else {
		r.note("daemon peak open files %d (http.max_connections 1024)", files)
	}
	if m, err := harness.Scrape(ctx, e.ctl, d.URL()); err == nil {
		ref := m.Refused()
		r.note("connections closed by the daemon's limit: %.0f evicted (oldest unproven), %.0f refused on arrival; dsyncd_webhooks_refused_total counts each",
			ref["connection_evicted"], ref["too_many_connections"])
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	m, err := harness.WaitDrained(wctx, e.ctl, d.URL(), webhooks)
	wcancel()
	if err != nil {
		r.fail("webhooks not applied: %v", err)
	} else {
		r.applied = fmt.Sprintf("%.0f/%d", m.Outcome("applied"), webhooks)
	}
	if err := d.Stop(time.Minute); err != nil {
		r.fail("%v", err)
	}
	msgs, ids, err := streamIDs(ctx, "", filepath.Join(dir, "data", "jetstream"))
	if err != nil {
		r.fail("stream: %v", err)
		return r
	}
	r.dupStored = msgs - len(ids)
	for id := range dl.ackedIDs {
		if !ids[id] {
			r.lost++
		}
	}
	if r.lost > 0 {
		r.fail("%d webhooks answered 2xx are not in the stream", r.lost)
	}
	return r
}

// trickleUntil keeps one slow connection to addr open until ctx ends: it
// sends a request line, then one header byte a second, and dials again as
// soon as the daemon closes it.
func trickleUntil(ctx context.Context, addr string, open, dials, closed, dialErrs *atomic.Int64) {
	var dialer net.Dialer
	for ctx.Err() == nil {
		dials.Add(1)
		c, err := dialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			if ctx.Err() == nil {
				dialErrs.Add(1)
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond): // backing off a failed dial
				}
			}
			continue
		}
		open.Add(1)
		_, err = c.Write([]byte("POST /webhooks/workos HTTP/1.1\r\nHost: soak\r\nX-Slow: "))
		buf := make([]byte, 512)
		for err == nil && ctx.Err() == nil {
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			if _, err = c.Read(buf); err == nil {
				continue // an answer: the next read sees the close
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				_, err = c.Write([]byte("s"))
			}
		}
		if ctx.Err() == nil {
			closed.Add(1)
		}
		open.Add(-1)
		_ = c.Close()
	}
}

// raiseFileLimit raises this process's open-files limit to at least n (the
// daemon, started after, inherits it).
func raiseFileLimit(n uint64) error {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	if rl.Cur >= n {
		return nil
	}
	rl.Cur = n
	rl.Max = max(rl.Max, n)
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
}

// openFiles counts the open files of pid (0 if unknown).
func openFiles(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	ents, err := os.ReadDir(filepath.Join("/proc", fmt.Sprint(pid), "fd"))
	if err != nil {
		return 0
	}
	return int64(len(ents))
}
