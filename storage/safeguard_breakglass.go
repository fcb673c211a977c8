package storage

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
)

// Break-glass accounts: sync never removes the badges of a listed account
// (by email or directory user id) nor deletes it; every change not made is
// audited (skip). An account stays recognised by its id when its email
// changes. It opens no hold.

// breakGlass reports whether u is a break-glass account.
func (s *Store) breakGlass(u *userRec) bool { return s.breakGlassEntry(u) != "" }

// breakGlassEntry returns the safeguards.break_glass entry u matches, or "":
// its directory user id, its email, or the entry it matched when first
// recognised (BreakGlassBy), while that entry is still configured — so that
// changing the account's email cannot slip it out of protection.
func (s *Store) breakGlassEntry(u *userRec) string {
	for _, v := range s.opts.Safeguards.BreakGlass {
		if v == u.ID || (u.Email != "" && strings.EqualFold(v, u.Email)) || (u.BreakGlassBy != "" && strings.EqualFold(v, u.BreakGlassBy)) {
			return v
		}
	}
	return ""
}

func (s *Store) auditBreakGlass(t *txn, ev *events.Event, u *userRec, now time.Time, what string) error {
	org, err := s.organization(t, u.OrganizationID, u.DirectoryID)
	if err != nil {
		return err
	}
	return s.addAudit(t, AuditEntry{Time: now, EventID: ev.ID, OrganizationID: org, DirectoryID: u.DirectoryID,
		UserID: u.ID, Action: ActionSkip, Reason: what + ": not applied, break-glass account"})
}

// pinBreakGlass keeps a break-glass account recognised by its directory user
// id: rec, the new state of u, records the break_glass entry either matched,
// and an email change of the account is audited.
func (c *change) pinBreakGlass(u, rec *userRec) error {
	entry := c.s.breakGlassEntry(u)
	if entry == "" {
		entry = c.s.breakGlassEntry(rec)
	}
	if entry == "" {
		return nil
	}
	rec.BreakGlassBy = entry
	if u.ID == "" || u.Email == "" || strings.EqualFold(u.Email, rec.Email) {
		return nil
	}
	org, err := c.s.userOrg(c.t, rec)
	if err != nil {
		return err
	}
	return c.s.addAudit(c.t, AuditEntry{Time: c.now, EventID: c.ev.ID, OrganizationID: org, DirectoryID: rec.DirectoryID, UserID: rec.ID,
		Action: ActionProfile, Reason: fmt.Sprintf("break-glass account's email changed from %s to %s: applied; still protected, "+
			"recognised by its directory user id (break_glass entry %s)", u.Email, rec.Email, entry)})
}

// keepBreakGlass keeps, when p's user is a break-glass account, every badge
// the plan would revoke (source break_glass), noting each skip for the audit.
func (s *Store) keepBreakGlass(p *grantPlan, eventID string, now time.Time) {
	u := p.u
	if !s.breakGlass(u) {
		return
	}
	wantBadges := mapping.Badges(p.want)
	for _, b := range mapping.Badges(u.Grants) {
		if slices.Contains(wantBadges, b) {
			continue
		}
		for _, og := range u.Grants {
			if og.Badge == b {
				og.Source = mapping.SourceBreakGlass
				p.want = append(p.want, og)
			}
		}
		g := firstGrant(u.Grants, b)
		p.skips = append(p.skips, AuditEntry{Time: now, EventID: eventID, OrganizationID: p.org, DirectoryID: u.DirectoryID, UserID: u.ID,
			Badge: b, Rule: g.Rule, Group: g.Group, Role: g.Role, Action: ActionSkip,
			Reason: "revocation not applied, break-glass account (" + revokeReason(u, p.sub) + ")"})
	}
}
