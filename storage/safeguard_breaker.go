package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
)

// The mass-deprovisioning breaker: when, within a window, more users of an
// organisation would lose a mapped badge (or every badge) than its limit
// allows, the batch is run again with the organisation paused from the
// event that tripped it (HoldMassDeprovision); its events are deferred, in
// order, until an operator decides. Approved (or resumed), the deferred
// events are applied; rejected, they are dropped and audited, and the
// organisation's sync goes on with what comes next.

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
	t.orgChange(ChangeOrgPaused, org, h)
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

// Breaker pauses an organisation's sync when more of its users than Limit
// allows would lose a mapped (non-default) badge, or every badge, within
// Window. A zero Count and Percent disable it.
type Breaker struct {
	// Count caps the limit: more than Count users always pause.
	Count int
	// Percent is the limit as a percentage of the organisation's holders of
	// a mapped badge, once past Floor.
	Percent float64
	// Floor is the least the percentage limit can be: in an organisation
	// of few holders up to Floor users may lose badges within Window.
	Floor  int
	Window time.Duration
}

// Resume applies the events deferred while org was paused, in order,
// through the other safeguards, and unpauses it. With dryRun it only says
// what it would do.
func (s *Store) Resume(org string, dryRun bool) (*Plan, error) {
	return s.resumeAt(time.Time{}, org, dryRun)
}

// resumeAt is Resume dated at (zero: the store's clock).
func (s *Store) resumeAt(at time.Time, org string, dryRun bool) (*Plan, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	counts := &Counts{}
	plan, err := s.simulate(at, func(t *txn, now time.Time) error {
		hid := t.paused.Get([]byte(org))
		if hid == nil {
			return fmt.Errorf("%w: %s", ErrNotPaused, org)
		}
		h, err := getJSON[Hold](t.holds, hid)
		if err != nil {
			return err
		}
		if h != nil && h.Open() {
			if err := s.closeHold(t, h, ResolutionApproved, "an operator resumed the organisation's sync", holdDecision(h), now); err != nil {
				return err
			}
		}
		return s.resume(t, org, now, counts)
	}, !dryRun)
	if plan != nil {
		plan.Applied = counts
	}
	return plan, err
}

func (s *Store) resume(t *txn, org string, now time.Time, counts *Counts) error {
	if err := t.paused.Delete([]byte(org)); err != nil {
		return err
	}
	t.orgChange(ChangeOrgResumed, org, nil)
	if err := deletePrefix(t.deprov, pair(org, "")); err != nil {
		return err
	}
	raws, err := takePrefix(t.pending, pair(org, ""))
	if err != nil {
		return err
	}
	for _, raw := range raws {
		ev, err := events.Decode(raw)
		if err != nil {
			counts.Add(Invalid)
			continue
		}
		o, err := s.applyOne(t, ev, now, applyFlags{resumed: true})
		if err != nil {
			return fmt.Errorf("resume %s: apply %s: %w", org, ev.ID, err)
		}
		counts.Add(o)
	}
	return nil
}

// HoldMassDeprovision is the kind of the breaker's holds.
const (
	// HoldMassDeprovision: the organisation's sync is paused because more
	// users than allowed would have lost a mapped badge (or every badge)
	// within the window; Badge names the one most of them would lose.
	HoldMassDeprovision HoldKind = "mass_deprovision"
)

// ErrNotPaused is returned by Resume for an organisation whose sync is not paused.
var ErrNotPaused = errors.New("organisation is not paused")

// massDeprovision is the breaker's holdRule.
type massDeprovision struct{}

func (massDeprovision) kind() HoldKind { return HoldMassDeprovision }

func (massDeprovision) decidable(*Hold, bool) error { return nil }

func (massDeprovision) closed(*Store, *txn, *Hold) error { return nil }

// decide resumes the organisation when approved (as Resume); rejected, its
// deferred events are dropped, audited, and its sync resumes with what
// comes next.
func (massDeprovision) decide(s *Store, t *txn, h *Hold, approve bool, now time.Time, counts *Counts) error {
	if approve {
		return s.resume(t, h.OrganizationID, now, counts)
	}
	raws, err := takePrefix(t.pending, pair(h.OrganizationID, ""))
	if err != nil {
		return err
	}
	if err := t.paused.Delete([]byte(h.OrganizationID)); err != nil {
		return err
	}
	t.orgChange(ChangeOrgResumed, h.OrganizationID, nil)
	if err := deletePrefix(t.deprov, pair(h.OrganizationID, "")); err != nil {
		return err
	}
	counts.Set(Dropped, len(raws))
	return s.addAudit(t, AuditEntry{Time: now, EventID: holdDecision(h), OrganizationID: h.OrganizationID, Action: ActionDrop,
		Reason: fmt.Sprintf("hold %d rejected: %d deferred events dropped", h.ID, len(raws))})
}
