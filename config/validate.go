package config

import (
	"fmt"
	"net"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Validate returns nil, or an *Error listing every problem of c, one per
// line, each "key: problem".
func (c Config) Validate() error {
	if p := c.Problems(); len(p) > 0 {
		return &Error{Problems: p}
	}
	return nil
}

// Problems returns every problem of c, each "key: problem", in key order of
// the Config struct. It is empty when c is valid.
func (c Config) Problems() []string {
	var v validator

	v.check(strings.TrimSpace(c.DataDir) != "", "data_dir", "must not be empty")

	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "json", "console")

	v.hostPort("http.listen", c.HTTP.Listen, true) // port 0: a random port (tests)
	v.positive("http.read_timeout", c.HTTP.ReadTimeout)
	v.positive("http.write_timeout", c.HTTP.WriteTimeout)
	v.positive("http.shutdown_timeout", c.HTTP.ShutdownTimeout)
	v.positive("http.read_header_timeout", c.HTTP.ReadHeaderTimeout)
	v.positive("http.idle_timeout", c.HTTP.IdleTimeout)
	v.check(c.HTTP.MaxConnections > 0, "http.max_connections", fmt.Sprintf("must be > 0, got %d", c.HTTP.MaxConnections))
	for i, h := range c.HTTP.AllowedHosts {
		v.check(h != "" && !strings.ContainsAny(h, "/ \t@?#"), fmt.Sprintf("http.allowed_hosts[%d]", i),
			fmt.Sprintf("%q is not a host name or host:port (no scheme, path or spaces)", h))
	}

	v.webhookPath("webhook.path", c.Webhook.Path)
	if c.Webhook.Enabled && len(c.Webhook.Secrets) == 0 {
		v.add("webhook.secrets", "at least one secret is required when webhook.enabled is true (set "+EnvVar("webhook.secrets")+")")
	}
	for i, s := range c.Webhook.Secrets {
		v.check(strings.TrimSpace(s) != "", fmt.Sprintf("webhook.secrets[%d]", i), "must not be empty")
	}
	v.positive("webhook.tolerance", c.Webhook.Tolerance)
	v.check(c.Webhook.MaxBodyBytes > 0, "webhook.max_body_bytes", fmt.Sprintf("must be > 0, got %d", c.Webhook.MaxBodyBytes))
	v.positive("webhook.publish_timeout", c.Webhook.PublishTimeout)
	if c.Webhook.MaxBodyBytes > 0 {
		v.check(c.Webhook.MaxInflightBytes >= 2*c.Webhook.MaxBodyBytes, "webhook.max_inflight_bytes",
			fmt.Sprintf("must be at least 2 × webhook.max_body_bytes (%d), got %d", 2*c.Webhook.MaxBodyBytes, c.Webhook.MaxInflightBytes))
	}

	embedded := c.NATS.URL == ""
	if !embedded {
		for _, raw := range strings.Split(c.NATS.URL, ",") {
			v.natsURL("nats.url", strings.TrimSpace(raw))
		}
	}
	v.streamName("nats.stream", c.NATS.Stream)
	v.streamName("nats.dlq_stream", c.NATS.DLQStream)
	if c.NATS.Stream != "" && c.NATS.Stream == c.NATS.DLQStream {
		v.add("nats.dlq_stream", "must differ from nats.stream")
	}
	v.subjectPrefix("nats.subject_prefix", c.NATS.SubjectPrefix)
	if embedded {
		for _, k := range []struct{ key, val string }{
			{"nats.creds", c.NATS.Creds}, {"nats.user", c.NATS.User},
			{"nats.password", c.NATS.Password}, {"nats.tls_ca", c.NATS.TLSCA},
		} {
			v.check(k.val == "", k.key, "only used with an external server; set nats.url or leave it empty")
		}
	} else {
		v.check(c.NATS.Listen == "", "nats.listen", "only used by the embedded server; leave it empty when nats.url is set")
		v.check(c.NATS.Password == "" || c.NATS.User != "", "nats.password", "needs nats.user")
		v.check(c.NATS.Creds == "" || c.NATS.User == "", "nats.creds", "cannot be combined with nats.user")
	}
	switch {
	case c.NATS.Replicas < 1 || c.NATS.Replicas > 5:
		v.add("nats.replicas", fmt.Sprintf("must be between 1 and 5, got %d", c.NATS.Replicas))
	case embedded && c.NATS.Replicas != 1:
		v.add("nats.replicas", "must be 1 with the embedded server (nats.url empty)")
	}
	if !c.NATS.SyncAlways {
		v.positive("nats.sync_interval", c.NATS.SyncInterval)
	} else {
		v.nonNegative("nats.sync_interval", c.NATS.SyncInterval)
	}
	v.oneOf("nats.event_encoding", c.NATS.EventEncoding, "s2", "json")
	v.check(c.NATS.MaxBytes >= 0, "nats.max_bytes", fmt.Sprintf("must be >= 0 (0 = unlimited), got %d", c.NATS.MaxBytes))
	v.nonNegative("nats.max_age", c.NATS.MaxAge)
	v.positive("nats.duplicate_window", c.NATS.DuplicateWindow)
	if c.NATS.MaxAge > 0 && c.NATS.DuplicateWindow > c.NATS.MaxAge {
		v.add("nats.duplicate_window", fmt.Sprintf("%s must not exceed nats.max_age (%s)", c.NATS.DuplicateWindow, c.NATS.MaxAge))
	}
	if c.NATS.Listen != "" {
		v.hostPort("nats.listen", c.NATS.Listen, true)
	}

	for _, err := range c.Mapping.Validate() {
		v.problems = append(v.problems, err.Error())
	}

	v.oneOf("safeguards.on_directory_deleted", c.Safeguards.OnDirectoryDeleted,
		OnDirectoryDeletedKeep, OnDirectoryDeletedDeprovision)
	for i, b := range c.Safeguards.BreakGlass {
		v.check(strings.TrimSpace(b) != "", fmt.Sprintf("safeguards.break_glass[%d]", i), "must not be empty")
	}
	md := c.Safeguards.MaxDeprovisions
	v.check(md.Count >= 0, "safeguards.max_deprovisions.count", fmt.Sprintf("must be >= 0 (0 = no count limit), got %d", md.Count))
	v.check(md.Percent >= 0 && md.Percent <= 100, "safeguards.max_deprovisions.percent",
		fmt.Sprintf("must be between 0 and 100, got %g", md.Percent))
	v.check(md.Floor >= 0, "safeguards.max_deprovisions.floor", fmt.Sprintf("must be >= 0, got %d", md.Floor))
	if md.Count > 0 || md.Percent > 0 {
		v.positive("safeguards.max_deprovisions.window", md.Window)
	} else {
		v.nonNegative("safeguards.max_deprovisions.window", md.Window)
	}

	v.nonNegative("store.processed_retention", c.Store.ProcessedRetention)
	if c.Store.ProcessedRetention > 0 && c.Store.ProcessedRetention < 72*time.Hour {
		v.add("store.processed_retention", fmt.Sprintf("must be at least 72h (WorkOS retries deliveries for up to 3 days), got %s", c.Store.ProcessedRetention))
	}
	v.nonNegative("store.audit_retention", c.Store.AuditRetention)
	v.positive("store.open_timeout", c.Store.OpenTimeout)
	v.nonNegative("store.snapshot_interval", c.Store.SnapshotInterval)
	if c.Store.SnapshotInterval > 0 && c.Store.SnapshotInterval < time.Minute {
		v.add("store.snapshot_interval", fmt.Sprintf("must be 0 or at least 1m (each snapshot copies the whole store), got %s", c.Store.SnapshotInterval))
	}
	v.check(c.Store.SnapshotsKept >= 0 && c.Store.SnapshotsKept <= 100, "store.snapshots_kept", fmt.Sprintf("must be between 0 and 100, got %d", c.Store.SnapshotsKept))
	if c.Store.SnapshotsKept > 0 {
		v.check(validBucket(c.NATS.SnapshotBucket), "nats.snapshot_bucket", fmt.Sprintf("must be letters, digits, '-' or '_', got %q", c.NATS.SnapshotBucket))
	}

	if c.WorkOS.APIKey == "" && (c.Events.PollInterval > 0 || c.Reconcile.Interval > 0) {
		v.add("workos.api_key", "required when events.poll_interval or reconcile.interval is set (set "+EnvVar("workos.api_key")+")")
	}
	if u, err := url.Parse(c.WorkOS.Endpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		v.add("workos.endpoint", fmt.Sprintf("%q is not an http(s) URL", c.WorkOS.Endpoint))
	}

	v.nonNegative("events.poll_interval", c.Events.PollInterval)
	if c.Events.PollInterval > 0 && c.Events.PollInterval < time.Second {
		v.add("events.poll_interval", fmt.Sprintf("must be 0 (off) or at least 1s, got %s", c.Events.PollInterval))
	}
	if c.Events.OnStaleCursor != OnStaleCursorReconcile && c.Events.OnStaleCursor != OnStaleCursorFail {
		v.add("events.on_stale_cursor", fmt.Sprintf("%q is not %q or %q", c.Events.OnStaleCursor, OnStaleCursorReconcile, OnStaleCursorFail))
	}
	if c.Events.Start != EventsStartNow {
		if _, err := time.Parse(time.RFC3339, c.Events.Start); err != nil {
			v.add("events.start", fmt.Sprintf("%q is not %q or an RFC 3339 time like 2024-01-02T15:04:05Z", c.Events.Start, EventsStartNow))
		}
	}

	v.nonNegative("reconcile.interval", c.Reconcile.Interval)
	if c.Reconcile.Interval > 0 && c.Reconcile.Interval < time.Minute {
		v.add("reconcile.interval", fmt.Sprintf("must be 0 (off) or at least 1m, got %s", c.Reconcile.Interval))
	}

	v.check(c.Worker.BatchSize >= 1 && c.Worker.BatchSize <= 10000, "worker.batch_size",
		fmt.Sprintf("must be between 1 and 10000, got %d", c.Worker.BatchSize))
	v.check(c.Worker.MaxAttempts >= 1, "worker.max_attempts", fmt.Sprintf("must be >= 1, got %d", c.Worker.MaxAttempts))
	v.positive("worker.ack_wait", c.Worker.AckWait)
	v.nonNegative("worker.retry_backoff", c.Worker.RetryBackoff)
	v.nonNegative("worker.max_yield_lag", c.Worker.MaxYieldLag)
	v.check(c.Node.ID == "" || validNodeID(c.Node.ID), "node.id",
		fmt.Sprintf("%q must be 1 to 64 letters, digits, '-' or '_'", c.Node.ID))

	v.positive("changes.retention", c.Changes.Retention)
	v.streamName("changes.stream", c.Changes.Stream)
	if c.Changes.Stream == c.NATS.Stream || c.Changes.Stream == c.NATS.DLQStream {
		v.add("changes.stream", "must differ from nats.stream and nats.dlq_stream")
	}
	v.subjectPrefix("changes.subject_prefix", c.Changes.SubjectPrefix)
	for _, other := range []string{c.NATS.SubjectPrefix, c.NATS.DLQStream} {
		if other != "" && c.Changes.SubjectPrefix != "" && subjectsOverlap(c.Changes.SubjectPrefix, other) {
			v.add("changes.subject_prefix", fmt.Sprintf("%q overlaps the subjects of %q: choose a prefix whose first tokens differ", c.Changes.SubjectPrefix, other))
		}
	}
	if c.Changes.Webhook.URL != "" {
		if u, err := url.Parse(c.Changes.Webhook.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			v.add("changes.webhook.url", "is not an http(s) URL")
		}
		v.check(strings.TrimSpace(c.Changes.Webhook.Secret) != "", "changes.webhook.secret",
			"required with changes.webhook.url (set "+EnvVar("changes.webhook.secret")+")")
		v.check(c.Changes.Enabled, "changes.webhook.url", "needs changes.enabled")
	}
	v.positive("changes.webhook.max_age", c.Changes.Webhook.MaxAge)

	return v.problems
}

