package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
)

// ErrHoldClosed is returned when approving or rejecting a hold that is not open.
var ErrHoldClosed = errors.New("hold is not open")

// Hold is a change sync did not make on its own.
type Hold struct {
	ID             uint64        `json:"id"`
	Kind           HoldKind      `json:"kind"`
	OrganizationID string        `json:"organization_id"`
	UserID         string        `json:"user_id,omitempty"`
	Badge          mapping.Badge `json:"badge,omitempty"`
	Rule           string        `json:"rule,omitempty"`
	Reason         string        `json:"reason"`
	EventID        string        `json:"event_id,omitempty"`
	CreatedAt      time.Time     `json:"created_at"`
	Deferred       int           `json:"deferred_events,omitempty"` // mass_deprovision: events waiting
	Users          int           `json:"users,omitempty"`           // mass_deprovision: users who would lose badges within the window
	// MovedTo: a last_admin hold on a move; the organisation the user was
	// moved to. Until the hold closes the user stays in OrganizationID.
	MovedTo       string         `json:"moved_to,omitempty"`
	ClosedAt      *time.Time     `json:"closed_at,omitempty"`
	Resolution    HoldResolution `json:"resolution,omitempty"`
	ClosedBecause string         `json:"closed_because,omitempty"`
}

// Open reports whether the hold is still open.
func (h *Hold) Open() bool { return h.ClosedAt == nil }

func (s *Store) openNewHold(t *txn, h *Hold) error {
	id, err := t.holds.NextSequence()
	if err != nil {
		return err
	}
	h.ID = id
	if err := putJSON(t.holds, u64(id), h); err != nil {
		return err
	}
	t.newHolds = append(t.newHolds, *h)
	return t.openHolds.Put(u64(id), nil)
}

func (s *Store) closeHold(t *txn, h *Hold, resolution HoldResolution, because, eventID string, now time.Time) error {
	h.ClosedAt, h.Resolution, h.ClosedBecause = &now, resolution, because
	if err := putJSON(t.holds, u64(h.ID), h); err != nil {
		return err
	}
	if err := t.openHolds.Delete(u64(h.ID)); err != nil {
		return err
	}
	if h.MovedTo != "" {
		// The user now belongs where the directory says.
		u, err := t.user(h.UserID)
		if err != nil {
			return err
		}
		if u != nil && u.HeldOrg == h.OrganizationID {
			u.HeldOrg = ""
			if err := t.putUser(u); err != nil {
				return err
			}
		}
	}
	return s.addAudit(t, AuditEntry{Time: now, EventID: eventID, OrganizationID: h.OrganizationID, UserID: h.UserID,
		Badge: h.Badge, Rule: h.Rule, Action: ActionRelease, Reason: fmt.Sprintf("hold %d (%s) %s: %s", h.ID, h.Kind, resolution, because)})
}

// userOrg returns the organisation u belongs to for the safeguards and the
// mapping: the one a held move keeps it in, else its own, else its
// directory's.
func (s *Store) userOrg(t *txn, u *userRec) (string, error) {
	if u.HeldOrg != "" {
		return u.HeldOrg, nil
	}
	return s.organization(t, u.OrganizationID, u.DirectoryID)
}

// eachOpenHold calls fn for every open hold, oldest first.
func (s *Store) eachOpenHold(t *txn, fn func(h *Hold) error) error {
	var ids [][]byte
	if err := t.openHolds.ForEach(func(k, _ []byte) error { ids = append(ids, slices.Clone(k)); return nil }); err != nil {
		return err
	}
	for _, k := range ids {
		h, err := getJSON[Hold](t.holds, k)
		if err != nil {
			return err
		}
		if h != nil && h.Open() {
			if err := fn(h); err != nil {
				return err
			}
		}
	}
	return nil
}

// openHold returns the open hold of kind for (org, user), if any.
func (s *Store) openHold(t *txn, kind HoldKind, org, userID string) (*Hold, error) {
	if k, _ := t.openHolds.Cursor().First(); k == nil {
		return nil, nil
	}
	var found *Hold
	err := s.eachOpenHold(t, func(h *Hold) error {
		if found == nil && h.Kind == kind && h.OrganizationID == org && h.UserID == userID {
			found = h
		}
		return nil
	})
	return found, err
}

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

// eventOrg returns the organisation an event belongs to: its payload's,
// else its directory's.
func (s *Store) eventOrg(t *txn, ev *events.Event) (string, error) {
	switch {
	case ev.User != nil && ev.User.OrganizationID != "":
		return ev.User.OrganizationID, nil
	case ev.Group != nil && ev.Group.OrganizationID != "":
		return ev.Group.OrganizationID, nil
	case ev.Directory != nil && ev.Directory.OrganizationID != "":
		return ev.Directory.OrganizationID, nil
	}
	return s.organization(t, "", ev.DirectoryID)
}

