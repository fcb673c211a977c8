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

// AuditEntry records one badge change, or one change that was not made, and why.
type AuditEntry struct {
	Seq            uint64        `json:"seq"`
	Time           time.Time     `json:"time"`
	EventID        string        `json:"event_id,omitempty"`
	OrganizationID string        `json:"organization_id,omitempty"`
	DirectoryID    string        `json:"directory_id,omitempty"`
	UserID         string        `json:"user_id,omitempty"`
	Badge          mapping.Badge `json:"badge,omitempty"`
	Action         AuditAction   `json:"action"`
	Rule           string        `json:"rule,omitempty"`
	Group          string        `json:"group,omitempty"`
	Role           string        `json:"role,omitempty"`
	Reason         string        `json:"reason"`
}

func (s *Store) addAudit(t *txn, e AuditEntry) error {
	seq, err := t.audit.NextSequence()
	if err != nil {
		return err
	}
	e.Seq = seq
	return putJSON(t.audit, u64(seq), e)
}

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

type regrantOpts struct {
	// forceRevokeAdmin applies admin revocations even when they leave the
	// organisation without an admin (an operator approved the hold).
	forceRevokeAdmin bool
}

// grantPlan is one user's new grants, before the last-admin safeguard.
type grantPlan struct {
	u         *userRec
	org       string
	sub       mapping.Subject
	want      []mapping.Grant
	skips     []AuditEntry // revocations break-glass did not apply
	holdAdmin bool         // set by the last-admin safeguard
	// moveFrom is the organisation the user held the admin badge in, when
	// it is now in another one (its organization_id, or its directory's,
	// changed): that organisation loses an admin. holdMove: the
	// safeguard keeps the user there instead; movedTo is where it was going.
	moveFrom, movedTo string
	holdMove          bool
}