// subjectsOverlap reports whether the subjects "<a>.>" and "<b>.>" can
// meet: one prefix's tokens start the other's.
func subjectsOverlap(a, b string) bool {
	ta, tb := strings.Split(a, "."), strings.Split(b, ".")
	n := min(len(ta), len(tb))
	return slices.Equal(ta[:n], tb[:n])
}

// CheckAdminRule is the one check that the mapping can keep an admin: an
// error when no group or role rule grants mapping.admin_badge, unless
// safeguards.allow_no_admin_rule is set. Every command that applies the
// mapping (serve, a reload, replay, rebuild, plan, apply) refuses to start
// with it, and check-config reports it as a problem. It is not a Validate
// problem so that the defaults stay valid for the commands that do not.
func (c Config) CheckAdminRule() error {
	if c.Safeguards.AllowNoAdminRule || c.Mapping.GrantsAdmin() {
		return nil
	}
	return fmt.Errorf("mapping: no group or role rule grants admin_badge %q, so sync could leave an organisation without an admin; "+
		"add a rule that grants it, or set safeguards.allow_no_admin_rule: true", c.Mapping.AdminBadge)
}

// Warnings returns what is valid but probably unintended, each "key: note",
// for the caller to log. (A mapping without an admin rule is not a warning
// but an error: CheckAdminRule.)
func (c Config) Warnings() []string {
	var w []string
	if !c.Webhook.Enabled && c.Events.PollInterval == 0 && c.Reconcile.Interval == 0 {
		w = append(w, "webhook.enabled: false, and events.poll_interval and reconcile.interval are 0s: nothing will feed directory changes")
	}
	return w
}

