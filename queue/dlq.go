package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers of a dead letter in the DLQ stream.
const (
	HeaderSubject  = "Dsyncd-Subject"   // subject of the original message
	HeaderStream   = "Dsyncd-Stream"    // stream of the original message
	HeaderSeq      = "Dsyncd-Seq"       // stream sequence of the original message
	HeaderMsgID    = "Dsyncd-Msg-Id"    // Nats-Msg-Id of the original message
	HeaderReason   = "Dsyncd-Reason"    // why the worker parked it
	HeaderAttempts = "Dsyncd-Attempts"  // how often the worker tried it
	HeaderParkedAt = "Dsyncd-Parked-At" // when it was parked, RFC 3339
	// HeaderReplayOf marks a message ReplayDeadLetter republished to the main
	// stream; its value is the dead letter's DLQ sequence.
	HeaderReplayOf = "Dsyncd-Replay-Of"
)

// maxReason is the longest reason Park keeps, in bytes.
const maxReason = 1024

// parkHeadroom is what Park leaves of the server's max_payload for a dead
// letter's headers and subject (the reason is at most maxReason).
const parkHeadroom = 4 << 10

// DeadLetter is a message parked in the DLQ stream.
type DeadLetter struct {
	Seq       uint64    // sequence in the DLQ stream; the handle for DeadLetter, Drop and Replay
	Subject   string    // subject of the original message in the main stream
	StreamSeq uint64    // sequence of the original message in the main stream
	MsgID     string    // Nats-Msg-Id of the original message (the event id), if any
	Reason    string    // why it was parked
	Attempts  int       // deliveries the worker made before parking it
	ParkedAt  time.Time // when it was parked
	Data      []byte    // the event: the original message data, decoded (see Encoding)
	// Encoding is the original message's HeaderEncoding when Park kept its
	// data as stored (undecodable, or too large decoded for a NATS message);
	// Data then holds the stored bytes ([Data] decodes them), and a replay
	// republishes them with this header. Empty otherwise.
	Encoding string
}

// park copies msg, a message of the main stream, into the DLQ stream: see
// Delivery.Park.
func (q *Queue) park(ctx context.Context, msg jetstream.Msg, reason string, attempts int) error {
	st, err := q.state()
	if err != nil {
		return err
	}
	md, err := msg.Metadata()
	if err != nil {
		return fmt.Errorf("queue: park: %w", err)
	}
	h := nats.Header{}
	h.Set(HeaderSubject, msg.Subject())
	h.Set(HeaderStream, md.Stream)
	h.Set(HeaderSeq, strconv.FormatUint(md.Sequence.Stream, 10))
	if id := msg.Headers().Get(jetstream.MsgIDHeader); id != "" {
		h.Set(HeaderMsgID, id)
	}
	h.Set(HeaderReason, oneLine(reason, maxReason))
	h.Set(HeaderAttempts, strconv.Itoa(attempts))
	h.Set(HeaderParkedAt, time.Now().UTC().Format(time.RFC3339Nano))
	data, derr := dataOf(msg.Headers(), msg.Data())
	if derr != nil || int64(len(data))+parkHeadroom > st.nc.MaxPayload() {
		// Undecodable, or too large decoded for a NATS message: keep it
		// as stored.
		data = msg.Data()
		if enc := msg.Headers().Get(HeaderEncoding); enc != "" {
			h.Set(HeaderEncoding, enc)
		}
	}
	m := &nats.Msg{
		Subject: q.opts.DLQStream + "." + msg.Subject(),
		Header:  h,
		Data:    data,
	}
	_, err = st.js.PublishMsg(ctx, m,
		jetstream.WithExpectStream(q.opts.DLQStream),
		jetstream.WithMsgID(fmt.Sprintf("park:%s:%d", md.Stream, md.Sequence.Stream)))
	if err != nil {
		q.health.publishFailed()
		return fmt.Errorf("queue: park: %w", err)
	}
	return nil
}

// DeadLetters lists the parked messages, oldest first.
func (q *Queue) DeadLetters(ctx context.Context) ([]DeadLetter, error) {
	st, err := q.state()
	if err != nil {
		return nil, err
	}
	var out []DeadLetter
	for seq := uint64(1); ; seq++ {
		raw, err := st.dlq.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(q.opts.DLQStream+".>"))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("queue: dead letters: %w", err)
		}
		out = append(out, q.decode(raw))
		seq = raw.Sequence
	}
}

// DeadLetter returns the dead letter with DLQ sequence seq, or an error
// wrapping ErrNotFound.
func (q *Queue) DeadLetter(ctx context.Context, seq uint64) (DeadLetter, error) {
	st, err := q.state()
	if err != nil {
		return DeadLetter{}, err
	}
	return q.deadLetter(ctx, st, seq)
}

