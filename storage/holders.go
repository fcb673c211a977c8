package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/dsyncd/dsyncd/mapping"
)

// The breaker's percentage is of an organisation's holders of a mapped
// badge: users holding a badge other than the default badges (dormant and
// deactivated accounts hold none). Bucket org_holders keeps that number per
// organisation, and each user's MappedOrg the organisation it counts in,
// both updated where grants are committed (commitGrants), so that the
// breaker reads one number instead of every user.

// holdsMapped reports whether badges include a mapped (non-default) badge.
func (s *Store) holdsMapped(badges []mapping.Badge) bool {
	for _, b := range badges {
		if !slices.Contains(s.opts.Mapping.DefaultBadges, b) {
			return true
		}
	}
	return false
}

// indexHolder keeps org_holders and u.MappedOrg in step with whether u, of
// organisation org, holds a mapped badge.
func (s *Store) indexHolder(t *txn, u *userRec, org string, has bool) error {
	want := ""
	if has {
		want = org
	}
	if u.MappedOrg == want {
		return nil
	}
	if err := addHolders(t.orgHolders, u.MappedOrg, -1); err != nil {
		return err
	}
	if err := addHolders(t.orgHolders, want, 1); err != nil {
		return err
	}
	u.MappedOrg = want
	return t.putUser(u)
}

func addHolders(b *bolt.Bucket, org string, d int64) error {
	if org == "" {
		return nil
	}
	n := storedCount(b, org) + d
	switch {
	case n < 0:
		return fmt.Errorf("storage: org_holders: %s would count %d holders", org, n)
	case n == 0:
		return b.Delete([]byte(org))
	}
	return b.Put([]byte(org), u64(uint64(n)))
}

// orgHolders returns the number of org's holders of a mapped badge.
func (s *Store) orgHolders(t *txn, org string) int {
	return int(storedCount(t.orgHolders, org))
}

// holderOrgOf is where u counts as a holder, from its stored grants.
func holderOrgOf(u *userRec, defaults []mapping.Badge, dirOrg func(id string) (string, error)) (string, error) {
	mapped := false
	for _, b := range mapping.Badges(u.Grants) {
		if !slices.Contains(defaults, b) {
			mapped = true
		}
	}
	switch {
	case !mapped:
		return "", nil
	case u.HeldOrg != "":
		return u.HeldOrg, nil
	case u.OrganizationID != "":
		return u.OrganizationID, nil
	}
	return dirOrg(u.DirectoryID)
}

func dirOrgLookup(tx *bolt.Tx) func(id string) (string, error) {
	dirs := tx.Bucket(bktDirs)
	cache := map[string]string{}
	return func(id string) (string, error) {
		if o, ok := cache[id]; ok {
			return o, nil
		}
		d, err := getJSON[dirRec](dirs, []byte(id))
		if err != nil || d == nil {
			return "", err
		}
		cache[id] = d.OrganizationID
		return d.OrganizationID, nil
	}
}

// buildOrgHolders brings every user's MappedOrg and org_holders up to date
// at Open (a read of every user), so that a store written before they
// existed, or under other default badges, starts with the right counts.
// It writes only what differs.
func buildOrgHolders(tx *bolt.Tx, defaults []mapping.Badge) error {
	users := tx.Bucket(bktUsers)
	dirOrg := dirOrgLookup(tx)
	counts := map[string]int64{}
	var fix []*userRec
	err := users.ForEach(func(k, v []byte) error {
		u, err := decodeUser(v)
		if err != nil {
			return fmt.Errorf("user %q: %w", k, err)
		}
		org, err := holderOrgOf(u, defaults, dirOrg)
		if err != nil {
			return err
		}
		if org != "" {
			counts[org]++
		}
		if org != u.MappedOrg {
			u.MappedOrg = org
			fix = append(fix, u)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("count holders per organisation: %w", err)
	}
	for _, u := range fix {
		if err := users.Put([]byte(u.ID), u.encode()); err != nil {
			return err
		}
	}
	return writeCounts(tx.Bucket(bktOrgHolders), counts)
}

// checkOrgHolders compares every user's MappedOrg with its grants and
// org_holders with a count of them.
func checkOrgHolders(tx *bolt.Tx, defaults []mapping.Badge) error {
	dirOrg := dirOrgLookup(tx)
	counts := map[string]int64{}
	var errs []error
	err := tx.Bucket(bktUsers).ForEach(func(k, v []byte) error {
		u, err := decodeUser(v)
		if err != nil {
			return err
		}
		org, err := holderOrgOf(u, defaults, dirOrg)
		if err != nil {
			return err
		}
		if org != u.MappedOrg {
			errs = append(errs, fmt.Errorf("org_holders: user %s counts in %q, its badges %v say %q", k, u.MappedOrg, mapping.Badges(u.Grants), org))
		}
		if u.MappedOrg != "" {
			counts[u.MappedOrg]++
		}
		return nil
	})
	if err != nil {
		return err
	}
	_ = tx.Bucket(bktOrgHolders).ForEach(func(k, v []byte) error {
		if n := counts[string(k)]; len(v) != 8 || int64(binary.BigEndian.Uint64(v)) != n {
			errs = append(errs, fmt.Errorf("org_holders: %s stored as %x, counted %d", k, v, n))
		}
		delete(counts, string(k))
		return nil
	})
	for org, n := range counts {
		errs = append(errs, fmt.Errorf("org_holders: %s missing, counted %d", org, n))
	}
	return errors.Join(errs...)
}
