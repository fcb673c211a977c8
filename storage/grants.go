package storage

import (
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
)

// Audit actions.
const (
	ActionGrant   = "grant"
	ActionRevoke  = "revoke"
	ActionHold    = "hold"
	ActionRelease = "release"
	ActionSkip    = "skip" // a change sync was not allowed to make
	ActionDrop    = "drop" // an operator dropped a dead letter
)

// AuditEntry records one badge change, or one change that was not made, and why.
type AuditEntry struct {
	Seq            uint64    `json:"seq"`
	Time           time.Time `json:"time"`
	EventID        string    `json:"event_id,omitempty"`
	OrganizationID string    `json:"organization_id,omitempty"`
	DirectoryID    string    `json:"directory_id,omitempty"`
	UserID         string    `json:"user_id,omitempty"`
	Badge          string    `json:"badge,omitempty"`
	Action         string    `json:"action"`
	Rule           string    `json:"rule,omitempty"`
	Group          string    `json:"group,omitempty"`
	Role           string    `json:"role,omitempty"`
	Reason         string    `json:"reason"`
}

func (s *Store) addAudit(t *txn, e AuditEntry) error {
	seq, err := t.audit.NextSequence()
	if err != nil {
		return err
	}
	e.Seq = seq
	return putJSON(t.audit, u64(seq), e)
}

// breakGlass reports whether u is listed in safeguards.break_glass.
func (s *Store) breakGlass(u *userRec) bool {
	for _, v := range s.opts.Safeguards.BreakGlass {
		if v == u.ID || (u.Email != "" && strings.EqualFold(v, u.Email)) {
			return true
		}
	}
	return false
}

func (s *Store) auditBreakGlass(t *txn, ev *events.Event, u *userRec, now time.Time, what string) error {
	org, err := s.organization(t, u.OrganizationID, u.DirectoryID)
	if err != nil {
		return err
	}
	return s.addAudit(t, AuditEntry{Time: now, EventID: ev.ID, OrganizationID: org, DirectoryID: u.DirectoryID,
		UserID: u.ID, Action: ActionSkip, Reason: what + ": not applied, break-glass account"})
}

// Grant sources beyond mapping's "default", "group" and "role".
const (
	// SourceHeld: the mapping no longer grants the badge, but revoking it
	// would leave the organisation without an admin; an open hold keeps it.
	SourceHeld = "held"
	// SourceRetained: the rule that granted it was removed with on_unmap
	// keep (or a last-admin hold was rejected); it stays while the user is active.
	SourceRetained = "retained"
	// SourceBreakGlass: a break-glass account keeps what sync would revoke.
	SourceBreakGlass = "break_glass"
)

type regrantOpts struct {
	// forceRevokeAdmin applies an admin revocation even when it leaves the
	// organisation without an admin (an operator approved the hold).
	forceRevokeAdmin bool
}

