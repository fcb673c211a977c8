package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/reconcile"
	"github.com/dsyncd/dsyncd/server"
	"github.com/dsyncd/dsyncd/storage"
	"github.com/dsyncd/dsyncd/worker"
)

// daemon is `dsyncd serve`: store, queue, worker and HTTP server, opened in
// that order and closed in reverse.
type daemon struct {
	cfg     config.Config
	log     *zap.Logger
	metrics *metrics

	st  *storage.Store
	q   *queue.Queue
	w   *worker.Worker
	srv *server.Server
	bg  *reconcile.Background // Events API poller and periodic reconcile, when configured
	// feed relays the change feed to JetStream and the webhooks out, when configured.
	feed *feedRunner
	// snap takes the store's snapshots and purges the stream behind them
	// (snapshot.go); nil with store.snapshots_kept 0.
	snap       *snapshotter
	snapCancel context.CancelFunc
	snapDone   chan struct{}
	// apiToken is the bearer token /v1 requires: api.token, or the one in
	// <data_dir>/api.token.
	apiToken string

	// node names this node (node.id or the host name); durable is its
	// worker's consumer; started is when it started.
	node    string
	durable string
	started time.Time
	// leaseTTL, when set, replaces queue.DefaultLeaseTTL (tests).
	leaseTTL    time.Duration
	nodeLease   *queue.Lease
	leaderLease *queue.Lease
	// leadership is closed (and replaced) each time the leader lease is
	// won or lost: take it with leadershipChange before asking Leader.
	leadershipMu sync.Mutex
	leadership   chan struct{}
	// positions is the bucket of the leader's shared positions (webhooks
	// out, the poller's cursor), opened on first use.
	positions *sharedPositions
	ctl       *controls
	// fileMapping is the mapping of this node's configuration file;
	// mappingDiffers says the mapping in force is another.
	mapMu          sync.Mutex
	fileMapping    mapping.Config
	mappingDiffers atomic.Bool
	// readConfig, when set (serve), reads the configuration file again:
	// after a new mapping applied, fileMapping is the file's as it is now.
	readConfig func() (config.Config, error)

	workerCancel context.CancelFunc
	workerDone   chan struct{}
	mu           sync.Mutex // serialises Reload
	// clock, when set, replaces time.Now for signature checks (tests).
	clock     func() time.Time
	closeOnce sync.Once
	closeErr  error
}

func newDaemon(cfg config.Config, log *zap.Logger) *daemon {
	return &daemon{cfg: cfg, log: log, metrics: newMetrics(), workerDone: make(chan struct{}), node: nodeID(cfg), durable: durableFor(cfg),
		started: time.Now(), fileMapping: cfg.Mapping, leadership: make(chan struct{})}
}

func queueOptions(cfg config.Config) queue.Options {
	return queue.Options{
		URL:             cfg.NATS.URL,
		StoreDir:        filepath.Join(cfg.DataDir, "jetstream"),
		Listen:          cfg.NATS.Listen,
		SyncInterval:    cfg.NATS.SyncInterval,
		SyncAlways:      cfg.NATS.SyncAlways,
		Creds:           cfg.NATS.Creds,
		User:            cfg.NATS.User,
		Password:        cfg.NATS.Password,
		TLSCA:           cfg.NATS.TLSCA,
		Stream:          cfg.NATS.Stream,
		SubjectPrefix:   cfg.NATS.SubjectPrefix,
		DLQStream:       cfg.NATS.DLQStream,
		Replicas:        cfg.NATS.Replicas,
		MaxBytes:        cfg.NATS.MaxBytes,
		MaxAge:          cfg.NATS.MaxAge,
		DuplicateWindow: cfg.NATS.DuplicateWindow,
		Encoding:        cfg.NATS.EventEncoding,
		MaxAckPending:   cfg.Worker.BatchSize * 4,
		// Explicit limits for the embedded server: streams are file-backed
		// (memory only for bookkeeping); the store may hold the stream and
		// the dead letters at their cap, and the leases. An unlimited stream (max_bytes 0)
		// leaves the disk limit to the server's default (a share of the disk).
		// The change feed's stream, when relayed, has the same cap.
		MaxMemory: 256 << 20,
		MaxStore:  maxStore(cfg),
	}
}

