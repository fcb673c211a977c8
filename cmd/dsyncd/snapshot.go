package main

// The store's snapshots: serve takes them (store.snapshot_interval, and
// whenever the stream grew by a quarter of nats.max_bytes, or by the newest
// snapshot's size when larger, since the newest),
// keeps store.snapshots_kept in the Object Store bucket nats.snapshot_bucket,
// and purges the stream's events at or below the oldest kept one. rebuild
// starts from the newest usable one (rebuild.go); "dsyncd snapshot" takes or
// lists them.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/server"
	"github.com/dsyncd/dsyncd/storage"
)

const (
	// snapshotTick is how often serve looks at the stream's size.
	snapshotTick = 100 * time.Millisecond
	// capShare: a snapshot is taken once the stream holds max_bytes/capShare
	// bytes of applied events above the newest snapshot (streamShare). The
	// stream then holds the applied events above the oldest kept snapshot,
	// about kept-1 shares plus one growing, and the events not yet applied:
	// with the default of 2 kept, about half the cap is left to those.
	capShare = 4
	// nearCapShare: a snapshot is also taken when the stream is within
	// max_bytes/nearCapShare of its cap and holds applied events above the
	// newest snapshot (a purge that failed, or events much larger than usual).
	nearCapShare = 8
	// snapshotRetry is the pause after a failed snapshot.
	snapshotRetry = 10 * time.Second
	// Snapshot triggers, the label of dsyncd_snapshots_total.
	triggerScheduled = "scheduled"
	triggerStream    = "stream"
	triggerRequest   = "request"
)

// snapshotter takes the store's snapshots and purges the stream behind the
// oldest kept one. Its methods are safe for concurrent use.
type snapshotter struct {
	log      *zap.Logger
	q        *queue.Queue
	st       *storage.Store
	sn       *queue.Snapshots
	kept     int
	interval time.Duration
	stream   string
	durable  string // this node's worker consumer
	// active, if set, says whether this node takes the scheduled and
	// stream-triggered snapshots: in a cluster the leader alone does (the
	// nodes' stores are the same at the same position).
	active func() bool
	// firstAfter: in a cluster (node.id set), no scheduled snapshot is
	// taken before this time when there is none yet, so that nodes started
	// together create their consumers before the stream is purged behind a
	// first snapshot (a node whose consumer is not there yet does not hold
	// the purge back). Zero: the first one is taken at once.
	firstAfter time.Time

	mu     sync.Mutex // one snapshot at a time
	newest atomic.Pointer[queue.Snapshot]
	full   atomic.Pointer[string] // why the stream refuses events, nil while it takes them
	// purgeDue: the last purge behind the snapshots failed; the next
	// tick tries again.
	purgeDue atomic.Bool
	behind   atomic.Bool            // the events not yet applied fill an eighth of the cap (hurry)
	lastErr  atomic.Pointer[string] // the last failed snapshot's error, nil after a success
	retryAt  atomic.Int64           // unix nanoseconds before which no snapshot is retried
	taking   atomic.Bool            // run's snapshot is being taken
	wg       sync.WaitGroup         // run's snapshot

	taken   *prometheus.CounterVec
	failed  prometheus.Counter
	purged  prometheus.Counter
	seconds prometheus.Gauge
}

// newSnapshotter returns the snapshotter of cfg, or nil when
// store.snapshots_kept is 0 (snapshots off). Every method takes a nil one.
func newSnapshotter(cfg config.Config, q *queue.Queue, st *storage.Store, log *zap.Logger) *snapshotter {
	if cfg.Store.SnapshotsKept <= 0 {
		return nil
	}
	s := &snapshotter{log: log.Named("snapshot"), q: q, st: st, sn: q.Snapshots(cfg.NATS.SnapshotBucket), kept: cfg.Store.SnapshotsKept,
		interval: cfg.Store.SnapshotInterval, stream: cfg.NATS.Stream, durable: durableFor(cfg),
		taken: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dsyncd_snapshots_total",
			Help: "Snapshots of the store stored, by trigger: scheduled, stream (a quarter of nats.max_bytes, or the newest snapshot's size when larger, of applied events since the newest), request."},
			[]string{"trigger"}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{Name: "dsyncd_snapshots_failed_total",
			Help: "Snapshots of the store that could not be stored (the log line 'snapshot failed' says why)."}),
		purged: prometheus.NewCounter(prometheus.CounterOpts{Name: "dsyncd_stream_purged_total",
			Help: "Applied events purged from the stream behind the oldest kept snapshot."}),
		seconds: prometheus.NewGauge(prometheus.GaugeOpts{Name: "dsyncd_snapshot_seconds",
			Help: "How long the last snapshot took to store."}),
	}
	for _, tr := range []string{triggerScheduled, triggerStream, triggerRequest} {
		s.taken.WithLabelValues(tr)
	}
	if cfg.Node.ID != "" {
		s.firstAfter = time.Now().Add(cfg.Store.SnapshotInterval)
	}
	return s
}

