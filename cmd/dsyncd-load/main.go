// Command dsyncd-load load-tests the whole webhook path on loopback: HTTP in,
// signature check, JetStream, worker, store. It is what `make bench-e2e` runs.
//
// It starts `dsyncd serve` itself (-bin; temporary data directory, embedded
// NATS, a random loopback port, log level warn, a mapping with an App Admins
// rule) unless -url points at a running daemon, generates a synthetic
// directory's initial sync with events/synth (-users, -groups, -memberships,
// -changes), signs every body with events.Sign at the moment it is posted, and
// posts the events in created_at order from -concurrency keep-alive
// connections, retrying any non-2xx answer with exponential backoff like
// WorkOS. It then polls GET /metrics until dsyncd_consumer_pending is 0 and
// dsyncd_events_total has counted every event, and prints:
//
//   - webhook requests/s and events/s until the last 2xx;
//   - p50/p99/max time to 2xx, per request and per event (retries included);
//   - the time until the last event was applied, and the apply rate;
//   - the daemon's peak RSS (VmHWM from /proc/<pid>/status), when it started it;
//   - a few samples of the consumer lag.
//
// -sync-always runs the daemon with DSYNCD_NATS_SYNC_ALWAYS=true to measure
// the cost of an fsync per stored event. -nats-server BIN runs that
// nats-server binary as a separate process (a random loopback port, its store
// in the temporary directory, the same sync policy) and points the daemon at
// it with DSYNCD_NATS_URL, so that the two processes' memory is reported
// apart: `make bench-e2e-external`. Everything is bounded by -timeout.
//
// For the scale runs (`make bench-scale`, scale.go): -reads N GETs
// /v1/users/{id} of random users N times a second during the sync and reports
// their latency, then the same reads for a few seconds once everything is
// applied (the read path without the sync competing for the CPU);
// -max-bytes sets nats.max_bytes; the report adds the daemon's peak
// anonymous and file-backed memory (sampled every second), the stream's
// size at the end, the snapshots taken and events purged, and the host's
// load average.
//
// -feed-latency N measures the change feed instead (feedlatency.go): after
// the initial sync, N single badge changes posted one at a time, each timed
// from its webhook in to its change record at a long-poll consumer and at a
// webhook-out receiver. DSYNCD_CHANGES_ENABLED=false in -daemon-env runs
// the load test with the feed off, to compare.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dsyncd/dsyncd/cmd/dsyncd-load/harness"
	"github.com/dsyncd/dsyncd/events/synth"
)

type options struct {
	cluster     bool
	bin         string
	url         string
	secret      string
	users       int
	groups      int
	memberships int
	changes     int
	concurrency int
	seed        uint64
	syncAlways  bool
	natsServer  string
	daemonEnv   string
	client      string
	timeout     time.Duration
	keep        bool
	reads       int
	maxBytes    int64
	feedLatency int
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin/dsyncd", "dsyncd binary to start (ignored with -url)")
	flag.StringVar(&o.url, "url", "", "base URL of a running dsyncd (e.g. http://127.0.0.1:8080); empty starts one")
	flag.StringVar(&o.secret, "secret", "whsec_dsyncd_load", "webhook secret (with -url: one the running daemon accepts)")
	flag.IntVar(&o.users, "users", 100000, "directory users in the initial sync")
	flag.IntVar(&o.groups, "groups", 1000, "directory groups in the initial sync")
	flag.IntVar(&o.memberships, "memberships", 3, "groups each user joins in the initial sync")
	flag.IntVar(&o.changes, "changes", 0, "random lifecycle events after the initial sync")
	flag.IntVar(&o.concurrency, "concurrency", 64, "concurrent posters (keep-alive connections)")
	flag.Uint64Var(&o.seed, "seed", 1, "synthetic stream seed")
	flag.BoolVar(&o.syncAlways, "sync-always", false, "run the daemon with DSYNCD_NATS_SYNC_ALWAYS=true (fsync every stored event)")
	flag.StringVar(&o.natsServer, "nats-server", "", "nats-server binary to run as the daemon's external NATS (nats.url); empty: the embedded server")
	flag.StringVar(&o.client, "client", "raw", "HTTP client of the posters: raw (a minimal HTTP/1.1 client, leaving the shared CPU to the daemon) or net/http")
	flag.StringVar(&o.daemonEnv, "daemon-env", "", "extra KEY=VALUE[,KEY=VALUE] for the daemon only, e.g. GOMEMLIMIT=150MiB")
	flag.DurationVar(&o.timeout, "timeout", 20*time.Minute, "bound on the whole run")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary data directory")
	flag.IntVar(&o.reads, "reads", 0, "GET /v1/users/{id} of random users this many times a second during the sync, and report their latency (0 = none; needs the daemon this run starts)")
	flag.Int64Var(&o.maxBytes, "max-bytes", 0, "nats.max_bytes of the daemon this run starts (0 = the default, 4 GiB)")
	flag.IntVar(&o.feedLatency, "feed-latency", 0, "instead of the load test: after the initial sync, time this many single badge changes, one at a time, from webhook in to the change feed's long-poll and webhook-out consumers (p50/p99/max)")
	flag.BoolVar(&o.cluster, "cluster", false, "three nats-server processes (-nats-server) in one cluster and three dsyncd nodes on it: ingest across them, time until every node converged, per-process memory and CPU")
	flag.Parse()
	if o.concurrency < 1 || o.users < 0 || o.groups < 0 || o.memberships < 0 || o.changes < 0 {
		fmt.Fprintln(os.Stderr, "dsyncd-load: counts must be >= 0 and -concurrency >= 1")
		os.Exit(2)
	}
	if o.client != "raw" && o.client != "net/http" {
		fmt.Fprintf(os.Stderr, "dsyncd-load: -client %q: want raw or net/http\n", o.client)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	var err error
	switch {
	case o.feedLatency > 0:
		err = runFeedLatency(ctx, o)
	case o.cluster:
		err = runCluster(ctx, o)
	default:
		err = run(ctx, o)
	}
	cancel()
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "dsyncd-load:", err)
		os.Exit(1)
	}
}

