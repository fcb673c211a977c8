package main

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/dsyncd/dsyncd/cmd/dsyncd-load/harness"
	"github.com/dsyncd/dsyncd/events/synth"
)

// startNATS runs a JetStream nats-server in this process on 127.0.0.1:port.
func startNATS(port int, storeDir string) (*natsserver.Server, error) {
	s, err := natsserver.NewServer(&natsserver.Options{
		ServerName: "dsyncd-soak",
		Host:       "127.0.0.1",
		Port:       port,
		JetStream:  true,
		StoreDir:   storeDir,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		return nil, err
	}
	s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, fmt.Errorf("nats-server on port %d not ready within 30s", port)
	}
	return s, nil
}

// outagePhase (b): the external NATS server goes away mid-load and comes back.
func (e *env) outagePhase(ctx context.Context, o options) *result {
	r := &result{phase: "b. queue outage"}
	dir, err := e.phaseDir("outage")
	if err != nil {
		r.fail("%v", err)
		return r
	}
	so := synth.Options{Seed: 22, Users: 150, Groups: 10, MembershipsPerUser: 2, Changes: 600}
	loadFor, downFor := 12*time.Second, 4*time.Second
	if !o.short {
		so = synth.Options{Seed: 22, Users: 1000, Groups: 40, MembershipsPerUser: 2, Changes: 4000}
		loadFor, downFor = 40*time.Second, 10*time.Second
	}
	stream := synth.Stream(so)
	deliveries := synth.Shuffle(stream, 2022, 10)
	r.events = len(stream)

	port, err := harness.FreePort()
	if err != nil {
		r.fail("%v", err)
		return r
	}
	natsDir := filepath.Join(dir, "nats")
	ns, err := startNATS(port, natsDir)
	if err != nil {
		r.fail("%v", err)
		return r
	}
	var nsMu sync.Mutex
	defer func() {
		nsMu.Lock()
		if ns != nil {
			ns.Shutdown()
			ns.WaitForShutdown()
		}
		nsMu.Unlock()
	}()
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", port)
	d, golden, err := e.boot(ctx, dir, harness.Config{AckWait: 5 * time.Second}, stream, "DSYNCD_NATS_URL="+natsURL)
	if err != nil {
		r.fail("%v", err)
		return r
	}
	defer stop(d)

	dl := newDelivery(true)
	p := &harness.Poster{Client: harness.NewClient(8, 15*time.Second), URL: d.WebhookURL(), Secret: secret}
	pctx, cancelPost := context.WithTimeout(ctx, loadFor+3*time.Minute)
	defer cancelPost()
	postDone := make(chan struct{})
	go func() {
		defer close(postDone)
		post(pctx, p, deliveries, 8, loadFor, dl)
	}()

	// The outage, a third of the way into the load.
	select {
	case <-ctx.Done():
	case <-time.After(loadFor / 3): // when the outage starts
	}
	nsMu.Lock()
	ns.Shutdown()
	ns.WaitForShutdown()
	ns = nil
	nsMu.Unlock()
	down := time.Now() // from here until up, nothing can be stored
	var ready503, readyPolls int
	for time.Since(down) < downFor && ctx.Err() == nil {
		readyPolls++
		if code, _, err := harness.Get(ctx, e.ctl, d.URL()+"/readyz"); err == nil && code == 503 {
			ready503++
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond): // sampling /readyz during the outage
		}
	}
	up := time.Now()
	s2, err := startNATS(port, natsDir)
	if err != nil {
		r.fail("restart nats-server: %v", err)
		<-postDone
		return r
	}
	nsMu.Lock()
	ns = s2
	nsMu.Unlock()
	restarted := time.Now()
	r.note("nats-server down for %s (%d of %d /readyz polls answered 503 meanwhile)", up.Sub(down).Round(time.Millisecond), ready503, readyPolls)
	if ready503 == 0 {
		r.fail("/readyz never answered 503 while JetStream was down")
	}

	<-postDone
	postEnded := time.Now()
	r.posted, r.acked = dl.posted.Load(), dl.acked.Load()
	r.note("answers: %s", dl.statuses())
	if len(dl.failed) > 0 {
		r.fail("%d deliveries never got a 2xx", len(dl.failed))
	}
	if n := dl.count4xx(); n > 0 {
		r.fail("%d answers were 4xx for valid, signed events", n)
	}
	// No 2xx for a request made entirely while the server was down.
	var during2xx, during503, duringErr, duringOther int
	dl.mu.Lock()
	for _, a := range dl.attempts {
		if a.Start.Before(down) || a.End.After(up) {
			continue
		}
		switch {
		case a.Err != nil:
			duringErr++
		case a.Status/100 == 2:
			during2xx++
		case a.Status == 503:
			during503++
		default:
			duringOther++
		}
	}
	dl.mu.Unlock()
	r.note("requests made and answered during the outage: %d × 503, %d × 2xx, %d other, %d transport errors", during503, during2xx, duringOther, duringErr)
	if during2xx > 0 {
		r.fail("%d requests were answered 2xx while JetStream was down", during2xx)
	}
	if during503 == 0 {
		r.fail("no request was answered 503 during the outage: the load did not reach it")
	}

	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	m, err := harness.WaitDrained(wctx, e.ctl, d.URL(), float64(len(stream)))
	cancel()
	if err != nil {
		r.fail("worker did not catch up after the outage: %v", err)
		return r
	}
	r.note("posting ended %s after nats-server came back; the worker had everything applied %s later; processed %.0f (applied %.0f, stale %.0f), duplicate %.0f",
		postEnded.Sub(restarted).Round(100*time.Millisecond), time.Since(postEnded).Round(100*time.Millisecond), m.Processed(), m.Outcome("applied"), m.Outcome("stale"), m.Outcome("duplicate"))
	if m.Processed() != float64(len(stream)) {
		r.twice = max(0, int(m.Processed())-len(stream))
		r.fail("worker processed %.0f events, want exactly %d", m.Processed(), len(stream))
	}
	if err := d.Stop(time.Minute); err != nil {
		r.fail("%v", err)
	}
	e.checkStreamAndExport(ctx, r, dir, d, natsURL, filepath.Join(dir, "data", "dsyncd.db"), dl, golden)
	if len(r.failures) == 0 {
		r.applied = fmt.Sprintf("%d (= golden)", len(stream))
	}
	return r
}
