package storage

import (
	"fmt"
	"slices"
	"time"

	"github.com/dsyncd/dsyncd/mapping"
)

// The last-admin safeguard: a change that would take an organisation from
// one or more holders of the admin badge to none is not made. Each admin
// revocation of that organisation in the change is held (HoldLastAdmin):
// the user keeps the badge (source held) until another admin exists, the
// mapping grants it again, or an operator decides. Approved, the revocation
// is applied; rejected, the user keeps the badge as retained. A move of the
// last admin to another organisation is held the same way
// (safeguard_move.go).

// indexAdmin keeps bucket org_admins in step with whether u holds the admin badge.
func (s *Store) indexAdmin(t *txn, u *userRec, org string, has bool) error {
	if u.AdminIndexed && (!has || u.AdminOrg != org) {
		if err := t.orgAdmins.Delete(pair(u.AdminOrg, u.ID)); err != nil {
			return err
		}
		u.AdminIndexed, u.AdminOrg = false, ""
		if err := t.putUser(u); err != nil {
			return err
		}
	}
	if has && !u.AdminIndexed {
		if err := t.orgAdmins.Put(pair(org, u.ID), nil); err != nil {
			return err
		}
		u.AdminIndexed, u.AdminOrg = true, org
		return t.putUser(u)
	}
	return nil
}

// adminHolders counts the holders of the admin badge in org whose badge is
// not itself kept by a last-admin hold.
func (s *Store) adminHolders(t *txn, org string) (int, error) {
	held := map[string]bool{}
	if err := s.eachOpenHold(t, func(h *Hold) error {
		if h.Kind == HoldLastAdmin && h.OrganizationID == org {
			held[h.UserID] = true
		}
		return nil
	}); err != nil {
		return 0, err
	}
	n := 0
	err := eachPrefix(t.orgAdmins, org, func(uid string) error {
		if !held[uid] {
			n++
		}
		return nil
	})
	return n, err
}

// adminCounts returns, per organisation, how many users hold the admin
// badge without a last-admin hold keeping it.
func (s *Store) adminCounts(t *txn) (map[string]int, error) {
	held := map[string]bool{}
	if err := s.eachOpenHold(t, func(h *Hold) error {
		if h.Kind == HoldLastAdmin {
			held[string(pair(h.OrganizationID, h.UserID))] = true
		}
		return nil
	}); err != nil {
		return nil, err
	}
	out := map[string]int{}
	err := t.orgAdmins.ForEach(func(k, _ []byte) error {
		org, _ := splitPair(k)
		if !held[string(k)] {
			out[org]++
		} else if _, ok := out[org]; !ok {
			out[org] = 0
		}
		return nil
	})
	return out, err
}

// reevaluateHolds closes the last-admin holds of every organisation that
// now has another admin, applying the held revocations.
func (s *Store) reevaluateHolds(t *txn, eventID string, now time.Time) error {
	if k, _ := t.openHolds.Cursor().First(); k == nil {
		return nil
	}
	byOrg := map[string][]*Hold{}
	if err := s.eachOpenHold(t, func(h *Hold) error {
		if h.Kind == HoldLastAdmin {
			byOrg[h.OrganizationID] = append(byOrg[h.OrganizationID], h)
		}
		return nil
	}); err != nil {
		return err
	}
	orgs := make([]string, 0, len(byOrg))
	for org := range byOrg {
		orgs = append(orgs, org)
	}
	slices.Sort(orgs)
	for _, org := range orgs {
		n, err := s.adminHolders(t, org)
		if err != nil {
			return err
		}
		if n == 0 {
			continue // still no other admin: this organisation's holds stay open
		}
		var users []*userRec
		for _, h := range byOrg[org] {
			if err := s.closeHold(t, h, ResolutionReleased, "another admin exists", eventID, now); err != nil {
				return err
			}
			u, err := t.user(h.UserID)
			if err != nil {
				return err
			}
			if u != nil {
				users = append(users, u)
			}
		}
		if _, err := s.regrant(t, users, eventID, now, regrantOpts{}); err != nil {
			return err
		}
	}
	return nil
}

// HoldLastAdmin is the kind of the last-admin safeguard's holds.
const (
	// HoldLastAdmin: a revocation that would have left an organisation
	// without an admin. The user keeps the badge until another admin exists.
	HoldLastAdmin HoldKind = "last_admin"
)

// lastAdmin is the last-admin safeguard's holdRule.
type lastAdmin struct{}

func (lastAdmin) kind() HoldKind { return HoldLastAdmin }

func (lastAdmin) decidable(h *Hold, approve bool) error {
	if h.MovedTo != "" {
		return moveDecidable(approve)
	}
	return nil
}

func (lastAdmin) closed(s *Store, t *txn, h *Hold) error {
	if h.MovedTo != "" {
		return s.releaseMove(t, h)
	}
	return nil
}

