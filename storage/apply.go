package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
)

// pruneBatch bounds how many expired processed-id records one Apply removes.
const pruneBatch = 512

// Apply applies evs, in order, in one bbolt transaction: either every event's
// effect, processed-id record and audit entries are committed, or none are.
// It returns one Outcome per event.
//
// When an event would trip the mass-deprovisioning breaker of its
// organisation, the transaction is rolled back and run again with that
// organisation paused from that event on: the event and the organisation's
// later events are deferred, the others applied.
func (s *Store) Apply(evs []*events.Event) ([]Outcome, error) {
	return s.ApplyAt(evs, 0)
}

// ApplyAt is Apply that also records, in the same transaction, seq as the
// last stream sequence applied (see AppliedSeq); 0 records nothing.
func (s *Store) ApplyAt(evs []*events.Event, seq uint64) ([]Outcome, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	trips := map[int]*errTrip{} // event index -> the trip that paused its organisation there
	for {
		out, err := s.applyBatch(evs, trips, seq)
		var trip *errTrip
		if errors.As(err, &trip) {
			trips[trip.index] = trip
			continue
		}
		if err != nil {
			if errors.Is(err, bolt.ErrDatabaseNotOpen) {
				return nil, ErrClosed
			}
			return nil, err
		}
		return out, nil
	}
}

func (s *Store) applyBatch(evs []*events.Event, trips map[int]*errTrip, seq uint64) ([]Outcome, error) {
	out := make([]Outcome, len(evs))
	var created []Hold
	wrote := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		t := newTxn(tx)
		now := s.opts.Now()
		if err := s.applyInOrder(t, evs, trips, now, func(i int, o Outcome) { out[i] = o }); err != nil {
			return err
		}
		if err := t.flush(); err != nil {
			return err
		}
		created = t.newHolds
		if err := recordAppliedSeq(tx, seq); err != nil {
			return err
		}
		// Each event wrote its change records as it was applied; nothing
		// is left unless a view changed outside of them.
		if err := s.endChanges(t, now); err != nil {
			return err
		}
		wrote = t.changesWrote
		if err := s.pruneChanges(t, now, wrote); err != nil {
			return err
		}
		return s.prune(t, now)
	})
	if err == nil {
		s.notifyHolds(created)
		if wrote > 0 {
			s.feedNote.broadcast()
		}
	}
	return out, err
}

// applyInOrder applies evs in t, in order, and reports each one's outcome.
// At the index of each of trips it pauses that organisation and defers the
// event instead (its later events are then deferred too). An event that
// would trip a breaker ends it with its *errTrip: run again with that trip.
//
// Each event is dated by when the stream stored it (events.Event.Stored;
// now when it has none), and its change records are written right after it
// (writeChanges): so the feed, like the store, depends only on the events
// and their order, not on how they fell into transactions, and every node
// applying the stream writes the same feed.
func (s *Store) applyInOrder(t *txn, evs []*events.Event, trips map[int]*errTrip, now time.Time, outcome func(i int, o Outcome)) error {
	for i, ev := range evs {
		at := eventTime(ev, now)
		if trip, ok := trips[i]; ok {
			if err := s.pause(t, trip, ev, at); err != nil {
				return err
			}
			if err := s.deferEvent(t, trip.org, ev, at); err != nil {
				return err
			}
			outcome(i, Deferred)
			if err := s.writeChanges(t, at); err != nil {
				return err
			}
			continue
		}
		o, err := s.applyOne(t, ev, at, applyFlags{index: i})
		if err != nil {
			var trip *errTrip
			if errors.As(err, &trip) {
				return err
			}
			return fmt.Errorf("apply %s %s: %w", ev.Type, ev.ID, err)
		}
		outcome(i, o)
		if err := s.writeChanges(t, at); err != nil {
			return err
		}
	}
	return nil
}

// eventTime is when ev counts as applied: when the stream stored it, or
// now for an event from elsewhere.
func eventTime(ev *events.Event, now time.Time) time.Time {
	if ev.Stored.IsZero() {
		return now
	}
	return ev.Stored.UTC()
}

func (s *Store) notifyHolds(hs []Hold) {
	if s.opts.OnHold == nil {
		return
	}
	for _, h := range hs {
		s.opts.OnHold(h)
	}
}

// applyFlags modify how one event is applied.
type applyFlags struct {
	index int // position in the batch, for breaker trips
	// resumed: the event was deferred while its organisation was paused and
	// is applied now by an operator: no duplicate check, no pause check, no breaker.
	resumed bool
}

