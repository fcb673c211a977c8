package main

// What the scale runs (make bench-scale) add to a load run: reads of single
// users during the sync (-reads) and after it, the daemon's peak anonymous
// and file-backed memory, the stream's size and snapshots at the end, and
// the host's load average (the machine is shared: a figure is only
// comparable with one taken under a similar load).

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/dsyncd/dsyncd/cmd/dsyncd-load/harness"
)

// reader GETs /v1/users/{id} of random users of the synthetic directory at
// a steady rate until stopped, and keeps each answer's latency.
type reader struct {
	mu      sync.Mutex
	lat     []time.Duration
	errs    int // transport errors and statuses other than 200 and 404
	stop    chan struct{}
	done    chan struct{}
	started bool
}

// startReader starts reading at perSecond from base with the token serve
// created in dataDir; nil when perSecond is 0.
func startReader(ctx context.Context, base, dataDir string, seed uint64, users, perSecond int) (*reader, error) {
	if perSecond <= 0 || users <= 0 {
		return nil, nil
	}
	tok, err := os.ReadFile(filepath.Join(dataDir, "api.token"))
	if err != nil {
		return nil, fmt.Errorf("-reads: the API token: %w", err)
	}
	token := strings.TrimSpace(string(tok))
	r := &reader{stop: make(chan struct{}), done: make(chan struct{}), started: true}
	c := harness.NewClient(4, 10*time.Second)
	rnd := rand.New(rand.NewPCG(seed, 7))
	go func() {
		defer close(r.done)
		t := time.NewTicker(time.Second / time.Duration(perSecond))
		defer t.Stop()
		for {
			select {
			case <-r.stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			id := fmt.Sprintf("directory_user_%d_%06d", seed, rnd.IntN(users))
			start := time.Now()
			code, _, err := harness.GetWithToken(ctx, c, base+"/v1/users/"+id, token)
			took := time.Since(start)
			r.mu.Lock()
			if err != nil || (code != http.StatusOK && code != http.StatusNotFound) {
				r.errs++
			} else {
				r.lat = append(r.lat, took)
			}
			r.mu.Unlock()
		}
	}()
	return r, nil
}

func (r *reader) finish() (lat []time.Duration, errs int) {
	if r == nil {
		return nil, 0
	}
	close(r.stop)
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lat, r.errs
}

// idleReadTime is how long the reads go on once everything is applied.
const idleReadTime = 3 * time.Second

// idleReads repeats the reads of a finished reader (none when rd is nil)
// for idleReadTime on the daemon that has nothing else to do.
func idleReads(ctx context.Context, rd *reader, base, dataDir string, seed uint64, users, perSecond int) ([]time.Duration, int, error) {
	if rd == nil {
		return nil, 0, nil
	}
	r, err := startReader(ctx, base, dataDir, seed, users, perSecond)
	if err != nil {
		return nil, 0, err
	}
	select {
	case <-time.After(idleReadTime):
	case <-ctx.Done():
	}
	lat, errs := r.finish()
	return lat, errs, nil
}

// loadAverage is the host's 1-minute load average, as /proc/loadavg says.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "n/a"
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "n/a"
}

// memPeak keeps the daemon's peak anonymous and file-backed resident memory.
type memPeak struct{ anon, file int64 }

func (m *memPeak) sample(d *harness.Daemon) {
	if d == nil {
		return
	}
	if s, err := d.Status(); err == nil {
		m.anon, m.file = max(m.anon, s.RssAnon), max(m.file, s.RssFile)
	}
}
