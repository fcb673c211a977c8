package main

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/dsyncd/dsyncd/cmd/dsyncd-load/harness"
	"github.com/dsyncd/dsyncd/events/synth"
)

// crashPhase (a): deliver a shuffled stream with duplicates while SIGKILLing
// the daemon at random moments, then compare with the in-order golden.
func (e *env) crashPhase(ctx context.Context, o options) *result {
	r := &result{phase: "a. crash (SIGKILL)"}
	dir, err := e.phaseDir("crash")
	if err != nil {
		r.fail("%v", err)
		return r
	}
	so := synth.Options{Seed: 11, Users: 300, Groups: 20, MembershipsPerUser: 2, Changes: 1500}
	if !o.short {
		so = synth.Options{Seed: 11, Users: 2000, Groups: 60, MembershipsPerUser: 3, Changes: 8000}
	}
	stream := synth.Stream(so)
	deliveries := synth.Shuffle(stream, 1011, 15)
	r.events = len(stream)
	r.note("stream: %d users, %d groups, %d memberships/user, %d changes = %d events; %d deliveries (shuffled, ~15%% duplicates)",
		so.Users, so.Groups, so.MembershipsPerUser, so.Changes, len(stream), len(deliveries))

	d, golden, err := e.boot(ctx, dir, harness.Config{AckWait: 5 * time.Second}, stream)
	if err != nil {
		r.fail("%v", err)
		return r
	}
	defer stop(d)

	// Scrape the worker's counters often, and right before each kill: the
	// per-lifetime maxima add up to a lower bound of what was processed.
	var (
		mu        sync.Mutex
		lifetimes []harness.Metrics
		current   harness.Metrics
		gen       int // the lifetime a scrape belongs to
	)
	scrape := func(timeout time.Duration) {
		mu.Lock()
		g := gen
		mu.Unlock()
		sctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if m, err := harness.Scrape(sctx, e.ctl, d.URL()); err == nil {
			mu.Lock()
			// A scrape that began before a kill may be answered by the old
			// process and land after endLifetime: counting it in the new
			// lifetime would count the old one's events twice.
			if g == gen && (current == nil || m.Processed() >= current.Processed()) {
				current = m
			}
			mu.Unlock()
		}
	}
	endLifetime := func() {
		mu.Lock()
		if current != nil {
			lifetimes = append(lifetimes, current)
		}
		current = nil
		gen++
		mu.Unlock()
	}
	sctx, stopScraper := context.WithCancel(ctx)
	scraperDone := make(chan struct{})
	go func() {
		defer close(scraperDone)
		for sctx.Err() == nil {
			if d.Running() {
				scrape(300 * time.Millisecond)
			}
			select {
			case <-sctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
		}
	}()

	pctx, cancelPost := context.WithTimeout(ctx, o.duration+3*time.Minute)
	defer cancelPost()
	dl := newDelivery(false)
	p := &harness.Poster{Client: harness.NewClient(8, 15*time.Second), URL: d.WebhookURL(), Secret: secret}
	postDone := make(chan struct{})
	go func() {
		defer close(postDone)
		post(pctx, p, deliveries, 8, o.duration, dl)
	}()

	// The killer: o.kills SIGKILLs spread over the posting time, at random
	// moments within each slot; every third one is followed by a second kill
	// while the restarted daemon is still starting up.
	var restarts []time.Duration
	early := 0
	start := time.Now()
	slot := o.duration / time.Duration(max(1, o.kills))
	for k := 0; k < o.kills && ctx.Err() == nil; k++ {
		due := start.Add(time.Duration(k)*slot + time.Duration(0.2*float64(slot)+e.rng.Float64()*0.7*float64(slot)))
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(due)): // a random kill moment
		}
		scrape(200 * time.Millisecond)
		if err := d.Kill(); err != nil {
			r.fail("kill %d: %v", k+1, err)
			break
		}
		endLifetime()
		r.kills++
		t := time.Now()
		if err := d.Start(); err != nil {
			r.fail("restart after kill %d: %v", k+1, err)
			break
		}
		if k%3 == 1 {
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(30+e.rng.IntN(300)) * time.Millisecond): // a random moment during startup
			}
			if d.Running() {
				if err := d.Kill(); err != nil {
					r.fail("early kill %d: %v", k+1, err)
					break
				}
				endLifetime()
				early++
				if err := d.Start(); err != nil {
					r.fail("restart after early kill %d: %v", k+1, err)
					break
				}
			}
		}
		rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		err := d.WaitReady(rctx, e.ctl)
		cancel()
		if err != nil {
			r.fail("not ready after kill %d: %v", k+1, err)
			break
		}
		restarts = append(restarts, time.Since(t))
	}
	<-postDone
	r.posted, r.acked = dl.posted.Load(), dl.acked.Load()
	r.note("answers: %s", dl.statuses())
	if len(dl.failed) > 0 {
		r.fail("%d deliveries never got a 2xx", len(dl.failed))
	}
	if n := dl.count4xx(); n > 0 {
		r.fail("%d answers were 4xx for valid, signed events", n)
	}
	if len(r.failures) > 0 {
		stopScraper()
		<-scraperDone
		return r
	}

	// Everything was acknowledged: wait until the worker has applied it all.
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	final, err := harness.WaitDrained(wctx, e.ctl, d.URL(), 0)
	cancel()
	stopScraper()
	<-scraperDone
	if err != nil {
		r.fail("worker did not drain: %v", err)
		return r
	}
	mu.Lock()
	if current == nil || final.Processed() >= current.Processed() {
		current = final
	}
	mu.Unlock()
	endLifetime()
	if err := d.Stop(time.Minute); err != nil {
		r.fail("%v", err)
	}

	var processed, dups, invalid, parked float64
	for _, m := range lifetimes {
		processed += m.Processed()
		dups += m.Outcome("duplicate")
		invalid += m.Outcome("invalid")
		parked += m["dsyncd_events_parked_total"]
	}
	if processed > float64(len(stream)) {
		r.twice = int(processed) - len(stream)
		r.fail("the worker counted %.0f events processed (applied+stale) over %d lifetimes, more than the %d distinct events", processed, len(lifetimes), len(stream))
	}
	if invalid > 0 || parked > 0 {
		r.fail("worker counted %.0f invalid and %.0f parked events", invalid, parked)
	}
	r.note("kills: %d under load + %d during startup; restart to ready p50 %s, max %s", r.kills, early,
		harness.Percentile(restarts, 50).Round(time.Millisecond), harness.Percentile(restarts, 100).Round(time.Millisecond))
	r.note("worker counters over %d lifetimes (scraped, so a lower bound): processed %.0f of %d, duplicate %.0f", len(lifetimes), processed, len(stream), dups)
	r.kills += early

	e.checkStreamAndExport(ctx, r, dir, d, "", filepath.Join(dir, "data", "dsyncd.db"), dl, golden)
	if len(r.failures) == 0 {
		r.applied = fmt.Sprintf("%d (pending 0, export = golden)", len(stream))
	}
	return r
}
