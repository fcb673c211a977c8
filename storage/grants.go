package storage

import (
	"slices"
	"strings"
	"time"

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

// regrant recomputes u's grants from the mapping, applies the safeguards,
// stores the result and audits every badge gained or lost.
func (s *Store) regrant(t *txn, u *userRec, eventID string, now time.Time) error {
	sub, err := s.subject(t, u)
	if err != nil {
		return err
	}
	want := s.opts.Mapping.Grants(sub)
	org, err := s.organization(t, u.OrganizationID, u.DirectoryID)
	if err != nil {
		return err
	}
	base := AuditEntry{Time: now, EventID: eventID, OrganizationID: org, DirectoryID: u.DirectoryID, UserID: u.ID}
	oldBadges := mapping.Badges(u.Grants)
	newBadges := mapping.Badges(want)
	var entries []AuditEntry
	for _, b := range newBadges {
		if !slices.Contains(oldBadges, b) {
			g := firstGrant(want, b)
			e := base
			e.Badge, e.Action, e.Rule, e.Group, e.Role = b, ActionGrant, g.Rule, g.Group, g.Role
			e.Reason = grantReason(g)
			entries = append(entries, e)
		}
	}
	for _, b := range oldBadges {
		if slices.Contains(newBadges, b) {
			continue
		}
		g := firstGrant(u.Grants, b)
		e := base
		e.Badge, e.Rule, e.Group, e.Role = b, g.Rule, g.Group, g.Role
		if s.breakGlass(u) {
			// Keep every grant of the badge; say why it stays.
			for _, og := range u.Grants {
				if og.Badge == b {
					want = append(want, og)
				}
			}
			e.Action, e.Reason = ActionSkip, "revocation not applied, break-glass account ("+revokeReason(u, sub)+")"
		} else {
			e.Action, e.Reason = ActionRevoke, revokeReason(u, sub)
		}
		entries = append(entries, e)
	}
	slices.SortFunc(want, func(a, b mapping.Grant) int {
		return strings.Compare(a.Badge+"\x00"+a.Rule+"\x00"+a.Group+"\x00"+a.Role, b.Badge+"\x00"+b.Rule+"\x00"+b.Group+"\x00"+b.Role)
	})
	for _, e := range entries {
		if err := s.addAudit(t, e); err != nil {
			return err
		}
	}
	if grantsEqual(u.Grants, want) {
		return nil
	}
	u.Grants = want
	return t.putUser(u)
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
