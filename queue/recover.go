package queue

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"
)

// Write errors of the embedded server.
//
// When a write of the embedded server's file store fails (the disk full for a
// moment, the process out of file descriptors), nats-server marks the stream
// with that write error for good: every later publish to it goes unanswered
// (it times out) although the cause is gone, and JetStream still says it is
// enabled. (Out of space elsewhere, or a permission error, makes it shut
// JetStream down instead.) Only loading the stream again from its files
// clears it, so the monitor below restarts the embedded server in place, on
// the same port and store directory, once a probe write to the store
// directory succeeds again; the client reconnects by itself. Until then
// Ready and Publish fail at once with the reason.

// minRestartGap is the least time between two restarts of the embedded
// server by the monitor.
const minRestartGap = 5 * time.Second

// probeSize is how much the monitor writes to the store directory to tell
// whether it can be written again.
const probeSize = 256 << 10

// ErrCannotStore is wrapped by the errors of Ready and Publish while the
// embedded server cannot store events.
var ErrCannotStore = errors.New("JetStream cannot store events")

// health is what the monitor found. Its methods are safe for concurrent use.
type health struct {
	mu         sync.Mutex
	err        error // non-nil while events cannot be stored
	pubFailed  atomic.Bool
	kick       chan struct{} // a publish failed: check at once
	restarts   atomic.Uint64
	faultSince time.Time
}

func (h *health) reset() {
	h.mu.Lock()
	h.err = nil
	h.mu.Unlock()
	h.pubFailed.Store(false)
}

// fault returns why events cannot be stored, or nil.
func (h *health) fault() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// set records err (nil: healthy) and reports whether that changed the
// state and, when it cleared, how long the fault lasted.
func (h *health) set(err error) (changed bool, lasted time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	was := h.err != nil
	h.err = err
	switch {
	case err != nil && !was:
		h.faultSince = time.Now()
	case err == nil && was:
		lasted = time.Since(h.faultSince)
	}
	return was != (err != nil), lasted
}

func (h *health) publishFailed() {
	h.pubFailed.Store(true)
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// Fault returns why the embedded server cannot store events (wrapping
// ErrCannotStore), or nil.
func (q *Queue) Fault() error { return q.health.fault() }

// Restarts is how many times the embedded server was restarted to clear a
// write error since the Queue was created.
func (q *Queue) Restarts() uint64 { return q.health.restarts.Load() }

// monitor is the goroutine watching the embedded server.
type monitor struct {
	quit chan struct{}
	done chan struct{}
}

func (m *monitor) stop() {
	if m == nil {
		return
	}
	close(m.quit)
	<-m.done
}

// startMonitor watches st's embedded server every HealthInterval, and at
// once after a failed publish.
func (q *Queue) startMonitor(st *state) *monitor {
	m := &monitor{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		t := time.NewTicker(q.opts.HealthInterval)
		defer t.Stop()
		var lastRestart time.Time
		for {
			select {
			case <-m.quit:
				return
			case <-t.C:
			case <-q.health.kick:
			}
			lastRestart = q.check(st, lastRestart)
		}
	}()
	return m
}

// check looks at the embedded server's health; when a stream has a write
// error, or JetStream is off, and the store directory can be written, it
// restarts the server (at most every minRestartGap). It returns the time of
// the last restart.
func (q *Queue) check(st *state, lastRestart time.Time) time.Time {
	problem := serverProblem(st.srv)
	if problem == "" && !q.health.pubFailed.Load() {
		q.setHealth(nil)
		return lastRestart
	}
	if perr := probeDir(q.opts.StoreDir); perr != nil {
		if problem == "" {
			problem = "publishes fail"
		}
		q.setHealth(fmt.Errorf("queue: %w: %s; the store directory cannot be written: %v", ErrCannotStore, problem, perr))
		return lastRestart
	}
	if problem == "" {
		// A publish failed, but the server and the disk are fine (a
		// timeout, a full stream): nothing to recover.
		q.health.pubFailed.Store(false)
		q.setHealth(nil)
		return lastRestart
	}
	q.setHealth(fmt.Errorf("queue: %w: %s; restarting the embedded server", ErrCannotStore, problem))
	if time.Since(lastRestart) < minRestartGap {
		return lastRestart
	}
	q.log.Warn("restarting the embedded NATS server to clear a JetStream write error", zap.String("problem", problem))
	if st.srv != nil {
		st.srv.Shutdown()
		st.srv.WaitForShutdown()
		st.srv = nil
	}
	srv, err := q.launch(st.sopts, 30*time.Second)
	if err != nil {
		q.log.Error("embedded NATS server restart failed; retrying", zap.Error(err))
		return time.Now()
	}
	st.srv = srv
	q.health.restarts.Add(1)
	q.health.pubFailed.Store(false)
	if p := serverProblem(srv); p == "" {
		q.setHealth(nil)
	}
	return time.Now()
}

// setHealth records err and logs changes.
func (q *Queue) setHealth(err error) {
	changed, lasted := q.health.set(err)
	if !changed {
		return
	}
	if err != nil {
		q.log.Error("JetStream cannot store events; webhooks are refused until it recovers", zap.Error(err))
	} else {
		q.log.Info("JetStream stores events again", zap.Duration("after", lasted))
	}
}

// serverProblem says what keeps srv from storing events ("" when nothing
// does): not running, JetStream off, or a stream's write error.
func serverProblem(srv *server.Server) string {
	if srv == nil {
		return "the embedded server is not running"
	}
	if !srv.JetStreamEnabled() {
		return "JetStream is disabled"
	}
	if h := srv.Healthz(nil); h.Error != "" {
		return h.Error
	}
	return ""
}

// probeDir writes probeSize bytes to a file in dir, syncs and removes it.
func probeDir(dir string) error {
	f, err := os.CreateTemp(dir, ".dsyncd-probe-*")
	if err != nil {
		return err
	}
	name := f.Name()
	defer os.Remove(name)
	_, err = f.Write(make([]byte, probeSize))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