// validator collects problems.
type validator struct {
	problems []string
}

func (v *validator) add(key, problem string) {
	v.problems = append(v.problems, key+": "+problem)
}

func (v *validator) check(ok bool, key, problem string) {
	if !ok {
		v.add(key, problem)
	}
}

func (v *validator) oneOf(key, val string, allowed ...string) {
	if !slices.Contains(allowed, val) {
		v.add(key, fmt.Sprintf("%q is not one of %s", val, strings.Join(allowed, ", ")))
	}
}

func (v *validator) positive(key string, d time.Duration) {
	if d <= 0 {
		v.add(key, fmt.Sprintf("must be > 0, got %s", d))
	}
}

func (v *validator) nonNegative(key string, d time.Duration) {
	if d < 0 {
		v.add(key, fmt.Sprintf("must be >= 0, got %s", d))
	}
}

// hostPort checks a listen address such as "127.0.0.1:8080" or ":8080".
// Port 0 (random) is accepted only when zeroPortOK.
func (v *validator) hostPort(key, addr string, zeroPortOK bool) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.add(key, fmt.Sprintf("%q is not host:port", addr))
		return
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (n == 0 && !zeroPortOK) {
		v.add(key, fmt.Sprintf("%q has an invalid port", addr))
	}
}

// natsURL checks one server URL of nats.url.
func (v *validator) natsURL(key, raw string) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		v.add(key, fmt.Sprintf("%q is not a URL like nats://host:4222", raw))
		return
	}
	switch u.Scheme {
	case "nats", "tls", "ws", "wss":
	default:
		v.add(key, fmt.Sprintf("%q: scheme must be nats, tls, ws or wss", u.Redacted()))
	}
}

