package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The defaults of ChangesOptions.
const (
	DefaultChangesStream        = "DSYNCD_CHANGES"
	DefaultChangesSubjectPrefix = "dsyncd.changes"
)

// HeaderChangeSeq carries a change record's seq on the change stream, as
// Nats-Msg-Id does.
const HeaderChangeSeq = "Dsyncd-Change-Seq"

// OrgToken is the last subject token of an organisation's own change
// records (holds, pauses), where a user record has its user id.
const OrgToken = "_"

// ChangesOptions configures the change stream, where dsyncd relays its
// change feed for products to subscribe to.
type ChangesOptions struct {
	// Stream is the stream's name. Default "DSYNCD_CHANGES".
	Stream string
	// SubjectPrefix is the first token(s) of its subjects:
	// "<SubjectPrefix>.<organization_id>.<user_id>". Default "dsyncd.changes".
	// It must not overlap the main stream's or the dead letters' subjects.
	SubjectPrefix string
	// MaxAge expires messages older than this (dsyncd sets the feed's
	// retention). Zero keeps them forever.
	MaxAge time.Duration
	// MaxBytes caps the stream; past it the oldest messages are dropped
	// (a reader that far behind resyncs). Zero or negative: unlimited.
	MaxBytes int64
}

// ChangeMsg is one change record to relay.
type ChangeMsg struct {
	Seq            uint64
	OrganizationID string
	UserID         string // "" for an organisation's own records
	Data           []byte // the record's JSON
}

// ChangeStream relays change records to their JetStream stream, in order:
// each message's Nats-Msg-Id is its seq, and each publish expects the
// stream's previous message to be the one before it, so that no record is
// stored twice nor out of order, whatever fails.
type ChangeStream struct {
	q    *Queue
	opts ChangesOptions

	mu      sync.Mutex
	js      jetstream.JetStream // its own context: async publishes are tracked per context
	stream  jetstream.Stream
	nc      *nats.Conn
	lastSeq uint64 // the stream's last sequence after our last publish; 0: unknown
}

// Changes returns the change stream of the queue; it does no I/O.
func (q *Queue) Changes(opts ChangesOptions) *ChangeStream {
	if opts.Stream == "" {
		opts.Stream = DefaultChangesStream
	}
	if opts.SubjectPrefix == "" {
		opts.SubjectPrefix = DefaultChangesSubjectPrefix
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = -1
	}
	return &ChangeStream{q: q, opts: opts}
}

// Subject is the subject of a change of userID ("" for the organisation's
// own) in organisation org, its ids made single literal tokens as Subject does.
func (c *ChangeStream) Subject(org, userID string) string {
	last := OrgToken
	if userID != "" {
		last = token(userID)
	}
	return c.opts.SubjectPrefix + "." + token(org) + "." + last
}

// changesDuplicateWindow is the change stream's duplicate window: the
// main stream's default. (10 s held ~100,000 ids at 10,000 changes a
// second: ~30 MiB more of the daemon's memory during a sync.)
const changesDuplicateWindow = 2 * time.Second

func (c *ChangeStream) config() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        c.opts.Stream,
		Description: "dsyncd: the change feed, for products",
		Subjects:    []string{c.opts.SubjectPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardOld,
		MaxAge:      c.opts.MaxAge,
		MaxMsgs:     -1,
		MaxBytes:    c.opts.MaxBytes,
		MaxMsgSize:  -1,
		// Each publish also expects the stream's previous sequence, which
		// alone keeps a relay from storing a change twice; the message id
		// (the seq) catches a publish retried at once, which the relay
		// never does (it reads the stream's last change again). A short
		// window keeps the server's table of recent ids small (it holds
		// every id of the window: at thousands of changes a second,
		// megabytes).
		Duplicates: changesDuplicateWindow,
		Replicas:   c.q.opts.Replicas,
	}
}

// open returns the stream, creating or updating it on first use (and after
// the queue reconnected to another connection).
func (c *ChangeStream) open(ctx context.Context) (jetstream.JetStream, jetstream.Stream, error) {
	st, err := c.q.state()
	if err != nil {
		return nil, nil, err
	}
	if c.stream != nil && c.nc == st.nc {
		return c.js, c.stream, nil
	}
	js, err := jetstream.New(st.nc, jetstream.WithDefaultTimeout(c.q.opts.ConnectTimeout))
	if err != nil {
		return nil, nil, fmt.Errorf("queue: jetstream: %w", err)
	}
	s, err := retryUnanswered(ctx, c.q.log, "stream "+c.opts.Stream, func(ctx context.Context) (jetstream.Stream, error) {
		return js.CreateOrUpdateStream(ctx, c.config())
	})
	if err != nil {
		return nil, nil, fmt.Errorf("queue: create or update stream %s: %w", c.opts.Stream, err)
	}
	c.js, c.stream, c.nc, c.lastSeq = js, s, st.nc, 0
	return js, s, nil
}

