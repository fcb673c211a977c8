package reconcile

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/reconcile/workostest"
)

// expiredCursor polls every event of the fixture, then lets the Events API
// forget them all (an outage longer than its retention): the stored cursor
// names an event it no longer has.
func expiredCursor(t *testing.T, p *Poller, fake *workostest.Server, n int) {
	t.Helper()
	if err := p.Poll(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	fake.ExpireEvents(n)
}

func TestReconcilePollerWithARefusedCursorReconcilesAndPollsFromThen(t *testing.T) {
	fake, _, all := pollFixture(t)
	q := openQueue(t)
	st := openStore(t, "")
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	r, _ := newReconciler(t, fake, st, 5)
	reconciled := 0
	p := New(Options{ClientOptions: clientOpts(fake, 5), Start: "2021-01-01T00:00:00Z", Now: func() time.Time { return now },
		Reconcile: func(ctx context.Context) error {
			reconciled++
			_, err := r.Reconcile(ctx, Scope{}, false)
			return err
		}}, q, st, nil)
	expiredCursor(t, p, fake, len(all))

	if err := p.Poll(testCtx(t)); err != nil {
		t.Fatalf("poll with a refused cursor: %v; want a reconciliation and no error", err)
	}
	if reconciled != 1 {
		t.Fatalf("%d reconciliations, want 1", reconciled)
	}
	assertMatches(t, st, fake, workostest.UsersDirectory)
	if s := p.CursorStale(); s != "" {
		t.Errorf("CursorStale = %q after the reconciliation; want \"\"", s)
	}
	if c := cursor(t, st, CursorEvents); c != "" {
		t.Errorf("cursor %q after the reconciliation; want none", c)
	}
	if s := p.Stats(); s.StaleResets != 1 {
		t.Errorf("stats %+v; want 1 stale reset", s)
	}
	// The next poll starts from the reconciliation's start, without a cursor.
	if err := p.Poll(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	reqs := fake.Requests("/events")
	last := reqs[len(reqs)-1].Query
	if last.Has("after") || last.Get("range_start") != "2026-03-01T12:00:00.000Z" {
		t.Errorf("poll after the reconciliation sent %v; want range_start=2026-03-01T12:00:00.000Z and no after", last)
	}
}

func TestReconcilePollerWithARefusedCursorAndOnStaleFailKeepsSayingSo(t *testing.T) {
	fake, _, all := pollFixture(t)
	q := openQueue(t)
	st := openStore(t, "")
	p := New(Options{ClientOptions: clientOpts(fake, 5), Start: "2021-01-01T00:00:00Z", OnStaleCursor: OnStaleCursorFail,
		Reconcile: func(context.Context) error { t.Error("reconciled with on_stale_cursor fail"); return nil }}, q, st, nil)
	expiredCursor(t, p, fake, len(all))
	before := cursor(t, st, CursorEvents)
	for range 2 {
		err := p.Poll(testCtx(t))
		if !errors.Is(err, ErrCursorStale) {
			t.Fatalf("poll = %v; want ErrCursorStale", err)
		}
	}
	if s := p.CursorStale(); !strings.Contains(s, "refused the events cursor") || !strings.Contains(s, "dsyncd reconcile --reset-events-cursor") {
		t.Errorf("CursorStale = %q; want the refusal and what to run", s)
	}
	if c := cursor(t, st, CursorEvents); c != before {
		t.Errorf("cursor moved from %q to %q", before, c)
	}
	if s := p.Stats(); s.Failures != 2 {
		t.Errorf("stats %+v; want 2 failures", s)
	}
}

func TestReconcilePollerDoesNotTakeAnyRefusalForAStaleCursor(t *testing.T) {
	fake, _, _ := pollFixture(t)
	q := openQueue(t)
	st := openStore(t, "")
	p := New(Options{ClientOptions: clientOpts(fake, 5), Start: "2021-01-01T00:00:00Z",
		Reconcile: func(context.Context) error { t.Error("reconciled for a refusal that is not the cursor's"); return nil }}, q, st, nil)
	if err := p.Poll(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	// The API refuses every request for a while, with or without cursor.
	fake.Fail("/events", workostest.Fault{Status: 400}, workostest.Fault{Status: 400})
	err := p.Poll(testCtx(t))
	if err == nil || errors.Is(err, ErrCursorStale) {
		t.Fatalf("poll = %v; want an error that is not ErrCursorStale", err)
	}
	if s := p.CursorStale(); s != "" {
		t.Errorf("CursorStale = %q; want \"\"", s)
	}
}
