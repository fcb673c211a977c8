package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/cmd/dsyncd-load/harness"
	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/storage"
)

const secret = "whsec_dsyncd_soak"

// result is one phase's row of the summary table.
type result struct {
	phase     string
	kills     int
	posted    int64 // HTTP attempts
	acked     int64 // 2xx answers
	events    int   // distinct events delivered
	applied   string
	lost      int
	dupStored int
	twice     int
	badTried  int
	badRefuse int
	skipped   string
	notes     []string
	failures  []string
}

func (r *result) note(format string, a ...any) { r.notes = append(r.notes, fmt.Sprintf(format, a...)) }
func (r *result) fail(format string, a ...any) {
	r.failures = append(r.failures, fmt.Sprintf(format, a...))
}

// env is what every phase shares.
type env struct {
	bin  string
	work string // the run's temporary directory
	ctl  *http.Client
	rng  *rand.Rand
}

// phaseDir creates work/name.
func (e *env) phaseDir(name string) (string, error) {
	dir := filepath.Join(e.work, name)
	return dir, os.MkdirAll(dir, 0o700)
}

// newDaemon writes a configuration under dir and returns a daemon (not
// started) on a free loopback port, with its data in dir/data.
func (e *env) newDaemon(dir string, c harness.Config, extraEnv ...string) (*harness.Daemon, error) {
	port, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	c.DataDir = filepath.Join(dir, "data")
	c.Listen = fmt.Sprintf("127.0.0.1:%d", port)
	c.Secret = secret
	cfg := filepath.Join(dir, "dsyncd.yaml")
	if err := harness.WriteConfig(cfg, c); err != nil {
		return nil, err
	}
	// Snapshots off: the phases prove that no event answered 2xx is lost
	// by finding every one in the stream, which purging behind snapshots
	// would empty (the snapshots' own guarantees are cmd/dsyncd's tests).
	env := append([]string{"DSYNCD_STORE_SNAPSHOTS_KEPT=0"}, extraEnv...)
	return &harness.Daemon{Bin: e.bin, Config: cfg, Env: env, Listen: c.Listen, LogPath: filepath.Join(dir, "dsyncd.log")}, nil
}

// boot creates a daemon under dir (as newDaemon), computes the in-order
// golden export of stream when stream is not nil, and starts it. The caller
// defers stop(d).
func (e *env) boot(ctx context.Context, dir string, c harness.Config, stream []synth.Event, extraEnv ...string) (*harness.Daemon, []byte, error) {
	d, err := e.newDaemon(dir, c, extraEnv...)
	if err != nil {
		return nil, nil, err
	}
	var golden []byte
	if stream != nil {
		if golden, err = e.golden(ctx, d, dir, stream); err != nil {
			return nil, nil, fmt.Errorf("golden: %w", err)
		}
	}
	return d, golden, e.start(ctx, d)
}

// stop kills d if it still runs (phases stop it gracefully themselves when
// they need to).
func stop(d *harness.Daemon) {
	if d.Running() {
		_ = d.Kill()
	}
}

// start starts d and waits for /readyz.
func (e *env) start(ctx context.Context, d *harness.Daemon) error {
	if err := d.Start(); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	return d.WaitReady(rctx, e.ctl)
}

