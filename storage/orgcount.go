package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Bucket org_users keeps, per organisation, its users: those not deleted
// whose organization_id (or, when empty, their directory's) is the
// organisation, so that no reader needs to read every user of the store for
// it (the breaker's percentage was of this number, which made a wave of
// deprovisionings quadratic before the bucket; it is now of the holders of
// a mapped badge, holders.go, and orgUserCount has no caller left).
//
// The counts are those of the committed users: a transaction keeps them up to
// date at flush. Until then its own changes are the users it marked dirty,
// whose committed contribution is still in the users bucket (user records are
// written only at flush); a transaction that changes a directory's
// organisation counts by reading every user instead, until its flush.

// verifyOrgCounts makes every count the breaker takes also count by reading
// every user, and fail on a difference (set by the package's tests).
var verifyOrgCounts = false

// contribution is the organisation u counts in, or "" (deleted, absent, or
// no organisation known). dirOrg is the organisation of u's directory.
func contribution(u *userRec, dirOrg string) string {
	switch {
	case u == nil || u.Deleted:
		return ""
	case u.OrganizationID != "":
		return u.OrganizationID
	}
	return dirOrg
}

// committedUser is what org_users and the user indexes (index.go) need of
// a user as committed.
type committedUser struct {
	present, deleted, listed bool
	org, dir                 string
	email, idp, heldOrg      string
}

func noteCommitted(u *userRec) committedUser {
	if u == nil {
		return committedUser{}
	}
	return committedUser{present: true, deleted: u.Deleted, listed: listedRec(u), org: u.OrganizationID, dir: u.DirectoryID,
		email: u.Email, idp: u.IdpID, heldOrg: u.HeldOrg}
}

// committedDirOrg returns the organisation of directory id as committed
// before this transaction.
func (t *txn) committedDirOrg(id string) (string, error) {
	if o, ok := t.dirOrig[id]; ok {
		return o, nil
	}
	if o, ok := t.dirOrgs[id]; ok {
		return o, nil
	}
	d, err := getJSON[dirRec](t.dirs, []byte(id))
	if err != nil {
		return "", err
	}
	var o string
	if d != nil {
		o = d.OrganizationID
	}
	t.dirOrgs[id] = o
	return o, nil
}

// currentDirOrg returns the organisation of directory id in this transaction.
func (t *txn) currentDirOrg(id string) (string, error) {
	d, err := t.dir(id)
	if err != nil || d == nil {
		return "", err
	}
	return d.OrganizationID, nil
}

// committed returns user id as committed before this transaction.
func (t *txn) committed(id string) (committedUser, error) {
	c, ok := t.userOrig[id]
	if !ok {
		u, err := getUser(t.users, []byte(id))
		if err != nil {
			return c, err
		}
		c = noteCommitted(u)
		t.userOrig[id] = c
	}
	return c, nil
}

// committedContribution is where user id counted before this transaction.
func (t *txn) committedContribution(id string) (string, error) {
	c, err := t.committed(id)
	if err != nil {
		return "", err
	}
	switch {
	case !c.present || c.deleted:
		return "", nil
	case c.org != "":
		return c.org, nil
	}
	return t.committedDirOrg(c.dir)
}

// dirOrgsChanged reports whether this transaction changed a directory's organisation.
func (t *txn) dirOrgsChanged() (bool, error) {
	for id, before := range t.dirOrig {
		now, err := t.currentDirOrg(id)
		if err != nil {
			return false, err
		}
		if now != before {
			return true, nil
		}
	}
	return false, nil
}

