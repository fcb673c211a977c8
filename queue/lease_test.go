package queue

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// crash stops renewing l without releasing it, as a process killed
// mid-flight would.
func crash(l *Lease) {
	l.cancel()
	<-l.done
}

// waitFor polls cond every 20 ms until it holds, failing the test after within.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not a wait for work
	}
	return time.Since(start)
}

func TestLeaseHeldByALiveNodeIsRefusedAndFreedWhenItExpires(t *testing.T) {
	srv := runServer(t, -1, t.TempDir())
	a := openQueue(t, Options{URL: srv.ClientURL()})
	b := openQueue(t, Options{URL: srv.ClientURL()})
	const ttl = time.Second

	la, err := a.ClaimLease(testCtx(t, 5*time.Second), "node.n1", []byte("node n1 on host a"), ttl, nil)
	if err != nil {
		t.Fatalf("first claim: %v", err)
	}
	// Renewed: still held after several ttls.
	time.Sleep(3 * ttl) // lets the lease outlive its ttl several times over; the claim below must still fail
	_, err = b.ClaimLease(testCtx(t, 5*time.Second), "node.n1", []byte("node n1 on host b"), ttl, func([]byte) bool { return false })
	var held *LeaseHeldError
	if !errors.As(err, &held) || string(held.Holder) != "node n1 on host a" {
		t.Fatalf("claim of a live node's lease = %v, want LeaseHeldError naming host a", err)
	}

	// The holder crashes: its lease expires and the id can be claimed again.
	crash(la)
	var lb *Lease
	waitFor(t, 3*ttl, "claim after the holder crashed", func() bool {
		lb, err = b.ClaimLease(testCtx(t, 5*time.Second), "node.n1", []byte("node n1 on host b"), ttl, nil)
		return err == nil
	})
	if !lb.Held() {
		t.Fatal("claimed lease not held")
	}
	lb.Release()

	// Released cleanly: free at once.
	lc, err := a.ClaimLease(testCtx(t, 5*time.Second), "node.n1", []byte("again"), ttl, nil)
	if err != nil {
		t.Fatalf("claim after a release: %v", err)
	}
	lc.Release()
}

func TestLeaseTakenOverWhenTheCallerRecognisesItsDeadPredecessor(t *testing.T) {
	srv := runServer(t, -1, t.TempDir())
	q := openQueue(t, Options{URL: srv.ClientURL()})
	old, err := q.ClaimLease(testCtx(t, 5*time.Second), "node.n1", []byte("me, before"), time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	crash(old)
	l, err := q.ClaimLease(testCtx(t, 5*time.Second), "node.n1", []byte("me, now"), time.Minute,
		func(h []byte) bool { return string(h) == "me, before" })
	if err != nil {
		t.Fatalf("take over own predecessor's lease: %v", err)
	}
	l.Release()
}

func TestCampaignElectsOneLeaderAndAnotherTakesOverWhenItDies(t *testing.T) {
	srv := runServer(t, -1, t.TempDir())
	const ttl = 900 * time.Millisecond
	var changes [3]atomic.Int32
	var ls [3]*Lease
	for i := range ls {
		q := openQueue(t, Options{URL: srv.ClientURL()})
		l, err := q.Campaign(testCtx(t, 5*time.Second), "leader", []byte{byte('a' + i)}, ttl, nil, func(bool) { changes[i].Add(1) })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Release)
		ls[i] = l
	}
	leaders := func() (n, who int) {
		for i, l := range ls {
			if l.Held() {
				n, who = n+1, i
			}
		}
		return n, who
	}
	waitFor(t, 3*ttl, "a leader", func() bool { n, _ := leaders(); return n == 1 })
	_, first := leaders()
	time.Sleep(2 * ttl) // the leader renews across several ttls: no second leader meanwhile
	if n, who := leaders(); n != 1 || who != first {
		t.Fatalf("after 2 ttls: %d leaders (want 1, still %d)", n, first)
	}

	crash(ls[first])
	ls[first].held.Store(false) // what it believes no longer matters: it is dead
	took := waitFor(t, 3*ttl, "a new leader", func() bool { n, who := leaders(); return n == 1 && who != first })
	if took > ttl+ttl/3+500*time.Millisecond {
		t.Errorf("takeover took %s, want within the ttl plus a renewal period", took)
	}
}

