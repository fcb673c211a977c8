package storage

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// The user indexes answer the read API's lookups without reading every
// user. Each holds, for every listed user (listed: not deleted, or deleted
// but still holding a badge, which only a last-admin hold keeps), one key
// with an empty value:
//
//	user_email   lower-cased email \x00 user id
//	user_idp     idp id \x00 directory id \x00 user id
//	org_members  organisation \x00 user id
//
// A user's organisation is the one a held move keeps it in, else its own,
// else its directory's (userOrg). The indexes are kept at flush, in the
// transaction that writes the users (flushUserIndex): a user whose email,
// idp id, directory, organisation and listing did not change costs no write.
// Open builds them for a store written before they existed (indexVersion in
// meta), and Check compares them with the users.

// indexVersion, under metaIndexKey in meta, says the user indexes are built.
const (
	metaIndexKey = "user_index"
	indexVersion = "1"
)

// indexEntry is what a user contributes to the indexes.
type indexEntry struct {
	listed                bool
	email, idp, dir, org  string
	emailLower, emailOrig string // emailLower caches strings.ToLower(emailOrig)
}

func (e *indexEntry) lowerEmail() string {
	if e.emailLower == "" && e.emailOrig != "" {
		e.emailLower = strings.ToLower(e.emailOrig)
	}
	return e.emailLower
}

// same reports whether e and o write the same keys.
func (e *indexEntry) same(o *indexEntry) bool {
	if e.listed != o.listed {
		return false
	}
	if !e.listed {
		return true
	}
	return e.idp == o.idp && e.dir == o.dir && e.org == o.org &&
		(e.emailOrig == o.emailOrig || e.lowerEmail() == o.lowerEmail())
}

// listedRec says whether u is listed (read surfaces show it).
func listedRec(u *userRec) bool { return u != nil && (!u.Deleted || len(u.Grants) > 0) }

// entryOf is what u contributes, dirOrg giving a directory's organisation.
func entryOf(u *userRec, dirOrg func(id string) (string, error)) (indexEntry, error) {
	if !listedRec(u) {
		return indexEntry{}, nil
	}
	e := indexEntry{listed: true, emailOrig: u.Email, idp: u.IdpID, dir: u.DirectoryID, org: u.HeldOrg}
	if e.org == "" {
		e.org = u.OrganizationID
	}
	if e.org == "" {
		o, err := dirOrg(u.DirectoryID)
		if err != nil {
			return e, err
		}
		e.org = o
	}
	return e, nil
}

func emailKey(email, uid string) []byte  { return pair(strings.ToLower(email), uid) }
func idpKey(idp, dir, uid string) []byte { return pair(string(pair(idp, dir)), uid) }

// The indexes, in the order keys names them.
const (
	ixEmail = iota
	ixIdp
	ixOrg
)

var indexBuckets = [][]byte{ixEmail: bktUserEmail, ixIdp: bktUserIdp, ixOrg: bktOrgMembers}

// keys calls fn with each index (ixEmail, …) and key of e for user uid.
func (e *indexEntry) keys(uid string, fn func(ix int, k []byte) error) error {
	if !e.listed {
		return nil
	}
	if e.emailOrig != "" {
		if err := fn(ixEmail, pair(e.lowerEmail(), uid)); err != nil {
			return err
		}
	}
	if e.idp != "" {
		if err := fn(ixIdp, idpKey(e.idp, e.dir, uid)); err != nil {
			return err
		}
	}
	if e.org != "" {
		return fn(ixOrg, pair(e.org, uid))
	}
	return nil
}

// committedEntry is what user id contributed before this transaction.
func (t *txn) committedEntry(id string) (indexEntry, error) {
	c, err := t.committed(id)
	if err != nil || !c.listed {
		return indexEntry{}, err
	}
	e := indexEntry{listed: true, emailOrig: c.email, idp: c.idp, dir: c.dir, org: c.heldOrg}
	if e.org == "" {
		e.org = c.org
	}
	if e.org == "" {
		if e.org, err = t.committedDirOrg(c.dir); err != nil {
			return e, err
		}
	}
	return e, nil
}

// flushUserIndex brings the user indexes up to date with this transaction's
// changes; flush calls it before anything else, while the committed state
// (userOrig, dirOrig) is still known.
func (t *txn) flushUserIndex() error {
	put := func(ix int, k []byte) error { return t.index[ix].Put(k, nil) }
	del := func(ix int, k []byte) error { return t.index[ix].Delete(k) }
	for id := range t.dirtyUsers {
		before, err := t.committedEntry(id)
		if err != nil {
			return err
		}
		after, err := entryOf(t.userCache[id], t.currentDirOrg)
		if err != nil {
			return err
		}
		if before.same(&after) {
			continue
		}
		if err := before.keys(id, del); err != nil {
			return err
		}
		if err := after.keys(id, put); err != nil {
			return err
		}
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
			if err != nil || !listedRec(u) || u.DirectoryID != dirID || u.HeldOrg != "" || u.OrganizationID != "" {
				return err
			}
			if before != "" {
				if err := t.index[ixOrg].Delete(pair(before, uid)); err != nil {
					return err
				}
			}
			if now != "" {
				return t.index[ixOrg].Put(pair(now, uid), nil)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// eachIndexKey calls fn with every index key the users of tx should have.
func eachIndexKey(tx *bolt.Tx, fn func(ix int, k []byte) error) error {
	dirOrg := dirOrgLookup(tx)
	return tx.Bucket(bktUsers).ForEach(func(k, v []byte) error {
		u, err := decodeUser(v)
		if err != nil {
			return fmt.Errorf("user %q: %w", k, err)
		}
		e, err := entryOf(u, dirOrg)
		if err != nil {
			return err
		}
		return e.keys(u.ID, fn)
	})
}

// buildUserIndex builds the user indexes at Open when the store has none
// yet (written before they existed): a read of every user.
func buildUserIndex(tx *bolt.Tx) error {
	meta := tx.Bucket(bktMeta)
	if string(meta.Get([]byte(metaIndexKey))) == indexVersion {
		return nil
	}
	for _, name := range indexBuckets {
		if err := tx.DeleteBucket(name); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
			return err
		}
		if _, err := tx.CreateBucket(name); err != nil {
			return err
		}
	}
	err := eachIndexKey(tx, func(ix int, k []byte) error { return tx.Bucket(indexBuckets[ix]).Put(k, nil) })
	if err != nil {
		return fmt.Errorf("index users: %w", err)
	}
	return meta.Put([]byte(metaIndexKey), []byte(indexVersion))
}

// checkUserIndex compares the user indexes with the users.
func checkUserIndex(tx *bolt.Tx) error {
	want := make([]map[string]bool, len(indexBuckets))
	for i := range want {
		want[i] = map[string]bool{}
	}
	err := eachIndexKey(tx, func(ix int, k []byte) error {
		want[ix][string(k)] = true
		return nil
	})
	if err != nil {
		return err
	}
	var errs []error
	for i, name := range indexBuckets {
		w := want[i]
		_ = tx.Bucket(name).ForEach(func(k, _ []byte) error {
			if !w[string(k)] {
				errs = append(errs, fmt.Errorf("%s: stale key %q", name, k))
			}
			delete(w, string(k))
			return nil
		})
		missing := make([]string, 0, len(w))
		for k := range w {
			missing = append(missing, k)
		}
		slices.Sort(missing)
		for _, k := range missing {
			errs = append(errs, fmt.Errorf("%s: missing key %q", name, k))
		}
	}
	return errors.Join(errs...)
}