// errTrip aborts a batch whose event at index would trip org's breaker.
type errTrip struct {
	index int
	org   string
	// What tripped it: users losing badges within the window, the limit
	// and the holders it was computed from, users per badge lost.
	users, holders int
	limit          float64
	perBadge       map[mapping.Badge]int
}

func (e *errTrip) Error() string {
	return fmt.Sprintf("mass-deprovisioning breaker tripped for %s at event %d", e.org, e.index)
}

// badgesByLoss returns the badges lost, mapped ones first, then by the
// number of users losing them, then by name.
func (e *errTrip) badgesByLoss(defaults []mapping.Badge) []mapping.Badge {
	out := make([]mapping.Badge, 0, len(e.perBadge))
	for b := range e.perBadge {
		out = append(out, b)
	}
	slices.SortFunc(out, func(x, y mapping.Badge) int {
		dx, dy := slices.Contains(defaults, x), slices.Contains(defaults, y)
		switch {
		case dx != dy && dy:
			return -1
		case dx != dy:
			return 1
		}
		if d := e.perBadge[y] - e.perBadge[x]; d != 0 {
			return d
		}
		return strings.Compare(string(x), string(y))
	})
	return out
}

// Describe says how Limit is computed for holders, e.g. "min(count 25,
// max(floor 10, 50% of 20 holders of a mapped badge))".
func (b Breaker) Describe(holders int) string {
	pct := fmt.Sprintf("max(floor %d, %g%% of %d holders of a mapped badge)", b.Floor, b.Percent, holders)
	switch {
	case b.Percent <= 0:
		return fmt.Sprintf("count %d", b.Count)
	case b.Count <= 0:
		return pct
	}
	return fmt.Sprintf("min(count %d, %s)", b.Count, pct)
}

// Limit is how many users of an organisation with holders holders of a
// mapped badge may lose badges within Window: min(Count, max(Floor,
// Percent% of holders)), Count and Percent each ignored when zero. The
// breaker trips when more users than that would.
func (b Breaker) Limit(holders int) float64 {
	limit := math.Inf(1)
	if b.Percent > 0 {
		limit = math.Max(float64(b.Floor), b.Percent*float64(holders)/100)
	}
	if b.Count > 0 {
		limit = math.Min(limit, float64(b.Count))
	}
	return limit
}

// minLimit is the least Limit can be, whatever the holders.
func (b Breaker) minLimit() float64 {
	if b.Percent > 0 {
		return b.Limit(0)
	}
	return float64(b.Count)
}

// checkBreaker records the users the change took badges from and trips the
// breaker when, within the window, more users of an organisation would lose
// a mapped badge (or every badge) than its limit allows.
func (s *Store) checkBreaker(t *txn, c *change, index int) error {
	b := s.opts.Safeguards.MaxDeprovisions
	if len(c.losses) == 0 || (b.Count <= 0 && b.Percent <= 0) {
		return nil
	}
	at := c.ev.CreatedAt
	orgs := make([]string, 0, len(c.losses))
	for org := range c.losses {
		orgs = append(orgs, org)
	}
	slices.Sort(orgs)
	for _, org := range orgs {
		ls := c.losses[org]
		recent, err := s.lossesNear(t, org, at, b.Window)
		if err != nil {
			return err
		}
		// Users, not events: a user who loses badges twice within the
		// window (inactive, active, inactive) counts once.
		wave := make(map[string]bool, len(recent)+len(ls))
		for _, l := range recent {
			wave[l.user] = true
		}
		for _, l := range ls {
			wave[l.user] = true
		}
		if total := len(wave); float64(total) > b.minLimit() {
			// The holders before the wave: those holding a mapped badge
			// now, and those the wave took their last one from.
			holders := s.orgHolders(t, org)
			for uid := range wave {
				u, err := t.user(uid)
				if err != nil {
					return err
				}
				if u == nil || u.MappedOrg != org {
					holders++
				}
			}
			if limit := b.Limit(holders); float64(total) > limit {
				// Per badge, the users losing it (decoded only now: a
				// long wave reads its records once per event).
				lost := map[mapping.Badge]map[string]bool{}
				for _, l := range append(recent, ls...) {
					badges := l.badges
					if badges == nil && len(l.raw) > 0 {
						if err := json.Unmarshal(l.raw, &badges); err != nil {
							return fmt.Errorf("deprovision record of %s: %w", l.user, err)
						}
					}
					for _, badge := range badges {
						if lost[badge] == nil {
							lost[badge] = map[string]bool{}
						}
						lost[badge][l.user] = true
					}
				}
				per := make(map[mapping.Badge]int, len(lost))
				for badge, users := range lost {
					per[badge] = len(users)
				}
				return &errTrip{index: index, org: org, users: total, holders: holders, limit: limit, perBadge: per}
			}
		}
		for _, l := range ls {
			k := append(append(pair(org, ""), u64(uint64(at.UnixNano()))...), append([]byte{0}, l.user...)...)
			v, err := json.Marshal(l.badges)
			if err != nil {
				return err
			}
			if err := t.deprov.Put(k, v); err != nil {
				return err
			}
		}
	}
	return nil
}

