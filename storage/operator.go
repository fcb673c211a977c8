package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
)

// ErrUnmapChoice is returned by ApplyMapping when a group rule was removed
// and nobody said whether its badges stay (keep) or go (remove).
var ErrUnmapChoice = errors.New("a removed group rule needs on_unmap: keep or remove")

// EventMappingChange is the event id audit entries of a mapping change carry.
const EventMappingChange = "config:mapping"

// EventOperatorPrefix starts the event id of audit entries an operator's
// decision causes: "operator:hold:<id>" for an approved or rejected hold.
const EventOperatorPrefix = "operator:"

// holdDecision is the event id of the audit entries of a decision on hold h.
func holdDecision(h *Hold) string {
	return EventOperatorPrefix + "hold:" + strconv.FormatUint(h.ID, 10)
}

var errRollback = errors.New("rollback")

var keyMapping = []byte("mapping")

// LeavesNoAdmin reports whether the change would take an organisation from
// at least one admin to none, were the last-admin safeguard not there.
func (p *Plan) LeavesNoAdmin() bool {
	for _, o := range p.Organizations {
		if o.AdminsBefore > 0 && o.AdminsAfter == 0 {
			return true
		}
		for _, h := range o.Holds {
			if h.Kind == HoldLastAdmin {
				return true
			}
		}
	}
	return false
}

// simulate runs fn in a write transaction and describes what it did; the
// transaction commits only when commit is true. fn is given at as now, or
// the store's clock when at is zero.
func (s *Store) simulate(at time.Time, fn func(t *txn, now time.Time) error, commit bool) (*Plan, error) {
	var plan *Plan
	var created []Hold
	wrote := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		t := newTxn(tx)
		now := at
		if now.IsZero() {
			now = s.opts.Now()
		}
		before, err := s.adminCounts(t)
		if err != nil {
			return err
		}
		start := t.audit.Sequence()
		if err := fn(t, now); err != nil {
			return err
		}
		if err := t.flush(); err != nil {
			return err
		}
		after, err := s.adminCounts(t)
		if err != nil {
			return err
		}
		plan, err = buildPlan(t, start, before, after)
		if err != nil {
			return err
		}
		created = t.newHolds
		if !commit {
			return errRollback
		}
		err = s.endChanges(t, now)
		wrote = t.changesWrote
		return err
	})
	if errors.Is(err, errRollback) {
		err = nil
	} else if err == nil {
		s.notifyHolds(created)
		if wrote > 0 {
			s.feedNote.broadcast()
		}
	}
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		err = ErrClosed
	}
	return plan, err
}

func buildPlan(t *txn, startSeq uint64, before, after map[string]int) (*Plan, error) {
	orgs := map[string]*OrgPlan{}
	get := func(org string) *OrgPlan {
		if o, ok := orgs[org]; ok {
			return o
		}
		o := &OrgPlan{Organization: org, Gains: map[mapping.Badge][]string{}, Losses: map[mapping.Badge][]string{}, Holds: []Hold{},
			AdminsBefore: before[org], AdminsAfter: after[org]}
		orgs[org] = o
		return o
	}
	c := t.audit.Cursor()
	for k, v := c.Seek(u64(startSeq + 1)); k != nil; k, v = c.Next() {
		var e AuditEntry
		if err := json.Unmarshal(v, &e); err != nil {
			return nil, err
		}
		o := get(e.OrganizationID)
		switch e.Action {
		case ActionGrant:
			o.Gains[e.Badge] = append(o.Gains[e.Badge], e.UserID)
		case ActionRevoke:
			o.Losses[e.Badge] = append(o.Losses[e.Badge], e.UserID)
		case ActionSkip:
			o.Kept = append(o.Kept, e)
		}
	}
	for _, h := range t.newHolds {
		o := get(h.OrganizationID)
		o.Holds = append(o.Holds, h)
	}
	for org, n := range before {
		if after[org] != n {
			get(org)
		}
	}
	p := &Plan{Organizations: []OrgPlan{}}
	for _, o := range orgs {
		for _, m := range []map[mapping.Badge][]string{o.Gains, o.Losses} {
			for b := range m {
				slices.Sort(m[b])
				m[b] = slices.Compact(m[b])
			}
		}
		p.Organizations = append(p.Organizations, *o)
	}
	slices.SortFunc(p.Organizations, func(a, b OrgPlan) int { return strings.Compare(a.Organization, b.Organization) })
	return p, nil
}

