package storage

import (
	"github.com/dsyncd/dsyncd/mapping"
)

// This file is the store's vocabulary: the named types the store, the server,
// the worker and the commands share — what applying an event did (Outcome,
// Counts), what a safeguard holds (HoldKind, HoldResolution), what the audit
// trail records (AuditAction), and what a change does (Plan). Their JSON is
// their string value. The grant sources (why a user holds a badge) are
// mapping.GrantSource.

// Outcome says what applying one event did.
type Outcome string

// Outcomes of Apply.
const (
	// Applied: the event changed at least one entity.
	Applied Outcome = "applied"
	// Duplicate: an event with this id was applied before.
	Duplicate Outcome = "duplicate"
	// Stale: every entity the event touches holds newer state; nothing changed.
	Stale Outcome = "stale"
	// Ignored: dsyncd does not handle this event type.
	Ignored Outcome = "ignored"
	// Deferred: the organisation's sync is paused; the event is kept, in
	// order, until an operator resumes it.
	Deferred Outcome = "deferred"
	// Future: the event's created_at is later than the clock plus
	// Options.MaxFuture. It is not applied nor recorded as processed: the
	// caller parks it (an event dated in the future would make every later
	// real event about its entities stale).
	Future Outcome = "future"
)

// Outcomes counted in a Plan's Counts besides Apply's.
const (
	// Invalid: a deferred event that no longer decodes (a resume skips it).
	Invalid Outcome = "invalid"
	// Dropped: deferred events a rejected mass-deprovisioning hold dropped.
	Dropped Outcome = "dropped"
	// WouldPause: in a Preview, the event that would trip its
	// organisation's breaker and pause it.
	WouldPause Outcome = "would_pause"
)

// Counts tallies outcomes of the events a resume applies.
type Counts map[Outcome]int

// HoldKind names a safeguard that holds a change (Hold.Kind). Each kind is
// one safeguard's, in its own file (safeguard_*.go).
type HoldKind string

// HoldResolution says how a hold closed (Hold.Resolution).
type HoldResolution string

// Hold resolutions.
const (
	ResolutionReleased HoldResolution = "released" // closed by itself: another admin exists, or the badge is granted again
	ResolutionApproved HoldResolution = "approved" // an operator approved the held change
	ResolutionRejected HoldResolution = "rejected" // an operator rejected the held change
)

// AuditAction is what an audit entry records (AuditEntry.Action).
type AuditAction string

// Audit actions.
const (
	ActionGrant   AuditAction = "grant"
	ActionRevoke  AuditAction = "revoke"
	ActionHold    AuditAction = "hold"
	ActionRelease AuditAction = "release"
	ActionSkip    AuditAction = "skip" // a change sync was not allowed to make
	ActionDrop    AuditAction = "drop" // an operator dropped a dead letter
	// ActionProfile: a profile change the safeguards note (a break-glass
	// account's email changed; it stays recognised by its id).
	ActionProfile AuditAction = "profile"
)

// Plan is what a change does (or would do), per organisation.
type Plan struct {
	Organizations []OrgPlan   `json:"organizations"`
	Unmapped      []UnmapPlan `json:"unmapped,omitempty"`
	Applied       Counts      `json:"events,omitzero"`
}

// OrgPlan is what a change does to one organisation.
type OrgPlan struct {
	Organization string                     `json:"organization"`
	Gains        map[mapping.Badge][]string `json:"gains"`  // badge -> user ids
	Losses       map[mapping.Badge][]string `json:"losses"` // badge -> user ids
	Kept         []AuditEntry               `json:"kept,omitempty"`
	AdminsBefore int                        `json:"admins_before"`
	AdminsAfter  int                        `json:"admins_after"`
	Holds        []Hold                     `json:"holds"`
}

// UnmapPlan is a group rule the new mapping removes.
type UnmapPlan struct {
	Rule   string `json:"rule"`
	Users  int    `json:"users"`  // users holding a badge through it
	Choice string `json:"choice"` // keep, remove, or "" (not given)
}