func storedCount(b *bolt.Bucket, org string) int64 {
	v := b.Get([]byte(org))
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

// orgUserCount returns the number of org's users, this transaction's changes included.
func (s *Store) orgUserCount(t *txn, org string) (int, error) {
	changed, err := t.dirOrgsChanged()
	if err != nil {
		return 0, err
	}
	if changed {
		return scanOrgUsers(t, org)
	}
	n := storedCount(t.orgUsers, org)
	err = t.eachMove(func(before, after string) {
		if before == org {
			n--
		}
		if after == org {
			n++
		}
	})
	if err != nil {
		return 0, err
	}
	if verifyOrgCounts {
		want, err := scanOrgUsers(t, org)
		if err != nil {
			return 0, err
		}
		if int(n) != want {
			return 0, fmt.Errorf("storage: org_users: %s counts %d users, a scan %d", org, n, want)
		}
	}
	return int(n), nil
}

// eachMove calls fn with where each user this transaction changed counted
// before it and counts now.
func (t *txn) eachMove(fn func(before, after string)) error {
	for id := range t.dirtyUsers {
		before, err := t.committedContribution(id)
		if err != nil {
			return err
		}
		u := t.userCache[id]
		var dirOrg string
		if u != nil {
			if dirOrg, err = t.currentDirOrg(u.DirectoryID); err != nil {
				return err
			}
		}
		fn(before, contribution(u, dirOrg))
	}
	return nil
}

// eachContribution calls fn with the organisation every user of dirUsers
// counts in, reading users and directories' organisations through the
// given lookups. A user counts once, under its own directory.
func eachContribution(dirUsers *bolt.Bucket, user func(id string) (*userRec, error), dirOrg func(id string) (string, error), fn func(org string)) error {
	return dirUsers.ForEach(func(k, _ []byte) error {
		dirID, uid := splitPair(k)
		u, err := user(uid)
		if err != nil || u == nil || u.DirectoryID != dirID {
			return err
		}
		o, err := dirOrg(dirID)
		if err != nil {
			return err
		}
		if c := contribution(u, o); c != "" {
			fn(c)
		}
		return nil
	})
}

// scanOrgUsers counts org's users by reading every user, in this
// transaction's state.
func scanOrgUsers(t *txn, org string) (int, error) {
	n := 0
	err := eachContribution(t.dirUsers, t.user, t.currentDirOrg, func(c string) {
		if c == org {
			n++
		}
	})
	return n, err
}

// flushOrgUsers brings org_users up to date with this transaction's changes;
// flush calls it before it writes the users.
func (t *txn) flushOrgUsers() error {
	delta := map[string]int64{}
	err := t.eachMove(func(before, after string) {
		delta[before]--
		delta[after]++
	})
	if err != nil {
		return err
	}
	// Users not changed here whose directory's organisation changed move with it.
	for dirID, before := range t.dirOrig {
		now, err := t.currentDirOrg(dirID)
		if err != nil {
			return err
		}
		if now == before {
			continue
		}
		err = eachPrefix(t.dirUsers, dirID, func(uid string) error {
			if t.dirtyUsers[uid] {
				return nil
			}
			u, err := t.user(uid)
			if err != nil || u == nil || u.DirectoryID != dirID {
				return err
			}
			delta[contribution(u, before)]--
			delta[contribution(u, now)]++
			return nil
		})
		if err != nil {
			return err
		}
	}
	orgs := make([]string, 0, len(delta))
	for org, d := range delta {
		if org != "" && d != 0 {
			orgs = append(orgs, org)
		}
	}
	slices.Sort(orgs)
	for _, org := range orgs {
		n := storedCount(t.orgUsers, org) + delta[org]
		if n < 0 {
			return fmt.Errorf("storage: org_users: %s would count %d users", org, n)
		}
		var err error
		if n == 0 {
			err = t.orgUsers.Delete([]byte(org))
		} else {
			err = t.orgUsers.Put([]byte(org), u64(uint64(n)))
		}
		if err != nil {
			return err
		}
	}
	// The committed state is now this transaction's.
	clear(t.userOrig)
	clear(t.dirOrig)
	clear(t.dirOrgs)
	return nil
}

// countOrgUsers counts every organisation's users from the users and
// directories buckets of tx.
func countOrgUsers(tx *bolt.Tx) (map[string]int64, error) {
	dirs, users := tx.Bucket(bktDirs), tx.Bucket(bktUsers)
	dirOrgs := map[string]string{}
	user := func(id string) (*userRec, error) { return getUser(users, []byte(id)) }
	dirOrg := func(id string) (string, error) {
		if o, ok := dirOrgs[id]; ok {
			return o, nil
		}
		d, err := getJSON[dirRec](dirs, []byte(id))
		if err != nil || d == nil {
			return "", err
		}
		dirOrgs[id] = d.OrganizationID
		return d.OrganizationID, nil
	}
	counts := map[string]int64{}
	err := eachContribution(tx.Bucket(bktDirUsers), user, dirOrg, func(c string) { counts[c]++ })
	return counts, err
}

// buildOrgUsers recounts org_users at Open (a read of every user, ~1 µs
// each), so that a store written before the bucket existed, or by an older
// dsyncd that did not keep it, starts with the right counts. It writes only
// the counts that differ.
func buildOrgUsers(tx *bolt.Tx) error {
	counts, err := countOrgUsers(tx)
	if err != nil {
		return fmt.Errorf("count users per organisation: %w", err)
	}
	return writeCounts(tx.Bucket(bktOrgUsers), counts)
}

// writeCounts makes the per-organisation count bucket b hold exactly counts:
// it deletes the organisations counts lacks and writes only the counts that
// differ.
func writeCounts(b *bolt.Bucket, counts map[string]int64) error {
	var stale [][]byte
	_ = b.ForEach(func(k, _ []byte) error {
		if _, ok := counts[string(k)]; !ok {
			stale = append(stale, slices.Clone(k))
		}
		return nil
	})
	for _, k := range stale {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	for org, n := range counts {
		if b.Get([]byte(org)) != nil && storedCount(b, org) == n {
			continue
		}
		if err := b.Put([]byte(org), u64(uint64(n))); err != nil {
			return err
		}
	}
	return nil
}

// checkOrgUsers compares org_users with a count of the users.
func checkOrgUsers(tx *bolt.Tx) error {
	counts, err := countOrgUsers(tx)
	if err != nil {
		return err
	}
	var errs []error
	b := tx.Bucket(bktOrgUsers)
	_ = b.ForEach(func(k, v []byte) error {
		if n := counts[string(k)]; len(v) != 8 || int64(binary.BigEndian.Uint64(v)) != n {
			errs = append(errs, fmt.Errorf("org_users: %s stored as %x, counted %d", k, v, n))
		}
		delete(counts, string(k))
		return nil
	})
	for org, n := range counts {
		errs = append(errs, fmt.Errorf("org_users: %s missing, counted %d", org, n))
	}
	return errors.Join(errs...)
}
