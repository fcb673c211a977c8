package queue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultSnapshotBucket is the default name of the Object Store bucket that
// holds the store's snapshots.
const DefaultSnapshotBucket = "DSYNC_SNAPSHOTS"

// snapshotPrefix starts every snapshot's object name; the rest is its
// stream sequence, zero-padded so that names sort as sequences do.
const snapshotPrefix = "snapshot-"

// metaSeq and metaApplied are the object metadata keys of a snapshot's
// sequences.
const (
	metaSeq     = "dsyncd-stream-seq"
	metaApplied = "dsyncd-applied-seq"
	// metaEncoding says how the copy is encoded in the object: "s2" (a
	// framed S2 stream, written by Put) or absent (the copy as is: the
	// snapshots of earlier versions, which the bucket compressed itself).
	metaEncoding = "dsyncd-encoding"
	encodingS2   = "s2"
)

// Snapshot describes one snapshot of the store in the Object Store bucket.
type Snapshot struct {
	// Name is the object's name: "snapshot-<Seq, 20 digits>".
	Name string
	// Seq is the main stream sequence the snapshot covers: every event at or
	// below it was applied (or parked) before the copy began, so the store
	// it holds plus the stream's events after Seq is the whole state.
	Seq uint64
	// AppliedSeq is the store's own applied-sequence record in the copy
	// (at least Seq: events just above Seq may be in it too, and apply
	// again as duplicates).
	AppliedSeq uint64
	// Size is the snapshot's size in the bucket in bytes: the copy
	// compressed with S2 (a bbolt file compresses several times over).
	Size uint64
	// Taken is when the snapshot was stored.
	Taken time.Time
}

// Snapshots is the snapshot bucket of a Queue: a NATS Object Store on the
// same server or cluster as the stream, so that every node can fetch them.
type Snapshots struct {
	q      *Queue
	bucket string
}

// Snapshots returns the snapshot bucket named bucket (DefaultSnapshotBucket
// when empty). The bucket is created on first use: file storage, the
// queue's replicas, S2-compressed.
func (q *Queue) Snapshots(bucket string) *Snapshots {
	if bucket == "" {
		bucket = DefaultSnapshotBucket
	}
	return &Snapshots{q: q, bucket: bucket}
}

// Bucket is the bucket's name.
func (s *Snapshots) Bucket() string { return s.bucket }

func (s *Snapshots) store(ctx context.Context, create bool) (jetstream.ObjectStore, error) {
	st, err := s.q.state()
	if err != nil {
		return nil, err
	}
	if !create {
		os, err := st.js.ObjectStore(ctx, s.bucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("queue: snapshot bucket %s: %w", s.bucket, err)
		}
		return os, nil
	}
	os, err := retryUnanswered(ctx, s.q.log, "bucket "+s.bucket, func(ctx context.Context) (jetstream.ObjectStore, error) {
		return st.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket:      s.bucket,
			Description: "dsyncd store snapshots",
			Storage:     jetstream.FileStorage,
			Replicas:    s.q.opts.Replicas,
			// Put compresses the copy as it streams it. A bucket that
			// compressed its blocks itself read each full block back,
			// compressed it and wrote it again: gigabytes read and
			// megabytes of buffers per snapshot of a large store, and
			// seconds to purge a deleted one.
			Compression: false,
		})
	})
	if err != nil {
		return nil, fmt.Errorf("queue: snapshot bucket %s: %w", s.bucket, err)
	}
	return os, nil
}

// SnapshotName is the object name of the snapshot covering seq.
func SnapshotName(seq uint64) string { return fmt.Sprintf("%s%020d", snapshotPrefix, seq) }

// Put stores the store copy r reads as the snapshot covering seq (its
// applied record being applied), replacing one of the same name. The copy
// is compressed with S2 on its way, on one core.
func (s *Snapshots) Put(ctx context.Context, seq, applied uint64, r io.Reader) (Snapshot, error) {
	os, err := s.store(ctx, true)
	if err != nil {
		return Snapshot{}, err
	}
	pr, pw := io.Pipe()
	compressed := make(chan error, 1)
	go func() {
		zw := s2.NewWriter(pw, s2.WriterConcurrency(1))
		_, err := io.Copy(zw, r)
		err = errors.Join(err, zw.Close())
		pw.CloseWithError(err)
		compressed <- err
	}()
	info, err := os.Put(ctx, jetstream.ObjectMeta{
		Name:        SnapshotName(seq),
		Description: fmt.Sprintf("dsyncd store as of stream sequence %d", seq),
		Metadata: map[string]string{metaSeq: strconv.FormatUint(seq, 10), metaApplied: strconv.FormatUint(applied, 10),
			metaEncoding: encodingS2},
	}, pr)
	pr.CloseWithError(errors.New("snapshot upload stopped")) // unblocks the compressor if Put gave up
	if cerr := <-compressed; err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("queue: put snapshot %d: %w", seq, err)
	}
	return snapshotOf(info), nil
}