func (s *Store) applyOne(t *txn, ev *events.Event, now time.Time, fl applyFlags) (Outcome, error) {
	if ev.Ignored() {
		return Ignored, nil
	}
	if ev.ID == "" {
		return "", errors.New("event without id")
	}
	if s.FutureDated(ev, now) {
		return Future, nil
	}
	if !fl.resumed && t.processed.Get([]byte(ev.ID)) != nil {
		return Duplicate, nil
	}
	org, err := s.eventOrg(t, ev)
	if err != nil {
		return "", err
	}
	if !fl.resumed {
		if paused, err := s.deferIfPaused(t, org, ev, now); err != nil || paused {
			return Deferred, err
		}
	}
	kind, _ := events.KindOf(ev.Type)
	c := &change{s: s, t: t, ev: ev, ends: kind.Ends, k: toKey(ev.Key()), now: now, losses: map[string][]loss{}}
	switch kind.Payload {
	case events.PayloadDirectory:
		err = c.directory()
	case events.PayloadUser:
		err = c.user()
	case events.PayloadGroup:
		err = c.group()
	case events.PayloadMembership:
		err = c.membership()
	default:
		return Ignored, nil
	}
	if err == nil {
		err = c.recompute()
	}
	if err == nil && !fl.resumed {
		err = s.checkBreaker(t, c, fl.index)
	}
	if err == nil {
		err = s.reevaluateHolds(t, ev.ID, now)
	}
	if err != nil {
		return "", err
	}
	if !fl.resumed {
		if err := s.markProcessed(t, ev.ID, now); err != nil {
			return "", err
		}
	}
	if c.changed {
		return Applied, nil
	}
	return Stale, nil
}

// FutureDated reports whether ev's created_at is later than now plus
// Options.MaxFuture (never, when MaxFuture is zero).
func (s *Store) FutureDated(ev *events.Event, now time.Time) bool {
	return s.opts.MaxFuture > 0 && ev.CreatedAt.After(now.Add(s.opts.MaxFuture))
}

func (s *Store) markProcessed(t *txn, id string, now time.Time) error {
	ns := uint64(now.UnixNano())
	if err := t.processed.Put([]byte(id), u64(ns)); err != nil {
		return err
	}
	return t.processedAt.Put(append(u64(ns), id...), nil)
}

// prune forgets processed event ids older than the processed retention and
// audit entries older than the audit retention, a bounded number of each per call.
func (s *Store) prune(t *txn, now time.Time) error {
	limit := uint64(now.Add(-s.opts.ProcessedRetention).UnixNano())
	c := t.processedAt.Cursor()
	n := 0
	for k, _ := c.First(); k != nil && n < pruneBatch; k, _ = c.First() {
		if len(k) < 8 || beUint64(k[:8]) >= limit {
			break
		}
		if err := t.processed.Delete(k[8:]); err != nil {
			return err
		}
		if err := c.Delete(); err != nil {
			return err
		}
		n++
	}
	return s.pruneAudit(t, now)
}

// pruneAudit removes audit entries older than the audit retention, oldest
// first (sequence order, which is time order). It removes at most pruneBatch
// plus twice what the transaction added, so the trail shrinks back to the
// retention however busy the store is.
func (s *Store) pruneAudit(t *txn, now time.Time) error {
	if s.opts.AuditRetention <= 0 {
		return nil
	}
	limit := now.Add(-s.opts.AuditRetention)
	budget := pruneBatch + 2*int(t.audit.Sequence()-t.auditStart)
	c := t.audit.Cursor()
	n := 0
	for k, v := c.First(); k != nil && n < budget; k, v = c.First() {
		var e struct {
			Time   time.Time   `json:"time"`
			Action AuditAction `json:"action"`
		}
		if err := json.Unmarshal(v, &e); err != nil {
			return fmt.Errorf("audit entry %x: %w", k, err)
		}
		if !e.Time.Before(limit) {
			return nil
		}
		if e.Action == ActionDrop {
			if err := t.tx.Bucket(bktDrops).Put(slices.Clone(k), slices.Clone(v)); err != nil {
				return err
			}
		}
		if err := c.Delete(); err != nil {
			return err
		}
		n++
	}
	return nil
}

func beUint64(b []byte) uint64 {
	var v uint64
	for _, c := range b[:8] {
		v = v<<8 | uint64(c)
	}
	return v
}

// change is the application of one event.
type change struct {
	s       *Store
	t       *txn
	ev      *events.Event
	ends    bool // the event's kind ends what it names (events.Kind.Ends)
	k       key
	now     time.Time
	changed bool
	touched []string // user ids whose badges must be recomputed
	// losses lists, per organisation, the users this event took a mapped
	// badge from, or every badge (for the breaker).
	losses map[string][]loss
}