// register adds the snapshot metrics to reg.
func (s *snapshotter) register(reg *prometheus.Registry) {
	if s == nil {
		return
	}
	reg.MustRegister(s.taken, s.failed, s.purged, s.seconds,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "dsyncd_snapshot_stream_seq",
			Help: "Stream sequence of the newest snapshot (0: none yet)."}, func() float64 {
			if n := s.newest.Load(); n != nil {
				return float64(n.Seq)
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "dsyncd_stream_full",
			Help: "1 while the event stream is full of events not yet applied (webhooks get 503; /readyz says why), else 0."}, func() float64 {
			if s.full.Load() != nil {
				return 1
			}
			return 0
		}))
}

// api is s as /v1/snapshots takes it: nil (no routes) when snapshots are off.
func (s *snapshotter) api() server.Snapshots {
	if s == nil {
		return nil
	}
	return s
}

// streamFull says why the stream refuses events (for /readyz), or nil.
func (s *snapshotter) streamFull() error {
	if s == nil {
		return nil
	}
	if why := s.full.Load(); why != nil {
		return errors.New(*why)
	}
	return nil
}

// run takes the scheduled and stream-triggered snapshots until ctx ends.
func (s *snapshotter) run(ctx context.Context) {
	if s == nil {
		return
	}
	if l, err := s.sn.List(ctx); err != nil {
		s.log.Warn("cannot list the snapshots", zap.Error(err))
	} else if len(l) > 0 {
		s.newest.Store(&l[0])
		s.prunePurge(ctx, false)
	}
	t := time.NewTicker(snapshotTick)
	defer t.Stop()
	defer s.wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.tick(ctx)
	}
}

// tick looks at the stream and starts a snapshot when one is due. The
// snapshot runs beside the ticks (a large store takes seconds), which go on
// watching the stream's fullness meanwhile.
func (s *snapshotter) tick(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	u, err := s.q.Usage(cctx, s.durable)
	cancel()
	if err != nil {
		return // the queue's own health reports it
	}
	var newestSeq uint64
	var newestAt time.Time
	if n := s.newest.Load(); n != nil {
		newestSeq, newestAt = n.Seq, n.Taken
	}
	trigger := ""
	nearCap := u.MaxBytes > 0 && u.Bytes >= u.MaxBytes-u.MaxBytes/nearCapShare
	switch {
	case s.active != nil && !s.active(): // another node of the cluster takes them
	case u.AckFloor <= newestSeq: // nothing applied since the newest
	case time.Now().UnixNano() < s.retryAt.Load():
	case u.MaxBytes > 0 && u.BytesAfter(newestSeq)-u.BytesAfter(u.AckFloor) >= s.streamShare(u.MaxBytes):
		trigger = triggerStream
	case nearCap:
		// The stream nears its cap with applied events above the newest
		// snapshot: one more snapshot lets the purge free them, whatever
		// the share since the newest.
		trigger = triggerStream
	case s.interval > 0 && newestAt.IsZero() && time.Now().Before(s.firstAfter):
	case s.interval > 0 && (newestAt.IsZero() || time.Since(newestAt) >= s.interval):
		trigger = triggerScheduled
	}
	switch {
	case trigger != "" && s.taking.CompareAndSwap(false, true):
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.taking.Store(false)
			if _, err := s.take(ctx, trigger, nearCap); err != nil {
				s.retryAt.Store(time.Now().Add(snapshotRetry).UnixNano())
			}
		}()
	case trigger == "" && s.purgeDue.Load() && (s.active == nil || s.active()) && time.Now().UnixNano() >= s.retryAt.Load() &&
		s.taking.CompareAndSwap(false, true):
		s.retryAt.Store(time.Now().Add(snapshotRetry).UnixNano())
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.taking.Store(false)
			s.mu.Lock()
			defer s.mu.Unlock()
			s.prunePurge(ctx, nearCap)
		}()
	}
	s.noteFull(u)
}

