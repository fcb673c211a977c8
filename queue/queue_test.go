package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

func testLogger(t *testing.T) *zap.Logger {
	return zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// openQueue opens a Queue for opts and closes it when the test ends.
func openQueue(t *testing.T, opts Options) *Queue {
	t.Helper()
	q := New(opts, testLogger(t))
	if err := q.Open(testCtx(t, 30*time.Second)); err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = q.Close() })
	return q
}

// runServer starts a standalone JetStream nats-server on 127.0.0.1:port
// (-1: random) storing in dir.
func runServer(t *testing.T, port int, dir string) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      port,
		JetStream: true,
		StoreDir:  dir,
		NoSigs:    true,
		NoLog:     true,
	})
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	s.Start()
	if !s.ReadyForConnections(20 * time.Second) {
		s.Shutdown()
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

func fetch(t *testing.T, c jetstream.Consumer, n int) []jetstream.Msg {
	t.Helper()
	var out []jetstream.Msg
	deadline := time.Now().Add(15 * time.Second)
	for len(out) < n && time.Now().Before(deadline) {
		b, err := c.Fetch(n-len(out), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		for m := range b.Messages() {
			out = append(out, m)
		}
		if err := b.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			t.Fatalf("Fetch: %v", err)
		}
	}
	if len(out) != n {
		t.Fatalf("fetched %d messages, want %d", len(out), n)
	}
	return out
}

func ack(t *testing.T, m jetstream.Msg) {
	t.Helper()
	if err := m.DoubleAck(testCtx(t, 5*time.Second)); err != nil {
		t.Fatalf("ack: %v", err)
	}
}

func streamMsgs(t *testing.T, q *Queue) uint64 {
	t.Helper()
	info, err := q.StreamInfo(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatalf("StreamInfo: %v", err)
	}
	return info.State.Msgs
}

// publishConsume is the publish/dedupe/consume round trip both the embedded
// and the external server must pass.
func publishConsume(t *testing.T, q *Queue) {
	t.Helper()
	ctx := testCtx(t, 30*time.Second)
	if err := q.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	data := []byte(`{"id":"evt_1","event":"dsync.user.created"}`)
	dup, err := q.Publish(ctx, "directory_1", "dsync.user.created", "evt_1", data)
	if err != nil || dup {
		t.Fatalf("Publish = %v, %v; want false, nil", dup, err)
	}
	dup, err = q.Publish(ctx, "directory_1", "dsync.user.created", "evt_1", data)
	if err != nil || !dup {
		t.Fatalf("second Publish = %v, %v; want true, nil", dup, err)
	}
	if n := streamMsgs(t, q); n != 1 {
		t.Fatalf("stream holds %d messages, want 1", n)
	}

	c, err := q.jsConsumer(ctx, "worker", 30*time.Second, 0)
	if err != nil {
		t.Fatalf("Consumer: %v", err)
	}
	if n, err := q.Pending(ctx, "worker"); err != nil || n != 1 {
		t.Fatalf("Pending = %d, %v; want 1, nil", n, err)
	}
	m := fetch(t, c, 1)[0]
	if want := "dsync.directory_1.dsync.user.created"; m.Subject() != want {
		t.Errorf("subject %q, want %q", m.Subject(), want)
	}
	if !bytes.Equal(m.Data(), data) {
		t.Errorf("data %q, want %q", m.Data(), data)
	}
	if id := m.Headers().Get(jetstream.MsgIDHeader); id != "evt_1" {
		t.Errorf("msg id %q, want evt_1", id)
	}
	ack(t, m)
	if n, err := q.Pending(ctx, "worker"); err != nil || n != 0 {
		t.Fatalf("Pending after ack = %d, %v; want 0, nil", n, err)
	}
	if _, err := q.Pending(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Pending(nobody) = %v, want ErrNotFound", err)
	}
}

func TestEmbedded(t *testing.T) {
	dir := t.TempDir()
	opts := Options{StoreDir: dir}
	q := New(opts, testLogger(t))
	if err := q.Open(testCtx(t, 30*time.Second)); err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = q.Close() })
	if u := q.ClientURL(); !strings.HasPrefix(u, "nats://127.0.0.1:") || strings.HasSuffix(u, ":-1") {
		t.Errorf("ClientURL = %q", u)
	}
	if err := q.Open(testCtx(t, time.Second)); !errors.Is(err, ErrAlreadyOpen) {
		t.Errorf("second Open = %v, want ErrAlreadyOpen", err)
	}
	publishConsume(t, q)

	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := q.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := q.Publish(testCtx(t, time.Second), "d", "t", "x", nil); !errors.Is(err, ErrNotOpen) {
		t.Errorf("Publish after Close = %v, want ErrNotOpen", err)
	}
	if q.ClientURL() != "" {
		t.Errorf("ClientURL after Close = %q", q.ClientURL())
	}

	// The message and the consumer's position survive a restart.
	q2 := openQueue(t, opts)
	if n := streamMsgs(t, q2); n != 1 {
		t.Fatalf("after restart the stream holds %d messages, want 1", n)
	}
	ctx := testCtx(t, 30*time.Second)
	dup, err := q2.Publish(ctx, "directory_1", "dsync.user.created", "evt_1", []byte("again"))
	if err != nil || !dup {
		t.Errorf("Publish of a known id after restart = %v, %v; want true, nil", dup, err)
	}
	if n, err := q2.Pending(ctx, "worker"); err != nil || n != 0 {
		t.Errorf("Pending after restart = %d, %v; want 0, nil", n, err)
	}
	var seen int
	err = q2.Each(ctx, func(seq uint64, subject string, _ time.Time, data []byte) error {
		seen++
		if seq != 1 || !strings.Contains(string(data), "evt_1") {
			t.Errorf("Each got %d %s %q", seq, subject, data)
		}
		return nil
	})
	if err != nil || seen != 1 {
		t.Errorf("Each = %v after %d messages, want nil after 1", err, seen)
	}
}