func TestCampaignTakesOverItsOwnDeadPredecessorAtOnce(t *testing.T) {
	srv := runServer(t, -1, t.TempDir())
	q := openQueue(t, Options{URL: srv.ClientURL()})
	const ttl = time.Minute // a takeover that waited for the expiry would fail the test
	old, err := q.Campaign(testCtx(t, 5*time.Second), "leader", []byte("me, before"), ttl, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the first leader", old.Held)
	crash(old)
	other, err := q.Campaign(testCtx(t, 5*time.Second), "leader", []byte("someone else"), ttl, func([]byte) bool { return false }, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Release)
	l, err := q.Campaign(testCtx(t, 5*time.Second), "leader", []byte("me, now"), ttl,
		func(h []byte) bool { return string(h) == "me, before" }, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Release)
	waitFor(t, 5*time.Second, "the successor leads", l.Held)
	if other.Held() {
		t.Error("a node that does not recognise the holder took the lease too")
	}
}

func TestPositionsKeepAValueAndRefuseAStaleWriter(t *testing.T) {
	srv := runServer(t, -1, t.TempDir())
	a, err := openQueue(t, Options{URL: srv.ClientURL()}).Positions(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	b, err := openQueue(t, Options{URL: srv.ClientURL()}).Positions(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 10*time.Second)
	if _, _, found, err := a.Get(ctx, "webhook.x"); err != nil || found {
		t.Fatalf("a key never stored: found %v, %v", found, err)
	}
	rev, err := a.Create(ctx, "webhook.x", "10")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Create(ctx, "webhook.x", "3"); !errors.Is(err, ErrPositionMoved) {
		t.Fatalf("second create = %v, want ErrPositionMoved", err)
	}
	v, brev, found, err := b.Get(ctx, "webhook.x")
	if err != nil || !found || v != "10" || brev != rev {
		t.Fatalf("b reads %q rev %d (found %v, %v), want 10 rev %d", v, brev, found, err, rev)
	}
	if _, err := b.Update(ctx, "webhook.x", "20", brev); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Update(ctx, "webhook.x", "11", rev); !errors.Is(err, ErrPositionMoved) {
		t.Fatalf("a stale writer's update = %v, want ErrPositionMoved", err)
	}
	if v, _, _, _ := a.Get(ctx, "webhook.x"); v != "20" {
		t.Fatalf("value %q after a refused stale update, want 20", v)
	}
}

// A replicated bucket answers direct gets only once its replicas are caught
// up (just created, or a new leader): meanwhile no server answers. A read
// of a position waits that moment out instead of failing a node's start.
// Here the bucket stops answering direct gets for a moment (its stream's
// allow_direct turned off, then on again), as it does in a cluster.
func TestAPositionReadWaitsOutAMomentWhenNoServerAnswersTheBucket(t *testing.T) {
	srv := runServer(t, -1, t.TempDir())
	q := openQueue(t, Options{URL: srv.ClientURL()})
	ctx := testCtx(t, 20*time.Second)
	p, err := q.Positions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Put(ctx, "mapping", "m1"); err != nil {
		t.Fatal(err)
	}
	st, err := q.state()
	if err != nil {
		t.Fatal(err)
	}
	stream, err := st.js.Stream(ctx, "KV_"+PositionsBucket(q.opts.Stream))
	if err != nil {
		t.Fatal(err)
	}
	direct := func(on bool) error {
		cfg := stream.CachedInfo().Config
		cfg.AllowDirect = on
		_, err := st.js.UpdateStream(ctx, cfg)
		return err
	}
	if err := direct(false); err != nil {
		t.Fatal(err)
	}
	if _, err := p.kv.Get(ctx, "mapping"); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("a bucket answering no direct get: %v, want no responders (the case under test)", err)
	}
	back := make(chan error, 1)
	time.AfterFunc(300*time.Millisecond, func() { back <- direct(true) }) // the replicas catch up
	v, _, found, err := p.Get(ctx, "mapping")
	if err != nil || !found || v != "m1" {
		t.Fatalf("read while no server answered for a moment: %q (found %v), %v; want m1", v, found, err)
	}
	if err := <-back; err != nil {
		t.Fatalf("allow_direct on again: %v", err)
	}
}
