package reconcile

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/reconcile/workostest"
	"github.com/dsyncd/dsyncd/worker"
)

// pollFixture: 12 valid events then the undecodable one, 5 per page.
func pollFixture(t *testing.T) (fake *workostest.Server, valid [][]byte, all [][]byte) {
	fake = newFake(t)
	valid, invalid := referenceEvents(t)
	all = append(slices.Clone(valid), invalid)
	fake.AddEvents(all...)
	return fake, valid, all
}

func TestReconcilePollerPublishesEveryPageAsSentAndResumesAfterRestart(t *testing.T) {
	fake, valid, all := pollFixture(t)
	q := openQueue(t)
	st := openStore(t, "")
	log, logged := newLogs()
	opts := Options{ClientOptions: clientOpts(fake, 5), Start: "2021-01-01T00:00:00Z"}
	pub := &recordingPublisher{pub: q}
	p := New(opts, pub, st, log)
	if err := p.Poll(testCtx(t)); err != nil {
		t.Fatal(err)
	}

	reqs := fake.Requests("/events")
	if len(reqs) != 3 {
		t.Fatalf("%d requests to /events, want 3 pages", len(reqs))
	}
	var types []string
	for _, typ := range events.HandledTypes() {
		types = append(types, string(typ))
	}
	if got := reqs[0].Query["events"]; !slices.Equal(got, types) {
		t.Errorf("events= %v, want every dsync type %v", got, types)
	}
	if reqs[0].Query.Get("range_start") != "2021-01-01T00:00:00.000Z" || reqs[0].Query.Has("after") {
		t.Errorf("first request %v: want range_start from events.start and no after", reqs[0].Query)
	}
	if got, want := reqs[1].Query.Get("after"), idOf(t, all[4]); got != want || reqs[1].Query.Has("range_start") {
		t.Errorf("second request %v: want after=%s", reqs[1].Query, want)
	}
	if reqs[0].Query.Get("limit") != "5" {
		t.Errorf("limit %q", reqs[0].Query.Get("limit"))
	}

	if pub.count() != len(valid) {
		t.Errorf("%d publishes, want %d (the undecodable event skipped)", pub.count(), len(valid))
	}
	for _, raw := range valid {
		if got := pub.got[idOf(t, raw)]; !bytes.Equal(got, raw) {
			t.Errorf("event %s published as\n%s\nwant the bytes WorkOS sent\n%s", idOf(t, raw), got, raw)
		}
	}
	if n := streamMsgs(t, q); n != uint64(len(valid)) {
		t.Errorf("%d messages on the stream, want %d", n, len(valid))
	}
	if c := cursor(t, st, CursorEvents); c != idOf(t, all[len(all)-1]) {
		t.Errorf("cursor %q, want the last event's id", c)
	}
	stats := p.Stats()
	if stats.Invalid != 1 || stats.Published != uint64(len(valid)) || stats.Pages != 3 {
		t.Errorf("stats %+v", stats)
	}
	if !strings.Contains(logged.text(), "event_01FK3HFFGMC2WF32RR8SKWC8KA") {
		t.Errorf("the skipped event's id is not logged:\n%s", logged.text())
	}

	// A restart (new poller, same store) publishes nothing already acknowledged.
	pub2 := &recordingPublisher{pub: q}
	p2 := New(opts, pub2, st, log)
	if err := p2.Poll(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if pub2.count() != 0 {
		t.Errorf("restart re-published %d events", pub2.count())
	}
	last := fake.Requests("/events")
	if got := last[len(last)-1].Query.Get("after"); got != idOf(t, all[len(all)-1]) {
		t.Errorf("restart asked after=%q", got)
	}

	// New events are picked up from the cursor.
	more := [][]byte{
		bytes.Replace(valid[1], []byte(`"event_03FKJ843CVE8F7BXQSPFH0M53V"`), []byte(`"event_new_1"`), 1),
		bytes.Replace(valid[2], []byte(`"event_44FKJ843CVE8F7BXQSPFH0M53V"`), []byte(`"event_new_2"`), 1),
	}
	fake.AddEvents(more...)
	if err := p2.Poll(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if pub2.count() != 2 || streamMsgs(t, q) != uint64(len(valid)+2) || cursor(t, st, CursorEvents) != "event_new_2" {
		t.Errorf("after 2 new events: %d publishes, %d messages, cursor %q", pub2.count(), streamMsgs(t, q), cursor(t, st, CursorEvents))
	}
	logged.assertNoKey(t)
}

func TestReconcilePollerDoesNotPublishEventsTheStoreAlreadyApplied(t *testing.T) {
	fake, valid, all := pollFixture(t)
	q := openQueue(t)
	st := openStore(t, "")
	// The webhooks delivered the first seven and the worker applied them.
	const delivered = 7
	var evs []*events.Event
	for _, raw := range valid[:delivered] {
		ev, err := events.Decode(raw)
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	if _, err := st.Apply(evs); err != nil {
		t.Fatal(err)
	}
	p := New(Options{ClientOptions: clientOpts(fake, 5), Start: "2021-01-01T00:00:00Z", Applied: st.Processed}, q, st, zap.NewNop())
	if err := p.Poll(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if n, want := streamMsgs(t, q), uint64(len(valid)-delivered); n != want {
		t.Errorf("%d messages on the stream, want %d: only the events not applied yet", n, want)
	}
	if stats := p.Stats(); stats.AlreadyApplied != delivered || stats.Published != uint64(len(valid)-delivered) {
		t.Errorf("stats %+v, want %d already applied", stats, delivered)
	}
	if c := cursor(t, st, CursorEvents); c != idOf(t, all[len(all)-1]) {
		t.Errorf("cursor %q, want the last event's id: skipped events still move it", c)
	}
}

func TestReconcilePollerRetries429And5xxAndSlowAnswers(t *testing.T) {
	fake, valid, _ := pollFixture(t)
	fake.Fail("/events",
		workostest.Fault{Status: 429, RetryAfter: "1"},
		workostest.Fault{Status: 503},
		workostest.Fault{Delay: 5 * time.Second}, // past the client's timeout
		workostest.Fault{Status: 500},
	)
	q := openQueue(t)
	st := openStore(t, "")
	log, logged := newLogs()
	opts := Options{ClientOptions: clientOpts(fake, 5), Start: "2021-01-01T00:00:00Z"}
	opts.RequestTimeout = 300 * time.Millisecond
	p := New(opts, q, st, log)
	if err := p.Poll(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	reqs := fake.Requests("/events")
	var statuses []int
	for _, r := range reqs {
		statuses = append(statuses, r.Status)
	}
	slices.SortStableFunc(reqs, func(a, b workostest.Request) int { return a.At.Compare(b.At) })
	if want := []int{429, 503, 499, 500, 200, 200, 200}; !sameMultiset(statuses, want) {
		t.Fatalf("statuses %v, want %v", statuses, want)
	}
	if gap := reqs[1].At.Sub(reqs[0].At); gap < 950*time.Millisecond {
		t.Errorf("retried %s after a 429 with Retry-After: 1", gap)
	}
	if n := streamMsgs(t, q); n != uint64(len(valid)) {
		t.Errorf("%d messages, want %d", n, len(valid))
	}
	if !strings.Contains(logged.text(), "retrying") {
		t.Errorf("retries not logged:\n%s", logged.text())
	}
	logged.assertNoKey(t)
}

// TestReconcilePollerBacksOffOnA429WithoutRetryAfter: a 429 that does not
// say how long to wait is retried with a growing wait, as a 5xx is, not
// at a constant pace.
func TestReconcilePollerBacksOffOnA429WithoutRetryAfter(t *testing.T) {
	fake, _, _ := pollFixture(t)
	fake.Fail("/events", workostest.Fault{Status: 429}, workostest.Fault{Status: 429}, workostest.Fault{Status: 429}, workostest.Fault{Status: 429})
	opts := Options{ClientOptions: clientOpts(fake, 5), Start: "2021-01-01T00:00:00Z"}
	opts.MinBackoff, opts.MaxBackoff, opts.MaxAttempts = 50*time.Millisecond, 5*time.Second, 8
	p := New(opts, openQueue(t), openStore(t, ""), nil)
	if err := p.Poll(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	reqs := fake.Requests("/events")
	slices.SortStableFunc(reqs, func(a, b workostest.Request) int { return a.At.Compare(b.At) })
	if len(reqs) < 5 || reqs[4].Status != 200 {
		t.Fatalf("requests %+v: want four 429s, then the page", reqs)
	}
	first, last := reqs[1].At.Sub(reqs[0].At), reqs[4].At.Sub(reqs[3].At)
	if first < 50*time.Millisecond || last < 6*first {
		t.Errorf("waits after the 429s: first %s, fourth %s; want 50ms doubling to 400ms", first, last)
	}
}

// TestReconcilePollerGivesUpWhenRetryAfterIsLongerThanItWaits: a 429 asking
// for a longer wait than MaxRetryAfter ends the poll with the 429 at once,
// rather than retrying sooner than asked; the cursor does not move.
func TestReconcilePollerGivesUpWhenRetryAfterIsLongerThanItWaits(t *testing.T) {
	fake, _, _ := pollFixture(t)
	fake.Fail("/events", workostest.Fault{Status: 429, RetryAfter: "120"})
	st := openStore(t, "")
	log, logged := newLogs()
	opts := Options{ClientOptions: clientOpts(fake, 5), Start: "2021-01-01T00:00:00Z"}
	opts.MaxRetryAfter = time.Second
	p := New(opts, openQueue(t), st, log)
	err := p.Poll(testCtx(t))
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 429 {
		t.Fatalf("err %v, want the 429", err)
	}
	if n := len(fake.Requests("/events")); n != 1 {
		t.Errorf("%d requests, want 1: no retry before the time the API asked for", n)
	}
	if c := cursor(t, st, CursorEvents); c != "" {
		t.Errorf("cursor moved to %q", c)
	}
	if !strings.Contains(logged.text(), "retry_after") {
		t.Errorf("giving up is not logged with the wait asked for:\n%s", logged.text())
	}
}

func sameMultiset(a, b []int) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func TestReconcilePollerGivesUpAfterMaxAttemptsWithoutMovingTheCursor(t *testing.T) {
	fake, _, _ := pollFixture(t)
	fake.Fail("/events", workostest.Fault{Status: 500}, workostest.Fault{Status: 502}, workostest.Fault{Status: 503})
	q := openQueue(t)
	st := openStore(t, "")
	log, logged := newLogs()
	opts := Options{ClientOptions: clientOpts(fake, 5), Start: "2021-01-01T00:00:00Z"}
	opts.MaxAttempts = 3
	p := New(opts, q, st, log)
	err := p.Poll(testCtx(t))
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 503 {
		t.Fatalf("err %v, want the last 503", err)
	}
	if strings.Contains(err.Error(), testKey) {
		t.Fatalf("error carries the key: %v", err)
	}
	if c := cursor(t, st, CursorEvents); c != "" || streamMsgs(t, q) != 0 {
		t.Fatalf("cursor %q / %d messages after a failed poll", c, streamMsgs(t, q))
	}
	// Wrong key: 401 is not retried, and the wrong key is not logged either.
	bad := New(Options{ClientOptions: ClientOptions{APIKey: "sk_test_wrong_key_zzz", Endpoint: fake.URL}}, q, st, log)
	err = bad.Poll(testCtx(t))
	if !errors.As(err, &apiErr) || apiErr.Status != 401 || strings.Contains(err.Error(), "sk_test_wrong_key_zzz") {
		t.Fatalf("wrong key: %v", err)
	}
	logged.assertNoKey(t, "sk_test_wrong_key_zzz")
}

func TestReconcilePollerStoresTheCursorOnlyAfterThePageIsAcknowledged(t *testing.T) {
	fake, valid, all := pollFixture(t)
	q := openQueue(t)
	st := openStore(t, "")
	opts := Options{ClientOptions: clientOpts(fake, 5), Start: "2021-01-01T00:00:00Z"}
	failing := &recordingPublisher{pub: q, failAt: 7} // the 2nd event of the 2nd page
	err := New(opts, failing, st, nil).Poll(testCtx(t))
	if !errors.Is(err, errInjected) {
		t.Fatalf("err %v, want the publish failure", err)
	}
	if c := cursor(t, st, CursorEvents); c != idOf(t, all[4]) {
		t.Fatalf("cursor %q, want the last event of the first page %s", c, idOf(t, all[4]))
	}
	if n := streamMsgs(t, q); n != 6 {
		t.Fatalf("%d messages, want 6 (page 1 and the 1st event of page 2)", n)
	}
	p := New(opts, q, st, nil)
	if err := p.Poll(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if n := streamMsgs(t, q); n != uint64(len(valid)) {
		t.Errorf("%d messages, want %d: each event stored once", n, len(valid))
	}
	if s := p.Stats(); s.Duplicates != 1 || s.Published != uint64(len(valid)-6) {
		t.Errorf("stats %+v: want the re-read event deduplicated by JetStream", s)
	}
}

func TestReconcilePollerStartNowIsResolvedOnceAndKept(t *testing.T) {
	fake, _, _ := pollFixture(t) // all created in 2021-2023, before "now"
	q := openQueue(t)
	st := openStore(t, "")
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	opts := Options{ClientOptions: clientOpts(fake, 5), Start: StartNow, Now: clock}
	p := New(opts, q, st, nil)
	for range 2 {
		if err := p.Poll(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		now = now.Add(time.Hour)
		mu.Unlock()
	}
	for _, r := range fake.Requests("/events") {
		if got := r.Query.Get("range_start"); got != "2026-03-01T12:00:00.000Z" {
			t.Errorf("range_start %q, want the first poll's time every time until an event comes", got)
		}
	}
	if streamMsgs(t, q) != 0 || cursor(t, st, CursorEventsStart) != "2026-03-01T12:00:00.000Z" {
		t.Fatalf("%d messages, start %q", streamMsgs(t, q), cursor(t, st, CursorEventsStart))
	}
	later := []byte(`{"id":"event_after_start","event":"dsync.group.created","created_at":"2026-03-01T12:30:00.000Z",` +
		`"data":{"id":"directory_group_later","directory_id":"directory_later","name":"Later"}}`)
	fake.AddEvents(later)
	if err := p.Poll(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if streamMsgs(t, q) != 1 || cursor(t, st, CursorEvents) != "event_after_start" {
		t.Fatalf("%d messages, cursor %q", streamMsgs(t, q), cursor(t, st, CursorEvents))
	}
}

// TestReconcilePollerWarnsOfAStartOutsideTheEventsRetention: the first poll
// from an events.start older than the Events API keeps events, or in the
// future, says so in the log (and still polls); a start within it does not.
func TestReconcilePollerWarnsOfAStartOutsideTheEventsRetention(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name, start, warning string
	}{
		{"older than 30 days warns", "2026-01-15T00:00:00Z", "older than the Events API keeps events"},
		{"within 30 days is quiet", "2026-02-01T00:00:00Z", ""},
		{"now is quiet", StartNow, ""},
		{"in the future warns", "2026-04-01T00:00:00Z", "in the future"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake, _, _ := pollFixture(t)
			log, logged := newLogs()
			opts := Options{ClientOptions: clientOpts(fake, 5), Start: tc.start, Now: func() time.Time { return now }}
			if err := New(opts, openQueue(t), openStore(t, ""), log).Poll(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			warned := strings.Contains(logged.text(), "events.start is")
			if tc.warning == "" && warned {
				t.Errorf("warned of a start within the retention:\n%s", logged.text())
			}
			if tc.warning != "" && !strings.Contains(logged.text(), tc.warning) {
				t.Errorf("no warning %q:\n%s", tc.warning, logged.text())
			}
			if n := len(fake.Requests("/events")); n == 0 {
				t.Error("did not poll")
			}
		})
	}
}

func TestReconcilePollerRunStopsOnCancel(t *testing.T) {
	fake, valid, _ := pollFixture(t)
	q := openQueue(t)
	st := openStore(t, "")
	p := New(Options{ClientOptions: clientOpts(fake, 100), Start: "2021-01-01T00:00:00Z", Interval: 20 * time.Millisecond}, q, st, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for p.Stats().Polls < 3 {
		if time.Now().After(deadline) {
			t.Fatal("the poller did not poll 3 times")
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not a wait for work
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v on cancel", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return on cancel")
	}
	if streamMsgs(t, q) != uint64(len(valid)) {
		t.Fatalf("%d messages", streamMsgs(t, q))
	}
}

// TestPollerAndWebhookDeliveringTheSameEventsApplyEachOnce publishes the
// same events concurrently through the poller and as the webhook receiver
// does (Publish with the event id), then lets the real worker apply the
// stream: each event is stored and applied once, and the store ends as
// applying each event once in order does.
func TestReconcilePollerAndWebhookDeliveringTheSameEventsApplyEachOnce(t *testing.T) {
	fake, valid, _ := pollFixture(t)
	q := openQueue(t)
	st := openStore(t, "")
	p := New(Options{ClientOptions: clientOpts(fake, 3), Start: "2021-01-01T00:00:00Z"}, q, st, nil)

	shuffled := slices.Clone(valid)
	rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	wg.Go(func() { errs <- p.Poll(testCtx(t)) })
	for delivery := range 2 { // two concurrent webhook deliveries of every event
		order := slices.Clone(shuffled)
		if delivery == 1 {
			slices.Reverse(order)
		}
		wg.Go(func() {
			for _, raw := range order {
				ev, err := events.Decode(raw)
				if err != nil {
					errs <- err
					return
				}
				if _, err := q.Publish(testCtx(t), ev.DirectoryID, string(ev.Type), ev.ID, raw); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := streamMsgs(t, q); n != uint64(len(valid)) {
		t.Fatalf("%d messages on the stream, want %d: one per event id", n, len(valid))
	}

	var mu sync.Mutex
	var total worker.Counts
	w := worker.New(q, st, worker.Options{Durable: "test", FetchWait: 50 * time.Millisecond, OnBatch: func(r worker.BatchReport) {
		mu.Lock()
		total.Merge(r.Counts)
		mu.Unlock()
	}}, zap.NewNop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := total.Applied + total.Stale + total.Ignored + total.Duplicate + total.Deferred + total.Invalid
		mu.Unlock()
		if n >= len(valid) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d events applied", n, len(valid))
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not a wait for work
	}
	cancel()
	<-done
	if total.Duplicate != 0 || total.Invalid != 0 {
		t.Errorf("counts %s: want no event applied twice", total)
	}

	ref := openStore(t, "")
	raws := make([]events.Raw, len(valid))
	for i, v := range valid {
		raws[i] = events.Raw{Source: "ref", Data: v}
	}
	if _, _, err := worker.Replay(ref, raws); err != nil {
		t.Fatal(err)
	}
	if got, want := snapshot(t, st), snapshot(t, ref); !bytes.Equal(got, want) {
		t.Errorf("store after poller+webhook:\n%s\nwant (each event once, in order):\n%s", got, want)
	}
}