// streamShare is how many bytes of applied events above the newest snapshot
// trigger the next: a quarter of the cap, or the newest snapshot's size when
// that is larger, so that the copies stay a bounded share of the work as the
// store grows (each copies the whole store: at a fixed share of the cap, a
// store growing with the events made their cost grow with its square). It is
// at most three quarters of the cap shared among the kept snapshots (three
// eighths with the default 2), so that the applied events the stream holds
// behind the oldest kept one stay under three quarters of it, well before
// the snapshot taken near the cap, however many are kept.
func (s *snapshotter) streamShare(maxBytes uint64) uint64 {
	share := maxBytes / capShare
	if n := s.newest.Load(); n != nil {
		share = max(share, n.Size)
	}
	return min(share, maxBytes/4*3/uint64(max(s.kept, 2)))
}

// hurry tells the worker to stop yielding the CPU to the receiver: the
// events not yet applied fill an eighth of nats.max_bytes, and only applying
// them frees the stream (worker.Options.Hurry).
func (s *snapshotter) hurry() bool { return s != nil && s.behind.Load() }

// noteFull records whether the stream is (nearly) full, and why.
func (s *snapshotter) noteFull(u queue.Usage) {
	s.behind.Store(u.MaxBytes > 0 && u.BytesAfter(u.AckFloor) >= u.MaxBytes/8)
	if u.MaxBytes == 0 || u.Bytes+max(u.MaxBytes/50, 64<<10) < u.MaxBytes {
		if s.full.Swap(nil) != nil {
			s.log.Info("the event stream takes events again", zap.Uint64("bytes", u.Bytes), zap.Uint64("max_bytes", u.MaxBytes))
		}
		return
	}
	why := fmt.Sprintf("the event stream %s is full (%d of nats.max_bytes %d bytes) with %d events not yet applied: "+
		"webhooks get 503 until the worker applies them (dsyncd_consumer_pending; is the store writable?)", s.stream, u.Bytes, u.MaxBytes, u.Unacked())
	if unapplied := u.BytesAfter(u.AckFloor); unapplied < u.MaxBytes/2 {
		why = fmt.Sprintf("the event stream %s is full (%d of nats.max_bytes %d bytes), mostly of applied events that the next snapshot frees; "+
			"%d events are not yet applied: webhooks get 503 meanwhile", s.stream, u.Bytes, u.MaxBytes, u.Unacked())
	}
	if e := s.lastErr.Load(); e != nil {
		why += "; the last snapshot, which frees applied events, failed: " + *e
	}
	if s.full.Swap(&why) == nil {
		s.log.Error("event stream full", zap.String("why", why))
	}
}

// take stores a snapshot of the store now, then keeps the newest
// snapshots_kept and purges the stream behind the oldest of them (behind
// the newest when nearCap: prunePurge).
func (s *snapshotter) take(ctx context.Context, trigger string, nearCap bool) (queue.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := time.Now()
	info, err := s.put(ctx)
	if err != nil {
		s.failed.Inc()
		msg := err.Error()
		s.lastErr.Store(&msg)
		s.log.Error("snapshot failed", zap.String("trigger", trigger), zap.Error(err))
		return queue.Snapshot{}, err
	}
	s.lastErr.Store(nil)
	s.taken.WithLabelValues(trigger).Inc()
	s.seconds.Set(time.Since(start).Seconds())
	s.newest.Store(&info)
	purged := s.prunePurge(ctx, nearCap)
	s.log.Info("snapshot stored", zap.String("trigger", trigger), zap.String("name", info.Name), zap.Uint64("stream_seq", info.Seq),
		zap.Uint64("bytes", info.Size), zap.Duration("took", time.Since(start)), zap.Uint64("purged", purged))
	return info, nil
}