func TestCloseWithoutOpen(t *testing.T) {
	q := New(Options{}, nil)
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// No StoreDir: Open fails before starting anything.
	if err := q.Open(testCtx(t, 5*time.Second)); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("Open = %v, want ErrInvalidOptions", err)
	}
	if err := q.Close(); err != nil {
		t.Fatalf("Close after failed Open: %v", err)
	}
	if err := q.Ready(testCtx(t, time.Second)); !errors.Is(err, ErrNotOpen) {
		t.Errorf("Ready = %v, want ErrNotOpen", err)
	}

	// Nothing listens on the port: connecting fails, and the embedded
	// server Open started is stopped again.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	q = New(Options{URL: "nats://" + addr, ConnectTimeout: time.Second}, testLogger(t))
	if err := q.Open(testCtx(t, 10*time.Second)); err == nil {
		t.Fatal("Open to a closed port succeeded")
	}
	if err := q.Close(); err != nil {
		t.Fatalf("Close after failed Open: %v", err)
	}
}

func TestInvalidOptions(t *testing.T) {
	for name, o := range map[string]Options{
		"creds embedded":  {StoreDir: "x", Creds: "c"},
		"stream with dot": {URL: "nats://x", Stream: "a.b"},
		"same streams":    {URL: "nats://x", Stream: "A", DLQStream: "A"},
		"prefix wildcard": {URL: "nats://x", SubjectPrefix: "a.*"},
		"prefix overlaps": {URL: "nats://x", SubjectPrefix: "DSYNC_DLQ.x"},
		"dup > max age":   {URL: "nats://x", MaxAge: time.Minute, DuplicateWindow: time.Hour},
		"replicas":        {StoreDir: "x", Replicas: 3},
		"bad listen":      {StoreDir: t.TempDir(), Listen: "nope"},
	} {
		t.Run(name, func(t *testing.T) {
			q := New(o, testLogger(t))
			if err := q.Open(testCtx(t, 5*time.Second)); !errors.Is(err, ErrInvalidOptions) {
				t.Errorf("Open = %v, want ErrInvalidOptions", err)
			}
			_ = q.Close()
		})
	}
	// The default duplicate window shrinks to a short MaxAge.
	if o := New(Options{MaxAge: time.Second}, nil).Options(); o.DuplicateWindow != time.Second {
		t.Errorf("DuplicateWindow = %s, want 1s", o.DuplicateWindow)
	}
}

