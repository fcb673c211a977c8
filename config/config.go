// Package config loads and validates dsyncd's configuration.
//
// # Basics
//
// Every setting has a key path such as "http.listen" and a default (see
// Default). Load layers, from lowest to highest precedence:
//
//  1. the defaults;
//  2. an optional YAML file;
//  3. environment variables named DSYNCD_ + the key path in upper case with
//     dots replaced by underscores (DSYNCD_HTTP_LISTEN, DSYNCD_WORKOS_API_KEY);
//  4. command-line flags named by key path (--http.listen), registered by
//     BindFlags; only flags the user actually set override.
//
// Durations are strings such as "500ms", "30s", "3m" or "720h" (a bare 0 is
// accepted too). Byte sizes are integer numbers of bytes. Lists given in the
// environment or as one string are split on commas: DSYNCD_WEBHOOK_SECRETS=a,b.
//
// # Caveats
//
// Load is strict: an unknown key or a value of the wrong type is an error
// naming the key. It does not check values; call Config.Validate for that,
// which reports every problem at once. Group and role rules (mapping.groups,
// mapping.roles) can only be set in the file. An environment variable set
// to the empty string is ignored, so it cannot blank a value the file sets.
//
// The package keeps no global state: every Load uses its own viper instance.
package config

import (
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/feed"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/reconcile"
	"github.com/dsyncd/dsyncd/server"
	"github.com/dsyncd/dsyncd/storage"
	"github.com/dsyncd/dsyncd/worker"
)

// Config is dsyncd's whole configuration. The mapstructure tags are the key
// paths' segments.
type Config struct {
	// DataDir holds dsyncd's state: the store file (unless store.path is set)
	// and the embedded NATS server's JetStream files.
	DataDir string `mapstructure:"data_dir"`
	// Log configures the logger.
	Log LogConfig `mapstructure:"log"`
	// HTTP configures the HTTP server that serves the webhook and the API.
	HTTP HTTPConfig `mapstructure:"http"`
	// Webhook configures the WorkOS webhook receiver.
	Webhook WebhookConfig `mapstructure:"webhook"`
	// NATS configures the JetStream queue between the webhook and the worker.
	NATS NATSConfig `mapstructure:"nats"`
	// API configures the HTTP API.
	API APIConfig `mapstructure:"api"`
	// Mapping turns directory groups and roles into badges.
	Mapping mapping.Config `mapstructure:"mapping"`
	// Safeguards limit what sync may do on its own.
	Safeguards SafeguardsConfig `mapstructure:"safeguards"`
	// Store configures the bbolt store.
	Store StoreConfig `mapstructure:"store"`
	// WorkOS configures the WorkOS API client (events polling, reconciliation).
	WorkOS WorkOSConfig `mapstructure:"workos"`
	// Events configures polling of the WorkOS Events API.
	Events EventsConfig `mapstructure:"events"`
	// Reconcile configures the periodic full reconciliation against WorkOS.
	Reconcile ReconcileConfig `mapstructure:"reconcile"`
	// Worker configures the consumer that applies queued events to the store.
	Worker WorkerConfig `mapstructure:"worker"`
	// Changes configures the product's change feed: the outbox the store
	// writes, /v1/changes, its JetStream stream and the webhooks out.
	Changes ChangesConfig `mapstructure:"changes"`
	// Node names this dsyncd among the nodes sharing one NATS cluster.
	Node NodeConfig `mapstructure:"node"`
}

