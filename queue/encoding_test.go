package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// referenceEvent is a real WorkOS payload, the kind of data the stream holds.
func referenceEvent(t *testing.T) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "testdata", "workos", "events", "dsync_group_user_added.json"))
	if err != nil {
		t.Fatalf("reference event: %v", err)
	}
	return raw
}

// parkFirst fetches the n messages of the main stream, parks the first and
// returns it as the only dead letter.
func parkFirst(t *testing.T, q *Queue, n int) DeadLetter {
	t.Helper()
	ctx := testCtx(t, 30*time.Second)
	c, err := q.jsConsumer(ctx, "worker", 30*time.Second, 0)
	if err != nil {
		t.Fatalf("Consumer: %v", err)
	}
	if err := q.park(ctx, fetch(t, c, n)[0], "test", 1); err != nil {
		t.Fatalf("Park: %v", err)
	}
	dls, err := q.DeadLetters(ctx)
	if err != nil || len(dls) != 1 {
		t.Fatalf("DeadLetters = %+v, %v; want 1", dls, err)
	}
	return dls[0]
}

func TestDataDecodes(t *testing.T) {
	event := []byte(`{"id":"evt_1","event":"dsync.user.created","data":{"id":"directory_user_1"}}`)
	huge := binary.AppendUvarint(nil, maxDecodedLen+1)
	tests := []struct {
		name    string
		header  nats.Header
		data    []byte
		want    []byte
		wantErr string
	}{
		{name: "no header is the data as stored", data: event, want: event},
		{name: "json header is the data as stored", header: nats.Header{HeaderEncoding: {"json"}}, data: event, want: event},
		{name: "s2 is decompressed", header: nats.Header{HeaderEncoding: {"s2"}}, data: s2.Encode(nil, event), want: event},
		{name: "corrupt s2 is undecodable", header: nats.Header{HeaderEncoding: {"s2"}}, data: event, wantErr: "s2:"},
		{name: "s2 claiming a huge length is refused before allocating", header: nats.Header{HeaderEncoding: {"s2"}}, data: huge, wantErr: "more than"},
		{name: "unknown encoding is undecodable", header: nats.Header{HeaderEncoding: {"zstd"}}, data: event, wantErr: `unknown Dsyncd-Encoding "zstd"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Data(tt.header.Get(HeaderEncoding), tt.data)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrUndecodable) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Data = %q, %v; want an ErrUndecodable containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !bytes.Equal(got, tt.want) {
				t.Fatalf("Data = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// TestEncodingS2 publishes real events compressed and checks what an
// operator and the readers see: smaller messages marked with the header, the
// event back from Data and Each, and a dead letter that holds the JSON.
func TestEncodingS2(t *testing.T) {
	q := openQueue(t, Options{StoreDir: t.TempDir(), Encoding: EncodingS2})
	ctx := testCtx(t, 30*time.Second)
	event := referenceEvent(t)
	tiny := []byte(`{}`) // does not shrink: stored as it is

	if _, err := q.Publish(ctx, "dir_1", "dsync.group.user_added", "evt_1", event); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if _, err := q.Publish(ctx, "dir_1", "dsync.group.user_added", "evt_2", tiny); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	st, err := q.state()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := st.main.GetMsg(ctx, 1)
	if err != nil {
		t.Fatalf("GetMsg: %v", err)
	}
	if raw.Header.Get(HeaderEncoding) != EncodingS2 || len(raw.Data) >= len(event)*3/4 {
		t.Errorf("stored %d bytes with %s %q for a %d-byte event; want s2, under 3/4 of the size",
			len(raw.Data), HeaderEncoding, raw.Header.Get(HeaderEncoding), len(event))
	}
	if got, err := Data(raw.Header.Get(HeaderEncoding), raw.Data); err != nil || !bytes.Equal(got, event) {
		t.Errorf("Data of the stored message = %q, %v; want the event", got, err)
	}
	raw2, err := st.main.GetMsg(ctx, 2)
	if err != nil {
		t.Fatalf("GetMsg: %v", err)
	}
	if raw2.Header.Get(HeaderEncoding) != "" || !bytes.Equal(raw2.Data, tiny) {
		t.Errorf("an event that does not shrink is stored as %q with %s %q, want as received and no header",
			raw2.Data, HeaderEncoding, raw2.Header.Get(HeaderEncoding))
	}

	var seen [][]byte
	if err := q.Each(ctx, func(_ uint64, _ string, _ time.Time, data []byte) error {
		seen = append(seen, bytes.Clone(data))
		return nil
	}); err != nil {
		t.Fatalf("Each: %v", err)
	}
	if len(seen) != 2 || !bytes.Equal(seen[0], event) || !bytes.Equal(seen[1], tiny) {
		t.Errorf("Each saw %q, want the two events decoded", seen)
	}

	dl := parkFirst(t, q, 2)
	if !bytes.Equal(dl.Data, event) || dl.Encoding != "" {
		t.Errorf("dead letter holds %d bytes with encoding %q, want the event's JSON", len(dl.Data), dl.Encoding)
	}
}

// TestUndecodableParkedAsStored: a message whose data cannot be decoded is
// parked byte for byte with its encoding, and a replay puts it back the same.
func TestUndecodableParkedAsStored(t *testing.T) {
	q := openQueue(t, Options{StoreDir: t.TempDir()})
	ctx := testCtx(t, 30*time.Second)
	st, err := q.state()
	if err != nil {
		t.Fatal(err)
	}
	garbage := []byte("\x05not s2")
	m := &nats.Msg{Subject: q.Subject("dir_1", "dsync.user.created"), Header: nats.Header{HeaderEncoding: {"s2"}}, Data: garbage}
	if _, err := st.js.PublishMsg(ctx, m, jetstream.WithMsgID("evt_bad")); err != nil {
		t.Fatalf("PublishMsg: %v", err)
	}
	c, err := q.jsConsumer(ctx, "worker", 30*time.Second, 0)
	if err != nil {
		t.Fatalf("Consumer: %v", err)
	}
	got := fetch(t, c, 1)[0]
	if _, err := Data(got.Headers().Get(HeaderEncoding), got.Data()); !errors.Is(err, ErrUndecodable) {
		t.Fatalf("Data = %v, want ErrUndecodable", err)
	}
	if err := q.park(ctx, got, "undecodable", 1); err != nil {
		t.Fatalf("Park: %v", err)
	}
	ack(t, got)
	dls, err := q.DeadLetters(ctx)
	if err != nil || len(dls) != 1 {
		t.Fatalf("DeadLetters = %+v, %v; want 1", dls, err)
	}
	if !bytes.Equal(dls[0].Data, garbage) || dls[0].Encoding != "s2" {
		t.Errorf("dead letter %q encoding %q, want the stored bytes and s2", dls[0].Data, dls[0].Encoding)
	}
	if err := q.ReplayDeadLetter(ctx, dls[0].Seq); err != nil {
		t.Fatalf("ReplayDeadLetter: %v", err)
	}
	back := fetch(t, c, 1)[0]
	if !bytes.Equal(back.Data(), garbage) || back.Headers().Get(HeaderEncoding) != "s2" {
		t.Errorf("replayed %q with encoding %q, want it as parked", back.Data(), back.Headers().Get(HeaderEncoding))
	}
}

func TestInvalidEncoding(t *testing.T) {
	q := New(Options{StoreDir: t.TempDir(), Encoding: "gzip"}, testLogger(t))
	err := q.Open(testCtx(t, 10*time.Second))
	if !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), `Encoding "gzip"`) {
		t.Fatalf("Open = %v, want ErrInvalidOptions naming the encoding", err)
	}
}

// TestParkKeepsCompressedWhenDecodedIsTooLarge: an event that fits in a NATS
// message only compressed is parked compressed, not refused by the server.
func TestParkKeepsCompressedWhenDecodedIsTooLarge(t *testing.T) {
	q := openQueue(t, Options{StoreDir: t.TempDir(), Encoding: EncodingS2})
	ctx := testCtx(t, 30*time.Second)
	st, err := q.state()
	if err != nil {
		t.Fatal(err)
	}
	big := []byte(`{"id":"evt_big","event":"dsync.user.created","data":{"raw_attributes":"` +
		strings.Repeat("x", int(st.nc.MaxPayload())) + `"}}`)
	if _, err := q.Publish(ctx, "dir_1", "dsync.user.created", "evt_big", big); err != nil {
		t.Fatalf("Publish of a %d-byte event (max payload %d): %v", len(big), st.nc.MaxPayload(), err)
	}
	dl := parkFirst(t, q, 1)
	got, err := Data(dl.Encoding, dl.Data)
	if dl.Encoding != EncodingS2 || err != nil || !bytes.Equal(got, big) {
		t.Errorf("dead letter: encoding %q, %d bytes, decoded equal %v (%v); want it kept compressed",
			dl.Encoding, len(dl.Data), bytes.Equal(got, big), err)
	}
}
