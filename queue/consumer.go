package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Consumer is a durable pull consumer of the main stream (see
// [Queue.Consumer]). It hands out [Delivery] values, so that its user never
// sees a NATS type.
type Consumer struct {
	q *Queue
	c jetstream.Consumer
}

// Delivery is one message of the main stream as a [Consumer] delivers it:
// the event's JSON decoded from how it is stored (see [Data]), where it sits
// in the stream, and the operations that settle it. Settle each delivery
// once: Ack, or RetryLater, or Park then Ack.
type Delivery struct {
	// Data is the event's JSON, nil when Err is set.
	Data []byte
	// Err, when set, says why the stored data cannot be decoded (it wraps
	// ErrUndecodable): retrying cannot help, park it.
	Err error
	// Seq is the message's sequence in the main stream; 0 when the server
	// did not say (then HasSeq is false).
	Seq    uint64
	HasSeq bool
	// Pending is how many messages of the stream the consumer had not
	// delivered yet when it delivered this one.
	Pending uint64
	// Stored is when the stream stored the message.
	Stored time.Time
	// Subject is the message's subject (see [Queue.Subject]).
	Subject string
	// Control is the kind of a control message (see
	// [Queue.PublishControl]), whose Data is the control's JSON; empty for
	// an event.
	Control string

	q   *Queue
	msg jetstream.Msg
}

// Ack tells the stream the delivery is settled: its effect is committed or
// it is parked. It never blocks on the server's answer.
func (d *Delivery) Ack() error { return d.msg.Ack() }

// RetryLater leaves the delivery in the stream to be delivered again after
// delay.
func (d *Delivery) RetryLater(delay time.Duration) error { return d.msg.NakWithDelay(delay) }

// Park copies the delivery into the dead-letter stream with reason (one
// line, at most 1 KiB kept) and attempts. It does not acknowledge it: Ack
// once Park returned nil, so that a failed Park leaves it to be delivered
// again. Parking the same message again (say after the ack was lost) within
// the duplicate window stores nothing new. The dead letter holds the event
// decoded, so that an operator can read it; data that cannot be decoded, or
// that decoded would not fit in a NATS message, is kept as stored, with its
// HeaderEncoding.
func (d *Delivery) Park(ctx context.Context, reason string, attempts int) error {
	return d.q.park(ctx, d.msg, reason, attempts)
}

// delivery decodes m.
func (q *Queue) delivery(m jetstream.Msg) Delivery {
	d := Delivery{q: q, msg: m, Subject: m.Subject()}
	if md, err := m.Metadata(); err == nil {
		d.Seq, d.HasSeq, d.Pending, d.Stored = md.Sequence.Stream, true, md.NumPending, md.Timestamp
	}
	d.Data, d.Err = dataOf(m.Headers(), m.Data())
	d.Control = m.Headers().Get(HeaderControl)
	return d
}

// Fetch asks for up to max messages, waiting at most wait for them. The
// deliveries come through the returned Batch as the server sends them.
func (c *Consumer) Fetch(max int, wait time.Duration) (*Batch, error) {
	b, err := c.c.Fetch(max, jetstream.FetchMaxWait(wait))
	if err != nil {
		return nil, fmt.Errorf("queue: fetch: %w", err)
	}
	return &Batch{q: c.q, b: b, in: b.Messages()}, nil
}

// Batch is the deliveries of one Fetch.
type Batch struct {
	q  *Queue
	b  jetstream.MessageBatch
	in <-chan jetstream.Msg
}

// Next waits for the batch's next delivery, or for due to fire (nil: no
// such deadline). It reports whether it returned a delivery; when it did
// not, either due fired or the batch has ended (Ended tells).
func (b *Batch) Next(due <-chan time.Time) (Delivery, bool) {
	if b.in == nil {
		return Delivery{}, false
	}
	select {
	case m, ok := <-b.in:
		if !ok {
			b.in = nil
			return Delivery{}, false
		}
		return b.q.delivery(m), true
	case <-due:
		return Delivery{}, false
	}
}

// Ended reports whether the batch has ended: every message asked for came,
// or the fetch's wait is over. Next then returns nothing at once.
func (b *Batch) Ended() bool { return b.in == nil }

// Buffered reports whether a delivery is at hand: Next would return it at
// once.
func (b *Batch) Buffered() bool { return len(b.in) > 0 }

// Err is why the batch ended early, once it ended: nil when it
// ended because every message asked for came or the wait was over.
func (b *Batch) Err() error {
	err := b.b.Error()
	if err == nil || errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	return err
}