// maxStore is the embedded server's JetStream storage limit: the stream, the
// dead letters and, when relayed, the change feed's stream at their cap,
// plus, with snapshots, room for them (they grow with the store; the disk is
// their real bound).
func maxStore(cfg config.Config) int64 {
	if cfg.NATS.MaxBytes == 0 {
		return 0
	}
	streams := int64(2)
	if cfg.Changes.Enabled && cfg.Changes.JetStream {
		streams = 3
	}
	leases := int64(4 * queue.LeaseBucketBytes) // and the lease bucket
	if cfg.Store.SnapshotsKept > 0 {
		return streams*cfg.NATS.MaxBytes + 1<<40 + leases
	}
	return streams*cfg.NATS.MaxBytes + leases
}

// Open starts every component. On error, what was started is closed.
func (d *daemon) Open(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			_ = d.Close()
		}
	}()
	if err := d.cfg.CheckAdminRule(); err != nil {
		return err
	}
	opts := storeOptions(d.cfg, "")
	opts.OnHold = d.onHold
	hadData, err := d.openStore(opts)
	if err != nil {
		return err
	}
	// The mapping events are applied with is the one in force (the last
	// the stream carried), not this node's file: the backlog is applied as
	// every other node and a rebuild apply it, until a single node's file
	// is published and reached (adoptFileMapping); a node of a cluster
	// keeps it until a reload or dsyncd apply publishes another.
	if stored, err := d.st.StoredMapping(); err == nil && stored != nil && normalMapping(*stored) != normalMapping(opts.Mapping) {
		if err := d.st.Close(); err != nil {
			return fmt.Errorf("%s: %w", storeKey(d.cfg), err)
		}
		opts.Mapping = *stored
		if d.st, err = storage.Open(opts); err != nil {
			return fmt.Errorf("%s: %w", storeKey(d.cfg), err)
		}
	}
	d.q = queue.New(queueOptions(d.cfg), d.log)
	d.positions = &sharedPositions{q: d.q}
	if err := d.q.Open(ctx); err != nil {
		return fmt.Errorf("%s: %w", natsKeys(d.cfg), err)
	}
	if err := d.claimNode(ctx); err != nil {
		return err
	}
	if err := d.checkStorePosition(ctx, hadData); err != nil {
		return err
	}
	d.ctl = newControls(d)
	stored, err := d.st.StoredMapping()
	if err != nil {
		return fmt.Errorf("%s: %w", storeKey(d.cfg), err)
	}
	cluster := d.cfg.Node.ID != "" && d.cfg.Worker.Enabled
	var startWait func(context.Context) (*storage.Plan, error)
	if stored == nil {
		// A new store: a single node's file's mapping is the one in force
		// until the stream carries another; a node of a cluster starts
		// from the one the stream starts from (startingMapping).
		m := d.cfg.Mapping
		if cluster {
			if m, startWait, err = d.startingMapping(ctx); err != nil {
				return err
			}
		}
		if _, err := d.st.ApplyMapping(m, "", false); err != nil {
			return fmt.Errorf("mapping: %w", err)
		}
	} else if cluster {
		d.seedMapping(ctx, *stored)
	}
	var created bool
	if d.apiToken, created, err = serveToken(d.cfg); err != nil {
		return fmt.Errorf("api.token: %w", err)
	}
	if created {
		d.log.Info("API token created: the CLI on this host reads it from the file; other API clients send it as a bearer token",
			zap.String("file", tokenFile(d.cfg)))
	} else if d.cfg.API.Token == "" {
		if fi, err := os.Stat(tokenFile(d.cfg)); err == nil && fi.Mode().Perm()&0o077 != 0 {
			d.log.Warn("the API token file is readable by other users: chmod 600 it", zap.String("file", tokenFile(d.cfg)),
				zap.String("mode", fi.Mode().Perm().String()))
		}
	}
	d.snap = newSnapshotter(d.cfg, d.q, d.st, d.log)
	if d.snap != nil {
		d.snap.active = d.Leader
	}
	verifier := events.NewVerifier(d.cfg.Webhook.Secrets, d.cfg.Webhook.Tolerance)
	if d.clock != nil {
		verifier = verifier.WithClock(d.clock)
	}
	d.srv = server.New(server.Options{
		Listen:            d.cfg.HTTP.Listen,
		WebhookPath:       d.cfg.Webhook.Path,
		WebhookDisabled:   !d.cfg.Webhook.Enabled,
		MaxBodyBytes:      d.cfg.Webhook.MaxBodyBytes,
		PublishTimeout:    d.cfg.Webhook.PublishTimeout,
		APIToken:          d.apiToken,
		AllowedHosts:      d.cfg.HTTP.AllowedHosts,
		ReadTimeout:       d.cfg.HTTP.ReadTimeout,
		WriteTimeout:      d.cfg.HTTP.WriteTimeout,
		ReadHeaderTimeout: d.cfg.HTTP.ReadHeaderTimeout,
		IdleTimeout:       d.cfg.HTTP.IdleTimeout,
		MaxConnections:    d.cfg.HTTP.MaxConnections,
		MaxInflightBytes:  d.cfg.Webhook.MaxInflightBytes,
		Ready:             d.ready,
		Degraded:          d.degraded,
		Detail:            d.detail,
		Metrics:           d.metrics.handler(),
		DeadLetters:       dlqStore{q: d.q, st: d.st, ctl: d.ctl},
		Decisions:         d.ctl,
		NoStore:           !d.cfg.Worker.Enabled,
		Snapshots:         d.snap.api(),
	}, verifier, d.q, d.st, d.log)
	applied, _, err := d.st.AppliedSeq()
	if err != nil {
		return refuseDamaged(d.st.Path(), err)
	}
	if d.cfg.Worker.Enabled {
		// The consumer exists before the node says it is ready: from then
		// on no purge (another node's snapshot) passes its position.
		if _, err := d.q.ConsumerAfter(ctx, d.durable, d.cfg.Worker.AckWait, applied); errors.Is(err, queue.ErrPurged) {
			return fmt.Errorf("store %s: %w: run dsyncd rebuild, which starts from the newest snapshot, then start it", d.st.Path(), err)
		} else if err != nil {
			return fmt.Errorf("%s: %w", natsKeys(d.cfg), err)
		}
	}
	d.w = worker.New(d.q, d.st, worker.Options{
		Durable:      d.durable,
		StartAfter:   applied,
		Control:      d.ctl.apply,
		BatchSize:    d.cfg.Worker.BatchSize,
		MaxAttempts:  d.cfg.Worker.MaxAttempts,
		RetryBackoff: d.cfg.Worker.RetryBackoff,
		AckWait:      d.cfg.Worker.AckWait,
		MaxYieldLag:  yieldLag(d.cfg.Worker.MaxYieldLag),
		Inflow:       d.srv.Stats().Received.Load,
		OnBatch:      d.metrics.observeBatch,
		OnYield:      d.metrics.observeYield,
		Hurry:        d.snap.hurry,
	}, d.log)
	wctx, cancel := context.WithCancel(context.Background())
	d.workerCancel = cancel
	if d.cfg.Worker.Enabled {
		go func() {
			defer close(d.workerDone)
			if err := d.w.Run(wctx); err != nil {
				d.log.Error("worker stopped", zap.Error(err))
			}
		}()
		if err := d.campaign(ctx); err != nil {
			return err
		}
		sctx, scancel := context.WithCancel(context.Background())
		d.snapCancel, d.snapDone = scancel, make(chan struct{})
		go func() { defer close(d.snapDone); d.snap.run(sctx) }()
		bo := backgroundOptions(d.cfg)
		bo.Active, bo.PublishCorrections = d.Leader, true
		bo.Cursors = pollerCursors{ps: d.positions, st: d.st}
		d.bg = reconcile.StartBackground(bo, d.q, d.st, d.log)
		if err := d.startFeed(ctx); err != nil {
			return err
		}
	} else {
		close(d.workerDone)
		d.log.Info("receiver-only node (worker.enabled: false): webhooks are stored in the stream, nothing is applied here", zap.String("node", d.node))
	}
	d.metrics.register(d)
	d.metrics.registerFeed(d)
	d.snap.register(d.metrics.reg)
	if err := d.srv.Open(); err != nil {
		return fmt.Errorf("http.listen %s, webhook.path %s: %w", d.cfg.HTTP.Listen, d.cfg.Webhook.Path, err)
	}
	if d.cfg.Worker.Enabled && stored != nil {
		if err := d.adoptFileMapping(ctx, *stored); err != nil {
			return err
		}
	}
	switch {
	case startWait != nil:
		d.waitStartMapping(startWait)
	case cluster && stored == nil:
		d.noteMappingInForce(ctx)
	}
	d.log.Info("node started", zap.String("node", d.node), zap.String("consumer", d.durable), zap.Bool("worker", d.cfg.Worker.Enabled))
	return nil
}