func (c *change) touch(ids ...string) { c.touched = append(c.touched, ids...) }

func (c *change) directory() error {
	d0 := c.ev.Directory
	d, err := c.t.dir(d0.ID)
	if err != nil {
		return err
	}
	deleted := c.ends
	if d == nil {
		d = &dirRec{}
	} else if !c.k.newer(d.Key) {
		// An older dsync.deleted still deprovisions what is older than it;
		// with keep it changes nothing: stale.
		if deleted && c.k.newer(d.DeletedKey) && c.s.opts.Safeguards.OnDirectoryDeleted == OnDirectoryDeletedDeprovision {
			d.DeletedKey = c.k
			c.changed = true
			if err := c.t.putDir(d); err != nil {
				return err
			}
			return c.deprovisionDirectory(d)
		}
		return nil
	}
	prevOrg := d.OrganizationID
	prevDeletedKey := d.DeletedKey
	rec := dirRec{Directory: *d0, Key: c.k, Deleted: deleted, DeletedKey: d.DeletedKey}
	if rec.OrganizationID == "" {
		rec.OrganizationID = prevOrg
	}
	if rec.Name == "" && deleted {
		rec.Name = d.Name
	}
	if deleted {
		rec.DeletedKey = c.k
	}
	c.changed = true
	if err := c.t.putDir(&rec); err != nil {
		return err
	}
	if deleted && rec.DeletedKey != prevDeletedKey {
		if err := c.deprovisionDirectory(&rec); err != nil {
			return err
		}
	}
	if rec.OrganizationID != prevOrg {
		// Users and groups without an organisation of their own take the
		// directory's: their badges may depend on it.
		return eachPrefix(c.t.dirUsers, rec.ID, func(uid string) error { c.touch(uid); return nil })
	}
	return nil
}

// setUser applies the user payload u0 if it is newer than what the store
// holds. deleted marks a dsync.user.deleted.
func (c *change) setUser(u0 *events.User, deleted bool) error {
	floor, err := c.s.floor(c.t, u0.DirectoryID)
	if err != nil {
		return err
	}
	if !c.k.newer(floor) {
		return nil
	}
	u, err := c.t.user(u0.ID)
	if err != nil {
		return err
	}
	// A break-glass account is recognised by what the store holds or by
	// the payload: a delete may be the first event about it.
	payload := &userRec{User: *u0}
	breakGlass := deleted && (c.s.breakGlass(payload) || (u != nil && c.s.breakGlass(u)))
	if u == nil {
		u = &userRec{}
	} else if !c.k.newer(u.Key) {
		// An older event that carried the roles still sets them when it
		// is newer than the event they came from.
		if err := c.lateRoles(u, u0); err != nil {
			return err
		}
		if deleted && c.k.newer(u.DeletedKey) && !breakGlass {
			// An older delete leaves the newer state of the user alone but
			// still ends every membership older than it.
			return c.lateUserDelete(u, floor)
		}
		return nil
	}
	if breakGlass {
		c.changed = true // not stale: the skip is audited
		if u.ID == "" {
			u = payload
		}
		return c.s.auditBreakGlass(c.t, c.ev, u, c.now, "user deleted in the directory")
	}
	rec := userRec{User: *u0, Key: c.k, Deleted: deleted, DeletedKey: u.DeletedKey, Grants: u.Grants, AdminIndexed: u.AdminIndexed, AdminOrg: u.AdminOrg,
		RolesKey: u.RolesKey, BreakGlassBy: u.BreakGlassBy, HeldOrg: u.HeldOrg, MappedOrg: u.MappedOrg}
	// Absent is not empty: a payload without the role attribute leaves the
	// roles (and the badges they grant) as they are; roles: [] empties them.
	// Roles from before the directory's deprovisioning are forgotten with it.
	switch {
	case u0.RolesSent:
		rec.RolesKey = c.k
	case u.RolesKey.newer(floor):
		rec.Roles = u.Roles
	default:
		rec.Roles, rec.RolesKey = nil, key{}
	}
	if rec.State == "" {
		rec.State = u.State // a payload without a state does not make the user active
	}
	if deleted {
		rec.DeletedKey = c.k
		if rec.Email == "" {
			rec.Email = u.Email
		}
	}
	if err := c.pinBreakGlass(u, &rec); err != nil {
		return err
	}
	c.changed = true
	c.touch(rec.ID)
	return c.t.putUser(&rec)
}

func (c *change) user() error {
	return c.setUser(c.ev.User, c.ends)
}