// streamName checks a JetStream stream name.
func (v *validator) streamName(key, name string) {
	switch {
	case name == "":
		v.add(key, "must not be empty")
	case strings.ContainsAny(name, " \t\r\n.*>/\\"):
		v.add(key, fmt.Sprintf("%q must not contain whitespace, '.', '*', '>', '/' or '\\'", name))
	}
}

// subjectPrefix checks a NATS subject prefix such as "dsync" or "acme.dsync".
// reservedPaths are dsyncd's own routes, which the webhook path must not take.
var reservedPaths = []string{"/healthz", "/readyz", "/metrics", "/v1"}

// webhookPath checks that p is a clean absolute URL path WorkOS can post to
// as written: no "//", "." or ".." segments or trailing "/" (the router
// would redirect the POST), only unreserved characters (no spaces, "%",
// "?", "#" or the router's "{wildcards}"), and none of dsyncd's own routes.
func (v *validator) webhookPath(key, p string) {
	switch {
	case !strings.HasPrefix(p, "/"):
		v.add(key, fmt.Sprintf("%q must start with /", p))
	case p == "/":
		v.add(key, `must not be "/" (it would take every request)`)
	case path.Clean(p) != p:
		v.add(key, fmt.Sprintf("%q is not a clean path (no //, . or .. segments, no trailing /): use %q", p, path.Clean(p)))
	case strings.IndexFunc(p, func(r rune) bool { return !unreservedPathRune(r) }) >= 0:
		v.add(key, fmt.Sprintf("%q may only contain letters, digits, '/', '-', '.', '_' and '~'", p))
	default:
		for _, r := range reservedPaths {
			if p == r || strings.HasPrefix(p, r+"/") {
				v.add(key, fmt.Sprintf("%q is one of dsyncd's own routes (%s)", p, strings.Join(reservedPaths, ", ")))
				return
			}
		}
	}
}

func unreservedPathRune(r rune) bool {
	return r == '/' || r == '-' || r == '.' || r == '_' || r == '~' ||
		(r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
}

func (v *validator) subjectPrefix(key, prefix string) {
	switch {
	case prefix == "":
		v.add(key, "must not be empty")
	case strings.ContainsAny(prefix, " \t\r\n*>"):
		v.add(key, fmt.Sprintf("%q must not contain whitespace, '*' or '>'", prefix))
	case slices.Contains(strings.Split(prefix, "."), ""):
		v.add(key, fmt.Sprintf("%q has an empty token (leading, trailing or double '.')", prefix))
	}
}

// validNodeID reports whether id can name a node: it becomes part of a
// consumer name and of a lease key.
func validNodeID(id string) bool {
	if len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return id != ""

}

// validBucket reports whether name is a valid JetStream Object Store bucket
// name: letters, digits, '-' and '_'.
func validBucket(name string) bool {
	return name != "" && strings.IndexFunc(name, func(r rune) bool {
		return !(r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9'))
	}) < 0
}