// StoredMapping returns the mapping the store's badges were last computed
// with, or nil if none was recorded yet.
func (s *Store) StoredMapping() (*mapping.Config, error) {
	var out *mapping.Config
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		out, err = getJSON[mapping.Config](tx.Bucket(bktMeta), keyMapping)
		return err
	})
	return out, err
}

// ApplyMapping makes m the mapping in force, recomputing every user's
// badges through the safeguards. A group rule of the previous mapping that m
// no longer has needs a choice: onUnmap ("keep" or "remove") for all of
// them, else the removed rule's own on_unmap; without one, ApplyMapping
// returns the plan and ErrUnmapChoice and changes nothing. With dryRun it
// only says what it would do.
func (s *Store) ApplyMapping(m mapping.Config, onUnmap string, dryRun bool) (*Plan, error) {
	return s.applyMapping(time.Time{}, m, onUnmap, dryRun)
}

// applyMapping is ApplyMapping dated at (zero: the store's clock).
func (s *Store) applyMapping(at time.Time, m mapping.Config, onUnmap string, dryRun bool) (*Plan, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev, err := getMappingUnlocked(s)
	if err != nil {
		return nil, err
	}
	var unmapped []UnmapPlan
	removed := map[string]string{} // rule -> choice
	if prev != nil {
		current := map[string]bool{}
		for _, r := range m.Groups {
			current[r.String()] = true
		}
		for _, r := range prev.Groups {
			if current[r.String()] {
				continue
			}
			choice := onUnmap
			if choice == "" {
				choice = r.OnUnmap
			}
			removed[r.String()] = choice
			unmapped = append(unmapped, UnmapPlan{Rule: r.String(), Choice: choice})
		}
	}
	if len(unmapped) > 0 {
		if err := s.countRuleUsers(unmapped); err != nil {
			return nil, err
		}
		var missing []string
		for _, u := range unmapped {
			if u.Choice != mapping.OnUnmapKeep && u.Choice != mapping.OnUnmapRemove {
				missing = append(missing, fmt.Sprintf("%s (%d users hold badges through it)", u.Rule, u.Users))
			}
		}
		if len(missing) > 0 {
			return &Plan{Organizations: []OrgPlan{}, Unmapped: unmapped}, fmt.Errorf("%w: %s; pass --on-unmap keep|remove or set on_unmap on the rule before removing it",
				ErrUnmapChoice, strings.Join(missing, ", "))
		}
	}
	old := s.opts.Mapping
	s.opts.Mapping = m
	plan, err := s.simulate(at, func(t *txn, now time.Time) error {
		ids, err := liveUserIDs(t)
		if err != nil {
			return err
		}
		users := make([]*userRec, 0, len(ids))
		for _, id := range ids {
			u, err := t.user(id)
			if err != nil {
				return err
			}
			if u == nil || u.Deleted {
				continue
			}
			retained := false
			for i, g := range u.Grants {
				if choice, ok := removed[g.Rule]; ok && choice == mapping.OnUnmapKeep && g.Source == "group" {
					u.Grants[i].Source = mapping.SourceRetained
					retained = true
				}
			}
			if retained {
				// Stored now: regrant compares against these grants and
				// writes nothing when the badges stay the same.
				if err := t.putUser(u); err != nil {
					return err
				}
			}
			users = append(users, u)
		}
		// One change: the last-admin safeguard looks at the whole mapping change.
		if _, err := s.regrant(t, users, EventMappingChange, now, regrantOpts{}); err != nil {
			return err
		}
		if err := s.reevaluateHolds(t, EventMappingChange, now); err != nil {
			return err
		}
		return putJSON(t.meta, keyMapping, m)
	}, !dryRun)
	if plan != nil {
		plan.Unmapped = unmapped
	}
	if err != nil || dryRun {
		s.opts.Mapping = old
	}
	return plan, err
}

func getMappingUnlocked(s *Store) (*mapping.Config, error) {
	var out *mapping.Config
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		out, err = getJSON[mapping.Config](tx.Bucket(bktMeta), keyMapping)
		return err
	})
	return out, err
}

