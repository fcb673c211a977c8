package queue

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestChangeStreamStoresEachRecordOnceInOrder: records are stored under
// their organisation's and user's subject with their seq as message id; a
// second relay (a restart) learns the last seq from the stream, and
// publishing a record the stream holds fails rather than storing it twice.
func TestChangeStreamStoresEachRecordOnceInOrder(t *testing.T) {
	q := openQueue(t, Options{StoreDir: t.TempDir()})
	ctx := testCtx(t, 30*time.Second)
	cs := q.Changes(ChangesOptions{})
	if last, err := cs.LastChange(ctx); err != nil || last != 0 {
		t.Fatalf("empty stream: last %d, %v", last, err)
	}
	msgs := []ChangeMsg{
		{Seq: 1, OrganizationID: "org_1", UserID: "directory_user_1", Data: []byte(`{"seq":1}`)},
		{Seq: 2, OrganizationID: "org.2", UserID: "u *>", Data: []byte(`{"seq":2}`)},
		{Seq: 3, OrganizationID: "org_1", Data: []byte(`{"seq":3}`)},
	}
	if n, err := cs.Publish(ctx, msgs); err != nil || n != 3 {
		t.Fatalf("publish: %d, %v", n, err)
	}
	again := q.Changes(ChangesOptions{})
	if last, err := again.LastChange(ctx); err != nil || last != 3 {
		t.Fatalf("after a restart: last %d, %v", last, err)
	}
	if n, err := again.Publish(ctx, msgs[2:]); err == nil || n != 0 {
		t.Fatalf("republishing the last record: %d, %v", n, err)
	}
	if n, err := again.Publish(ctx, []ChangeMsg{{Seq: 4, OrganizationID: "org_1", UserID: "u4", Data: []byte(`{"seq":4}`)}}); err != nil || n != 1 {
		t.Fatalf("publish 4: %d, %v", n, err)
	}
	st, _ := q.state()
	s, err := st.js.Stream(ctx, DefaultChangesStream)
	if err != nil {
		t.Fatal(err)
	}
	wantSubjects := []string{"dsyncd.changes.org_1.directory_user_1", "dsyncd.changes.org_2.u___", "dsyncd.changes.org_1._", "dsyncd.changes.org_1.u4"}
	for i, want := range wantSubjects {
		m, err := s.GetMsg(ctx, uint64(i+1))
		if err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
		if m.Subject != want || m.Header.Get(jetstream.MsgIDHeader) != strconv.Itoa(i+1) {
			t.Fatalf("message %d: subject %q id %q, want %q id %d", i+1, m.Subject, m.Header.Get(jetstream.MsgIDHeader), want, i+1)
		}
	}
	if info, _ := s.Info(context.Background()); info.State.Msgs != 4 {
		t.Fatalf("stream holds %d messages, want 4", info.State.Msgs)
	}
}

// TestChangeStreamCountsTheRecordsBeforeOneThatFailed: only a batch's last
// record asks for an ack, so when one in the middle is refused (here a
// message id the stream has just seen), Publish reads from the stream how
// many it holds: the records before it, and none after it.
func TestChangeStreamCountsTheRecordsBeforeOneThatFailed(t *testing.T) {
	q := openQueue(t, Options{StoreDir: t.TempDir()})
	ctx := testCtx(t, 30*time.Second)
	cs := q.Changes(ChangesOptions{})
	if _, err := cs.LastChange(ctx); err != nil {
		t.Fatal(err)
	}
	st, _ := q.state()
	if _, err := st.js.Publish(ctx, "dsyncd.changes.org_1._", []byte(`{}`), jetstream.WithMsgID("5")); err != nil {
		t.Fatal(err)
	}
	var msgs []ChangeMsg
	for seq := uint64(4); seq <= 7; seq++ {
		msgs = append(msgs, ChangeMsg{Seq: seq, OrganizationID: "org_1", UserID: "u" + strconv.FormatUint(seq, 10), Data: []byte(`{}`)})
	}
	n, err := cs.Publish(ctx, msgs)
	if err == nil || n != 1 {
		t.Fatalf("publish 4..7 with 5 refused: %d, %v; want 1 and an error", n, err)
	}
	s, err := st.js.Stream(ctx, DefaultChangesStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil || info.State.Msgs != 2 {
		t.Fatalf("stream: %+v, %v; want the other publisher's message and change 4", info.State, err)
	}
	if m, err := s.GetMsg(ctx, 2); err != nil || m.Header.Get(jetstream.MsgIDHeader) != "4" {
		t.Fatalf("message 2: %v, %v; want change 4", m, err)
	}
	if n, err := cs.Publish(ctx, msgs[2:]); err != nil || n != 2 {
		t.Fatalf("publish 6..7 after: %d, %v", n, err)
	}
	if info, _ := s.Info(ctx); info.State.LastSeq != 4 {
		t.Fatalf("stream's last sequence %d, want 4", info.State.LastSeq)
	}
}
