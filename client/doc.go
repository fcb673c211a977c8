// Package client is the Go client of dsyncd's /v1 API, for products that
// build on dsyncd: typed lookups of users and organisations, the export,
// the change feed's long-poll with a follower that reconnects, and the
// check of dsyncd's signed webhooks out. It imports only the standard
// library.
//
// # Basics
//
// A Client is made with the daemon's base URL and its API token (api.token,
// or the file <data_dir>/api.token that serve creates):
//
//	c := client.New("http://127.0.0.1:8080", token)
//	u, err := c.User(ctx, "directory_user_01…")
//	if errors.Is(err, client.ErrNotFound) { … }
//
// Every error answer of the API is an *Error with its HTTP Status, its
// stable Code and its Message; errors.Is matches ErrNotFound (404),
// ErrGone (410), ErrUnauthorized (401) and ErrBadRequest (400).
//
// To keep a mirror of the users in step, bootstrap from Export and follow
// the changes after its ChangeSeq: nothing is missed and nothing is
// applied twice.
//
//	ex, err := c.Export(ctx)
//	users := map[string]client.User{}
//	for _, u := range ex.Users { users[u.ID] = u }
//	err = c.Follow(ctx, ex.ChangeSeq, func(ch client.Change) error {
//		client.Fold(users, ch) // the new view replaces the user's; user.deleted removes it
//		return nil             // an error stops Follow, which returns it
//	})
//	if errors.Is(err, client.ErrGone) { /* resync: Export again */ }
//
// Follow long-polls GET /v1/changes (30s by default, WithWait), so a change
// reaches the callback within milliseconds of its commit; it retries a
// transport error, a cut answer, a 5xx or a 429 with exponential backoff and
// jitter (WithBackoff), from the last record the callback accepted.
//
// Products that take the webhooks out check each POST with VerifyWebhook
// (on the raw body, before decoding it) and read it with DecodeWebhook.
//
// # Caveats
//
//   - Delivery is at least once on every way out: a webhook batch may come
//     again after a failure. Skip the records whose Seq is at most the last
//     one applied; Follow does so itself.
//   - A gap in Seq means records were lost (retention, changes.retention,
//     7 days by default; or changes.webhook.max_age): resync from Export.
//     Follow returns ErrGone (410) or ErrGap.
//   - Export holds the whole snapshot in memory; for a very large store page
//     OrganizationUsers instead, and follow the feed rather than export
//     repeatedly.
//   - The lookups (User, UsersByEmail, UsersByIdpID) answer ErrNotFound when
//     nothing matches, not an empty list.
//   - A Client made without WithHTTPClient has no overall timeout: each
//     request is bounded by its context (Follow bounds its own by the wait
//     plus 30s). Give WithHTTPClient a client whose Timeout exceeds the wait.
//   - The callback runs on Follow's goroutine: a slow callback slows the
//     feed for this follower only; dsyncd keeps the records meanwhile.
package client