func (q *Queue) deadLetter(ctx context.Context, st *state, seq uint64) (DeadLetter, error) {
	if seq == 0 {
		return DeadLetter{}, fmt.Errorf("%w: dead letter 0", ErrNotFound)
	}
	raw, err := st.dlq.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return DeadLetter{}, fmt.Errorf("%w: dead letter %d", ErrNotFound, seq)
	}
	if err != nil {
		return DeadLetter{}, fmt.Errorf("queue: dead letter %d: %w", seq, err)
	}
	return q.decode(raw), nil
}

// DropDeadLetter deletes the dead letter with DLQ sequence seq for good.
func (q *Queue) DropDeadLetter(ctx context.Context, seq uint64) error {
	st, err := q.state()
	if err != nil {
		return err
	}
	return q.drop(ctx, st, seq)
}

func (q *Queue) drop(ctx context.Context, st *state, seq uint64) error {
	if seq == 0 {
		return fmt.Errorf("%w: dead letter 0", ErrNotFound)
	}
	err := st.dlq.DeleteMsg(ctx, seq)
	if err == nil {
		return nil
	}
	// JetStream reports deleting a missing message in more than one way
	// (sequence not found, or a failed delete saying "no message found"):
	// look whether it is there.
	if _, gerr := st.dlq.GetMsg(ctx, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("%w: dead letter %d", ErrNotFound, seq)
	}
	return fmt.Errorf("queue: drop dead letter %d: %w", seq, err)
}

// ReplayDeadLetter publishes the dead letter's data back to the main stream
// under its original subject, then deletes it from the DLQ stream.
//
// The replayed message carries the Nats-Msg-Id "<msgID>:replay:<seq>": the
// original id would be swallowed as a duplicate within the duplicate window,
// and a random id would let a retried replay (republish succeeded, delete
// failed) store the event twice; this id is new to the main stream yet the
// same for every retry of one replay.
func (q *Queue) ReplayDeadLetter(ctx context.Context, seq uint64) error {
	st, err := q.state()
	if err != nil {
		return err
	}
	dl, err := q.deadLetter(ctx, st, seq)
	if err != nil {
		return err
	}
	base := dl.MsgID
	if base == "" {
		base = fmt.Sprintf("%s:%d", q.opts.Stream, dl.StreamSeq)
	}
	h := nats.Header{}
	h.Set(HeaderReplayOf, strconv.FormatUint(seq, 10))
	if dl.Encoding != "" {
		h.Set(HeaderEncoding, dl.Encoding)
	}
	m := &nats.Msg{Subject: dl.Subject, Header: h, Data: dl.Data}
	_, err = st.js.PublishMsg(ctx, m,
		jetstream.WithExpectStream(q.opts.Stream),
		jetstream.WithMsgID(fmt.Sprintf("%s:replay:%d", base, seq)))
	if err != nil {
		return fmt.Errorf("queue: replay dead letter %d: %w", seq, err)
	}
	if err := q.drop(ctx, st, seq); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	return nil
}

// decode decodes a DLQ stream message. Missing or garbled headers leave
// zero values.
func (q *Queue) decode(raw *jetstream.RawStreamMsg) DeadLetter {
	h := raw.Header
	dl := DeadLetter{
		Seq:      raw.Sequence,
		Subject:  h.Get(HeaderSubject),
		MsgID:    h.Get(HeaderMsgID),
		Reason:   h.Get(HeaderReason),
		Data:     raw.Data,
		Encoding: h.Get(HeaderEncoding),
	}
	dl.StreamSeq, _ = strconv.ParseUint(h.Get(HeaderSeq), 10, 64)
	dl.Attempts, _ = strconv.Atoi(h.Get(HeaderAttempts))
	if t, err := time.Parse(time.RFC3339Nano, h.Get(HeaderParkedAt)); err == nil {
		dl.ParkedAt = t
	} else {
		dl.ParkedAt = raw.Time
	}
	if dl.Subject == "" {
		dl.Subject = strings.TrimPrefix(raw.Subject, q.opts.DLQStream+".")
	}
	return dl
}

// oneLine makes s a single header-safe line of at most max bytes.
func oneLine(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == '\t' || r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > max {
		cut := max
		for cut > 0 && s[cut]&0xC0 == 0x80 {
			cut--
		}
		s = s[:cut]
	}
	return s
}

// DeadLetterCount returns how many events the dead-letter stream holds,
// without reading them (for metrics).
func (q *Queue) DeadLetterCount(ctx context.Context) (uint64, error) {
	st, err := q.state()
	if err != nil {
		return 0, err
	}
	info, err := st.dlq.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("queue: dead-letter stream info: %w", err)
	}
	return info.State.Msgs, nil
}