// setGroup applies the group payload g0 if newer; it returns whether the
// group's identity (name, idp id, organisation) or existence changed, which
// can change the badges of all its members.
func (c *change) setGroup(g0 *events.Group, deleted bool) (bool, error) {
	floor, err := c.s.floor(c.t, g0.DirectoryID)
	if err != nil {
		return false, err
	}
	if !c.k.newer(floor) {
		return false, nil
	}
	g, err := c.t.group(g0.ID)
	if err != nil {
		return false, err
	}
	if g == nil {
		g = &groupRec{}
	} else if !c.k.newer(g.Key) {
		if deleted && c.k.newer(g.DeletedKey) {
			// An older delete leaves the newer state of the group alone but
			// still ends every membership older than it.
			return false, c.lateGroupDelete(g, floor)
		}
		return false, nil
	}
	rec := groupRec{Group: *g0, Key: c.k, Deleted: deleted, DeletedKey: g.DeletedKey}
	if deleted {
		rec.DeletedKey = c.k
	}
	// A payload without the name or idp_id (absent, null or empty) leaves
	// them as they were: group rules match on them.
	if rec.Name == "" {
		rec.Name = g.Name
	}
	if rec.IdpID == "" {
		rec.IdpID = g.IdpID
	}
	c.changed = true
	identity := g.Name != rec.Name || g.IdpID != rec.IdpID || g.OrganizationID != rec.OrganizationID || g.Deleted != rec.Deleted ||
		rec.DeletedKey != g.DeletedKey
	return identity, c.t.putGroup(&rec)
}

// lateRoles applies the roles of u0, the payload of an event older than
// u's state, if it carried them and is newer than the event they came from.
func (c *change) lateRoles(u *userRec, u0 *events.User) error {
	if !u0.RolesSent || !c.k.newer(u.RolesKey) {
		return nil
	}
	u.Roles, u.RolesKey = u0.Roles, c.k
	c.changed = true
	c.touch(u.ID)
	return c.t.putUser(u)
}

// lateUserDelete records a dsync.user.deleted older than the user's state:
// the memberships older than it end. It changes something when one of
// them was not already ended by a newer event.
func (c *change) lateUserDelete(u *userRec, floor key) error {
	err := eachPrefix(c.t.membersByUser, u.ID, func(gid string) error {
		m, err := c.t.member(gid, u.ID)
		if err != nil || m == nil {
			return err
		}
		g, err := c.t.group(gid)
		if err != nil {
			return err
		}
		if c.k.newer(memberKey(m, g, u, floor)) {
			c.changed = true
			return errStop
		}
		return nil
	})
	if err != nil {
		return err
	}
	u.DeletedKey = c.k
	c.touch(u.ID)
	return c.t.putUser(u)
}

// lateGroupDelete is lateUserDelete for a dsync.group.deleted.
func (c *change) lateGroupDelete(g *groupRec, floor key) error {
	err := eachPrefix(c.t.members, g.ID, func(uid string) error {
		m, err := c.t.member(g.ID, uid)
		if err != nil || m == nil {
			return err
		}
		u, err := c.t.user(uid)
		if err != nil {
			return err
		}
		if c.k.newer(memberKey(m, g, u, floor)) {
			c.changed = true
		}
		c.touch(uid)
		return nil
	})
	if err != nil {
		return err
	}
	g.DeletedKey = c.k
	return c.t.putGroup(g)
}

// memberKey is the key of the newest event that touched a membership: its
// own add or remove, its group's or user's delete, its directory's
// deprovisioning.
func memberKey(m *memberRec, g *groupRec, u *userRec, floor key) key {
	k := floor
	if m != nil {
		k = maxKey(k, m.Key)
	}
	if g != nil {
		k = maxKey(k, g.DeletedKey)
	}
	if u != nil {
		k = maxKey(k, u.DeletedKey)
	}
	return k
}

func (c *change) touchMembers(groupID string) error {
	return eachPrefix(c.t.members, groupID, func(uid string) error { c.touch(uid); return nil })
}

func (c *change) group() error {
	identity, err := c.setGroup(c.ev.Group, c.ends)
	if err != nil || !identity {
		return err
	}
	return c.touchMembers(c.ev.Group.ID)
}

