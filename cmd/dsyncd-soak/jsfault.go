package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dsyncd/dsyncd/cmd/dsyncd-load/harness"
	"github.com/dsyncd/dsyncd/events/synth"
)

// recoveryBound is how soon after its cause is gone dsyncd must store
// events again by itself.
const recoveryBound = 10 * time.Second

// jsDiskFullPhase (g): the embedded JetStream's file system fills up while
// webhooks arrive, and is freed again. While events cannot be stored,
// webhooks get 503 and /readyz 503 with the reason; once space returns,
// dsyncd stores again by itself within recoveryBound, and every event
// answered 2xx before, during or after is applied.
func (e *env) jsDiskFullPhase(ctx context.Context, o options) *result {
	r := &result{phase: "g. JetStream disk full"}
	if os.Geteuid() != 0 {
		r.skipped = "needs root to mount a tmpfs for JetStream (running as uid " + fmt.Sprint(os.Geteuid()) + ")"
		return r
	}
	dir, err := e.phaseDir("jsdiskfull")
	if err != nil {
		r.fail("%v", err)
		return r
	}
	mnt := filepath.Join(dir, "data") // data_dir: JetStream stores in data/jetstream
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		r.fail("%v", err)
		return r
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size=32m,mode=0700"); err != nil {
		r.skipped = "mount -t tmpfs -o size=32m failed: " + err.Error()
		return r
	}
	defer func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	}()
	storePath := filepath.Join(dir, "dsyncd.db") // the store stays on the real disk

	so := synth.Options{Seed: 44, Users: 80, Groups: 8, MembershipsPerUser: 2, Changes: 500}
	if !o.short {
		so = synth.Options{Seed: 44, Users: 200, Groups: 12, MembershipsPerUser: 2, Changes: 1500}
	}
	stream := synth.Stream(so)
	half := len(stream) / 2
	first, second := bodiesOf(stream[:half]), bodiesOf(stream[half:])
	r.events = len(stream)

	d, golden, err := e.boot(ctx, dir, harness.Config{AckWait: 5 * time.Second, MaxBytes: 8 << 20}, stream, "DSYNCD_STORE_PATH="+storePath)
	if err != nil {
		r.fail("%v", err)
		return r
	}
	defer stop(d)
	dl := newDelivery(false)
	p := &harness.Poster{Client: harness.NewClient(8, 15*time.Second), URL: d.WebhookURL(), Secret: secret}
	pctx, cancelPost := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelPost()

	post(pctx, p, first, 8, 0, dl)
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	_, err = harness.WaitDrained(wctx, e.ctl, d.URL(), float64(half))
	cancel()
	if err != nil {
		r.fail("first half not applied: %v", err)
		return r
	}

	// Fill the file system, then post the second half in the background:
	// the posters retry every 503 until 2xx, as WorkOS does.
	filler := filepath.Join(mnt, "filler")
	filled, err := fill(filler)
	if err != nil {
		r.fail("filling the tmpfs: %v", err)
		return r
	}
	posted := make(chan struct{})
	go func() {
		defer close(posted)
		post(pctx, p, second, 8, 0, dl)
	}()

	// The fault must show: /readyz 503 with the reason.
	faultAt := time.Now()
	var reason string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && ctx.Err() == nil; {
		code, body, err := harness.Get(ctx, e.ctl, d.URL()+"/readyz")
		if err == nil && code == http.StatusServiceUnavailable && strings.Contains(string(body), "cannot store events") {
			reason = string(body)
			break
		}
		time.Sleep(50 * time.Millisecond) // sampling /readyz
	}
	if reason == "" {
		r.fail("/readyz never said JetStream cannot store events with %d KiB filled (posted so far: %s)", filled>>10, dl.statuses())
		return r
	}
	r.note("tmpfs filled with %d KiB; /readyz 503 %s after the fill: %s", filled>>10, time.Since(faultAt).Round(time.Millisecond), oneLine(reason, 200))
	hold := 3 * time.Second
	if !o.short {
		hold = 15 * time.Second
	}
	time.Sleep(hold) // the outage lasts a while; posters keep retrying
	if m, err := harness.Scrape(ctx, e.ctl, d.URL()); err == nil && m["dsyncd_jetstream_writable"] != 0 {
		r.fail("dsyncd_jetstream_writable = %v during the fault, want 0", m["dsyncd_jetstream_writable"])
	}
	acked := dl.acked.Load()

	// Space returns: dsyncd must store again by itself within the bound.
	if err := os.Remove(filler); err != nil {
		r.fail("removing the filler: %v", err)
		return r
	}
	freed := time.Now()
	rctx, cancel := context.WithTimeout(ctx, recoveryBound)
	err = d.WaitReady(rctx, e.ctl)
	cancel()
	readyAfter := time.Since(freed)
	if err != nil {
		r.fail("/readyz not 200 within %s of freeing the disk: %v", recoveryBound, err)
		return r
	}
	for dl.acked.Load() == acked && time.Since(freed) < recoveryBound {
		time.Sleep(20 * time.Millisecond) // polling the posters' count
	}
	storedAfter := time.Since(freed)
	if dl.acked.Load() == acked {
		r.fail("no webhook answered 2xx within %s of freeing the disk", recoveryBound)
	}
	<-posted
	r.note("recovered: /readyz 200 %s and the first 2xx %s after the disk was freed; second half posted: %s",
		readyAfter.Round(time.Millisecond), storedAfter.Round(time.Millisecond), dl.statuses())
	if m, err := harness.Scrape(ctx, e.ctl, d.URL()); err == nil {
		r.note("dsyncd_jetstream_restarts_total %v", m["dsyncd_jetstream_restarts_total"])
	}
	if len(dl.failed) > 0 {
		r.fail("%d deliveries never got a 2xx", len(dl.failed))
	}
	wctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
	m, err := harness.WaitDrained(wctx, e.ctl, d.URL(), float64(len(stream)))
	cancel()
	if err != nil {
		r.fail("not every event applied after recovery: %v", err)
		return r
	}
	if m.Processed() != float64(len(stream)) {
		r.twice = max(0, int(m.Processed())-len(stream))
		r.fail("worker processed %.0f events, want exactly %d", m.Processed(), len(stream))
	}
	e.finishDelivery(ctx, r, dir, d, storePath, dl, golden, len(stream))
	return r
}