// LastChange returns the seq of the last change record the stream holds,
// read from its last message (0 when it holds none): where a relay that
// restarts goes on from.
func (c *ChangeStream) LastChange(ctx context.Context) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, s, err := c.open(ctx)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("queue: stream %s: %w", c.opts.Stream, err)
	}
	c.lastSeq = info.State.LastSeq
	if info.State.Msgs == 0 {
		return 0, nil
	}
	m, err := s.GetMsg(ctx, info.State.LastSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("queue: stream %s: last message: %w", c.opts.Stream, err)
	}
	seq, err := strconv.ParseUint(m.Header.Get(jetstream.MsgIDHeader), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("queue: stream %s: last message %d has no change seq as its id (another publisher?)", c.opts.Stream, info.State.LastSeq)
	}
	return seq, nil
}

// Publish stores msgs in order and returns how many of them, from the
// first, the stream holds. They are pipelined, each expecting the stream's
// last sequence to be its predecessor's, so a failed one fails those after
// it: the stream never holds a record without the ones before it. Hence
// only the last asks for an ack: the server stores a connection's messages
// in order, so its ack says the stream holds them all, and on its error
// the stream's last sequence says how many it holds. (An ack per message
// cost about a third of the server's and the client's work per change.)
func (c *ChangeStream) Publish(ctx context.Context, msgs []ChangeMsg) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	js, s, err := c.open(ctx)
	if err != nil {
		return 0, err
	}
	if c.lastSeq == 0 {
		info, err := s.Info(ctx)
		if err != nil {
			return 0, fmt.Errorf("queue: stream %s: %w", c.opts.Stream, err)
		}
		c.lastSeq = info.State.LastSeq
	}
	start := c.lastSeq
	last := len(msgs) - 1
	for i, m := range msgs[:last] {
		if err := c.nc.PublishMsg(c.msg(m, start+uint64(i))); err != nil {
			return c.stored(s, start, len(msgs)), fmt.Errorf("queue: publish to %s: %w", c.opts.Stream, err)
		}
	}
	id := strconv.FormatUint(msgs[last].Seq, 10)
	ack, err := js.PublishMsg(ctx, c.msg(msgs[last], start+uint64(last)))
	switch {
	case err != nil:
	case ack.Duplicate:
		err = fmt.Errorf("change %s already in stream %s", id, c.opts.Stream)
	case ack.Sequence != start+uint64(len(msgs)):
		err = fmt.Errorf("change %s stored at sequence %d of stream %s, want %d", id, ack.Sequence, c.opts.Stream, start+uint64(len(msgs)))
	default:
		c.lastSeq = ack.Sequence
		return len(msgs), nil
	}
	n := c.stored(s, start, len(msgs))
	if n == 0 && strings.Contains(err.Error(), "wrong last sequence") {
		return 0, fmt.Errorf("queue: publish to %s: %w (the stream holds records the relay did not count: it starts again from the stream's last)", c.opts.Stream, err)
	}
	return n, fmt.Errorf("queue: publish to %s: %w", c.opts.Stream, err)
}

// msg is the stream's message for m, expected right after the stream's
// sequence prev: its seq as message id and in HeaderChangeSeq.
func (c *ChangeStream) msg(m ChangeMsg, prev uint64) *nats.Msg {
	id := strconv.FormatUint(m.Seq, 10)
	return &nats.Msg{Subject: c.Subject(m.OrganizationID, m.UserID), Data: m.Data, Header: nats.Header{
		HeaderChangeSeq:                 []string{id},
		jetstream.MsgIDHeader:           []string{id},
		jetstream.ExpectedLastSeqHeader: []string{strconv.FormatUint(prev, 10)},
		jetstream.ExpectedStreamHeader:  []string{c.opts.Stream},
	}}
}

// stored returns how many of n records published after the stream's
// sequence start it holds, read from the stream (0 when it cannot be read);
// the next Publish reads the stream's last sequence again.
func (c *ChangeStream) stored(s jetstream.Stream, start uint64, n int) int {
	c.lastSeq = 0
	ctx, cancel := context.WithTimeout(context.Background(), c.q.opts.ConnectTimeout)
	defer cancel()
	info, err := s.Info(ctx)
	if err != nil || info.State.LastSeq <= start {
		return 0
	}
	return int(min(info.State.LastSeq-start, uint64(n)))
}