// ChangesConfig is the changes section.
type ChangesConfig struct {
	// Enabled writes a change record for every change a product can see,
	// in the apply transaction, and serves them (/v1/changes, the stream,
	// the webhooks out). Switched off and on again, the feed goes on after
	// a gap: its readers resync from /v1/export.
	Enabled bool `mapstructure:"enabled"`
	// Retention is how long change records are kept; a reader asking
	// after an older seq gets 410 and resyncs from /v1/export.
	Retention time.Duration `mapstructure:"retention"`
	// JetStream relays the feed to the stream Stream on the queue's NATS.
	JetStream bool `mapstructure:"jetstream"`
	// Stream is the JetStream stream of the feed.
	Stream string `mapstructure:"stream"`
	// SubjectPrefix starts its subjects: <prefix>.<organization_id>.<user_id>.
	SubjectPrefix string `mapstructure:"subject_prefix"`
	// Webhook POSTs the feed, signed, to a product's URL.
	Webhook ChangesWebhookConfig `mapstructure:"webhook"`
}

// ChangesWebhookConfig is the changes.webhook section.
type ChangesWebhookConfig struct {
	// URL receives the feed's records in signed POSTs; empty: no webhooks out.
	URL string `mapstructure:"url"`
	// Secret signs them (Dsyncd-Signature). Secret: prefer DSYNCD_CHANGES_WEBHOOK_SECRET.
	Secret string `mapstructure:"secret"`
	// MaxAge is how long a record is retried before it is skipped.
	MaxAge time.Duration `mapstructure:"max_age"`
}

// NodeConfig is the node section.
type NodeConfig struct {
	// ID names this node among those sharing the stream: its worker's
	// durable consumer is dsyncd-worker-<id>, and it holds a lease on the
	// id while it runs, so that a second live node with the same id
	// refuses to start. Letters, digits, '-' and '_'. Empty: the host name
	// names the node in logs and leases, and the worker keeps the
	// single-node consumer dsyncd-worker (set it on every node of a
	// cluster).
	ID string `mapstructure:"id"`
}

// LogConfig is the log section.
type LogConfig struct {
	// Level is the minimum level logged: debug, info, warn or error.
	Level string `mapstructure:"level"`
	// Format is json (for machines) or console (for humans).
	Format string `mapstructure:"format"`
}

// HTTPConfig is the http section.
type HTTPConfig struct {
	// Listen is the host:port the HTTP server listens on.
	Listen string `mapstructure:"listen"`
	// ReadTimeout bounds reading a whole request, body included.
	ReadTimeout time.Duration `mapstructure:"read_timeout"`
	// WriteTimeout bounds writing a response.
	WriteTimeout time.Duration `mapstructure:"write_timeout"`
	// ShutdownTimeout bounds the graceful shutdown of in-flight requests.
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout"`
	// ReadHeaderTimeout bounds reading a request's headers: a slow or
	// half-open connection is closed past it. A value over ReadTimeout is
	// cut to it.
	ReadHeaderTimeout time.Duration `mapstructure:"read_header_timeout"`
	// IdleTimeout closes a keep-alive connection idle this long.
	IdleTimeout time.Duration `mapstructure:"idle_timeout"`
	// MaxConnections bounds the open connections. At the limit a new one
	// closes the oldest connection that is between requests and has not
	// shown a well-formed, fresh WorkOS signature header, or is closed
	// itself when there is none. Keep it well below the open-files limit.
	MaxConnections int `mapstructure:"max_connections"`
	// AllowedHosts are the names (host, or host:port) that /v1 accepts in
	// the Host header besides Listen's host, "localhost" and loopback
	// addresses: the names operators or a proxy use to reach the API. A
	// request naming another host gets 421, so that a web page whose name
	// an attacker rebinds to this address cannot use the API.
	AllowedHosts []string `mapstructure:"allowed_hosts"`
}

