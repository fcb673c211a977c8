package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Consumer is a durable pull consumer of the main stream (see
// [Queue.Consumer]). It hands out [Delivery] values, so that its user never
// sees a NATS type.
type Consumer struct {
	q *Queue
	c jetstream.Consumer
	// seen is the highest stream sequence delivered so far (see
	// Batch.Next), starting from what the consumer's info says it
	// delivered before (for a new consumer, the sequence before its
	// start), so that a delivery lost before any came is seen missing too.
	seen uint64
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
	return &Batch{c: c, b: b, in: b.Messages()}, nil
}

// Batch is the deliveries of one Fetch.
type Batch struct {
	c  *Consumer
	b  jetstream.MessageBatch
	in <-chan jetstream.Msg
	// ahead is what Next returns before reading in again: messages lost
	// in flight, read from the stream, then the delivery that showed them
	// missing.
	ahead []Delivery
}

// Next waits for the batch's next delivery, or for due to fire (nil: no
// such deadline). It reports whether it returned a delivery; when it did
// not, either due fired or the batch has ended (Ended tells).
//
// Deliveries come in stream order, except those delivered again (retried
// later, or left unacknowledged). A delivery can be lost in flight, though:
// the connection to the server it came through, or that server, failed.
// JetStream would deliver it again only after its ack wait, after the
// messages behind it, and a node applying those first would not apply the
// stream in its order. So when a delivery comes after a gap in the stream
// sequences delivered, Next reads the messages of the gap from the stream
// and returns them first. Settling one of those does nothing: the consumer
// delivers it again after its ack wait, and the applier finds it applied.
func (b *Batch) Next(due <-chan time.Time) (Delivery, bool) {
	if len(b.ahead) > 0 {
		d := b.ahead[0]
		b.ahead = b.ahead[1:]
		return d, true
	}
	if b.in == nil {
		return Delivery{}, false
	}
	select {
	case m, ok := <-b.in:
		if !ok {
			b.in = nil
			return Delivery{}, false
		}
		d := b.c.q.delivery(m)
		if !d.HasSeq {
			return d, true
		}
		if d.Seq > b.c.seen+1 {
			if lost := b.c.lost(b.c.seen, d.Seq); len(lost) > 0 {
				for i := range lost {
					lost[i].Pending = d.Pending + uint64(len(lost)-i)
				}
				b.c.seen = d.Seq
				b.ahead = append(lost[1:], d)
				return lost[0], true
			}
		}
		b.c.seen = max(b.c.seen, d.Seq)
		return d, true
	case <-due:
		return Delivery{}, false
	}
}

// lostReadTimeout bounds the reading of the messages a gap lost.
const lostReadTimeout = 10 * time.Second

// lost returns the messages of the stream after seq after and before seq
// before, read from the stream: deliveries lost in flight. A read left
// unanswered (a stream electing its leader) is asked again; one that fails
// is logged and ends the list (what it could not read comes again after
// its ack wait).
func (c *Consumer) lost(after, before uint64) []Delivery {
	st, err := c.q.state()
	if err != nil {
		c.q.log.Warn("could not read deliveries lost in flight from the stream; they come again after their ack wait",
			zap.Uint64("after_seq", after), zap.Uint64("before_seq", before), zap.Error(err))
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), lostReadTimeout)
	defer cancel()
	var out []Delivery
	for seq := after + 1; seq < before; {
		m, err := retryUnanswered(ctx, c.q.log, "stream message", func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
			return st.main.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(c.q.opts.SubjectPrefix+".>"))
		})
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			c.q.log.Warn("could not read a delivery lost in flight from the stream; it comes again after its ack wait",
				zap.Uint64("seq", seq), zap.Error(err))
			break
		}
		if m.Sequence >= before {
			break
		}
		out = append(out, c.q.delivery(&storedMsg{m: m, stream: c.q.opts.Stream}))
		seq = m.Sequence + 1
	}
	if len(out) > 0 {
		c.q.log.Warn("deliveries lost in flight (a connection or server failed): read from the stream, applied in stream order",
			zap.Uint64("first_seq", out[0].Seq), zap.Uint64("last_seq", out[len(out)-1].Seq), zap.Int("messages", len(out)))
	}
	return out
}

// storedMsg is a message read from the stream as a jetstream.Msg, for
// Delivery: its settling does nothing (it was not delivered).
type storedMsg struct {
	m      *jetstream.RawStreamMsg
	stream string
}

func (s *storedMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: s.m.Sequence}, Timestamp: s.m.Time, Stream: s.stream}, nil
}
func (s *storedMsg) Data() []byte                     { return s.m.Data }
func (s *storedMsg) Headers() nats.Header             { return s.m.Header }
func (s *storedMsg) Subject() string                  { return s.m.Subject }
func (s *storedMsg) Reply() string                    { return "" }
func (s *storedMsg) Ack() error                       { return nil }
func (s *storedMsg) DoubleAck(context.Context) error  { return nil }
func (s *storedMsg) Nak() error                       { return nil }
func (s *storedMsg) NakWithDelay(time.Duration) error { return nil }
func (s *storedMsg) InProgress() error                { return nil }
func (s *storedMsg) Term() error                      { return nil }
func (s *storedMsg) TermWithReason(string) error      { return nil }

// Ended reports whether the batch has ended: every message asked for came,
// or the fetch's wait is over. Next then returns nothing at once.
func (b *Batch) Ended() bool { return b.in == nil && len(b.ahead) == 0 }

// Buffered reports whether a delivery is at hand: Next would return it at
// once.
func (b *Batch) Buffered() bool { return len(b.ahead) > 0 || len(b.in) > 0 }

// Err is why the batch ended early, once it ended: nil when it
// ended because every message asked for came or the wait was over.
func (b *Batch) Err() error {
	err := b.b.Error()
	if err == nil || errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	return err
}
