package queue

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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
		if info.Seq != seq || info.AppliedSeq != seq+2 || info.Size == 0 {
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

func TestSnapshotsAreStoredCompressedAndEarlierUncompressedOnesStillRead(t *testing.T) {
	q := openQueue(t, Options{StoreDir: t.TempDir()})
	ctx := testCtx(t, 60*time.Second)
	st, err := q.state()
	if err != nil {
		t.Fatal(err)
	}
	// An earlier version's bucket: the server compressed its blocks, and
	// the copy was stored as is, without an encoding.
	old, err := st.js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: DefaultSnapshotBucket, Storage: jetstream.FileStorage, Compression: true})
	if err != nil {
		t.Fatal(err)
	}
	earlier := bytes.Repeat([]byte("an earlier version's bbolt page "), 40_000)
	if _, err := old.Put(ctx, jetstream.ObjectMeta{Name: SnapshotName(7),
		Metadata: map[string]string{metaSeq: "7", metaApplied: "7"}}, bytes.NewReader(earlier)); err != nil {
		t.Fatal(err)
	}

	sn := q.Snapshots("")
	store := bytes.Repeat([]byte("a bbolt page, mostly the same bytes "), 40_000) // 1.4 MB
	info, err := sn.Put(ctx, 9, 9, bytes.NewReader(store))
	if err != nil {
		t.Fatalf("Put into an earlier version's bucket: %v", err)
	}
	if info.Size == 0 || info.Size > uint64(len(store))/10 {
		t.Fatalf("a %d-byte compressible copy takes %d bytes in the bucket; want it compressed", len(store), info.Size)
	}
	for name, want := range map[string][]byte{SnapshotName(9): store, SnapshotName(7): earlier} {
		var got bytes.Buffer
		if n, err := sn.Get(ctx, name, &got); err != nil || n != int64(len(want)) || !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("Get %s = %d bytes, %v; want the %d bytes put", name, n, err, len(want))
		}
	}
	cfg, err := old.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.IsCompressed() {
		t.Fatal("the bucket still compresses its blocks after Put: the copy is compressed twice")
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