// WebhookConfig is the webhook section.
type WebhookConfig struct {
	// Enabled mounts the webhook receiver on HTTP.Listen.
	Enabled bool `mapstructure:"enabled"`
	// Path is the URL path the receiver is mounted on. It starts with "/".
	Path string `mapstructure:"path"`
	// Secrets are the WorkOS webhook signing secrets. A signature valid for
	// any of them is accepted, so secrets can be rotated without downtime.
	// At least one is required when Enabled.
	Secrets []string `mapstructure:"secrets"`
	// Tolerance is how far a signature's timestamp may be from now.
	Tolerance time.Duration `mapstructure:"tolerance"`
	// MaxBodyBytes is the largest request body accepted, in bytes.
	MaxBodyBytes int64 `mapstructure:"max_body_bytes"`
	// PublishTimeout bounds queueing one event on JetStream before the
	// receiver answers 503 and lets WorkOS retry.
	PublishTimeout time.Duration `mapstructure:"publish_timeout"`
	// MaxInflightBytes bounds the bytes of webhook bodies being read and
	// queued at once (each counted at its declared length, or at
	// MaxBodyBytes when chunked); past it, 503 with Retry-After. Bodies over
	// 64 KiB may use three quarters of it.
	MaxInflightBytes int64 `mapstructure:"max_inflight_bytes"`
}

// NATSConfig is the nats section.
type NATSConfig struct {
	// URL is the NATS server (or comma-separated servers) to use, such as
	// nats://nats.internal:4222. Empty runs an embedded server that stores
	// JetStream data under DataDir.
	URL string `mapstructure:"url"`
	// Stream is the JetStream stream holding the directory events.
	Stream string `mapstructure:"stream"`
	// SubjectPrefix prefixes the stream's subjects (<prefix>.<event type>).
	SubjectPrefix string `mapstructure:"subject_prefix"`
	// DLQStream is the stream receiving events that failed
	// Worker.MaxAttempts times.
	DLQStream string `mapstructure:"dlq_stream"`
	// Creds is a NATS credentials (.creds) file, for an external server.
	Creds string `mapstructure:"creds"`
	// User is the user name for an external server.
	User string `mapstructure:"user"`
	// Password is User's password. Secret.
	Password string `mapstructure:"password"`
	// TLSCA is a PEM file of CAs to trust for an external server's certificate.
	TLSCA string `mapstructure:"tls_ca"`
	// Replicas is the streams' replication factor, 1 to 5; the embedded
	// server is a single node and needs 1.
	Replicas int `mapstructure:"replicas"`
	// SyncInterval is how often the embedded server fsyncs JetStream data.
	SyncInterval time.Duration `mapstructure:"sync_interval"`
	// SyncAlways makes the embedded server fsync every write (slower, safest).
	SyncAlways bool `mapstructure:"sync_always"`
	// EventEncoding is how events are stored in the stream: "s2"
	// (compressed: ~1.5x smaller on disk and in the embedded server's block
	// cache, which is most of dsyncd's memory under load) or "json" (as
	// received, readable with the nats CLI). dsyncd reads both, so it can be
	// changed at any time.
	EventEncoding string `mapstructure:"event_encoding"`
	// MaxBytes caps the stream's size in bytes. 0 means unlimited.
	MaxBytes int64 `mapstructure:"max_bytes"`
	// MaxAge is the stream's retention: keep it long enough to rebuild the
	// store from the stream. 0 means unlimited.
	MaxAge time.Duration `mapstructure:"max_age"`
	// DuplicateWindow is how long JetStream deduplicates an event id. The
	// store deduplicates by event id for store.processed_retention anyway;
	// the window only keeps near-simultaneous copies (webhook and poller, a
	// retried request) out of the stream. JetStream holds every id of the
	// window in memory (~100 bytes each) and the collector scans them all:
	// at 9k events/s a 2m window held 1.1M ids and halved the sustained
	// rate (make soak); at 12k events/s 30s cost 1.5k events/s of ingest
	// and 3 ms of p99 against 2s (make bench-e2e). At most MaxAge.
	DuplicateWindow time.Duration `mapstructure:"duplicate_window"`
	// Listen is the host:port the embedded server accepts clients on. Empty
	// means 127.0.0.1 on a random port. Only used when URL is empty.
	Listen string `mapstructure:"listen"`
	// SnapshotBucket is the Object Store bucket holding the store's
	// snapshots (store.snapshot_interval), on the same NATS as the stream.
	SnapshotBucket string `mapstructure:"snapshot_bucket"`
}