func TestExternal(t *testing.T) {
	dir := t.TempDir()
	srv := runServer(t, -1, dir)
	port := srv.Addr().(*net.TCPAddr).Port
	q := openQueue(t, Options{URL: srv.ClientURL(), ReconnectWait: 100 * time.Millisecond})
	if q.ClientURL() != srv.ClientURL() {
		t.Errorf("ClientURL = %q, want %q", q.ClientURL(), srv.ClientURL())
	}
	publishConsume(t, q)

	srv.Shutdown()
	srv.WaitForShutdown()

	// Server down: Publish fails within its deadline; it neither hangs nor
	// claims success.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	start := time.Now()
	_, err := q.Publish(ctx, "directory_1", "dsync.user.updated", "evt_down", []byte("down"))
	cancel()
	if err == nil {
		t.Fatal("Publish with the server down succeeded")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Publish with the server down took %s", d)
	}
	t.Logf("Publish with the server down: %v", err)
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Second)
	err = q.Ready(ctx)
	cancel()
	if err == nil {
		t.Fatal("Ready with the server down succeeded")
	}

	// Same port, same store: the client reconnects and publishing works.
	runServer(t, port, dir)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err = q.Publish(ctx, "directory_1", "dsync.user.updated", "evt_up", []byte("up"))
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Publish after restart: %v", err)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		}
	}
	if err := q.Ready(testCtx(t, 5*time.Second)); err != nil {
		t.Fatalf("Ready after restart: %v", err)
	}
	// The failed publish was never sent later.
	if n := streamMsgs(t, q); n != 2 {
		t.Fatalf("stream holds %d messages, want 2 (evt_1, evt_up)", n)
	}
	c, err := q.jsConsumer(testCtx(t, 5*time.Second), "worker", 30*time.Second, 0)
	if err != nil {
		t.Fatalf("Consumer: %v", err)
	}
	m := fetch(t, c, 1)[0]
	if string(m.Data()) != "up" {
		t.Errorf("after restart fetched %q, want %q", m.Data(), "up")
	}
	ack(t, m)
}

func TestSubject(t *testing.T) {
	q := New(Options{}, nil)
	long := strings.Repeat("x", 300)
	for _, tc := range []struct{ dir, typ, want string }{
		{"directory_01", "dsync.user.created", "dsync.directory_01.dsync.user.created"},
		{"dir.with.dots", "t", "dsync.dir_with_dots.t"},
		{"*", "t", "dsync._.t"},
		{">", "t", "dsync._.t"},
		{"", "", "dsync._._"},
		{"a b\tc\r\nd", "t", "dsync.a_b_c__d.t"},
		{"ü\xffé", "t", "dsync.ü_é.t"},
		{"a.*.>", "x>y", "dsync.a____.x_y"},
		{"d", "dsync..group.*", "dsync.d.dsync._.group._"},
	} {
		if got := q.Subject(tc.dir, tc.typ); got != tc.want {
			t.Errorf("Subject(%q, %q) = %q, want %q", tc.dir, tc.typ, got, tc.want)
		}
	}
	a, b := q.Subject(long+"a", "t"), q.Subject(long+"b", "t")
	if a == b {
		t.Errorf("long ids share subject %q", a)
	}
	for _, s := range []string{a, b} {
		tok := strings.Split(s, ".")
		if len(tok) != 3 || len(tok[1]) > maxToken {
			t.Errorf("long id subject %q", s)
		}
	}
	if s := New(Options{SubjectPrefix: "acme.dsync"}, nil).Subject("d", "e"); s != "acme.dsync.d.e" {
		t.Errorf("prefixed subject %q", s)
	}
}

func TestDeadLetters(t *testing.T) {
	q := openQueue(t, Options{StoreDir: t.TempDir()})
	ctx := testCtx(t, 60*time.Second)
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("evt_%d", i)
		if _, err := q.Publish(ctx, "dir_1", "dsync.group.created", id, []byte(id)); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	c, err := q.jsConsumer(ctx, "worker", 30*time.Second, 0)
	if err != nil {
		t.Fatalf("Consumer: %v", err)
	}
	msgs := fetch(t, c, 3)

	before := time.Now().Add(-time.Second)
	if err := q.park(ctx, msgs[0], "boom:\nline two", 5); err != nil {
		t.Fatalf("Park: %v", err)
	}
	// Parking again (as after a lost ack) adds nothing.
	if err := q.park(ctx, msgs[0], "boom again", 6); err != nil {
		t.Fatalf("second Park: %v", err)
	}
	if err := q.park(ctx, msgs[1], "bad", 1); err != nil {
		t.Fatalf("Park: %v", err)
	}
	for _, m := range msgs {
		ack(t, m)
	}

	dls, err := q.DeadLetters(ctx)
	if err != nil {
		t.Fatalf("DeadLetters: %v", err)
	}
	if len(dls) != 2 {
		t.Fatalf("DeadLetters = %+v, want 2", dls)
	}
	d := dls[0]
	if d.Subject != "dsync.dir_1.dsync.group.created" || d.MsgID != "evt_1" || d.StreamSeq != 1 ||
		d.Reason != "boom: line two" || d.Attempts != 5 || string(d.Data) != "evt_1" ||
		d.ParkedAt.Before(before) || d.ParkedAt.After(time.Now()) {
		t.Errorf("dead letter %+v", d)
	}
	if dls[1].MsgID != "evt_2" || dls[1].Seq <= d.Seq {
		t.Errorf("second dead letter %+v", dls[1])
	}
	got, err := q.DeadLetter(ctx, d.Seq)
	if err != nil {
		t.Fatalf("DeadLetter: %v", err)
	}
	if got.Seq != d.Seq || got.MsgID != d.MsgID || !bytes.Equal(got.Data, d.Data) || !got.ParkedAt.Equal(d.ParkedAt) {
		t.Errorf("DeadLetter = %+v, want %+v", got, d)
	}

	if err := q.ReplayDeadLetter(ctx, d.Seq); err != nil {
		t.Fatalf("ReplayDeadLetter: %v", err)
	}
	m := fetch(t, c, 1)[0]
	if string(m.Data()) != "evt_1" || m.Subject() != d.Subject {
		t.Errorf("replayed message %s %q", m.Subject(), m.Data())
	}
	if id, want := m.Headers().Get(jetstream.MsgIDHeader), fmt.Sprintf("evt_1:replay:%d", d.Seq); id != want {
		t.Errorf("replayed msg id %q, want %q", id, want)
	}
	ack(t, m)
	if _, err := q.DeadLetter(ctx, d.Seq); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeadLetter after replay = %v, want ErrNotFound", err)
	}

	if err := q.DropDeadLetter(ctx, dls[1].Seq); err != nil {
		t.Fatalf("DropDeadLetter: %v", err)
	}
	if err := q.DropDeadLetter(ctx, dls[1].Seq); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DropDeadLetter = %v, want ErrNotFound", err)
	}
	if err := q.ReplayDeadLetter(ctx, 999); !errors.Is(err, ErrNotFound) {
		t.Errorf("ReplayDeadLetter(999) = %v, want ErrNotFound", err)
	}
	if dls, err := q.DeadLetters(ctx); err != nil || len(dls) != 0 {
		t.Errorf("DeadLetters = %+v, %v; want none", dls, err)
	}
	if n := streamMsgs(t, q); n != 4 {
		t.Errorf("main stream holds %d messages, want 4", n)
	}
}

