package storage

import (
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

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
	plans := make([]*grantPlan, 0, len(users))
	flows := adminFlows{}
	for _, u := range users {
		p, err := s.planGrants(t, u, eventID, now)
		if err != nil {
			return nil, err
		}
		plans = append(plans, p)
		flows.add(p, s.opts.Mapping.AdminBadge)
	}
	if !o.forceRevokeAdmin {
		if err := s.holdLastAdmins(t, flows); err != nil {
			return nil, err
		}
	}
	if err := s.holdMoves(t, plans, eventID, now); err != nil {
		return nil, err
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
	if err := s.keepHeldAdmin(t, p, eventID, now); err != nil {
		return nil, err
	}
	s.keepBreakGlass(p, eventID, now)
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
		g, e, err := s.openLastAdminHold(t, p, base, eventID, now)
		if err != nil {
			return nil, err
		}
		want = append(want, g)
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