type lagSample struct {
	at                        time.Duration
	acked, processed, pending float64
}

func run(ctx context.Context, o options) error {
	t0 := time.Now()
	stream := synth.Stream(synth.Options{Seed: o.seed, Users: o.users, Groups: o.groups, MembershipsPerUser: o.memberships, Changes: o.changes})
	genTime := time.Since(t0)
	var bytesTotal int64
	for _, e := range stream {
		bytesTotal += int64(len(e.Body))
	}
	fmt.Printf("generated %d events (%s of JSON, %.0f B/event) in %s\n", len(stream), harness.MiB(bytesTotal), float64(bytesTotal)/float64(max(1, len(stream))), genTime.Round(time.Millisecond))

	base := o.url
	var dataDir string
	var d, ns *harness.Daemon
	ctl := harness.NewClient(4, 15*time.Second)
	if base == "" {
		dir, err := os.MkdirTemp("", "dsyncd-load-")
		if err != nil {
			return err
		}
		if o.keep {
			fmt.Println("data directory:", dir)
		} else {
			defer os.RemoveAll(dir)
		}
		port, err := harness.FreePort()
		if err != nil {
			return err
		}
		listen := fmt.Sprintf("127.0.0.1:%d", port)
		cfg := filepath.Join(dir, "dsyncd.yaml")
		dataDir = filepath.Join(dir, "data")
		if err := harness.WriteConfig(cfg, harness.Config{DataDir: dataDir, Listen: listen, Secret: o.secret, AdminRule: true, MaxBytes: o.maxBytes}); err != nil {
			return err
		}
		d = &harness.Daemon{Bin: o.bin, Config: cfg, Listen: listen, LogPath: filepath.Join(dir, "dsyncd.log")}
		if o.syncAlways && o.natsServer == "" { // else the external server's config says sync: always
			d.Env = append(d.Env, "DSYNCD_NATS_SYNC_ALWAYS=true")
		}
		if o.natsServer != "" {
			if ns, err = startNATS(ctx, o, dir); err != nil {
				return err
			}
			defer func() {
				if ns.Running() {
					_ = ns.Kill()
				}
			}()
			d.Env = append(d.Env, "DSYNCD_NATS_URL=nats://"+ns.Listen)
		}
		if o.daemonEnv != "" {
			d.Env = append(d.Env, strings.Split(o.daemonEnv, ",")...)
		}
		if err := d.Start(); err != nil {
			return err
		}
		defer func() {
			if d.Running() {
				_ = d.Kill()
			}
		}()
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		err = d.WaitReady(rctx, ctl)
		cancel()
		if err != nil {
			return err
		}
		base = d.URL()
	} else if code, _, err := harness.Get(ctx, ctl, base+"/readyz"); err != nil || code != 200 {
		return fmt.Errorf("%s/readyz: %d %v", base, code, err)
	}
	before, err := harness.Scrape(ctx, ctl, base)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}

	p := &harness.Poster{Client: harness.NewClient(o.concurrency, 30*time.Second), URL: base + harness.WebhookPath, Secret: o.secret}
	u, err := url.Parse(base)
	if err != nil || u.Host == "" || (o.client == "raw" && u.Scheme != "http") {
		return fmt.Errorf("base URL %q: want http://host:port (the raw client speaks plain HTTP/1.1; use -client net/http for https)", base)
	}
	retry := harness.Retry{First: 100 * time.Millisecond, Max: 2 * time.Second, MaxAttempts: 20}
	var (
		next        atomic.Int64
		requests    atomic.Int64
		non2xx      atomic.Int64
		transport   atomic.Int64
		failed      atomic.Int64
		acked       atomic.Int64
		mu          sync.Mutex
		reqLat      = make([]time.Duration, 0, len(stream)+1024)
		eventLat    = make([]time.Duration, 0, len(stream))
		lastAckTime time.Time
	)
	// Lag sampler: once a second, what has been acknowledged, processed and is pending.
	var samples []lagSample
	sampleDone := make(chan struct{})
	sctx, stopSampler := context.WithCancel(ctx)
	cpu0 := cpuTimes(d, ns)
	loadStart := loadAverage()
	start := time.Now()
	var mem memPeak
	var rd *reader
	if d != nil {
		if rd, err = startReader(ctx, base, dataDir, o.seed, o.users, o.reads); err != nil {
			stopSampler()
			return err
		}
	}
	go func() {
		defer close(sampleDone)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
			}
			mem.sample(d)
			if m, err := harness.Scrape(sctx, ctl, base); err == nil {
				samples = append(samples, lagSample{at: time.Since(start), acked: float64(acked.Load()),
					processed: m.Processed() - before.Processed(), pending: m.Pending()})
			}
		}
	}()
	var wg sync.WaitGroup
	for range o.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 1024)
			deliver := p.Deliver
			if o.client == "raw" {
				rc := &harness.RawConn{Addr: u.Host, Path: harness.WebhookPath, Secret: o.secret}
				defer rc.Close()
				deliver = rc.Deliver
			}
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(len(stream)) {
					break
				}
				dl := deliver(ctx, stream[i].Body, retry, func(a harness.Attempt) {
					requests.Add(1)
					switch {
					case a.Err != nil:
						transport.Add(1)
					case a.Status/100 != 2:
						non2xx.Add(1)
					}
					local = append(local, a.End.Sub(a.Start))
				})
				if !dl.Delivered() {
					failed.Add(1)
					continue
				}
				acked.Add(1)
				mu.Lock()
				eventLat = append(eventLat, dl.Took)
				if now := time.Now(); now.After(lastAckTime) {
					lastAckTime = now
				}
				mu.Unlock()
			}
			mu.Lock()
			reqLat = append(reqLat, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	ingest := lastAckTime.Sub(start)
	if err := ctx.Err(); err != nil {
		stopSampler()
		<-sampleDone
		return fmt.Errorf("posting interrupted after %d of %d events: %w", acked.Load(), len(stream), err)
	}
	if n := failed.Load(); n > 0 {
		stopSampler()
		<-sampleDone
		return fmt.Errorf("%d events never got a 2xx after %d attempts", n, retry.MaxAttempts)
	}
	final, err := harness.WaitDrained(ctx, ctl, base, before.Processed()+float64(len(stream)))
	appliedAt := time.Since(start)
	cpu := cpuTimes(d, ns).minus(cpu0)
	stopSampler()
	<-sampleDone
	mem.sample(d)
	readLat, readErrs := rd.finish()
	if err != nil {
		return fmt.Errorf("waiting for the worker: %w", err)
	}
	// The same reads once everything is applied: what the read path costs
	// without the sync competing for the CPU.
	idleLat, idleErrs, err := idleReads(ctx, rd, base, dataDir, o.seed, o.users, o.reads)
	if err != nil {
		return err
	}
	loadEnd := loadAverage()

	var st, nst harness.ProcStatus
	var stopTook time.Duration
	if ns != nil {
		nst, _ = ns.Status()
	}
	if d != nil {
		st, _ = d.Status()
		t := time.Now()
		if err := d.Stop(time.Minute); err != nil {
			return err
		}
		stopTook = time.Since(t)
	}
	if ns != nil {
		if err := ns.Stop(time.Minute); err != nil {
			return err
		}
	}

	n := float64(len(stream))
	mode := "embedded NATS, sync_interval 1s (default)"
	if o.syncAlways {
		mode = "embedded NATS, sync_always (fsync per event)"
	}
	switch ext := daemonNATSURL(o.daemonEnv); {
	case o.natsServer != "":
		mode = strings.Replace(mode, "embedded NATS", "external nats-server "+o.natsServer, 1)
	case ext != "":
		mode = "external NATS at " + ext + " (from -daemon-env; its fsync policy is its own)"
	}
	if o.url != "" {
		mode = "running daemon at " + o.url
	}
	fmt.Printf("\ndsyncd-load: %d users, %d groups, %d memberships/user, %d changes -> %d events; %d posters (%s client); %s\n\n",
		o.users, o.groups, o.memberships, o.changes, len(stream), o.concurrency, o.client, mode)
	t := harness.Table{Header: []string{"metric", "value"}}
	t.Add("webhook requests", fmt.Sprintf("%d (%d non-2xx, %d transport errors)", requests.Load(), non2xx.Load(), transport.Load()))
	t.Add("ingest: requests/s", fmt.Sprintf("%.0f", float64(requests.Load())/ingest.Seconds()))
	t.Add("ingest: events/s (2xx)", fmt.Sprintf("%.0f", n/ingest.Seconds()))
	t.Add("ingest: time to last 2xx", ingest.Round(time.Millisecond))
	t.Add("request latency p50 / p99 / max", fmt.Sprintf("%s / %s / %s", harness.Ms(harness.Percentile(reqLat, 50)), harness.Ms(harness.Percentile(reqLat, 99)), harness.Ms(harness.Percentile(reqLat, 100))))
	t.Add("time to 2xx per event p50 / p99 / max", fmt.Sprintf("%s / %s / %s", harness.Ms(harness.Percentile(eventLat, 50)), harness.Ms(harness.Percentile(eventLat, 99)), harness.Ms(harness.Percentile(eventLat, 100))))
	t.Add("time until last event applied", appliedAt.Round(time.Millisecond))
	t.Add("end-to-end events/s (applied)", fmt.Sprintf("%.0f", n/appliedAt.Seconds()))
	t.Add("worker outcomes", fmt.Sprintf("applied %.0f, stale %.0f, duplicate %.0f, invalid %.0f",
		final.Outcome("applied")-before.Outcome("applied"), final.Outcome("stale")-before.Outcome("stale"),
		final.Outcome("duplicate")-before.Outcome("duplicate"), final.Outcome("invalid")-before.Outcome("invalid")))
	perEvent := func(c time.Duration) string {
		return fmt.Sprintf("%.1f s: %.0f µs an event, %.2f cores", c.Seconds(), float64(c.Microseconds())/n, c.Seconds()/appliedAt.Seconds())
	}
	if d != nil {
		t.Add("daemon CPU (first post to last applied)", perEvent(cpu.daemon))
	}
	if ns != nil {
		t.Add("nats-server CPU", perEvent(cpu.nats))
	}
	t.Add("load generator CPU", perEvent(cpu.self))
	if d != nil {
		t.Add("daemon peak RSS (VmHWM)", harness.MiB(st.VmHWM))
		t.Add("daemon RSS at end (anon + file)", fmt.Sprintf("%s (%s + %s)", harness.MiB(st.VmRSS), harness.MiB(st.RssAnon), harness.MiB(st.RssFile)))
		t.Add("daemon peak anon / peak file (sampled 1/s)", fmt.Sprintf("%s / %s", harness.MiB(mem.anon), harness.MiB(mem.file)))
		t.Add("graceful stop (SIGTERM)", stopTook.Round(time.Millisecond))
		if ns != nil {
			t.Add("nats-server peak RSS (VmHWM)", harness.MiB(nst.VmHWM))
			t.Add("nats-server RSS at end (anon + file)", fmt.Sprintf("%s (%s + %s)", harness.MiB(nst.VmRSS), harness.MiB(nst.RssAnon), harness.MiB(nst.RssFile)))
		}
	} else {
		t.Add("daemon peak RSS", "n/a (-url: not our process)")
	}
	if rd != nil {
		t.Add("GET /v1/users/{id} during the sync p50 / p99 / max", fmt.Sprintf("%s / %s / %s (%d reads, %d errors)",
			harness.Ms(harness.Percentile(readLat, 50)), harness.Ms(harness.Percentile(readLat, 99)), harness.Ms(harness.Percentile(readLat, 100)), len(readLat), readErrs))
		t.Add("GET /v1/users/{id} after the sync p50 / p99 / max", fmt.Sprintf("%s / %s / %s (%d reads, %d errors)",
			harness.Ms(harness.Percentile(idleLat, 50)), harness.Ms(harness.Percentile(idleLat, 99)), harness.Ms(harness.Percentile(idleLat, 100)), len(idleLat), idleErrs))
	}
	t.Add("host load average (1 min) at the first post / at the end", loadStart+" / "+loadEnd)
	if _, ok := final["dsyncd_stream_bytes"]; ok {
		t.Add("stream at the end (bytes / cap)", fmt.Sprintf("%s / %s", harness.MiB(int64(final["dsyncd_stream_bytes"])), harness.MiB(int64(final["dsyncd_stream_max_bytes"]))))
	}
	if n, ok := final["dsyncd_stream_purged_total"]; ok {
		snaps := 0.0
		for k, v := range final {
			if strings.HasPrefix(k, "dsyncd_snapshots_total{") {
				snaps += v
			}
		}
		t.Add("snapshots taken / events purged from the stream", fmt.Sprintf("%.0f / %.0f (last snapshot took %.1f s)", snaps, n, final["dsyncd_snapshot_seconds"]))
	}
	t.Print(os.Stdout)

	if len(samples) > 0 {
		fmt.Println("\nconsumer lag (sampled):")
		lt := harness.Table{Header: []string{"t", "acknowledged", "processed", "pending"}}
		step := max(1, len(samples)/10)
		for i := 0; i < len(samples); i += step {
			s := samples[i]
			lt.Add(s.at.Round(time.Second), fmt.Sprintf("%.0f", s.acked), fmt.Sprintf("%.0f", s.processed), fmt.Sprintf("%.0f", s.pending))
		}
		if s := samples[len(samples)-1]; (len(samples)-1)%step != 0 {
			lt.Add(s.at.Round(time.Second), fmt.Sprintf("%.0f", s.acked), fmt.Sprintf("%.0f", s.processed), fmt.Sprintf("%.0f", s.pending))
		}
		lt.Print(os.Stdout)
	}
	if v := non2xx.Load() + transport.Load(); v > 0 {
		fmt.Printf("\nnote: %d requests were answered non-2xx or failed and were retried\n", v)
	}
	return nil
}

