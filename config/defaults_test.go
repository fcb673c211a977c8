package config

import (
	"reflect"
	"testing"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/feed"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/reconcile"
	"github.com/dsyncd/dsyncd/server"
	"github.com/dsyncd/dsyncd/storage"
	"github.com/dsyncd/dsyncd/worker"
)

// componentDefaults are the keys whose default is a component's own: the
// value the component uses for a zero option. Default must agree with it.
var componentDefaults = map[string]any{
	"nats.snapshot_bucket":            queue.DefaultSnapshotBucket,
	"http.read_timeout":               server.DefaultReadTimeout,
	"http.write_timeout":              server.DefaultWriteTimeout,
	"http.read_header_timeout":        server.DefaultReadHeaderTimeout,
	"http.idle_timeout":               server.DefaultIdleTimeout,
	"http.max_connections":            server.DefaultMaxConnections,
	"webhook.path":                    server.DefaultWebhookPath,
	"webhook.max_body_bytes":          int64(server.DefaultMaxBodyBytes),
	"webhook.publish_timeout":         server.DefaultPublishTimeout,
	"webhook.max_inflight_bytes":      int64(server.DefaultMaxInflightBytes),
	"webhook.tolerance":               events.DefaultTolerance,
	"nats.stream":                     queue.DefaultStream,
	"nats.subject_prefix":             queue.DefaultSubjectPrefix,
	"nats.dlq_stream":                 queue.DefaultDLQStream,
	"nats.replicas":                   queue.DefaultReplicas,
	"nats.duplicate_window":           queue.DefaultDuplicateWindow,
	"store.processed_retention":       storage.DefaultProcessedRetention,
	"store.open_timeout":              storage.DefaultOpenTimeout,
	"safeguards.on_directory_deleted": storage.DefaultOnDirectoryDeleted,
	"workos.endpoint":                 reconcile.DefaultEndpoint,
	"events.start":                    reconcile.StartNow,
	"events.on_stale_cursor":          reconcile.OnStaleCursorReconcile,
	"worker.batch_size":               worker.DefaultBatchSize,
	"worker.max_attempts":             worker.DefaultMaxAttempts,
	"worker.ack_wait":                 worker.DefaultAckWait,
	"worker.retry_backoff":            worker.DefaultRetryBackoff,
	"worker.max_yield_lag":            worker.DefaultMaxYieldLag,
	"changes.retention":               storage.DefaultChangesRetention,
	"changes.stream":                  queue.DefaultChangesStream,
	"changes.subject_prefix":          queue.DefaultChangesSubjectPrefix,
	"changes.webhook.max_age":         feed.DefaultWebhookMaxAge,
}

// configOnly are the keys with a non-zero default that is dsyncd's policy,
// not a component's zero-value behaviour, so stated in Default alone.
var configOnly = map[string]string{
	"data_dir":                            "where the daemon keeps its files",
	"log.level":                           "the daemon's logger",
	"log.format":                          "the daemon's logger",
	"http.listen":                         "the daemon's listener",
	"http.shutdown_timeout":               "the daemon's shutdown",
	"webhook.enabled":                     "the daemon's choice to receive webhooks",
	"worker.enabled":                      "the daemon's choice to apply events",
	"nats.sync_interval":                  "the embedded server's fsync policy (nats-server's own default differs)",
	"nats.event_encoding":                 "the daemon stores events S2-compressed; the queue's zero value is plain JSON",
	"nats.max_bytes":                      "a bounded stream; the queue's zero value is unbounded",
	"nats.max_age":                        "a bounded stream; the queue's zero value keeps events forever",
	"mapping.admin_badge":                 "the mapping's vocabulary",
	"mapping.default_badges":              "the mapping's vocabulary",
	"safeguards.max_deprovisions.count":   "the breaker is on by default; the store's zero value disables it",
	"safeguards.max_deprovisions.percent": "the breaker is on by default; the store's zero value disables it",
	"safeguards.max_deprovisions.floor":   "the breaker is on by default; the store's zero value disables it",
	"safeguards.max_deprovisions.window":  "the breaker is on by default; the store's zero value disables it",
	"store.snapshot_interval":             "the daemon's snapshot schedule (cmd/dsyncd/snapshot.go)",
	"store.snapshots_kept":                "snapshots and the stream's purge are on by default; 0 turns both off",
	"changes.enabled":                     "the change feed is on by default; the store's zero value (ChangesOptions.Off false) agrees",
	"changes.jetstream":                   "the daemon relays the feed to JetStream by default",
}

func TestDefaultsAgreeWithTheComponents(t *testing.T) {
	def := reflect.ValueOf(Default())
	for _, k := range keys() {
		got := def.FieldByIndex(k.index)
		want, own := componentDefaults[k.key]
		_, policy := configOnly[k.key]
		switch {
		case own && policy:
			t.Errorf("%s: listed both as a component's default and as dsyncd's own", k.key)
		case own:
			w := reflect.ValueOf(want)
			if !w.CanConvert(got.Type()) || !reflect.DeepEqual(got.Interface(), w.Convert(got.Type()).Interface()) {
				t.Errorf("%s: Default() has %v, the component's default is %v", k.key, got.Interface(), want)
			}
		case policy:
			if got.IsZero() {
				t.Errorf("%s: listed as dsyncd's own default but Default() leaves it zero", k.key)
			}
		case !got.IsZero():
			t.Errorf("%s: Default() sets %v: take it from its component's Default… constant (componentDefaults), "+
				"or say in configOnly why it is dsyncd's own", k.key, got.Interface())
		}
	}
	for key := range componentDefaults {
		if !slicesContainsKey(key) {
			t.Errorf("componentDefaults lists %s, which is not a key", key)
		}
	}
}

func slicesContainsKey(key string) bool {
	for _, k := range keys() {
		if k.key == key {
			return true
		}
	}
	return false
}
