package queue

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestSnapshotsRoundTripNewestFirstAndPruneKeepsTheNewest(t *testing.T) {
	q := openQueue(t, Options{StoreDir: t.TempDir()})
	ctx := testCtx(t, 60*time.Second)
	sn := q.Snapshots("")
	if got, err := sn.List(ctx); err != nil || len(got) != 0 {
		t.Fatalf("List before any snapshot = %v, %v; want none", got, err)
	}
	copies := map[uint64][]byte{}
	for _, seq := range []uint64{5, 120, 40} {
		b := make([]byte, 300<<10) // several chunks
		_, _ = rand.Read(b)
		copies[seq] = b
		info, err := sn.Put(ctx, seq, seq+2, bytes.NewReader(b))
		if err != nil {
			t.Fatalf("Put %d: %v", seq, err)
		}
		if info.Seq != seq || info.AppliedSeq != seq+2 || info.Size != uint64(len(b)) {
			t.Fatalf("Put %d returned %+v", seq, info)
		}
	}
	list, err := sn.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := seqs(list); fmt.Sprint(got) != "[120 40 5]" {
		t.Fatalf("List = %v, want newest first [120 40 5]", got)
	}
	var got bytes.Buffer
	if _, err := sn.Get(ctx, list[1].Name, &got); err != nil || !bytes.Equal(got.Bytes(), copies[40]) {
		t.Fatalf("Get %s: %v; the copy differs: %v", list[1].Name, err, !bytes.Equal(got.Bytes(), copies[40]))
	}
	kept, err := sn.Prune(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if got := seqs(kept); fmt.Sprint(got) != "[120 40]" {
		t.Fatalf("Prune kept %v, want [120 40]", got)
	}
	if list, _ := sn.List(ctx); fmt.Sprint(seqs(list)) != "[120 40]" {
		t.Fatalf("after Prune List = %v", seqs(list))
	}
	if _, err := sn.Get(ctx, SnapshotName(5), &got); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of a pruned snapshot: %v, want ErrNotFound", err)
	}
}

func seqs(l []Snapshot) []uint64 {
	var out []uint64
	for _, s := range l {
		out = append(out, s.Seq)
	}
	return out
}

func TestPurgeThroughNeverRemovesWhatTheConsumerHasNotAcknowledged(t *testing.T) {
	q := openQueue(t, Options{StoreDir: t.TempDir()})
	ctx := testCtx(t, 60*time.Second)
	for i := range 10 {
		if _, err := q.Publish(ctx, "dir_1", "dsync.user.created", fmt.Sprintf("e%d", i), []byte(`{"id":"x"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := q.PurgeThrough(ctx, 8, "w"); err != nil || n != 0 {
		t.Fatalf("purge without a consumer: %d, %v; want nothing purged", n, err)
	}
	c, err := q.Consumer(ctx, "w", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range deliveries(t, c, 4) {
		if err := d.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	// Acks are asynchronous: wait until the server has all four.
	u, err := q.Usage(ctx, "w")
	for deadline := time.Now().Add(10 * time.Second); err == nil && u.AckFloor < 4 && time.Now().Before(deadline); {
		u, err = q.Usage(ctx, "w")
	}
	if err != nil || u.AckFloor != 4 || u.Unacked() != 6 {
		t.Fatalf("Usage = %+v, %v; want ack floor 4, 6 unacknowledged", u, err)
	}
	n, err := q.PurgeThrough(ctx, 8, "w")
	if err != nil || n != 4 {
		t.Fatalf("PurgeThrough(8) with ack floor 4 purged %d (%v), want 4", n, err)
	}
	info, err := q.StreamInfo(ctx)
	if err != nil || info.State.FirstSeq != 5 || info.State.Msgs != 6 {
		t.Fatalf("stream after purge: %+v, %v; want sequences 5-10", info.State, err)
	}
	// The consumer goes on with the rest.
	for _, d := range deliveries(t, c, 6) {
		if err := d.Ack(); err != nil {
			t.Fatal(err)
		}
	}
}