// put copies the store into the bucket. The sequence it records is the
// consumer's ack floor read before the copy's read transaction begins:
// every event at or below it was committed (or parked) before, so the copy
// plus the stream after it is the whole state.
func (s *snapshotter) put(ctx context.Context) (queue.Snapshot, error) {
	u, err := s.q.Usage(ctx, s.durable)
	if err != nil {
		return queue.Snapshot{}, err
	}
	applied, _, err := s.st.AppliedSeq()
	if err != nil {
		return queue.Snapshot{}, err
	}
	pr, pw := io.Pipe()
	copied := make(chan error, 1)
	go func() {
		_, err := s.st.BackupTo(pw)
		pw.CloseWithError(err)
		copied <- err
	}()
	info, err := s.sn.Put(ctx, u.AckFloor, applied, pr)
	pr.CloseWithError(errors.Join(err, errors.New("snapshot upload stopped"))) // unblocks the copy if Put gave up
	if cerr := <-copied; cerr != nil && err == nil {
		err = fmt.Errorf("copy the store: %w", cerr)
	}
	return info, err
}

// prunePurge keeps the newest snapshots and purges the stream's events at or
// below the oldest kept one's sequence (never past the consumer's ack
// floor). It returns how many events went.
//
// When the stream nears its cap (nearCap), it purges behind the newest
// instead: freeing room for the webhooks comes before keeping the older
// snapshots replayable (rebuild starts from the newest; an older one is
// only its fallback). Without this, a stream keeping many snapshots could
// fill with applied events before a near-cap snapshot pushed the oldest
// kept one out.
//
// A snapshot that could not be deleted does not stop the purge (it only
// takes room in the bucket); a purge that failed is tried again at the next
// tick (purgeDue), so a stream is never left full of events the snapshots
// kept already cover.
func (s *snapshotter) prunePurge(ctx context.Context, nearCap bool) uint64 {
	kept, err := s.sn.Prune(ctx, s.kept)
	if err != nil {
		s.log.Warn("cannot prune the snapshots", zap.Error(err))
	}
	if len(kept) == 0 {
		s.purgeDue.Store(err != nil)
		return 0
	}
	through := kept[len(kept)-1].Seq
	if nearCap {
		through = kept[0].Seq
	}
	n, err := s.q.PurgeThrough(ctx, through, s.durable)
	if err != nil {
		s.log.Warn("cannot purge the stream", zap.Error(err))
	}
	s.purgeDue.Store(err != nil)
	s.purged.Add(float64(n))
	return n
}

// List and Take are server.Snapshots.
func (s *snapshotter) List(ctx context.Context) ([]server.SnapshotInfo, error) {
	l, err := s.sn.List(ctx)
	out := make([]server.SnapshotInfo, 0, len(l))
	for _, sn := range l {
		out = append(out, snapshotInfo(sn))
	}
	return out, err
}

func (s *snapshotter) Take(ctx context.Context) (server.SnapshotInfo, error) {
	info, err := s.take(ctx, triggerRequest, false)
	return snapshotInfo(info), err
}

func snapshotInfo(sn queue.Snapshot) server.SnapshotInfo {
	return server.SnapshotInfo{Name: sn.Name, StreamSeq: sn.Seq, AppliedSeq: sn.AppliedSeq, Bytes: sn.Size, Taken: sn.Taken}
}