// APIConfig is the api section.
type APIConfig struct {
	// Token is the bearer token the HTTP API requires. Secret.
	Token string `mapstructure:"token"`
}

// StoreConfig is the store section.
type StoreConfig struct {
	// Path is the bbolt file. Empty means <data_dir>/dsyncd.db; see
	// Config.StorePath.
	Path string `mapstructure:"path"`
	// ProcessedRetention is how long processed event ids are remembered for
	// deduplication; at least 72h because WorkOS retries for up to 3 days.
	ProcessedRetention time.Duration `mapstructure:"processed_retention"`
	// AuditRetention is how long audit entries are kept; zero keeps them
	// forever. Badges outlive the entries that explain them.
	AuditRetention time.Duration `mapstructure:"audit_retention"`
	// OpenTimeout bounds the wait for the store's file lock.
	OpenTimeout time.Duration `mapstructure:"open_timeout"`
	// SnapshotInterval is how often serve stores a snapshot of the store in
	// nats.snapshot_bucket (besides those taken when the stream fills up to
	// a quarter of nats.max_bytes, or the newest snapshot's size when larger,
	// since the newest); 0 takes only those.
	SnapshotInterval time.Duration `mapstructure:"snapshot_interval"`
	// SnapshotsKept is how many snapshots are kept; the stream's events at
	// or below the oldest kept one's sequence are purged. 0 turns snapshots
	// and purging off: the stream keeps every event for nats.max_age.
	SnapshotsKept int `mapstructure:"snapshots_kept"`
}

// WorkerConfig is the worker section.
type WorkerConfig struct {
	// Enabled runs the worker: it consumes the stream and applies events to
	// this node's store. false makes a receiver-only node: it stores
	// webhooks in the stream and serves no /v1 data (503).
	Enabled bool `mapstructure:"enabled"`
	// BatchSize is how many queued events the worker fetches at once, 1 to 10000.
	BatchSize int `mapstructure:"batch_size"`
	// MaxAttempts is how many times an event is tried before it goes to
	// NATS.DLQStream; at least 1.
	MaxAttempts int `mapstructure:"max_attempts"`
	// AckWait is how long JetStream waits for an ack before redelivering.
	AckWait time.Duration `mapstructure:"ack_wait"`
	// RetryBackoff is the delay before a failed event is retried.
	RetryBackoff time.Duration `mapstructure:"retry_backoff"`
	// MaxYieldLag bounds how far behind the worker may fall while it yields
	// the CPU to the webhook receiver during a flood: it stops yielding once
	// the events it applies have waited this long in the stream. 0 never
	// yields (the worker applies as fast as it can, and the receiver
	// answers more slowly).
	MaxYieldLag time.Duration `mapstructure:"max_yield_lag"`
}

// SafeguardsConfig is the safeguards section.
type SafeguardsConfig struct {
	// OnDirectoryDeleted is keep (users, groups and badges stay as sync left
	// them) or deprovision (they are removed) when a directory is deleted.
	OnDirectoryDeleted string `mapstructure:"on_directory_deleted"`
	// AllowNoAdminRule accepts a mapping in which no group or role rule
	// grants mapping.admin_badge; see Config.Warnings.
	AllowNoAdminRule bool `mapstructure:"allow_no_admin_rule"`
	// BreakGlass lists emails or directory user ids whose badges sync never
	// removes and whom it never deletes.
	BreakGlass []string `mapstructure:"break_glass"`
	// MaxDeprovisions is the mass-deprovisioning breaker.
	MaxDeprovisions MaxDeprovisionsConfig `mapstructure:"max_deprovisions"`
}