// fdExhaustionPhase (h): dsyncd runs with a low open-files limit (ulimit -n
// 256) and idle connections take every descriptor while webhooks arrive.
// Once they close, dsyncd serves again by itself within recoveryBound, and
// every event answered 2xx is applied.
func (e *env) fdExhaustionPhase(ctx context.Context, o options) *result {
	r := &result{phase: "h. descriptors exhausted"}
	dir, err := e.phaseDir("fdexhaustion")
	if err != nil {
		r.fail("%v", err)
		return r
	}
	so := synth.Options{Seed: 55, Users: 60, Groups: 6, MembershipsPerUser: 2, Changes: 300}
	if !o.short {
		so = synth.Options{Seed: 55, Users: 150, Groups: 10, MembershipsPerUser: 2, Changes: 1000}
	}
	stream := synth.Stream(so)
	half := len(stream) / 2
	first, second := bodiesOf(stream[:half]), bodiesOf(stream[half:])
	r.events = len(stream)

	d, err := e.newDaemon(dir, harness.Config{AckWait: 5 * time.Second})
	if err != nil {
		r.fail("%v", err)
		return r
	}
	golden, err := e.golden(ctx, d, dir, stream)
	if err != nil {
		r.fail("golden: %v", err)
		return r
	}
	const limit = 256
	d.Bin, d.Args = "/bin/sh", []string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" serve --config "$1"`, limit), e.bin, d.Config}
	if err := e.start(ctx, d); err != nil {
		r.fail("%v", err)
		return r
	}
	defer stop(d)
	dl := newDelivery(false)
	p := &harness.Poster{Client: harness.NewClient(8, 15*time.Second), URL: d.WebhookURL(), Secret: secret}
	pctx, cancelPost := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelPost()
	post(pctx, p, first, 8, 0, dl)

	// Idle connections, more than the limit, held open.
	var conns []net.Conn
	var mu sync.Mutex
	for range limit + 100 {
		c, err := net.DialTimeout("tcp", d.Listen, time.Second)
		if err != nil {
			break
		}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	release := func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
		conns = nil
	}
	defer release()
	r.note("dsyncd under ulimit -n %d; %d idle connections opened", limit, len(conns))
	// A new connection per delivery, as WorkOS's senders open them: each
	// needs a descriptor.
	fresh := harness.NewClient(8, 15*time.Second)
	fresh.Transport.(*http.Transport).DisableKeepAlives = true
	p2 := &harness.Poster{Client: fresh, URL: d.WebhookURL(), Secret: secret}
	posted := make(chan struct{})
	go func() {
		defer close(posted)
		post(pctx, p2, second, 8, 0, dl)
	}()
	hold := 3 * time.Second
	if !o.short {
		hold = 15 * time.Second
	}
	time.Sleep(hold) // the exhaustion lasts a while; posters keep retrying
	if !d.Running() {
		r.fail("dsyncd died without descriptors: %v\n%s", d.ExitErr(), harness.Tail(d.LogPath, 30))
		return r
	}
	during := dl.statuses()
	acked := dl.acked.Load()
	release()
	freed := time.Now()
	rctx, cancel := context.WithTimeout(ctx, recoveryBound)
	err = d.WaitReady(rctx, e.ctl)
	cancel()
	if err != nil {
		r.fail("/readyz not 200 within %s of closing the idle connections: %v", recoveryBound, err)
		return r
	}
	readyAfter := time.Since(freed)
	<-posted
	r.note("during the exhaustion (%s): %s; /readyz 200 %s after the connections closed (%d more 2xx since)",
		hold, during, readyAfter.Round(time.Millisecond), dl.acked.Load()-acked)
	if len(dl.failed) > 0 {
		r.fail("%d deliveries never got a 2xx", len(dl.failed))
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	m, err := harness.WaitDrained(wctx, e.ctl, d.URL(), float64(len(stream)))
	cancel()
	if err != nil {
		r.fail("not every event applied after the exhaustion: %v", err)
		return r
	}
	if m.Processed() != float64(len(stream)) {
		r.twice = max(0, int(m.Processed())-len(stream))
		r.fail("worker processed %.0f events, want exactly %d", m.Processed(), len(stream))
	}
	r.note("dsyncd_jetstream_restarts_total %v", m["dsyncd_jetstream_restarts_total"])
	e.finishDelivery(ctx, r, dir, d, filepath.Join(dir, "data", "dsyncd.db"), dl, golden, len(stream))
	return r
}

// damagedStorePhase (i): with the daemon stopped, its store is truncated,
// its meta pages zeroed, overwritten with random bytes, or swapped for an
// older copy. Each time serve must exit 1 with one line naming the store
// and saying to run dsyncd rebuild, never a panic nor "ready"; after dsyncd
// rebuild it serves the same state as before.
func (e *env) damagedStorePhase(ctx context.Context, o options) *result {
	r := &result{phase: "i. damaged store"}
	dir, err := e.phaseDir("damagedstore")
	if err != nil {
		r.fail("%v", err)
		return r
	}
	stream := synth.Stream(synth.Options{Seed: 66, Users: 60, Groups: 6, MembershipsPerUser: 2, Changes: 300})
	half := len(stream) / 2
	r.events = len(stream)
	d, golden, err := e.boot(ctx, dir, harness.Config{}, stream)
	if err != nil {
		r.fail("%v", err)
		return r
	}
	defer stop(d)
	storePath := filepath.Join(dir, "data", "dsyncd.db")
	dl := newDelivery(false)
	p := &harness.Poster{Client: harness.NewClient(8, 15*time.Second), URL: d.WebhookURL(), Secret: secret}
	deliver := func(bodies [][]byte, total int) bool {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		post(pctx, p, bodies, 8, 0, dl)
		cancel()
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		_, err := harness.WaitDrained(wctx, e.ctl, d.URL(), float64(total))
		cancel()
		if err != nil {
			r.fail("events not applied: %v", err)
		}
		return err == nil
	}
	if !deliver(bodiesOf(stream[:half]), half) {
		return r
	}
	if err := d.Stop(time.Minute); err != nil {
		r.fail("%v", err)
		return r
	}
	older := filepath.Join(dir, "older.db")
	if err := copyPath(storePath, older); err != nil {
		r.fail("%v", err)
		return r
	}
	if err := e.start(ctx, d); err != nil {
		r.fail("%v", err)
		return r
	}
	if !deliver(bodiesOf(stream[half:]), len(stream)-half) { // counted since the restart
		return r
	}
	r.posted, r.acked = dl.posted.Load(), dl.acked.Load()
	if err := d.Stop(time.Minute); err != nil {
		r.fail("%v", err)
		return r
	}
	good := filepath.Join(dir, "good.db")
	if err := copyPath(storePath, good); err != nil {
		r.fail("%v", err)
		return r
	}

	random := make([]byte, 16<<10)
	_, _ = rand.Read(random)
	page := int64(os.Getpagesize())
	writeAt := func(off int64, b []byte) error {
		f, err := os.OpenFile(storePath, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteAt(b, off)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}
	for _, c := range []struct {
		name, want string
		damage     func() error
	}{
		{"truncate -s 0", "is new or was emptied", func() error { return os.Truncate(storePath, 0) }},
		{"meta pages zeroed", "is damaged", func() error { return writeAt(0, make([]byte, 2*page)) }},
		{"16 KiB of random bytes", "is damaged", func() error { return os.WriteFile(storePath, random, 0o600) }},
		{"random bytes over the first data pages", "is damaged", func() error { return writeAt(2*page, random) }},
		{"an older copy swapped in", "is behind the stream", func() error { return copyPath(older, storePath) }},
	} {
		if err := copyPath(good, storePath); err != nil {
			r.fail("%v", err)
			return r
		}
		if err := c.damage(); err != nil {
			r.fail("%s: %v", c.name, err)
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		cmd := exec.CommandContext(sctx, e.bin, "serve", "--config", d.Config)
		out, err := cmd.CombinedOutput()
		cancel()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		last := lines[len(lines)-1]
		code := cmd.ProcessState.ExitCode()
		ok := code == 1 && strings.HasPrefix(last, "dsyncd: store "+storePath+" ") && strings.Contains(last, c.want) &&
			strings.Contains(last, "run dsyncd rebuild") && !strings.Contains(string(out), "goroutine ") && !strings.Contains(string(out), "dsyncd ready")
		if !ok {
			r.fail("%s: serve exited %d (%v), last line %q; want 1 and one line saying %q and to run dsyncd rebuild", c.name, code, err, oneLine(last, 300), c.want)
			continue
		}
		r.badTried++
		r.badRefuse++
		r.note("%s: refused: %s", c.name, oneLine(strings.TrimPrefix(last, "dsyncd: store "+storePath+" "), 160))
	}

	// The remedy: rebuild from the stream (the store is an older copy now).
	if out, err := harness.Run(ctx, e.bin, nil, "rebuild", "--config", d.Config); err != nil {
		r.fail("dsyncd rebuild: %v\n%s", err, out)
		return r
	}
	if err := e.start(ctx, d); err != nil {
		r.fail("serve after rebuild: %v", err)
		return r
	}
	if err := d.Stop(time.Minute); err != nil {
		r.fail("%v", err)
	}
	e.checkStreamAndExport(ctx, r, dir, d, "", storePath, dl, golden)
	if len(r.failures) == 0 {
		r.applied = fmt.Sprintf("%d (= golden, after rebuild)", len(stream))
	}
	return r
}

// copyPath copies src over dst (mode 0600).
func copyPath(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o600)
}

// oneLine is s on one line, cut to n bytes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}
