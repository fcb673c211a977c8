// Package storage is dsyncd's state in one bbolt file: directories, users,
// groups, memberships, badges with their provenance, processed event ids,
// the audit trail and the holds.
//
// # Basics
//
// Open the store with Open and apply decoded events with Apply. Apply runs one
// bbolt transaction per call: the state change, the processed-id records and
// the audit entries of every event in the batch commit together or not at all,
// so a crash never leaves half an event applied.
//
// Events are ordered by (created_at, event id). Each entity — directory, user,
// group, membership (group, user) — takes the state of the newest event that
// touched it; an older event is stale and changes nothing. A repeated event id
// has no effect (ids are remembered for ProcessedRetention; past it, a
// repeated event is stale anyway). Membership events carry the user and the
// group: they create them when unknown and update them when newer. Deletes
// leave tombstones so a late, older update cannot bring a user or group back;
// a group's or user's delete ends every membership older than it. A
// dsync.deleted marks the directory deleted and, with OnDirectoryDeleted
// "deprovision", acts as a delete of every user, group and membership of the
// directory older than it.
//
// Badges are recomputed, inside the same transaction, for exactly the users an
// event touches, through package mapping, and every change is audited.
//
// The safeguards run in that transaction too, one file each
// (safeguard_*.go): the last admin (and held moves), the mass-deprovisioning
// breaker, break-glass accounts, the directory deletion policy. Those that
// hold a change own a HoldKind and what approving or rejecting one of their
// holds does (safeguards.go lists them). The words the store shares with the
// server and the commands — outcomes, hold kinds, audit actions, plans — are
// named types in vocabulary.go.
//
// # Caveats
//
// Only one process may open the file: a second Open fails with ErrInUse after
// OpenTimeout. Readers (Export, User, Audit) see the last committed batch.
//
// The audit trail is kept forever unless Options.AuditRetention is set; then
// Apply removes older entries, operator actions included, a bounded number per
// batch, so a store that stops receiving events stops pruning too.
package storage