func snapshotOf(info *jetstream.ObjectInfo) Snapshot {
	sn := Snapshot{Name: info.Name, Size: info.Size, Taken: info.ModTime}
	sn.Seq, _ = strconv.ParseUint(info.Metadata[metaSeq], 10, 64)
	if sn.Seq == 0 {
		sn.Seq, _ = strconv.ParseUint(strings.TrimPrefix(info.Name, snapshotPrefix), 10, 64)
	}
	sn.AppliedSeq, _ = strconv.ParseUint(info.Metadata[metaApplied], 10, 64)
	return sn
}

// List returns the snapshots, newest (highest Seq) first; none when the
// bucket does not exist yet.
func (s *Snapshots) List(ctx context.Context) ([]Snapshot, error) {
	os, err := s.store(ctx, false)
	if err != nil || os == nil {
		return nil, err
	}
	infos, err := os.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("queue: list snapshots: %w", err)
	}
	var out []Snapshot
	for _, info := range infos {
		if info.Deleted || !strings.HasPrefix(info.Name, snapshotPrefix) {
			continue
		}
		out = append(out, snapshotOf(info))
	}
	slices.SortFunc(out, func(a, b Snapshot) int { return cmp.Compare(b.Seq, a.Seq) })
	return out, nil
}

// Get writes the snapshot named name to w. The Object Store checks the
// copy's SHA-256 digest as it reads: a damaged snapshot is an error.
func (s *Snapshots) Get(ctx context.Context, name string, w io.Writer) (int64, error) {
	os, err := s.store(ctx, false)
	if err != nil {
		return 0, err
	}
	if os == nil {
		return 0, fmt.Errorf("%w: snapshot bucket %s", ErrNotFound, s.bucket)
	}
	r, err := os.Get(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return 0, fmt.Errorf("%w: snapshot %s", ErrNotFound, name)
	}
	if err != nil {
		return 0, fmt.Errorf("queue: get snapshot %s: %w", name, err)
	}
	defer r.Close()
	info, err := r.Info()
	if err != nil {
		return 0, fmt.Errorf("queue: get snapshot %s: %w", name, err)
	}
	var src io.Reader = r
	switch enc := info.Metadata[metaEncoding]; enc {
	case "":
	case encodingS2:
		src = s2.NewReader(r)
	default:
		return 0, fmt.Errorf("queue: snapshot %s is encoded as %q, which this version cannot read", name, enc)
	}
	n, err := io.Copy(w, src)
	if err != nil {
		return n, fmt.Errorf("queue: read snapshot %s: %w", name, err)
	}
	return n, nil
}

// Prune deletes all but the keep newest snapshots and returns those kept,
// newest first. The kept list is returned even when a deletion fails (the
// error says which): deleting a large snapshot takes the server seconds,
// and what the stream may purge depends only on the snapshots kept.
func (s *Snapshots) Prune(ctx context.Context, keep int) ([]Snapshot, error) {
	all, err := s.List(ctx)
	if err != nil || len(all) <= keep {
		return all, err
	}
	os, err := s.store(ctx, false)
	if err != nil {
		return all[:keep], err
	}
	var errs []error
	for _, sn := range all[keep:] {
		// A snapshot of a large store is many chunks: the server purges
		// them for seconds, longer than a request's default timeout.
		dctx, cancel := context.WithTimeout(ctx, deleteTimeout)
		err := os.Delete(dctx, sn.Name)
		cancel()
		if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			errs = append(errs, fmt.Errorf("queue: delete snapshot %s: %w", sn.Name, err))
		}
	}
	return all[:keep], errors.Join(errs...)
}

// deleteTimeout bounds the deletion of one snapshot.
const deleteTimeout = 2 * time.Minute