// MaxDeprovisionsConfig pauses an organisation's sync when more of its users
// than allowed would lose a mapped (non-default) badge, or every badge,
// within Window: the limit is min(Count, max(Floor, Percent% of the
// organisation's holders of a mapped badge)). A zero Count and Percent
// disable it; a zero Count alone leaves no cap, a zero Percent leaves Count.
type MaxDeprovisionsConfig struct {
	// Count caps the limit: more than Count users losing badges within
	// Window always pause the organisation.
	Count int `mapstructure:"count"`
	// Percent is the limit as a percentage (0 to 100) of the organisation's
	// users holding a mapped badge (dormant accounts hold none), once past Floor.
	Percent float64 `mapstructure:"percent"`
	// Floor is the least the percentage limit can be: up to Floor users of
	// a small organisation may lose badges within Window unpaused.
	Floor int `mapstructure:"floor"`
	// Window is the sliding window the limit applies to.
	Window time.Duration `mapstructure:"window"`
}

// WorkOSConfig is the workos section.
type WorkOSConfig struct {
	// APIKey is the WorkOS API key (sk_...), required by events polling and
	// reconciliation. Secret: prefer DSYNCD_WORKOS_API_KEY.
	APIKey string `mapstructure:"api_key"`
	// Endpoint is the WorkOS API base URL.
	Endpoint string `mapstructure:"endpoint"`
}

// EventsConfig is the events section.
type EventsConfig struct {
	// PollInterval is how often the WorkOS Events API is polled, as a
	// complement or an alternative to webhooks. 0 turns polling off.
	PollInterval time.Duration `mapstructure:"poll_interval"`
	// Start is where polling starts the first time: "now" or an RFC 3339 time.
	Start string `mapstructure:"start"`
	// OnStaleCursor is what the poller does when the Events API refuses its
	// cursor (an outage longer than the API keeps events): "reconcile" (run
	// a full reconciliation, then poll from the time it started) or "fail"
	// (keep failing, say so in /readyz and dsyncd_events_cursor_stale, and
	// leave it to an operator).
	OnStaleCursor string `mapstructure:"on_stale_cursor"`
}

// ReconcileConfig is the reconcile section.
type ReconcileConfig struct {
	// Interval is how often every directory is fully compared with WorkOS.
	// 0 turns reconciliation off.
	Interval time.Duration `mapstructure:"interval"`
}

// Default returns the configuration used for every key that is not set.
// It is valid once a webhook secret is added.
func Default() Config {
	return Config{
		DataDir: "./data",
		Log:     LogConfig{Level: "info", Format: "json"},
		HTTP: HTTPConfig{
			Listen:            "127.0.0.1:8080",
			ReadTimeout:       server.DefaultReadTimeout,
			WriteTimeout:      server.DefaultWriteTimeout,
			ShutdownTimeout:   15 * time.Second,
			ReadHeaderTimeout: server.DefaultReadHeaderTimeout,
			IdleTimeout:       server.DefaultIdleTimeout,
			MaxConnections:    server.DefaultMaxConnections,
		},
		Webhook: WebhookConfig{
			Enabled:          true,
			Path:             server.DefaultWebhookPath,
			Tolerance:        events.DefaultTolerance,
			MaxBodyBytes:     server.DefaultMaxBodyBytes,
			PublishTimeout:   server.DefaultPublishTimeout,
			MaxInflightBytes: server.DefaultMaxInflightBytes,
		},
		NATS: NATSConfig{
			Stream:          queue.DefaultStream,
			SubjectPrefix:   queue.DefaultSubjectPrefix,
			DLQStream:       queue.DefaultDLQStream,
			Replicas:        queue.DefaultReplicas,
			SyncInterval:    time.Second,
			EventEncoding:   "s2",
			MaxBytes:        4 << 30,
			MaxAge:          720 * time.Hour,
			DuplicateWindow: queue.DefaultDuplicateWindow,
			SnapshotBucket:  queue.DefaultSnapshotBucket,
		},
		Mapping: mapping.Config{
			AdminBadge:    "admin",
			DefaultBadges: []mapping.Badge{"member"},
		},
		Safeguards: SafeguardsConfig{
			OnDirectoryDeleted: storage.DefaultOnDirectoryDeleted,
			MaxDeprovisions: MaxDeprovisionsConfig{
				Count:   25,
				Percent: 50,
				Floor:   10,
				Window:  10 * time.Minute,
			},
		},
		Store: StoreConfig{
			ProcessedRetention: storage.DefaultProcessedRetention,
			OpenTimeout:        storage.DefaultOpenTimeout,
			SnapshotInterval:   time.Hour,
			SnapshotsKept:      2,
		},
		WorkOS: WorkOSConfig{Endpoint: reconcile.DefaultEndpoint},
		Events: EventsConfig{Start: EventsStartNow, OnStaleCursor: OnStaleCursorReconcile},
		Worker: WorkerConfig{
			Enabled:      true,
			BatchSize:    worker.DefaultBatchSize,
			MaxAttempts:  worker.DefaultMaxAttempts,
			AckWait:      worker.DefaultAckWait,
			RetryBackoff: worker.DefaultRetryBackoff,
			MaxYieldLag:  worker.DefaultMaxYieldLag,
		},
		Changes: ChangesConfig{
			Enabled:       true,
			Retention:     storage.DefaultChangesRetention,
			JetStream:     true,
			Stream:        queue.DefaultChangesStream,
			SubjectPrefix: queue.DefaultChangesSubjectPrefix,
			Webhook:       ChangesWebhookConfig{MaxAge: feed.DefaultWebhookMaxAge},
		},
	}
}

