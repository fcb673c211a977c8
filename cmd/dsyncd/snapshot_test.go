package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/storage"
)

// snapDaemon starts a daemon on dir/data with the operations tests'
// configuration, changed by tweak, and returns it with a CLI configuration
// file for the same data directory.
func snapDaemon(t *testing.T, dir string, tweak func(*config.Config)) (*daemon, string) {
	t.Helper()
	dataDir := filepath.Join(dir, "data")
	cfg, err := loadConfig(writeFile(t, dir, "serve.yaml", opsConfigYAML(dataDir, "127.0.0.1:0")), nil, true)
	mustf(t, err, "config")
	if tweak != nil {
		tweak(&cfg)
	}
	d := newDaemon(cfg, zaptest.NewLogger(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	mustf(t, d.Open(ctx), "open daemon")
	t.Cleanup(func() { _ = d.Close() })
	return d, writeFile(t, dir, "cli.yaml", opsConfigYAML(dataDir, d.Addr()))
}

func synthBodies(o synth.Options) [][]byte {
	var out [][]byte
	for _, e := range synth.Stream(o) {
		out = append(out, e.Body)
	}
	return out
}

func streamState(t *testing.T, q *queue.Queue) (first, last, msgs uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := q.StreamInfo(ctx)
	mustf(t, err, "stream info")
	return info.State.FirstSeq, info.State.LastSeq, info.State.Msgs
}

func TestRebuildOfADamagedStoreStartsFromTheNewestUsableSnapshot(t *testing.T) {
	dir := t.TempDir()
	d, cliCfg := snapDaemon(t, dir, nil)
	bodies := synthBodies(synth.Options{Seed: 5, Users: 240, Groups: 6, MembershipsPerUser: 2})
	third := len(bodies) / 3
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	for _, b := range bodies[:third] {
		postSigned(t, d, b)
	}
	waitApplied(t, d)
	s1, err := d.snap.Take(ctx)
	mustf(t, err, "snapshot 1")
	for _, b := range bodies[third : 2*third] {
		postSigned(t, d, b)
	}
	waitApplied(t, d)
	// On demand, through the API as an operator would.
	var s2 struct {
		Name      string `json:"name"`
		StreamSeq uint64 `json:"stream_seq"`
	}
	mustf(t, json.Unmarshal([]byte(cli(t, 0, "snapshot", "--config", cliCfg, "--format", "json")), &s2), "snapshot json")
	if s2.StreamSeq <= s1.StreamSeq {
		t.Fatalf("second snapshot covers %d, the first %d", s2.StreamSeq, s1.StreamSeq)
	}
	if out := cli(t, 0, "snapshot", "--list", "--config", cliCfg); !strings.Contains(out, s1.Name) || !strings.Contains(out, s2.Name) {
		t.Fatalf("snapshot --list through the API:\n%s", out)
	}
	// Two kept: the stream holds what follows the older one, no more.
	if first, _, _ := streamState(t, d.q); first != s1.StreamSeq+1 {
		t.Fatalf("stream starts at %d after the second snapshot, want %d (purged through the oldest kept, %d)", first, s1.StreamSeq+1, s1.StreamSeq)
	}
	for _, b := range bodies[2*third:] {
		postSigned(t, d, b)
	}
	waitApplied(t, d)
	live := snapshotJSON(t, d.st)
	mustf(t, d.Close(), "stop serve")

	// A newer snapshot that is no store is skipped for the next older one.
	cfg, err := loadConfig(cliCfg, nil, true)
	mustf(t, err, "config")
	q, err := openQueueOffline(ctx, cfg, os.Stderr)
	mustf(t, err, "queue")
	_, err = q.Snapshots(cfg.NATS.SnapshotBucket).Put(ctx, s2.StreamSeq+1, 0, strings.NewReader("not a store"))
	mustf(t, err, "put a bad snapshot")
	mustf(t, q.Close(), "close queue")

	// Offline, with serve stopped, the list reads the bucket itself.
	if out := cli(t, 0, "snapshot", "--list", "--offline", "--format", "json", "--config", cliCfg); !strings.Contains(out, `"stream_seq": `+fmt.Sprint(s2.StreamSeq+1)) {
		t.Fatalf("snapshot --list --offline:\n%s", out)
	}

	// The store is damaged.
	junk := make([]byte, 64<<10)
	_, _ = rand.Read(junk)
	mustf(t, os.WriteFile(cfg.StorePath(), junk, 0o600), "damage the store")

	if out := cli(t, 1, "rebuild", "--from-scratch", "--config", cliCfg); !strings.Contains(out, "no longer holds every event") {
		t.Fatalf("rebuild --from-scratch of a purged stream:\n%s", out)
	}
	out := cli(t, 0, "rebuild", "--config", cliCfg)
	if !strings.Contains(out, "from snapshot "+s2.Name) || !strings.Contains(out, "is not usable") {
		t.Fatalf("rebuild did not start from %s after skipping the bad one:\n%s", s2.Name, out)
	}
	if got := storeFileSnapshot(t, cfg.StorePath()); got != live {
		t.Fatalf("rebuilt store differs from the live one:\n%s\nwant:\n%s", got, live)
	}
}

func TestUpgradeFromAStreamWithoutSnapshotsSnapshotsThenPurges(t *testing.T) {
	dir := t.TempDir()
	// Today's version: no snapshots, the stream keeps everything.
	old, _ := snapDaemon(t, dir, func(c *config.Config) { c.Store.SnapshotsKept = 0 })
	bodies := synthBodies(synth.Options{Seed: 8, Users: 120, Groups: 4, MembershipsPerUser: 2})
	half := len(bodies) / 2
	for _, b := range bodies[:half] {
		postSigned(t, old, b)
	}
	waitApplied(t, old)
	if first, last, _ := streamState(t, old.q); first != 1 || last != uint64(half) {
		t.Fatalf("without snapshots the stream holds %d-%d, want 1-%d", first, last, half)
	}
	before := snapshotJSON(t, old.st)
	mustf(t, old.Close(), "stop the old version")

	// The new one, in place: a snapshot once the stream is applied, then the
	// applied events leave the stream.
	d, cliCfg := snapDaemon(t, dir, nil)
	if got := snapshotJSON(t, d.st); got != before {
		t.Fatalf("the upgraded daemon's store differs")
	}
	opsEventually(t, "a snapshot and a purged stream", func() bool {
		first, last, msgs := streamState(t, d.q)
		return d.snap.newest.Load() != nil && msgs == 0 && first == last+1
	})
	for _, b := range bodies[half:] {
		postSigned(t, d, b)
	}
	waitApplied(t, d)
	live := snapshotJSON(t, d.st)
	want := referenceExport(t, d.cfg, bodies)
	if live != want {
		t.Fatalf("after the upgrade the store differs from the events applied directly:\n%s\nwant:\n%s", live, want)
	}
	mustf(t, d.Close(), "stop serve")
	out := cli(t, 0, "rebuild", "--config", cliCfg)
	if !strings.Contains(out, "from snapshot ") || !strings.Contains(out, "identical to the previous store") {
		t.Fatalf("rebuild after the upgrade:\n%s", out)
	}
}

// referenceExport applies bodies in one go to a new store with cfg's
// options and returns its export.
func referenceExport(t *testing.T, cfg config.Config, bodies [][]byte) string {
	t.Helper()
	st, err := storage.Open(storeOptions(cfg, filepath.Join(t.TempDir(), "ref.db")))
	mustf(t, err, "open reference store")
	defer st.Close()
	_, err = st.ApplyMapping(cfg.Mapping, "", false)
	mustf(t, err, "mapping")
	var evs []*events.Event
	for _, b := range bodies {
		ev, err := events.Decode(bytes.Clone(b))
		mustf(t, err, "decode")
		evs = append(evs, ev)
	}
	_, err = st.Apply(evs)
	mustf(t, err, "apply")
	return snapshotJSON(t, st)
}

// waitBacklog waits while more than n events wait to be applied.
func waitBacklog(t *testing.T, d *daemon, n uint64) {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		p, err := d.q.Pending(ctx, d.durable)
		cancel()
		if err == nil && p <= n {
			return
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
	t.Errorf("more than %d events still wait after a minute", n)
}

// padded returns body with a raw_attributes blob of n incompressible
// characters, as an IdP with many custom attributes sends (the store keeps
// none of it; the stream holds it all).
func padded(t *testing.T, body []byte, n int) []byte {
	t.Helper()
	var env map[string]any
	mustf(t, json.Unmarshal(body, &env), "unmarshal")
	raw := make([]byte, n*3/4)
	_, _ = rand.Read(raw)
	if data, ok := env["data"].(map[string]any); ok {
		data["raw_attributes"] = map[string]any{"blob": base64.StdEncoding.EncodeToString(raw)}
	}
	out, err := json.Marshal(env)
	mustf(t, err, "marshal")
	return out
}

// The case scaled down by 8: a 64 MiB cap taking 300 MB becomes an
// 8 MiB cap taking 40 MB, at 1.5 MB/s (the 64 MiB case at 12 MB/s, twice
// what the receiver takes on this machine). Every webhook gets 2xx, the
// stream is purged behind the snapshots, and the final state is the events'.
func TestStreamWithASmallCapTakesFiveTimesItsSizeWithoutA503(t *testing.T) {
	if testing.Short() {
		t.Skip("posts 40 MB")
	}
	streamTakesWithoutA503(t, 2, 3000, 5)
}

// With snapshots_kept: 6, five shares of a quarter of the cap behind the
// oldest kept snapshot would fill the stream: the share is three quarters of
// the cap over six, so that the applied events it holds stay under three
// quarters of it; and should a slow moment let the stream near its cap
// anyway, the snapshot taken then purges behind itself, not behind the
// oldest of the six.
func TestStreamKeepingMoreSnapshotsThanItsCapHoldsTakesTwiceItsSizeWithoutA503(t *testing.T) {
	if testing.Short() {
		t.Skip("posts 20 MB")
	}
	streamTakesWithoutA503(t, 6, 1500, 2)
}

// streamTakesWithoutA503 posts users' events padded to 4 kB, at least
// times the 8 MiB cap, at a rate the worker keeps up with, to a daemon
// keeping kept snapshots: none is refused, the stream is purged, and the
// state is the events applied directly.
func streamTakesWithoutA503(t *testing.T, kept, users, times int) {
	const capBytes = 8 << 20
	d, _ := snapDaemon(t, t.TempDir(), func(c *config.Config) { c.NATS.MaxBytes = capBytes; c.Store.SnapshotsKept = kept })
	plain := synthBodies(synth.Options{Seed: 11, Users: users, Groups: 30, MembershipsPerUser: 2})
	bodies := make([][]byte, len(plain))
	var total int
	for i, b := range plain {
		bodies[i] = padded(t, b, 4000)
		total += len(bodies[i])
	}
	if total < times*capBytes {
		t.Fatalf("only %d bytes to post", total)
	}

	var next, refused atomic.Int64
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // the stream's size, sampled
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if info, err := d.q.StreamInfo(ctx); err == nil && info.State.Bytes > peak.Load() {
				peak.Store(info.State.Bytes)
			}
			cancel()
		}
	}()
	url := "http://" + d.Addr() + d.cfg.Webhook.Path
	const rate = 1.5e6 // bytes a second
	// Each post takes the next slot of the pace, never one that went by
	// while the posters waited for the worker: no catch-up bursts.
	var paceMu sync.Mutex
	nextSlot := time.Now()
	slot := func(n int) time.Duration {
		paceMu.Lock()
		defer paceMu.Unlock()
		at := time.Now()
		if nextSlot.After(at) {
			at = nextSlot
		}
		nextSlot = at.Add(time.Duration(float64(n) / rate * float64(time.Second)))
		return time.Until(at)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(len(bodies)); i = next.Add(1) - 1 {
				if i%64 == 0 {
					waitBacklog(t, d, 256) // a rate the worker keeps up with
				}
				if wait := slot(len(bodies[i])); wait > 0 {
					time.Sleep(wait) // pacing the sender, not waiting for work
				}
				req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(bodies[i]))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set(events.HeaderName, events.Sign(testSecret, time.Now(), bodies[i]))
				resp, err := httpClient.Do(req)
				if err != nil {
					t.Errorf("post %d: %v", i, err)
					return
				}
				if resp.StatusCode != http.StatusOK {
					refused.Add(1)
				}
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	waitApplied(t, d)
	close(stop)
	<-sampled
	if n := refused.Load(); n > 0 {
		t.Fatalf("%d of %d webhooks were refused; the worker kept up, so none should be", n, len(bodies))
	}
	first, last, _ := streamState(t, d.q)
	t.Logf("posted %d events, %d MB; the stream's peak %d bytes (cap %d); it now holds sequences %d-%d",
		len(bodies), total>>20, peak.Load(), capBytes, first, last)
	if first <= 1 {
		t.Fatalf("nothing was purged from the stream (it starts at %d)", first)
	}
	if got, want := snapshotJSON(t, d.st), referenceExport(t, d.cfg, bodies); got != want {
		t.Fatalf("the final state differs from the events applied directly")
	}
	if ready := d.ready(context.Background()); ready != nil {
		t.Fatalf("readiness after the load: %v", ready)
	}

}

// A stuck worker: the stream fills with events not yet applied, and that is
// what readiness and dsyncd_stream_full report (a full stream of applied
// events cannot happen while snapshots work: they purge it).
func TestAStreamFullOfUnappliedEventsIsWhatReadinessReports(t *testing.T) {
	cfg := testConfig(t)
	cfg.NATS.MaxBytes = 256 << 10
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q := queue.New(queueOptions(cfg), zaptest.NewLogger(t))
	mustf(t, q.Open(ctx), "open queue")
	defer q.Close()
	st, err := storage.Open(storeOptions(cfg, ""))
	mustf(t, err, "open store")
	defer st.Close()
	_, err = q.Consumer(ctx, legacyDurable, 0) // the worker's, acknowledging nothing
	mustf(t, err, "consumer")
	s := newSnapshotter(cfg, q, st, zaptest.NewLogger(t))
	s.tick(ctx)
	if err := s.streamFull(); err != nil {
		t.Fatalf("an empty stream reported full: %v", err)
	}
	bodies := synthBodies(synth.Options{Seed: 3, Users: 400, Groups: 2, MembershipsPerUser: 1})
	full := false
	for i, b := range bodies {
		if _, err := q.Publish(ctx, "dir", "dsync.user.created", fmt.Sprintf("e%d", i), padded(t, b, 2000)); err != nil {
			if !strings.Contains(err.Error(), "maximum bytes exceeded") {
				t.Fatalf("publish %d: %v", i, err)
			}
			full = true
			break
		}
	}
	if !full {
		t.Fatal("the stream never filled up")
	}
	s.tick(ctx)
	err = s.streamFull()
	if err == nil || !strings.Contains(err.Error(), "is full") || !strings.Contains(err.Error(), "events not yet applied") {
		t.Fatalf("readiness of a stream full of unapplied events = %v", err)
	}
	reg := prometheus.NewRegistry()
	s.register(reg)
	mfs, err := reg.Gather()
	mustf(t, err, "gather")
	gauge := -1.0
	for _, mf := range mfs {
		if mf.GetName() == "dsyncd_stream_full" {
			gauge = mf.GetMetric()[0].GetGauge().GetValue()
		}
		if mf.GetName() == "dsyncd_snapshots_total" {
			for _, m := range mf.GetMetric() {
				if m.GetCounter().GetValue() != 0 {
					t.Fatalf("a snapshot was taken with nothing applied: %v", m)
				}
			}
		}
	}
	if gauge != 1 {
		t.Fatalf("dsyncd_stream_full = %v, want 1", gauge)
	}
}

// The stream triggers a snapshot after a quarter of its cap of applied
// events, or after as many bytes as the newest snapshot takes when that is
// more, up to three quarters of the cap shared among the kept snapshots
// (three eighths with 2 kept): a store grown larger than the share is copied
// less often, so the copies stay a bounded share of the work, and the stream
// keeps room below its cap however many snapshots are kept.
func TestALargeSnapshotSpacesTheNextByItsSize(t *testing.T) {
	const capBytes = 4 << 30
	for _, c := range []struct {
		name   string
		kept   int
		newest *queue.Snapshot
		want   uint64
	}{
		{"no snapshot yet: a quarter of the cap", 2, nil, capBytes / 4},
		{"a snapshot smaller than a quarter: a quarter", 2, &queue.Snapshot{Size: 300 << 20}, capBytes / 4},
		{"a snapshot larger than a quarter: its size", 2, &queue.Snapshot{Size: 1200 << 20}, 1200 << 20},
		{"a snapshot larger than three eighths of the cap: three eighths", 2, &queue.Snapshot{Size: 3 << 30}, capBytes / 8 * 3},
		{"one kept: at most three eighths too", 1, &queue.Snapshot{Size: 3 << 30}, capBytes / 8 * 3},
		{"six kept: three quarters of the cap over six, an eighth", 6, nil, capBytes / 8},
		{"six kept and a large snapshot: still an eighth", 6, &queue.Snapshot{Size: 1200 << 20}, capBytes / 8},
	} {
		s := &snapshotter{kept: c.kept}
		s.newest.Store(c.newest)
		if got := s.streamShare(capBytes); got != c.want {
			t.Errorf("%s: share %d, want %d", c.name, got, c.want)
		}
	}
}
