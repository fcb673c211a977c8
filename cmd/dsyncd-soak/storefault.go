package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/dsyncd/dsyncd/cmd/dsyncd-load/harness"
	"github.com/dsyncd/dsyncd/events/synth"
)

// fill writes path until the file system is full and returns how much it wrote.
func fill(path string) (int64, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var n int64
	for _, size := range []int{64 << 10, 4 << 10, 512, 1} {
		buf := make([]byte, size)
		for range 1 << 16 { // bounded: 2 MiB fills long before
			w, err := f.Write(buf)
			n += int64(w)
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			if err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// storeFaultPhase (c): the store's file system runs out of space mid-stream.
func (e *env) storeFaultPhase(ctx context.Context, o options) *result {
	r := &result{phase: "c. store ENOSPC"}
	if os.Geteuid() != 0 {
		r.skipped = "needs root to mount a 2 MiB tmpfs (running as uid " + fmt.Sprint(os.Geteuid()) + ")"
		return r
	}
	dir, err := e.phaseDir("storefault")
	if err != nil {
		r.fail("%v", err)
		return r
	}
	mnt := filepath.Join(dir, "storefs")
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		r.fail("%v", err)
		return r
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size=2m,mode=0700"); err != nil {
		r.skipped = "mount -t tmpfs -o size=2m failed: " + err.Error()
		return r
	}
	defer func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	}()
	storePath := filepath.Join(mnt, "dsyncd.db")

	so := synth.Options{Seed: 33, Users: 80, Groups: 8, MembershipsPerUser: 2, Changes: 500}
	if !o.short {
		so = synth.Options{Seed: 33, Users: 200, Groups: 12, MembershipsPerUser: 2, Changes: 1500}
	}
	stream := synth.Stream(so)
	half := len(stream) / 2
	first, second := bodiesOf(stream[:half]), bodiesOf(stream[half:])
	r.events = len(stream)

	d, golden, err := e.boot(ctx, dir, harness.Config{AckWait: 5 * time.Second}, stream, "DSYNCD_STORE_PATH="+storePath)
	if err != nil {
		r.fail("%v", err)
		return r
	}
	defer stop(d)
	dl := newDelivery(false)
	p := &harness.Poster{Client: harness.NewClient(8, 15*time.Second), URL: d.WebhookURL(), Secret: secret}
	pctx, cancelPost := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelPost()

	// First half with space to spare.
	post(pctx, p, first, 8, 0, dl)
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	m0, err := harness.WaitDrained(wctx, e.ctl, d.URL(), float64(half))
	cancel()
	if err != nil {
		r.fail("first half not applied: %v", err)
		return r
	}
	var sfs syscall.Statfs_t
	_ = syscall.Statfs(mnt, &sfs)
	fi, _ := os.Stat(storePath)
	r.note("after the first %d events: store file %d KiB, tmpfs %d KiB free", half, fi.Size()>>10, int64(sfs.Bavail)*sfs.Bsize>>10)

	// Fill the file system, then post the second half.
	filler := filepath.Join(mnt, "filler")
	filled, err := fill(filler)
	if err != nil {
		r.fail("filling the tmpfs: %v", err)
		return r
	}
	faultAt := time.Now()
	post(pctx, p, second, 8, 0, dl)
	r.note("tmpfs filled with %d KiB; second half (%d events) posted: %s", filled>>10, len(second), dl.statuses())
	if len(dl.failed) > 0 {
		r.fail("%d deliveries never got a 2xx although JetStream had space", len(dl.failed))
	}

	// The fault must bite: the worker cannot commit, says so
	// (dsyncd_store_writable 0; /readyz stays 200: webhooks are still
	// stored), and keeps the events in the stream.
	var bit bool
	var reason string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil && d.Running() {
		m, err := harness.Scrape(ctx, e.ctl, d.URL())
		if err == nil && m["dsyncd_store_writable"] == 0 {
			code, _, _ := harness.Get(ctx, e.ctl, d.URL()+"/readyz")
			bit, reason = true, fmt.Sprintf("(dsyncd_store_writable 0, /readyz %d)", code)
			break
		}
		if err == nil && m.Pending() == 0 && m.Processed() >= float64(len(stream)) {
			break // everything fit in bbolt's free pages: the fault did not bite
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	if !d.Running() {
		r.fail("dsyncd died with the store's disk full: %v\n%s", d.ExitErr(), harness.Tail(d.LogPath, 30))
		return r
	}
	if !bit {
		r.fail("the store never failed: with %d KiB filled, every commit still fit (make the second half larger)", filled>>10)
		return r
	}
	r.note("fault bit %s after the fill %s", time.Since(faultAt).Round(time.Millisecond), reason)
	// Hold the fault; nothing may be acknowledged meanwhile.
	hold := 3 * time.Second
	if !o.short {
		hold = 15 * time.Second
	}
	var minPending, maxProcessed float64 = -1, 0
	for end := time.Now().Add(hold); time.Now().Before(end) && ctx.Err() == nil; {
		if m, err := harness.Scrape(ctx, e.ctl, d.URL()); err == nil {
			if minPending < 0 || m.Pending() < minPending {
				minPending = m.Pending()
			}
			maxProcessed = max(maxProcessed, m.Processed())
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond): // sampling during the fault
		}
	}
	if !d.Running() {
		r.fail("dsyncd died with the store's disk full: %v\n%s", d.ExitErr(), harness.Tail(d.LogPath, 30))
		return r
	}
	r.note("during the fault (%s): pending never below %.0f, processed at most %.0f of %d (%.0f before the fill)",
		hold, minPending, maxProcessed, len(stream), m0.Processed())
	if minPending <= 0 {
		r.fail("pending dropped to %.0f while the store could not commit: events were acknowledged uncommitted", minPending)
	}

	// Space returns: everything is applied, exactly once.
	if err := os.Remove(filler); err != nil {
		r.fail("removing the filler: %v", err)
		return r
	}
	freed := time.Now()
	wctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
	m, err := harness.WaitDrained(wctx, e.ctl, d.URL(), float64(len(stream)))
	cancel()
	if err != nil {
		r.fail("processing did not resume once space returned: %v", err)
		return r
	}
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	err = d.WaitReady(rctx, e.ctl)
	cancel()
	if err != nil {
		r.fail("/readyz did not return to 200: %v", err)
	}
	r.note("resumed: all applied %s after space returned; processed %.0f, duplicate %.0f",
		time.Since(freed).Round(time.Millisecond), m.Processed(), m.Outcome("duplicate"))
	if m.Processed() != float64(len(stream)) {
		r.twice = max(0, int(m.Processed())-len(stream))
		r.fail("worker processed %.0f events, want exactly %d", m.Processed(), len(stream))
	}
	e.finishDelivery(ctx, r, dir, d, storePath, dl, golden, len(stream))
	return r
}