func (c *change) membership() error {
	g0, u0 := c.ev.Group, c.ev.User
	identity, err := c.setGroup(g0, false)
	if err != nil {
		return err
	}
	if identity {
		if err := c.touchMembers(g0.ID); err != nil {
			return err
		}
	}
	if err := c.setUser(u0, false); err != nil {
		return err
	}
	floor, err := c.s.floor(c.t, c.ev.DirectoryID)
	if err != nil {
		return err
	}
	if !c.k.newer(floor) {
		return nil
	}
	m, err := c.t.member(g0.ID, u0.ID)
	if err != nil {
		return err
	}
	if m != nil && !c.k.newer(m.Key) {
		return nil
	}
	g, err := c.t.group(g0.ID)
	if err != nil {
		return err
	}
	u, err := c.t.user(u0.ID)
	if err != nil {
		return err
	}
	// A membership event older than its user's or group's delete changes
	// nothing (it is stale for the membership), though it is recorded.
	if c.k.newer(memberKey(m, g, u, floor)) {
		c.changed = true
		c.touch(u0.ID)
	}
	return c.t.putMember(g0.ID, u0.ID, &memberRec{Key: c.k, Present: !c.ends})
}

// isMember reports whether u is, in effect, a member of group g: the newest
// event touching the membership — add, remove, the group's or the user's
// delete, the directory's deprovisioning — is an add.
func isMember(m *memberRec, g *groupRec, u *userRec, floor key) bool {
	if m == nil || g == nil || u == nil || !m.Present || g.Deleted || u.Deleted {
		return false
	}
	return m.Key.newer(maxKey(g.DeletedKey, u.DeletedKey, floor))
}

// userGroups returns the groups u is a member of, sorted by id (cached in
// a write transaction: txn.groupsOf).
func (s *Store) userGroups(t *txn, u *userRec) ([]*groupRec, error) {
	if e, ok := t.groupsOf[u.ID]; ok && e.holdsFor(u) {
		return e.groups, nil
	}
	gs, err := s.memberOf(t, u)
	if err == nil && t.groupsOf != nil {
		t.groupsOf[u.ID] = groupsEntry{groups: gs, deleted: u.Deleted, deletedKey: u.DeletedKey, dir: u.DirectoryID}
	}
	return gs, err
}

func (s *Store) memberOf(t *txn, u *userRec) ([]*groupRec, error) {
	floor, err := s.floor(t, u.DirectoryID)
	if err != nil {
		return nil, err
	}
	var out []*groupRec
	err = eachPrefix(t.membersByUser, u.ID, func(gid string) error {
		m, err := t.member(gid, u.ID)
		if err != nil {
			return err
		}
		g, err := t.group(gid)
		if err != nil {
			return err
		}
		if isMember(m, g, u, floor) {
			out = append(out, g)
		}
		return nil
	})
	return out, err
}

// organization returns the organisation of a user: its own, else its directory's.
func (s *Store) organization(t *txn, orgID, dirID string) (string, error) {
	if orgID != "" {
		return orgID, nil
	}
	d, err := t.dir(dirID)
	if err != nil || d == nil {
		return "", err
	}
	return d.OrganizationID, nil
}

// subject builds the mapping input for u.
func (s *Store) subject(t *txn, u *userRec) (mapping.Subject, error) {
	sub := mapping.Subject{Active: !u.Deleted && isActiveState(u.State), Roles: u.Roles}
	if !sub.Active {
		return sub, nil
	}
	groups, err := s.userGroups(t, u)
	if err != nil {
		return sub, err
	}
	userOrg, err := s.userOrg(t, u)
	if err != nil {
		return sub, err
	}
	for _, g := range groups {
		org, err := s.organization(t, g.OrganizationID, g.DirectoryID)
		if err != nil {
			return sub, err
		}
		if userOrg != "" && org != "" && org != userOrg {
			// A group of another organisation (the user moved): its
			// rules are not the user's organisation's.
			continue
		}
		sub.Groups = append(sub.Groups, mapping.Group{ID: g.ID, IdpID: g.IdpID, Name: g.Name, OrganizationID: org})
	}
	return sub, nil
}

func isActiveState(state string) bool {
	switch strings.ToLower(state) {
	case "inactive", "suspended", "deleted":
		return false
	}
	return true
}

// recompute recomputes, as one change, the badges of every user the event touched.
func (c *change) recompute() error {
	slices.Sort(c.touched)
	var users []*userRec
	for _, uid := range slices.Compact(c.touched) {
		u, err := c.t.user(uid)
		if err != nil {
			return err
		}
		if u != nil {
			users = append(users, u)
		}
	}
	if len(users) == 0 {
		return nil
	}
	lost, err := c.s.regrant(c.t, users, c.ev.ID, c.now, regrantOpts{})
	if err != nil {
		return err
	}
	for org, ls := range lost {
		c.losses[org] = append(c.losses[org], ls...)
	}
	return nil
}