// regrant recomputes the grants of users together, as one change: the
// mapping, retained and held grants and break-glass per user, then the
// last-admin safeguard per organisation over the whole change — if the
// change would take an organisation's admins from one or more to none, every
// admin revocation of that organisation in the change is held. It stores the
// results, audits every badge gained, lost, held or kept, and returns, per
// organisation, the users that lost a mapped badge or every badge.
func (s *Store) regrant(t *txn, users []*userRec, eventID string, now time.Time, o regrantOpts) (map[string][]loss, error) {
	admin := s.opts.Mapping.AdminBadge
	plans := make([]*grantPlan, 0, len(users))
	type flow struct{ lose, gain []*grantPlan }
	flows := map[string]*flow{}
	for _, u := range users {
		p, err := s.planGrants(t, u, eventID, now)
		if err != nil {
			return nil, err
		}
		plans = append(plans, p)
		had := slices.Contains(mapping.Badges(u.Grants), admin)
		wants := slices.Contains(mapping.Badges(p.want), admin)
		flowOf := func(org string) *flow {
			f := flows[org]
			if f == nil {
				f = &flow{}
				flows[org] = f
			}
			return f
		}
		switch {
		case had && u.AdminIndexed && u.AdminOrg != p.org:
			// An admin moved to another organisation: the old one loses
			// an admin whatever the new one's rules grant.
			p.moveFrom = u.AdminOrg
			flowOf(u.AdminOrg).lose = append(flowOf(u.AdminOrg).lose, p)
			if wants {
				flowOf(p.org).gain = append(flowOf(p.org).gain, p)
			}
		case had && !wants:
			flowOf(p.org).lose = append(flowOf(p.org).lose, p)
		case !had && wants:
			flowOf(p.org).gain = append(flowOf(p.org).gain, p)
		}
	}
	if !o.forceRevokeAdmin {
		for org, f := range flows {
			if len(f.lose) == 0 {
				continue
			}
			before, err := s.adminHolders(t, org)
			if err != nil {
				return nil, err
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
	}
	for i, p := range plans {
		if !p.holdMove {
			continue
		}
		// The move is held: the user stays in its old organisation, as
		// its admin, with its badges under that organisation's rules.
		p.u.HeldOrg = p.moveFrom
		np, err := s.planGrants(t, p.u, eventID, now)
		if err != nil {
			return nil, err
		}
		np.holdAdmin, np.movedTo = true, p.org
		plans[i] = np
	}
	lost := map[string][]loss{}
	for _, p := range plans {
		badges, err := s.commitGrants(t, p, eventID, now)
		if err != nil {
			return nil, err
		}
		if len(badges) > 0 {
			lost[p.org] = append(lost[p.org], loss{user: p.u.ID, badges: badges})
		}
	}
	return lost, nil
}

// planGrants computes u's grants from the mapping, its retained grants, an
// open last-admin hold, and break-glass.
func (s *Store) planGrants(t *txn, u *userRec, eventID string, now time.Time) (*grantPlan, error) {
	sub, err := s.subject(t, u)
	if err != nil {
		return nil, err
	}
	org, err := s.userOrg(t, u)
	if err != nil {
		return nil, err
	}
	p := &grantPlan{u: u, org: org, sub: sub, want: s.opts.Mapping.Grants(sub)}
	// Retained badges stay in the organisation they were granted in: a user
	// moved to another one gets that one's rules only.
	if sub.Active && (u.MappedOrg == "" || u.MappedOrg == org) {
		for _, g := range u.Grants {
			if g.Source == mapping.SourceRetained && !slices.Contains(mapping.Badges(p.want), g.Badge) {
				p.want = append(p.want, g)
			}
		}
	}
	// An open last-admin hold keeps the badge until another admin exists
	// or the mapping grants it again (for a held move: until the user is
	// back in the organisation).
	hold, err := s.openHold(t, HoldLastAdmin, org, u.ID)
	if err != nil {
		return nil, err
	}
	dirOrg, err := s.organization(t, u.OrganizationID, u.DirectoryID)
	if err != nil {
		return nil, err
	}
	if hold != nil && hold.MovedTo != "" {
		if dirOrg == hold.OrganizationID {
			if err := s.closeHold(t, hold, ResolutionReleased, "the user is back in organisation "+dirOrg, eventID, now); err != nil {
				return nil, err
			}
		} else {
			p.want = append(p.want, mapping.Grant{Badge: hold.Badge, Rule: hold.Rule, Source: mapping.SourceHeld})
		}
	} else if hold != nil {
		if slices.Contains(mapping.Badges(p.want), hold.Badge) {
			if err := s.closeHold(t, hold, ResolutionReleased, "the mapping grants the badge again", eventID, now); err != nil {
				return nil, err
			}
		} else {
			p.want = append(p.want, mapping.Grant{Badge: hold.Badge, Rule: hold.Rule, Source: mapping.SourceHeld})
		}
	}
	if s.breakGlass(u) {
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
			p.skips = append(p.skips, AuditEntry{Time: now, EventID: eventID, OrganizationID: org, DirectoryID: u.DirectoryID, UserID: u.ID,
				Badge: b, Rule: g.Rule, Group: g.Group, Role: g.Role, Action: ActionSkip,
				Reason: "revocation not applied, break-glass account (" + revokeReason(u, sub) + ")"})
		}
	}
	return p, nil
}

// loss is what one change took from one user, for the breaker: the mapped
// badges it lost, or every badge when it lost them all.
type loss struct {
	user   string
	badges []mapping.Badge
	raw    []byte // badges as recorded (JSON), when read back
}

// commitGrants stores p's grants (with a held admin grant when the
// safeguard said so) and audits the difference. It returns the badges the
// user lost that count for the breaker: its mapped (non-default) badges
// lost, or every badge when it lost them all.
func (s *Store) commitGrants(t *txn, p *grantPlan, eventID string, now time.Time) (lost []mapping.Badge, err error) {
	u, admin := p.u, s.opts.Mapping.AdminBadge
	base := AuditEntry{Time: now, EventID: eventID, OrganizationID: p.org, DirectoryID: u.DirectoryID, UserID: u.ID}
	want := p.want
	entries := p.skips
	if p.holdAdmin {
		g := firstGrant(u.Grants, admin)
		h := &Hold{Kind: HoldLastAdmin, OrganizationID: p.org, UserID: u.ID, Badge: admin, Rule: g.Rule,
			Reason:  "revoking " + string(admin) + " (" + revokeReason(u, p.sub) + ") would leave organisation " + p.org + " without an admin",
			EventID: eventID, CreatedAt: now, MovedTo: p.movedTo}
		if p.movedTo != "" {
			h.Reason = "moving the user to organisation " + p.movedTo + " would leave organisation " + p.org + " without an admin"
		}
		if err := s.openNewHold(t, h); err != nil {
			return nil, err
		}
		want = append(want, mapping.Grant{Badge: admin, Rule: g.Rule, Group: g.Group, Role: g.Role, Source: mapping.SourceHeld})
		e := base
		e.Badge, e.Action, e.Rule, e.Group, e.Role = admin, ActionHold, g.Rule, g.Group, g.Role
		e.Reason = h.Reason + fmt.Sprintf(" (hold %d)", h.ID)
		entries = append(entries, e)
	}
	oldBadges := mapping.Badges(u.Grants)
	finalBadges := mapping.Badges(want)
	for _, b := range oldBadges {
		if !slices.Contains(finalBadges, b) {
			g := firstGrant(u.Grants, b)
			e := base
			e.Badge, e.Action, e.Rule, e.Group, e.Role, e.Reason = b, ActionRevoke, g.Rule, g.Group, g.Role, revokeGrantReason(u, p.sub, g)
			entries = append(entries, e)
		}
	}
	for _, b := range finalBadges {
		if !slices.Contains(oldBadges, b) {
			g := firstGrant(want, b)
			e := base
			e.Badge, e.Action, e.Rule, e.Group, e.Role = b, ActionGrant, g.Rule, g.Group, g.Role
			e.Reason = grantReason(g)
			entries = append(entries, e)
		}
	}
	for _, e := range entries {
		if err := s.addAudit(t, e); err != nil {
			return nil, err
		}
	}
	slices.SortFunc(want, compareGrants)
	want = slices.Compact(want)
	for _, b := range oldBadges {
		if !slices.Contains(finalBadges, b) && (len(finalBadges) == 0 || !slices.Contains(s.opts.Mapping.DefaultBadges, b)) {
			lost = append(lost, b)
		}
	}
	if err := s.indexAdmin(t, u, p.org, slices.Contains(finalBadges, admin)); err != nil {
		return nil, err
	}
	if err := s.indexHolder(t, u, p.org, s.holdsMapped(finalBadges)); err != nil {
		return nil, err
	}
	if grantsEqual(u.Grants, want) {
		return lost, nil
	}
	if len(want) == 0 {
		want = nil
	}
	u.Grants = want
	return lost, t.putUser(u)
}

func compareGrants(a, b mapping.Grant) int {
	for _, c := range [][2]string{{string(a.Badge), string(b.Badge)}, {a.Rule, b.Rule}, {a.Group, b.Group}, {a.Role, b.Role}, {string(a.Source), string(b.Source)}} {
		if r := strings.Compare(c[0], c[1]); r != 0 {
			return r
		}
	}
	return 0
}

func grantsEqual(a, b []mapping.Grant) bool {
	return slices.Equal(a, b)
}

func firstGrant(gs []mapping.Grant, badge mapping.Badge) mapping.Grant {
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
	case mapping.SourceHeld:
		return "kept by an open last-admin hold"
	case mapping.SourceRetained:
		return "retained after its rule was removed"
	}
	return "granted by " + g.Rule
}

// revokeGrantReason is revokeReason for the loss of grant g, naming the
// role when the IdP removed the role that granted it.
func revokeGrantReason(u *userRec, sub mapping.Subject, g mapping.Grant) string {
	if sub.Active && g.Source == "role" && !slices.Contains(sub.Roles, g.Role) {
		return "the IdP removed role " + g.Role
	}
	return revokeReason(u, sub)
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