// startNATS runs o.natsServer on a free loopback port with JetStream storing
// under dir, fsyncing as the embedded default does (every second, or every
// message with -sync-always), and waits until it accepts connections.
func startNATS(ctx context.Context, o options, dir string) (*harness.Daemon, error) {
	port, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	sync := "1s"
	if o.syncAlways {
		sync = "always"
	}
	conf := filepath.Join(dir, "nats-server.conf")
	body := fmt.Sprintf("listen: \"127.0.0.1:%d\"\njetstream {\n  store_dir: %q\n  sync_interval: %s\n}\n", port, filepath.Join(dir, "nats"), sync)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return nil, err
	}
	ns := &harness.Daemon{Bin: o.natsServer, Args: []string{"-c", conf}, Listen: fmt.Sprintf("127.0.0.1:%d", port), LogPath: filepath.Join(dir, "nats-server.log")}
	if err := ns.Start(); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := ns.WaitListening(wctx, ns.Listen); err != nil {
		_ = ns.Kill()
		return nil, err
	}
	return ns, nil
}

// daemonNATSURL is the DSYNCD_NATS_URL that -daemon-env gives the daemon, if any.
func daemonNATSURL(env string) string {
	found := ""
	for _, kv := range strings.Split(env, ",") {
		if v, ok := strings.CutPrefix(kv, "DSYNCD_NATS_URL="); ok {
			found = v // the last one wins, as in the daemon's environment
		}
	}
	return found
}

// cpuSample is the CPU time used so far by the daemon, the external
// nats-server and this process (the load generator).
type cpuSample struct{ daemon, nats, self time.Duration }

func cpuTimes(d, ns *harness.Daemon) cpuSample {
	var c cpuSample
	if d != nil {
		c.daemon, _ = d.CPU()
	}
	if ns != nil {
		c.nats, _ = ns.CPU()
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		c.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return c
}

func (c cpuSample) minus(o cpuSample) cpuSample {
	return cpuSample{daemon: c.daemon - o.daemon, nats: c.nats - o.nats, self: c.self - o.self}
}