func (s *Store) countRuleUsers(rules []UnmapPlan) error {
	return s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bktUsers).ForEach(func(_, v []byte) error {
			u, err := decodeUser(v)
			if err != nil {
				return err
			}
			if u.Deleted {
				return nil
			}
			for i := range rules {
				if slices.ContainsFunc(u.Grants, func(g mapping.Grant) bool { return g.Rule == rules[i].Rule }) {
					rules[i].Users++
				}
			}
			return nil
		})
	})
}

func liveUserIDs(t *txn) ([]string, error) {
	var ids []string
	err := t.users.ForEach(func(k, _ []byte) error { ids = append(ids, string(k)); return nil })
	return ids, err
}

// takePrefix deletes and returns the values under prefix, in key order.
func takePrefix(b *bolt.Bucket, prefix []byte) ([][]byte, error) {
	var out [][]byte
	var keys [][]byte
	c := b.Cursor()
	for k, v := c.Seek(prefix); k != nil && len(k) >= len(prefix) && string(k[:len(prefix)]) == string(prefix); k, v = c.Next() {
		out = append(out, slices.Clone(v))
		keys = append(keys, slices.Clone(k))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func deletePrefix(b *bolt.Bucket, prefix []byte) error {
	_, err := takePrefix(b, prefix)
	return err
}

// DecideHold approves or rejects an open hold.
//
// A last-admin hold approved applies the held revocation (the organisation
// may be left without an admin: the operator said so); rejected, the user
// keeps the badge as retained. A mass-deprovisioning hold approved resumes
// the organisation (as Resume); rejected, its deferred events are dropped,
// audited, and its sync resumes with what comes next.
func (s *Store) DecideHold(id uint64, approve, dryRun bool) (*Plan, error) {
	return s.decideHold(time.Time{}, id, approve, dryRun)
}

// decideHold is DecideHold dated at (zero: the store's clock).
func (s *Store) decideHold(at time.Time, id uint64, approve, dryRun bool) (*Plan, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	counts := &Counts{}
	plan, err := s.simulate(at, func(t *txn, now time.Time) error {
		h, err := getJSON[Hold](t.holds, u64(id))
		if err != nil {
			return err
		}
		if h == nil {
			return fmt.Errorf("hold %d: %w", id, ErrNotFound)
		}
		if !h.Open() {
			return fmt.Errorf("hold %d: %w", id, ErrHoldClosed)
		}
		rule := holdRuleOf(h.Kind)
		if rule == nil {
			return fmt.Errorf("hold %d: no safeguard holds %q", id, h.Kind)
		}
		if err := rule.decidable(h, approve); err != nil {
			return fmt.Errorf("hold %d: %w", id, err)
		}
		res, because := ResolutionRejected, "rejected by an operator"
		if approve {
			res, because = ResolutionApproved, "approved by an operator"
		}
		if err := s.closeHold(t, h, res, because, holdDecision(h), now); err != nil {
			return err
		}
		return rule.decide(s, t, h, approve, now, counts)
	}, !dryRun)
	if plan != nil {
		plan.Applied = counts
	}
	return plan, err
}

// Preview says what applying evs would do, without changing the store. It
// runs them as Apply does, breaker included: an event that would trip its
// organisation's breaker pauses the organisation and is counted as
// "would_pause"; the organisation's later events are then "deferred", and
// the plan shows no loss for them.
func (s *Store) Preview(evs []*events.Event) (*Plan, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	trips := map[int]*errTrip{} // event index -> the trip that paused its organisation there
	for {
		counts := &Counts{}
		plan, err := s.simulate(time.Time{}, func(t *txn, now time.Time) error {
			return s.applyInOrder(t, evs, trips, now, func(i int, o Outcome) {
				if _, tripped := trips[i]; tripped {
					o = WouldPause
				}
				counts.Add(o)
			})
		}, false)
		var trip *errTrip
		if errors.As(err, &trip) {
			trips[trip.index] = trip
			continue
		}
		if plan != nil {
			plan.Applied = counts
		}
		return plan, err
	}
}

// BackupTo writes a consistent copy of the store to w while it stays in use.
func (s *Store) BackupTo(w io.Writer) (int64, error) {
	var n int64
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}