// lossesNear returns org's recorded losses whose event time is within
// window of at (a user who lost badges twice is listed twice), their badges
// undecoded (raw; valid until the transaction ends). Records written before
// the badges were kept have none.
func (s *Store) lossesNear(t *txn, org string, at time.Time, window time.Duration) ([]loss, error) {
	prefix := pair(org, "")
	lo := append(slices.Clone(prefix), u64(uint64(max(at.Add(-window).UnixNano(), 0)))...)
	hi := uint64(at.Add(window).UnixNano())
	var out []loss
	c := t.deprov.Cursor()
	for k, v := c.Seek(lo); k != nil && len(k) >= len(prefix)+8 && string(k[:len(prefix)]) == string(prefix); k, v = c.Next() {
		if beUint64(k[len(prefix):]) > hi {
			break
		}
		if len(k) > len(prefix)+9 {
			out = append(out, loss{user: string(k[len(prefix)+9:]), raw: v})
		}
	}
	return out, nil
}

// pause opens a mass-deprovisioning hold for org, saying what tripped its
// breaker, and pauses its sync.
func (s *Store) pause(t *txn, trip *errTrip, ev *events.Event, now time.Time) error {
	org := trip.org
	if t.paused.Get([]byte(org)) != nil {
		return nil
	}
	b := s.opts.Safeguards.MaxDeprovisions
	badges := trip.badgesByLoss(s.opts.Mapping.DefaultBadges)
	lost := make([]string, 0, len(badges))
	for _, badge := range badges {
		lost = append(lost, fmt.Sprintf("%s: %d", badge, trip.perBadge[badge]))
	}
	var top mapping.Badge
	if len(badges) > 0 {
		top = badges[0]
	}
	h := &Hold{Kind: HoldMassDeprovision, OrganizationID: org, EventID: ev.ID, CreatedAt: now, Badge: top, Users: trip.users,
		Reason: fmt.Sprintf("sync paused: %d users would lose badges within %s (%s), more than the limit of %g = %s; "+
			"review with `dsyncd plan --org %s`, then `dsyncd resume %s`",
			trip.users, b.Window, strings.Join(lost, ", "), math.Floor(trip.limit*100)/100, b.Describe(trip.holders), org, org)}
	if err := s.openNewHold(t, h); err != nil {
		return err
	}
	if err := s.addAudit(t, AuditEntry{Time: now, EventID: ev.ID, OrganizationID: org, Badge: h.Badge, Action: ActionHold, Reason: h.Reason + fmt.Sprintf(" (hold %d)", h.ID)}); err != nil {
		return err
	}
	return t.paused.Put([]byte(org), u64(h.ID))
}

// deferIfPaused keeps ev for later when its organisation is paused.
func (s *Store) deferIfPaused(t *txn, org string, ev *events.Event, now time.Time) (bool, error) {
	if t.paused.Get([]byte(org)) == nil {
		return false, nil
	}
	return true, s.deferEvent(t, org, ev, now)
}

func (s *Store) deferEvent(t *txn, org string, ev *events.Event, now time.Time) error {
	if len(ev.Raw) == 0 {
		return errors.New("cannot defer an event without its raw body")
	}
	seq, err := t.pending.NextSequence()
	if err != nil {
		return err
	}
	if err := t.pending.Put(append(pair(org, ""), u64(seq)...), slices.Clone(ev.Raw)); err != nil {
		return err
	}
	if hid := t.paused.Get([]byte(org)); hid != nil {
		h, err := getJSON[Hold](t.holds, hid)
		if err != nil {
			return err
		}
		if h != nil {
			h.Deferred++
			if err := putJSON(t.holds, hid, h); err != nil {
				return err
			}
		}
	}
	return s.markProcessed(t, ev.ID, now)
}

// Holds returns the holds, open ones only when openOnly, oldest first.
func (s *Store) Holds(openOnly bool) ([]Hold, error) {
	var out []Hold
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		out, err = s.holds(newTxn(tx), openOnly)
		return err
	})
	return out, err
}

// holds lists the holds, open ones only when openOnly.
func (s *Store) holds(t *txn, openOnly bool) ([]Hold, error) {
	out := []Hold{}
	err := t.holds.ForEach(func(_, v []byte) error {
		var h Hold
		if err := json.Unmarshal(v, &h); err != nil {
			return err
		}
		if openOnly && !h.Open() {
			return nil
		}
		out = append(out, h)
		return nil
	})
	return out, err
}

// Paused lists the organisations whose sync is paused.
func (s *Store) Paused() ([]string, error) {
	var out []string
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bktPaused).ForEach(func(k, _ []byte) error { out = append(out, string(k)); return nil })
	})
	return out, err
}