// decide applies the held revocation when approved (the organisation may be
// left without an admin: the operator said so); rejected, the user keeps
// the badge as retained.
func (lastAdmin) decide(s *Store, t *txn, h *Hold, approve bool, now time.Time, _ *Counts) error {
	u, err := t.user(h.UserID)
	if err != nil || u == nil {
		return err
	}
	if !approve {
		for i, g := range u.Grants {
			if g.Badge == h.Badge && g.Source == mapping.SourceHeld {
				u.Grants[i].Source = mapping.SourceRetained
			}
		}
		if err := t.putUser(u); err != nil {
			return err
		}
	}
	_, err = s.regrant(t, []*userRec{u}, holdDecision(h), now, regrantOpts{forceRevokeAdmin: approve})
	return err
}

// adminFlows is, per organisation, the plans of a change that take the
// admin badge from a user (lose) or give it (gain).
type adminFlows map[string]*struct{ lose, gain []*grantPlan }

func (f adminFlows) of(org string) *struct{ lose, gain []*grantPlan } {
	x := f[org]
	if x == nil {
		x = &struct{ lose, gain []*grantPlan }{}
		f[org] = x
	}
	return x
}

// add records what plan p does to the admin badge.
func (f adminFlows) add(p *grantPlan, admin mapping.Badge) {
	u := p.u
	had := slices.Contains(mapping.Badges(u.Grants), admin)
	wants := slices.Contains(mapping.Badges(p.want), admin)
	switch {
	case had && u.AdminIndexed && u.AdminOrg != p.org:
		// An admin moved to another organisation: the old one loses
		// an admin whatever the new one's rules grant.
		p.moveFrom = u.AdminOrg
		f.of(u.AdminOrg).lose = append(f.of(u.AdminOrg).lose, p)
		if wants {
			f.of(p.org).gain = append(f.of(p.org).gain, p)
		}
	case had && !wants:
		f.of(p.org).lose = append(f.of(p.org).lose, p)
	case !had && wants:
		f.of(p.org).gain = append(f.of(p.org).gain, p)
	}
}

// holdLastAdmins marks, in every organisation the change would take from
// one or more admins to none, each of its admin revocations held (a move:
// holdMove).
func (s *Store) holdLastAdmins(t *txn, flows adminFlows) error {
	for org, f := range flows {
		if len(f.lose) == 0 {
			continue
		}
		before, err := s.adminHolders(t, org)
		if err != nil {
			return err
		}
		if before >= 1 && before-len(f.lose)+len(f.gain) <= 0 {
			for _, p := range f.lose {
				if p.moveFrom != "" {
					p.holdMove = true
				} else {
					p.holdAdmin = true
				}
			}
		}
	}
	return nil
}

// keepHeldAdmin adds to p the badge an open last-admin hold keeps, until
// another admin exists or the mapping grants it again (for a held move:
// until the user is back in the organisation), closing the hold then.
func (s *Store) keepHeldAdmin(t *txn, p *grantPlan, eventID string, now time.Time) error {
	u := p.u
	hold, err := s.openHold(t, HoldLastAdmin, p.org, u.ID)
	if err != nil {
		return err
	}
	dirOrg, err := s.organization(t, u.OrganizationID, u.DirectoryID)
	if err != nil {
		return err
	}
	if hold != nil && hold.MovedTo != "" {
		if dirOrg == hold.OrganizationID {
			if err := s.closeHold(t, hold, ResolutionReleased, "the user is back in organisation "+dirOrg, eventID, now); err != nil {
				return err
			}
		} else {
			p.want = append(p.want, mapping.Grant{Badge: hold.Badge, Rule: hold.Rule, Source: mapping.SourceHeld})
		}
	} else if hold != nil {
		if slices.Contains(mapping.Badges(p.want), hold.Badge) {
			if err := s.closeHold(t, hold, ResolutionReleased, "the mapping grants the badge again", eventID, now); err != nil {
				return err
			}
		} else {
			p.want = append(p.want, mapping.Grant{Badge: hold.Badge, Rule: hold.Rule, Source: mapping.SourceHeld})
		}
	}
	return nil
}

// openLastAdminHold opens the hold that keeps p's user the admin badge
// (holdLastAdmins said so), returning the held grant and its audit entry.
func (s *Store) openLastAdminHold(t *txn, p *grantPlan, base AuditEntry, eventID string, now time.Time) (mapping.Grant, AuditEntry, error) {
	u, admin := p.u, s.opts.Mapping.AdminBadge
	g := firstGrant(u.Grants, admin)
	h := &Hold{Kind: HoldLastAdmin, OrganizationID: p.org, UserID: u.ID, Badge: admin, Rule: g.Rule,
		Reason:  "revoking " + string(admin) + " (" + revokeReason(u, p.sub) + ") would leave organisation " + p.org + " without an admin",
		EventID: eventID, CreatedAt: now, MovedTo: p.movedTo}
	if p.movedTo != "" {
		h.Reason = "moving the user to organisation " + p.movedTo + " would leave organisation " + p.org + " without an admin"
	}
	if err := s.openNewHold(t, h); err != nil {
		return mapping.Grant{}, AuditEntry{}, err
	}
	e := base
	e.Badge, e.Action, e.Rule, e.Group, e.Role = admin, ActionHold, g.Rule, g.Group, g.Role
	e.Reason = h.Reason + fmt.Sprintf(" (hold %d)", h.ID)
	return mapping.Grant{Badge: admin, Rule: g.Rule, Group: g.Group, Role: g.Role, Source: mapping.SourceHeld}, e, nil
}
