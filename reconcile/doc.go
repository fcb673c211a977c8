// Package reconcile keeps the store in step with WorkOS when webhooks are
// not enough: a Poller reads the Events API, a Reconciler compares the store
// with the Directory Sync API.
//
// # Basics
//
// Poller (New, Run) reads GET /events for every dsync type from a cursor kept
// in the store (storage.Store.Cursor "events") and publishes each event, byte
// for byte as the API sent it, onto the JetStream stream the webhook receiver
// feeds, with the event id as Nats-Msg-Id: an event delivered by both is
// stored once, and the store ignores an id it already applied. The cursor
// moves only after JetStream acknowledged every event of a page, so a crash
// re-reads at most one page (deduplicated). The very first poll starts at
// Options.Start, "now" or an RFC 3339 time, resolved once and kept.
//
// Reconciler (NewReconciler, Reconcile, Run) lists a directory's users,
// groups and group members and turns each difference with the store into a
// synthetic dsync event applied through storage.Store.Apply, so through every
// safeguard; with dryRun, storage.Store.Preview says what it would do.
//
// StartBackground runs both inside `dsyncd serve`, with the BackgroundOptions
// dsyncd builds from its configuration (events.*, reconcile.*, workos.*):
// the package does not read the configuration itself.
//
// Client is the WorkOS API access both share: a retrying HTTP client (429
// after Retry-After, 5xx, timeouts and network errors with exponential
// backoff capped at 30s, a timeout per attempt), WorkOS's limit of 4
// requests per second per directory on /directory_users, and the API key
// sent as a bearer token and never logged.
//
// # Caveats
//
// An event the API returns that events.Decode rejects (such as the recorded
// dsync.user.created whose data is only {"email": …}) is skipped, counted in
// PollerStats.Invalid and logged with its id: it could never be applied, and
// holding the cursor on it would stop polling for good.
//
// The Events API keeps events 30 days: after a longer outage the stored
// cursor may be refused and polling fails, logged at each interval, until
// `dsyncd reconcile --reset-events-cursor` repairs what was missed and
// forgets the cursor (polling then starts again at events.start).
//
// Reconcile never deletes a directory (one WorkOS does not list is only
// reported: a wrong key or environment would look the same) and skips one
// the store holds as deleted. A directory whose listing fails, even half way,
// is left untouched. Users no longer listed are deleted through the store, so
// break-glass accounts stay and the mass-deprovisioning breaker applies.
package reconcile
