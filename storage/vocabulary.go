package storage

import (
	"encoding/json"
	"fmt"

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

// outcomes lists every Outcome, in the order Counts reports them.
var outcomes = [...]Outcome{Applied, Duplicate, Stale, Ignored, Invalid, Deferred, Future, Dropped, WouldPause}

// Counts tallies the outcomes of a set of events: what Apply did to each
// (the worker, replay, rebuild), and what a resume, a decision on a hold or
// a preview counts besides (invalid, dropped, would_pause). Its JSON has
// the seven outcomes of Apply and invalid always, dropped and would_pause
// when not zero; a Plan lists only the outcomes counted (Counted).
type Counts struct {
	Applied   int `json:"applied"`
	Duplicate int `json:"duplicate"`
	Stale     int `json:"stale"`
	Ignored   int `json:"ignored"`
	Invalid   int `json:"invalid"`
	Deferred  int `json:"deferred"`
	// Future: events dated later than the clock plus webhook.tolerance,
	// not applied (the live worker parks them as dead letters).
	Future     int `json:"future"`
	Dropped    int `json:"dropped,omitempty"`
	WouldPause int `json:"would_pause,omitempty"`

	counted uint16 // bit i: outcomes[i] was counted (Add, Set), even to 0
}

func (c *Counts) field(o Outcome) (*int, uint16) {
	ptrs := [...]*int{&c.Applied, &c.Duplicate, &c.Stale, &c.Ignored, &c.Invalid, &c.Deferred, &c.Future, &c.Dropped, &c.WouldPause}
	for i, x := range outcomes {
		if x == o {
			return ptrs[i], 1 << i
		}
	}
	return nil, 0
}

// Add counts one event of outcome o.
func (c *Counts) Add(o Outcome) {
	if p, bit := c.field(o); p != nil {
		*p++
		c.counted |= bit
	}
}

// Set sets the count of o to n; o is counted even when n is 0.
func (c *Counts) Set(o Outcome, n int) {
	if p, bit := c.field(o); p != nil {
		*p = n
		c.counted |= bit
	}
}

// Of returns the count of o.
func (c Counts) Of(o Outcome) int {
	if p, _ := c.field(o); p != nil {
		return *p
	}
	return 0
}

// Counted lists the outcomes counted (by Add or Set), in a stable order.
func (c Counts) Counted() []Outcome {
	var out []Outcome
	for i, o := range outcomes {
		if c.counted&(1<<i) != 0 {
			out = append(out, o)
		}
	}
	return out
}

// Merge adds every count of o to c.
func (c *Counts) Merge(o Counts) {
	for _, x := range outcomes {
		p, _ := c.field(x)
		*p += o.Of(x)
	}
	c.counted |= o.counted
}

// String is "applied 1, duplicate 0, stale 0, ignored 0, invalid 0", with
// deferred and future-dated events when there are any.
func (c Counts) String() string {
	s := fmt.Sprintf("applied %d, duplicate %d, stale %d, ignored %d, invalid %d",
		c.Applied, c.Duplicate, c.Stale, c.Ignored, c.Invalid)
	if c.Deferred > 0 {
		// Only a paused organisation defers events (safeguards).
		s += fmt.Sprintf(", deferred %d", c.Deferred)
	}
	if c.Future > 0 {
		s += fmt.Sprintf(", future-dated (not applied) %d", c.Future)
	}
	return s
}

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
	// Applied counts what happened to the events a resume, a decision or a
	// preview applied; nil for a mapping change. Its JSON ("events") maps
	// each outcome counted to its count.
	Applied *Counts `json:"events,omitzero"`
}

// plan is a Plan without its methods.
type plan Plan

// planJSON is a Plan's JSON: Applied as a map of the outcomes counted.
type planJSON struct {
	plan
	Applied map[Outcome]int `json:"events,omitzero"`
}

// MarshalJSON writes Applied as {"outcome": count} for each outcome counted.
func (p Plan) MarshalJSON() ([]byte, error) {
	out := planJSON{plan: plan(p)}
	if p.Applied != nil {
		out.Applied = map[Outcome]int{}
		for _, o := range p.Applied.Counted() {
			out.Applied[o] = p.Applied.Of(o)
		}
	}
	return json.Marshal(out)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (p *Plan) UnmarshalJSON(b []byte) error {
	var in planJSON
	if err := json.Unmarshal(b, &in); err != nil {
		return err
	}
	*p = Plan(in.plan)
	p.Applied = nil
	if in.Applied != nil {
		p.Applied = &Counts{}
		for _, o := range outcomes {
			if n, ok := in.Applied[o]; ok {
				p.Applied.Set(o, n)
			}
		}
	}
	return nil
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
