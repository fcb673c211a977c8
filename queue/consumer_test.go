package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// deliveries fetches from c until n deliveries came (or 15 s passed).
func deliveries(t *testing.T, c *Consumer, n int) []Delivery {
	t.Helper()
	var out []Delivery
	deadline := time.Now().Add(15 * time.Second)
	for len(out) < n && time.Now().Before(deadline) {
		b, err := c.Fetch(n-len(out), time.Second)
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		for {
			d, ok := b.Next(nil)
			if !ok {
				break
			}
			out = append(out, d)
		}
		if !b.Ended() {
			t.Fatal("Next returned nothing without a deadline, yet the batch has not ended")
		}
		if err := b.Err(); err != nil {
			t.Fatalf("batch: %v", err)
		}
	}
	if len(out) != n {
		t.Fatalf("fetched %d deliveries, want %d", len(out), n)
	}
	return out
}

// TestConsumerDeliversDecodedEventsAndSettlesThem: the consumer hands out
// each event's JSON as received, whatever its stored encoding, with its
// stream sequence and what is still to come; an undecodable message comes
// with ErrUndecodable; Ack, RetryLater and Park settle deliveries as their
// names say.
func TestConsumerDeliversDecodedEventsAndSettlesThem(t *testing.T) {
	q := openQueue(t, Options{StoreDir: t.TempDir(), Encoding: EncodingS2})
	ctx := testCtx(t, 60*time.Second)
	ev := func(id string) []byte {
		return []byte(`{"id":"` + id + `","event":"dsync.user.created","data":{"name":"` + strings.Repeat("compressible ", 20) + `"}}`)
	}
	for _, id := range []string{"e1", "e2", "e3"} {
		if _, err := q.Publish(ctx, "dir_1", "dsync.user.created", id, ev(id)); err != nil {
			t.Fatal(err)
		}
	}
	st, err := q.state()
	if err != nil {
		t.Fatal(err)
	}
	m := &nats.Msg{Subject: q.Subject("dir_1", "dsync.user.created"), Header: nats.Header{HeaderEncoding: {"s2"}}, Data: []byte("\x05not s2")}
	if _, err := st.js.PublishMsg(ctx, m, jetstream.WithMsgID("bad")); err != nil {
		t.Fatal(err)
	}
	c, err := q.Consumer(ctx, "worker", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ds := deliveries(t, c, 4)
	for i, id := range []string{"e1", "e2", "e3"} {
		d := ds[i]
		if d.Err != nil || !bytes.Equal(d.Data, ev(id)) {
			t.Errorf("delivery %d = %q (%v), want the event %s as published", i, d.Data, d.Err, id)
		}
		if !d.HasSeq || d.Seq != uint64(i+1) || d.Pending != uint64(3-i) || d.Stored.IsZero() {
			t.Errorf("delivery %d: seq %d (%v), pending %d, stored %v; want seq %d, pending %d, a time", i, d.Seq, d.HasSeq, d.Pending, d.Stored, i+1, 3-i)
		}
	}
	if bad := ds[3]; !errors.Is(bad.Err, ErrUndecodable) || bad.Data != nil || bad.Seq != 4 {
		t.Errorf("undecodable delivery: data %q, err %v, seq %d; want ErrUndecodable at seq 4", bad.Data, bad.Err, bad.Seq)
	}

	// e1 applied, e2 to retry, e3 and the bad one parked.
	if err := ds[0].Ack(); err != nil {
		t.Fatal(err)
	}
	if err := ds[1].RetryLater(10 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds[2:] {
		if err := d.Park(ctx, "test", 2); err != nil {
			t.Fatalf("Park: %v", err)
		}
		if err := d.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	again := deliveries(t, c, 1)[0]
	if again.Seq != 2 || !bytes.Equal(again.Data, ev("e2")) {
		t.Fatalf("redelivered seq %d %q, want e2 (seq 2)", again.Seq, again.Data)
	}
	if err := again.Ack(); err != nil {
		t.Fatal(err)
	}
	dls, err := q.DeadLetters(ctx)
	if err != nil || len(dls) != 2 {
		t.Fatalf("dead letters = %+v (%v), want e3 and the undecodable one", dls, err)
	}
	if dls[0].MsgID != "e3" || dls[0].StreamSeq != 3 || dls[0].Attempts != 2 || !bytes.Equal(dls[0].Data, ev("e3")) {
		t.Errorf("dead letter %+v, want e3 from seq 3, decoded, after 2 attempts", dls[0])
	}
	if dls[1].MsgID != "bad" || dls[1].Encoding != "s2" {
		t.Errorf("dead letter %+v, want the undecodable one kept as stored", dls[1])
	}
	eventuallyPending(t, q, 0)
}

// eventuallyPending waits until the worker consumer's lag is want.
func eventuallyPending(t *testing.T, q *Queue, want uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := q.Pending(testCtx(t, 5*time.Second), "worker")
		if err == nil && n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pending = %d (%v), want %d", n, err, want)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

// publishUpdates publishes n dsync.user.updated events of dir_1, with ids
// e1..en and data {"id":"e<i>"}: stream seqs 1..n on a new queue.
func publishUpdates(t *testing.T, ctx context.Context, q *Queue, n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("e%d", i)
		if _, err := q.Publish(ctx, "dir_1", "dsync.user.updated", id, []byte(`{"id":"`+id+`"}`)); err != nil {
			t.Fatal(err)
		}
	}
}

// loseDeliveries has the "worker" consumer deliver its next n messages to
// a subscriber that then goes away: deliveries lost in flight.
func loseDeliveries(t *testing.T, ctx context.Context, q *Queue, n int) []jetstream.Msg {
	t.Helper()
	st, err := q.state()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := st.main.Consumer(ctx, "worker")
	if err != nil {
		t.Fatal(err)
	}
	got := fetch(t, raw, n)
	if len(got) != n {
		t.Fatalf("lost deliveries: %d, want %d", len(got), n)
	}
	return got
}

// TestNextReturnsWhenDueFires: Next gives up at the deadline the caller
// passes, without ending the batch.
func TestNextReturnsWhenDueFires(t *testing.T) {
	q := openQueue(t, Options{StoreDir: t.TempDir()})
	ctx := testCtx(t, 30*time.Second)
	c, err := q.Consumer(ctx, "worker", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Fetch(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, ok := b.Next(time.After(50 * time.Millisecond)); ok || b.Ended() {
		t.Fatalf("Next on an empty stream returned a delivery (%v) or ended the batch (%v)", ok, b.Ended())
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("Next waited %s, not until its deadline", took)
	}
}

// TestPublishTooLarge: an event larger than the server's largest message is
// refused with ErrTooLarge, which a caller that does not import queue can
// tell by its TooLarge method.
func TestPublishTooLarge(t *testing.T) {
	q := openQueue(t, Options{StoreDir: t.TempDir()})
	ctx := testCtx(t, 30*time.Second)
	_, err := q.Publish(ctx, "dir_1", "dsync.user.created", "big", bytes.Repeat([]byte("x"), 2<<20))
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Publish = %v, want ErrTooLarge", err)
	}
	var tl interface{ TooLarge() bool }
	if !errors.As(err, &tl) || !tl.TooLarge() {
		t.Fatalf("Publish = %v, which has no TooLarge method reporting true", err)
	}
	if _, err := q.Publish(ctx, "dir_1", "dsync.user.created", "small", []byte(`{}`)); err != nil {
		t.Fatalf("small Publish = %v", err)
	}
}

// A delivery lost in flight (the connection or the server it came through
// failed) would come again only after its ack wait, behind the messages
// after it. The consumer reads the gap from the stream instead and hands
// it out first, so that its user applies the stream in its order; when the
// lost deliveries do come again, they come as deliveries again, and one
// read from the stream can still be parked.
func TestDeliveriesLostInFlightAreReadFromTheStreamAndComeFirst(t *testing.T) {
	q := openQueue(t, Options{StoreDir: t.TempDir()})
	ctx := testCtx(t, 60*time.Second)
	const ackWait = 2 * time.Second
	c, err := q.Consumer(ctx, "worker", ackWait)
	if err != nil {
		t.Fatal(err)
	}
	publishUpdates(t, ctx, q, 5)
	first := deliveries(t, c, 1)
	if first[0].Seq != 1 {
		t.Fatalf("first delivery seq %d, want 1", first[0].Seq)
	}
	if err := first[0].Ack(); err != nil {
		t.Fatal(err)
	}

	// Seqs 2 and 3 are delivered to a subscriber that is gone.
	if got := loseDeliveries(t, ctx, q, 2); got[0].Subject() != q.Subject("dir_1", "dsync.user.updated") {
		t.Fatalf("lost delivery's subject %q", got[0].Subject())
	}

	ds := deliveries(t, c, 4)
	for i, d := range ds {
		want := uint64(i + 2)
		if d.Seq != want || string(d.Data) != fmt.Sprintf(`{"id":"e%d"}`, want) || d.Subject != q.Subject("dir_1", "dsync.user.updated") || d.Stored.IsZero() {
			t.Fatalf("delivery %d: seq %d data %s subject %q stored %v; want seq %d in order", i, d.Seq, d.Data, d.Subject, d.Stored, want)
		}
	}
	// Park the first one read from the stream; acknowledge the others.
	if err := ds[0].Park(ctx, "test", 1); err != nil {
		t.Fatalf("Park of a delivery read from the stream: %v", err)
	}
	for _, d := range ds {
		if err := d.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	dls, err := q.DeadLetters(ctx)
	if err != nil || len(dls) != 1 || dls[0].StreamSeq != 2 || string(dls[0].Data) != `{"id":"e2"}` {
		t.Fatalf("dead letters %+v, %v; want seq 2", dls, err)
	}

	// After their ack wait the lost ones come again, themselves, and
	// nothing is read from the stream for them.
	again := deliveries(t, c, 2)
	for i, d := range again {
		if d.Seq != uint64(i+2) {
			t.Fatalf("delivered again: seq %d, want %d", d.Seq, i+2)
		}
		if err := d.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	eventuallyPending(t, q, 0)
}

// A delivery lost in a consumer's very first fetch, before anything was
// delivered, is read from the stream too: otherwise it would come after its
// ack wait, behind the messages after it. The same holds for a consumer
// that starts after a position (a node given its own consumer).
func TestADeliveryLostBeforeAnyCameIsReadFromTheStreamFirst(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after uint64 // ConsumerAfter's start; the events published before it are not the consumer's
	}{
		{"a new consumer of the whole stream", 0},
		{"a new consumer starting after seq 2", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := openQueue(t, Options{StoreDir: t.TempDir()})
			ctx := testCtx(t, 60*time.Second)
			publishUpdates(t, ctx, q, int(tc.after)+3)
			c, err := q.ConsumerAfter(ctx, "worker", time.Minute, tc.after)
			if err != nil {
				t.Fatal(err)
			}
			// The consumer's first delivery goes to a subscriber that is gone.
			loseDeliveries(t, ctx, q, 1)
			ds := deliveries(t, c, 3)
			for i, d := range ds {
				want := tc.after + uint64(i) + 1
				if d.Seq != want || string(d.Data) != fmt.Sprintf(`{"id":"e%d"}`, want) {
					t.Fatalf("delivery %d: seq %d data %s; want seq %d, in stream order", i, d.Seq, d.Data, want)
				}
			}
		})
	}
}