// Values of safeguards.on_directory_deleted.
const (
	OnDirectoryDeletedKeep        = storage.OnDirectoryDeletedKeep
	OnDirectoryDeletedDeprovision = storage.OnDirectoryDeletedDeprovision
)

// EventsStartNow is the events.start value that starts polling at the
// current time.
const EventsStartNow = reconcile.StartNow

// events.on_stale_cursor values.
const (
	OnStaleCursorReconcile = reconcile.OnStaleCursorReconcile
	OnStaleCursorFail      = reconcile.OnStaleCursorFail
)

// StorePath returns store.path, or <data_dir>/dsyncd.db when it is empty.
func (c Config) StorePath() string {
	if c.Store.Path != "" {
		return c.Store.Path
	}
	return filepath.Join(c.DataDir, "dsyncd.db")
}

// redacted replaces a secret's value in Redacted.
const redacted = "REDACTED"

// Redacted returns a copy of c fit for printing: webhook.secrets,
// nats.password, api.token, workos.api_key, changes.webhook.secret and any user info in nats.url are
// replaced by "REDACTED" (empty values stay empty, so it still shows which
// are set). c is not modified.
func (c Config) Redacted() Config {
	r := c
	r.Webhook.Secrets = slices.Clone(c.Webhook.Secrets)
	for i, s := range r.Webhook.Secrets {
		if s != "" {
			r.Webhook.Secrets[i] = redacted
		}
	}
	for _, s := range []*string{&r.NATS.Password, &r.API.Token, &r.WorkOS.APIKey, &r.Changes.Webhook.Secret} {
		if *s != "" {
			*s = redacted
		}
	}
	if r.NATS.URL != "" {
		urls := strings.Split(r.NATS.URL, ",")
		for i, raw := range urls {
			u, err := url.Parse(strings.TrimSpace(raw))
			if err != nil {
				// Unparsable: it may hold anything, hide it all.
				urls[i] = redacted
				continue
			}
			switch _, hasPassword := u.User.Password(); {
			case hasPassword:
				u.User = url.UserPassword(u.User.Username(), redacted)
			case u.User != nil:
				// A lone user name may be a NATS token.
				u.User = url.User(redacted)
			default:
				continue
			}
			urls[i] = u.String()
		}
		r.NATS.URL = strings.Join(urls, ",")
	}
	return r
}