func TestEach(t *testing.T) {
	q := openQueue(t, Options{StoreDir: t.TempDir()})
	ctx := testCtx(t, 60*time.Second)

	if err := q.Each(ctx, func(uint64, string, time.Time, []byte) error {
		t.Error("Each called fn on an empty stream")
		return nil
	}); err != nil {
		t.Fatalf("Each on an empty stream: %v", err)
	}

	const n = 50
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("evt_%03d", i)
		if _, err := q.Publish(ctx, fmt.Sprintf("dir_%d", i%3), "dsync.user.updated", id, []byte(id)); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}

	// All of them in order; one published meanwhile is left out.
	var seqs []uint64
	err := q.Each(ctx, func(seq uint64, subject string, _ time.Time, data []byte) error {
		if want := fmt.Sprintf("evt_%03d", seq); string(data) != want {
			t.Errorf("seq %d holds %q, want %q", seq, data, want)
		}
		if want := fmt.Sprintf("dsync.dir_%d.dsync.user.updated", seq%3); subject != want {
			t.Errorf("seq %d subject %q, want %q", seq, subject, want)
		}
		if seq == 1 {
			if _, err := q.Publish(ctx, "dir_x", "late", "late", []byte("late")); err != nil {
				t.Errorf("Publish: %v", err)
			}
		}
		seqs = append(seqs, seq)
		return nil
	})
	if err != nil {
		t.Fatalf("Each: %v", err)
	}
	if len(seqs) != n {
		t.Fatalf("Each visited %d messages, want %d", len(seqs), n)
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("Each order %v", seqs)
		}
	}

	// fn's error stops Each.
	stop := errors.New("stop")
	var calls int
	if err := q.Each(ctx, func(uint64, string, time.Time, []byte) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
		t.Errorf("Each = %v after %d calls, want stop after 1", err, calls)
	}

	// Deleted messages, the last one included, are skipped and Each still ends.
	nc, err := nats.Connect(q.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{10, 20, n + 1} {
		if err := s.DeleteMsg(ctx, seq); err != nil {
			t.Fatalf("DeleteMsg(%d): %v", seq, err)
		}
	}
	seqs = nil
	if err := q.Each(ctx, func(seq uint64, _ string, _ time.Time, _ []byte) error { seqs = append(seqs, seq); return nil }); err != nil {
		t.Fatalf("Each: %v", err)
	}
	if len(seqs) != n-2 || seqs[len(seqs)-1] != n {
		t.Errorf("Each after deletes visited %v", seqs)
	}
	for _, s := range seqs {
		if s == 10 || s == 20 {
			t.Errorf("Each visited deleted message %d", s)
		}
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := q.Each(cctx, func(uint64, string, time.Time, []byte) error { return nil }); err == nil {
		t.Error("Each with a cancelled context succeeded")
	}
}