// snapshotCommand is "dsyncd snapshot": take one now, or list them.
func (a *app) snapshotCommand() *cobra.Command {
	var f opsFlags
	var list bool
	var format string
	cmd := &cobra.Command{
		Use:   "snapshot [--list] [--config FILE] [--server URL | --offline] [--format text|json]",
		Short: "Take a snapshot of the store now, or list the kept ones",
		Long: `snapshot stores a consistent copy of the store in the NATS Object Store bucket
nats.snapshot_bucket, recording the stream sequence it covers, keeps the newest
store.snapshots_kept and purges the stream's events at or below the oldest kept one's
sequence (never one the worker has not applied). serve does the same every
store.snapshot_interval and whenever the stream grew by a quarter of nats.max_bytes
(or by the newest snapshot's size, when larger).
"dsyncd rebuild" starts from the newest usable snapshot.

It goes through the running serve's API (POST /v1/snapshots), or with serve stopped
opens the store and the embedded JetStream itself. --list lists the kept snapshots.`,
		Example: `  dsyncd snapshot --config /etc/dsyncd/dsyncd.yaml
  dsyncd snapshot --list --format json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			if cfg.Store.SnapshotsKept <= 0 {
				return usagef("snapshots are off (store.snapshots_kept: 0)")
			}
			var out []server.SnapshotInfo
			err = a.withBackend(cmd.Context(), cfg, &f, func(b backend) error {
				switch b := b.(type) {
				case *apiClient:
					if list {
						var r struct {
							Snapshots []server.SnapshotInfo `json:"snapshots"`
						}
						err := b.call(cmd.Context(), "GET", "/v1/snapshots", &r)
						out = r.Snapshots
						return err
					}
					var info server.SnapshotInfo
					err := b.call(cmd.Context(), "POST", "/v1/snapshots", &info)
					out = []server.SnapshotInfo{info}
					return err
				case *offlineBackend:
					st, err := b.store()
					if err != nil {
						return err
					}
					q, err := b.queue(cmd.Context())
					if err != nil {
						return err
					}
					s := newSnapshotter(cfg, q, st, zap.NewNop())
					if list {
						out, err = s.List(cmd.Context())
						return err
					}
					info, err := s.Take(cmd.Context())
					out = []server.SnapshotInfo{info}
					return err
				}
				return fmt.Errorf("snapshot: unsupported backend %T", b)
			})
			if err != nil {
				return err
			}
			if format == "json" {
				if list {
					return writeJSONTo(a.stdout, map[string]any{"snapshots": out})
				}
				return writeJSONTo(a.stdout, out[0])
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTREAM SEQ\tBYTES\tTAKEN")
			for _, sn := range out {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", sn.Name, sn.StreamSeq, sn.Bytes, sn.Taken.UTC().Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&list, "list", false, "list the kept snapshots, newest first")
	a.addTargetFlagSet(cmd.Flags(), &f)
	formatFlag(cmd.Flags(), &format)
	return cmd
}

// restoreSnapshot writes the newest snapshot that opens and passes the
// store's consistency check to path, and returns it; ok is false when the
// bucket holds none. Damaged ones are skipped with a warning each.
func restoreSnapshot(ctx context.Context, cfg config.Config, q *queue.Queue, path string) (sn queue.Snapshot, ok bool, warnings []string, err error) {
	l, err := q.Snapshots(cfg.NATS.SnapshotBucket).List(ctx)
	if err != nil {
		return sn, false, nil, err
	}
	for _, cand := range l {
		if err := fetchSnapshot(ctx, q.Snapshots(cfg.NATS.SnapshotBucket), cand, path); err != nil {
			warnings = append(warnings, fmt.Sprintf("snapshot %s (stream sequence %d) is not usable, trying an older one: %v", cand.Name, cand.Seq, err))
			continue
		}
		return cand, true, warnings, nil
	}
	if len(l) > 0 {
		return sn, false, warnings, fmt.Errorf("none of the %d snapshots in %s is usable", len(l), cfg.NATS.SnapshotBucket)
	}
	return sn, false, warnings, nil
}

// fetchSnapshot writes sn to a new file at path (0600) and checks that it
// is a sound store.
func fetchSnapshot(ctx context.Context, sns *queue.Snapshots, sn queue.Snapshot, path string) (err error) {
	defer func() {
		if err != nil {
			_ = removeIfExists(path)
		}
	}()
	if err := removeIfExists(path); err != nil {
		return err
	}
	f, err := createExclusive(path)
	if err != nil {
		return err
	}
	if _, err := sns.Get(ctx, sn.Name, f); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	st, err := storage.Open(storage.Options{Path: path})
	if err != nil {
		return err
	}
	defer st.Close()
	return st.Check()
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func createExclusive(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
}