// regrant recomputes u's grants from the mapping, applies the safeguards
// (break-glass, last admin, retained and held grants), stores the result and
// audits every badge gained, lost, held or kept. It reports whether u went
// from some badges to none, and u's organisation.
func (s *Store) regrant(t *txn, u *userRec, eventID string, now time.Time, o regrantOpts) (lostAll bool, org string, err error) {
	sub, err := s.subject(t, u)
	if err != nil {
		return false, "", err
	}
	m := &s.opts.Mapping
	want := m.Grants(sub)
	org, err = s.organization(t, u.OrganizationID, u.DirectoryID)
	if err != nil {
		return false, "", err
	}
	base := AuditEntry{Time: now, EventID: eventID, OrganizationID: org, DirectoryID: u.DirectoryID, UserID: u.ID}
	var entries []AuditEntry
	if sub.Active {
		for _, g := range u.Grants {
			if g.Source == SourceRetained && !slices.Contains(mapping.Badges(want), g.Badge) {
				want = append(want, g)
			}
		}
	}
	// An open last-admin hold keeps the badge until another admin exists
	// or the mapping grants it again.
	hold, err := s.openHold(t, HoldLastAdmin, org, u.ID)
	if err != nil {
		return false, "", err
	}
	if hold != nil {
		if slices.Contains(mapping.Badges(want), hold.Badge) {
			if err := s.closeHold(t, hold, ResolutionReleased, "the mapping grants the badge again", eventID, now); err != nil {
				return false, "", err
			}
		} else {
			want = append(want, mapping.Grant{Badge: hold.Badge, Rule: hold.Rule, Source: SourceHeld})
		}
	}
	oldBadges := mapping.Badges(u.Grants)
	wantBadges := mapping.Badges(want)
	for _, b := range oldBadges {
		if slices.Contains(wantBadges, b) {
			continue
		}
		g := firstGrant(u.Grants, b)
		e := base
		e.Badge, e.Rule, e.Group, e.Role = b, g.Rule, g.Group, g.Role
		why := revokeReason(u, sub)
		switch {
		case s.breakGlass(u):
			for _, og := range u.Grants {
				if og.Badge == b {
					og.Source = SourceBreakGlass
					want = append(want, og)
				}
			}
			e.Action, e.Reason = ActionSkip, "revocation not applied, break-glass account ("+why+")"
		case b == m.AdminBadge && !o.forceRevokeAdmin:
			others, err := s.otherAdmins(t, org, u.ID)
			if err != nil {
				return false, "", err
			}
			if others > 0 {
				e.Action, e.Reason = ActionRevoke, why
				break
			}
			h := &Hold{Kind: HoldLastAdmin, OrganizationID: org, UserID: u.ID, Badge: b, Rule: g.Rule,
				Reason:  "revoking " + b + " (" + why + ") would leave organisation " + org + " without an admin",
				EventID: eventID, CreatedAt: now}
			if err := s.openNewHold(t, h); err != nil {
				return false, "", err
			}
			want = append(want, mapping.Grant{Badge: b, Rule: g.Rule, Group: g.Group, Role: g.Role, Source: SourceHeld})
			e.Action, e.Reason = ActionHold, h.Reason+fmt.Sprintf(" (hold %d)", h.ID)
		default:
			e.Action, e.Reason = ActionRevoke, why
		}
		entries = append(entries, e)
	}
	for _, b := range mapping.Badges(want) {
		if !slices.Contains(oldBadges, b) {
			g := firstGrant(want, b)
			e := base
			e.Badge, e.Action, e.Rule, e.Group, e.Role = b, ActionGrant, g.Rule, g.Group, g.Role
			e.Reason = grantReason(g)
			entries = append(entries, e)
		}
	}
	slices.SortFunc(want, func(a, b mapping.Grant) int {
		return strings.Compare(a.Badge+"\x00"+a.Rule+"\x00"+a.Group+"\x00"+a.Role+"\x00"+a.Source, b.Badge+"\x00"+b.Rule+"\x00"+b.Group+"\x00"+b.Role+"\x00"+b.Source)
	})
	want = slices.Compact(want)
	for _, e := range entries {
		if err := s.addAudit(t, e); err != nil {
			return false, "", err
		}
	}
	finalBadges := mapping.Badges(want)
	lostAll = len(oldBadges) > 0 && len(finalBadges) == 0
	if err := s.indexAdmin(t, u, org, slices.Contains(finalBadges, m.AdminBadge)); err != nil {
		return false, "", err
	}
	if grantsEqual(u.Grants, want) {
		return lostAll, org, nil
	}
	if len(want) == 0 {
		want = nil
	}
	u.Grants = want
	return lostAll, org, t.putUser(u)
}

func grantsEqual(a, b []mapping.Grant) bool {
	return slices.Equal(a, b)
}

func firstGrant(gs []mapping.Grant, badge string) mapping.Grant {
	for _, g := range gs {
		if g.Badge == badge {
			return g
		}
	}
	return mapping.Grant{Badge: badge}
}

func grantReason(g mapping.Grant) string {
	switch g.Source {
	case "group":
		return "member of group " + g.Group + " matched by rule " + g.Rule
	case "role":
		return "has WorkOS role " + g.Role
	case "default":
		return "default badge of every active user"
	case SourceHeld:
		return "kept by an open last-admin hold"
	case SourceRetained:
		return "retained after its rule was removed"
	}
	return "granted by " + g.Rule
}

func revokeReason(u *userRec, sub mapping.Subject) string {
	switch {
	case u.Deleted:
		return "user deleted"
	case !sub.Active:
		return "user " + u.State
	}
	return "no rule grants it any more"
}

// RecordAudit appends an operator's action to the audit trail.
func (s *Store) RecordAudit(e AuditEntry) error {
	if e.Time.IsZero() {
		e.Time = s.opts.Now()
	}
	return s.db.Update(func(tx *bolt.Tx) error { return s.addAudit(newTxn(tx), e) })
}