// golden replays stream in created_at order with `dsyncd replay` into a
// fresh store (same configuration as the daemon) and returns `dsyncd export`.
func (e *env) golden(ctx context.Context, d *harness.Daemon, dir string, stream []synth.Event) ([]byte, error) {
	nd := filepath.Join(dir, "in-order.ndjson")
	var b bytes.Buffer
	for _, ev := range stream {
		b.Write(ev.Body)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(nd, b.Bytes(), 0o600); err != nil {
		return nil, err
	}
	db := filepath.Join(dir, "golden.db")
	if _, err := harness.Run(ctx, e.bin, nil, "replay", "--config", d.Config, "--db", db, nd); err != nil {
		return nil, err
	}
	return harness.Run(ctx, e.bin, nil, "export", "--config", d.Config, "--db", db)
}

// export runs `dsyncd export --db` on a stopped daemon's store.
func (e *env) export(ctx context.Context, d *harness.Daemon, db string) ([]byte, error) {
	return harness.Run(ctx, e.bin, d.Env, "export", "--config", d.Config, "--db", db)
}

// checkStore opens the store file and runs bbolt's consistency check.
func checkStore(path string) error {
	st, err := storage.Open(storage.Options{Path: path, OpenTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer st.Close()
	return st.Check()
}

// streamIDs reads every message of the main stream and returns how many
// there are and the distinct event ids. url empty: open the embedded store
// under storeDir in process (the daemon must be stopped).
func streamIDs(ctx context.Context, url, storeDir string) (msgs int, ids map[string]bool, err error) {
	// The daemon's stream settings (config defaults), so Open changes nothing.
	def := config.Default().NATS
	// MaxStore as the daemon sets it (the events, the dead letters, the
	// change feed's stream and the lease bucket), so that reopening the
	// daemon's store does not refuse the streams' MaxBytes.
	q := queue.New(queue.Options{URL: url, StoreDir: storeDir, MaxBytes: def.MaxBytes, MaxAge: def.MaxAge, DuplicateWindow: def.DuplicateWindow,
		MaxStore: 3*def.MaxBytes + 4*int64(queue.LeaseBucketBytes)}, zap.NewNop())
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := q.Open(ctx); err != nil {
		return 0, nil, err
	}
	defer q.Close()
	ids = map[string]bool{}
	err = q.Each(ctx, func(_ uint64, _ string, _ time.Time, data []byte) error {
		msgs++
		ev, err := events.Decode(data)
		if err != nil {
			return fmt.Errorf("undecodable message in the stream: %w", err)
		}
		ids[ev.ID] = true
		return nil
	})
	return msgs, ids, err
}

// compareExport fails r when got differs from want, writing both for a diff.
func compareExport(r *result, dir string, got, want []byte) bool {
	if bytes.Equal(got, want) {
		return true
	}
	_ = os.WriteFile(filepath.Join(dir, "export.live.json"), got, 0o600)
	_ = os.WriteFile(filepath.Join(dir, "export.golden.json"), want, 0o600)
	r.fail("live export differs from the in-order golden (%d vs %d bytes): diff %s %s; %s",
		len(got), len(want), filepath.Join(dir, "export.live.json"), filepath.Join(dir, "export.golden.json"), firstDiff(got, want))
	return false
}

func firstDiff(a, b []byte) string {
	al, bl := bytes.Split(a, []byte("\n")), bytes.Split(b, []byte("\n"))
	for i := 0; i < min(len(al), len(bl)); i++ {
		if !bytes.Equal(al[i], bl[i]) {
			return fmt.Sprintf("first difference at line %d: live %s / golden %s", i+1, strings.TrimSpace(string(al[i])), strings.TrimSpace(string(bl[i])))
		}
	}
	return fmt.Sprintf("line counts %d vs %d", len(al), len(bl))
}

// delivery tracks what posters did: attempts, answers, acknowledged ids.
type delivery struct {
	posted, acked, transport atomic.Int64
	mu                       sync.Mutex
	byStatus                 map[int]int64
	ackedIDs                 map[string]bool
	attempts                 []harness.Attempt // kept when keepAttempts
	keepAttempts             bool
	failed                   []string // ids never acknowledged
}

func newDelivery(keep bool) *delivery {
	return &delivery{byStatus: map[int]int64{}, ackedIDs: map[string]bool{}, keepAttempts: keep}
}

func (dl *delivery) observe(a harness.Attempt) {
	dl.posted.Add(1)
	if a.Err != nil {
		dl.transport.Add(1)
	}
	if a.Status/100 == 2 {
		dl.acked.Add(1)
	}
	dl.mu.Lock()
	if a.Err == nil {
		dl.byStatus[a.Status]++
	}
	if dl.keepAttempts {
		dl.attempts = append(dl.attempts, a)
	}
	dl.mu.Unlock()
}

func (dl *delivery) statuses() string {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	var parts []string
	for _, code := range []int{200, 400, 401, 413, 415, 429, 500, 502, 503, 504} {
		if n := dl.byStatus[code]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d×%d", n, code))
		}
	}
	for code, n := range dl.byStatus {
		switch code {
		case 200, 400, 401, 413, 415, 429, 500, 502, 503, 504:
		default:
			parts = append(parts, fmt.Sprintf("%d×%d", n, code))
		}
	}
	if n := dl.transport.Load(); n > 0 {
		parts = append(parts, fmt.Sprintf("%d transport errors", n))
	}
	return strings.Join(parts, ", ")
}

// non2xxValid counts 4xx answers: a valid, fresh, signed event must never get one.
func (dl *delivery) count4xx() int64 {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	var n int64
	for code, c := range dl.byStatus {
		if code/100 == 4 {
			n += c
		}
	}
	return n
}

// post delivers bodies from conc posters, each retried until 2xx (WorkOS
// style) or ctx ends. With spread > 0, body i is not sent before
// start + i*spread/len(bodies): the load is paced over spread.
func post(ctx context.Context, p *harness.Poster, bodies [][]byte, conc int, spread time.Duration, dl *delivery) {
	retry := harness.Retry{First: 50 * time.Millisecond, Max: time.Second}
	var next atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(len(bodies)) {
					return
				}
				if spread > 0 {
					due := start.Add(time.Duration(float64(spread) * float64(i) / float64(len(bodies))))
					if w := time.Until(due); w > 0 {
						select {
						case <-ctx.Done():
							return
						case <-time.After(w): // pacing the load
						}
					}
				}
				id := eventID(bodies[i])
				res := p.Deliver(ctx, bodies[i], retry, dl.observe)
				dl.mu.Lock()
				if res.Delivered() {
					dl.ackedIDs[id] = true
				} else {
					dl.failed = append(dl.failed, id)
				}
				dl.mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

func eventID(body []byte) string {
	ev, err := events.Decode(body)
	if err != nil {
		return "?"
	}
	return ev.ID
}

func bodiesOf(stream []synth.Event) [][]byte {
	out := make([][]byte, len(stream))
	for i, e := range stream {
		out[i] = e.Body
	}
	return out
}

// finishDelivery ends a phase that posted every event of a stream of n:
// it records what was posted and acknowledged, stops the daemon, checks the
// stream and the export against golden, and says so when all holds.
func (e *env) finishDelivery(ctx context.Context, r *result, dir string, d *harness.Daemon, storePath string, dl *delivery, golden []byte, n int) {
	r.posted, r.acked = dl.posted.Load(), dl.acked.Load()
	if err := d.Stop(time.Minute); err != nil {
		r.fail("%v", err)
	}
	e.checkStreamAndExport(ctx, r, dir, d, "", storePath, dl, golden)
	if len(r.failures) == 0 {
		r.applied = fmt.Sprintf("%d (= golden)", n)
	}
}

// checkStreamAndExport is the end of every delivery phase, with the daemon
// stopped: every acknowledged id is in the stream, no id is stored twice, the
// live export equals golden, and the store passes bbolt's check.
func (e *env) checkStreamAndExport(ctx context.Context, r *result, dir string, d *harness.Daemon, natsURL, storePath string, dl *delivery, golden []byte) {
	msgs, ids, err := streamIDs(ctx, natsURL, filepath.Join(dir, "data", "jetstream"))
	if err != nil {
		r.fail("reading the stream: %v", err)
	} else {
		r.dupStored = msgs - len(ids)
		dl.mu.Lock()
		for id := range dl.ackedIDs {
			if !ids[id] {
				r.lost++
			}
		}
		dl.mu.Unlock()
		if r.lost > 0 {
			r.fail("%d events answered 2xx are not in the stream", r.lost)
		}
		r.note("stream: %d messages, %d distinct event ids", msgs, len(ids))
	}
	got, err := e.export(ctx, d, storePath)
	if err != nil {
		r.fail("export: %v", err)
	} else if compareExport(r, dir, got, golden) {
		r.note("live export = in-order golden (%d bytes)", len(got))
	}
	if err := checkStore(storePath); err != nil {
		r.fail("bbolt check: %v", err)
	} else {
		r.note("bbolt check: ok")
	}
}