// adoptFileMapping makes the file's mapping the one in force when it
// differs from it (stored) on a single node: published, so that the stream
// carries it, then waited for a while: a mapping refused (a removed rule
// without on_unmap) fails the start, as it always has; one not applied yet
// (a backlog before it) is applied when the worker reaches it.
//
// A node of a cluster (node.id set) never publishes at start: a node
// restarted from an old file or image would put an old mapping back on
// every node. It applies the mapping in force and says, in its log and in
// /readyz, that its file differs (checkMapping).
func (d *daemon) adoptFileMapping(ctx context.Context, stored mapping.Config) error {
	if normalMapping(stored) == normalMapping(d.cfg.Mapping) {
		return nil
	}
	if d.cfg.Node.ID != "" {
		d.checkMapping()
		return nil
	}
	d.log.Info("the configuration file's mapping differs from the one in force: publishing it", zap.String("node", d.node))
	_, err := d.ctl.Mapping(ctx, d.cfg.Mapping, "")
	var un unavailable
	if errors.As(err, &un) {
		d.log.Warn("mapping published; not applied here yet", zap.String("why", un.msg))
		return nil
	}
	if err != nil {
		return fmt.Errorf("mapping: %w", err)
	}
	return nil
}

// yieldLag is worker.max_yield_lag as worker.Options takes it: 0 (never
// yield) is negative there, where 0 takes the default.
func yieldLag(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// storeKey names the key that placed the store file, for start-up errors.
func storeKey(cfg config.Config) string {
	if cfg.Store.Path != "" {
		return "store.path " + cfg.Store.Path
	}
	return "data_dir " + cfg.DataDir
}

// natsKeys names the keys that configure the queue, for start-up errors
// (the queue's own error shows the URL, redacted).
func natsKeys(cfg config.Config) string {
	if cfg.NATS.URL == "" {
		keys := "embedded NATS (data_dir " + cfg.DataDir
		if cfg.NATS.Listen != "" {
			keys += ", nats.listen " + cfg.NATS.Listen
		}
		return keys + ")"
	}
	keys := []string{"nats.url"}
	for _, kv := range [][2]string{{"nats.creds", cfg.NATS.Creds}, {"nats.tls_ca", cfg.NATS.TLSCA}, {"nats.user", cfg.NATS.User}} {
		if kv[1] != "" {
			keys = append(keys, kv[0])
		}
	}
	return strings.Join(keys, ", ")
}

// Addr is the HTTP listener's address.
func (d *daemon) Addr() string { return d.srv.Addr() }

// ready: store open, JetStream reachable, worker consuming.
func (d *daemon) ready(ctx context.Context) error {
	if _, err := d.st.Holds(true); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := d.q.Ready(ctx); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	// A worker waiting for a full or read-only disk is still ready: webhooks
	// are stored in JetStream meanwhile (dsyncd_consumer_pending shows it).
	if d.cfg.Worker.Enabled && !d.w.Attached() {
		return errors.New("worker: not consuming")
	}
	return d.snap.streamFull()
}

// degraded lists what works but needs attention: the Events API refusing
// the poller's cursor.
func (d *daemon) degraded() []string {
	var out []string
	if d.bg != nil && d.bg.Poller != nil {
		if why := d.bg.Poller.CursorStale(); why != "" {
			out = append(out, "events poller: "+why)
		}
	}
	if d.mappingDiffers.Load() {
		out = append(out, "mapping: the mapping in force (the last one the stream carried) differs from this node's configuration file; "+
			"this node applies the one in force (dsyncd apply --config FILE against a running node publishes a file's mapping to every node)")
	}
	return append(out, d.feedDegraded()...)
}

// detail is /readyz's word on this node's place in a cluster: its id,
// whether it leads, and so whether it relays the change feed and delivers
// the webhooks out.
func (d *daemon) detail() map[string]any {
	out := map[string]any{"node": d.node, "leader": d.Leader()}
	if d.feed != nil && d.feed.relay != nil {
		if d.feed.relay.Status().Active {
			out["change_relay"] = "relaying (this node leads)"
		} else {
			out["change_relay"] = "not the leader: the node that leads relays the change feed"
		}
	}
	if d.feed != nil && d.feed.webhook != nil {
		if d.feed.webhook.Status().Active {
			out["webhooks_out"] = "delivering (this node leads)"
		} else {
			out["webhooks_out"] = "not the leader: the node that leads delivers them"
		}
	}
	return out
}

func (d *daemon) onHold(h storage.Hold) {
	d.metrics.holdsOpened.WithLabelValues(string(h.Kind)).Inc()
	d.log.Warn("hold opened", zap.Uint64("hold", h.ID), zap.String("kind", string(h.Kind)), zap.String("organization", h.OrganizationID),
		zap.String("user", h.UserID), zap.String("badge", string(h.Badge)), zap.String("event_id", h.EventID), zap.String("reason", h.Reason))
}

// Reload applies a new configuration's mapping (SIGHUP). An invalid one
// keeps the old mapping; the error says why.
func (d *daemon) Reload(cfg config.Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := cfg.CheckAdminRule(); err != nil {
		return err
	}
	d.mapMu.Lock()
	d.fileMapping = cfg.Mapping
	d.mapMu.Unlock()
	// Through the stream: every node adopts it at the same place.
	ctx, cancel := context.WithTimeout(context.Background(), controlWait)
	defer cancel()
	plan, err := d.ctl.Mapping(ctx, cfg.Mapping, "")
	if err != nil {
		d.checkMapping()
		return err
	}
	d.cfg.Mapping = cfg.Mapping
	d.log.Info("mapping reloaded", zap.Int("organizations_changed", len(plan.Organizations)))
	return nil
}

// Close stops accepting requests and finishes in-flight ones, lets the
// worker finish its batch, drains the queue and closes the store. It is
// safe to call more than once.
func (d *daemon) Close() error {
	d.closeOnce.Do(func() {
		var errs []error
		if d.srv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), d.cfg.HTTP.ShutdownTimeout)
			errs = append(errs, d.srv.Shutdown(ctx))
			cancel()
		}
		d.leaderLease.Release()
		d.bg.Stop()
		if d.snapCancel != nil {
			d.snapCancel()
			<-d.snapDone
		}
		if d.workerCancel != nil {
			d.workerCancel()
			<-d.workerDone
		}
		d.stopFeed()
		d.nodeLease.Release()
		if d.q != nil {
			errs = append(errs, d.q.Close())
		}
		if d.st != nil {
			errs = append(errs, d.st.Close())
		}
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}
