package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/dsyncd/dsyncd/mapping"
)

// The read API's lookups, through the user indexes (index.go). Each shows
// the listed users (not deleted, or kept an admin by a last-admin hold) as
// User does.

// UsersByEmail returns the listed users whose email is email, compared
// case-insensitively, sorted by id: one address may be a user of several
// directories. None is an empty list.
func (s *Store) UsersByEmail(email string) ([]UserView, error) {
	return s.lookup(ixEmail, pair(strings.ToLower(email), ""), func(u *userRec, _ string) bool {
		return strings.EqualFold(u.Email, email)
	})
}

// UsersByIdpID returns the listed users whose IdP id is idpID, sorted by
// id; only those of directory dirID when it is set (an IdP id is unique
// within its directory only). None is an empty list.
func (s *Store) UsersByIdpID(idpID, dirID string) ([]UserView, error) {
	prefix := pair(idpID, "")
	if dirID != "" {
		prefix = pair(string(pair(idpID, dirID)), "")
	}
	return s.lookup(ixIdp, prefix, func(u *userRec, rest string) bool {
		return u.IdpID == idpID && (dirID == "" || u.DirectoryID == dirID)
	})
}

// lookup shows the users under prefix in index ix that match: the rest of
// each key after prefix ends with "\x00" + user id, or is the id.
func (s *Store) lookup(ix int, prefix []byte, match func(u *userRec, rest string) bool) ([]UserView, error) {
	out := []UserView{}
	err := s.view(func(tx *bolt.Tx) error {
		t := newTxn(tx)
		var ids []string
		c := t.index[ix].Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			rest := string(k[len(prefix):])
			if i := strings.LastIndexByte(rest, 0); i >= 0 {
				rest = rest[i+1:]
			}
			ids = append(ids, rest)
		}
		slices.Sort(ids)
		ids = slices.Compact(ids)
		held, err := s.heldUsers(t)
		if err != nil {
			return err
		}
		for _, id := range ids {
			u, err := t.user(id)
			if err != nil {
				return err
			}
			if u == nil || !listed(u, held) || !match(u, id) {
				continue
			}
			v, err := s.userView(t, u, held[id])
			if err != nil {
				return err
			}
			out = append(out, v)
		}
		return nil
	})
	return out, err
}

// listed reports whether u is shown by the read surfaces: not deleted, or
// kept an admin by an open last-admin hold.
func listed(u *userRec, held map[string]uint64) bool { return !u.Deleted || held[u.ID] != 0 }

// The page sizes of OrganizationUsers.
const (
	DefaultPageLimit = 100
	MaxPageLimit     = 1000
)

// UserFilter selects the users of an organisation for OrganizationUsers.
// Zero fields match every user.
type UserFilter struct {
	Badge mapping.Badge
	// State is the state the directory gave (active, inactive, …),
	// compared case-insensitively.
	State string
	// After is a user id: the page holds users with greater ids only.
	After string
	// Limit is the page's size: DefaultPageLimit when 0, at most MaxPageLimit.
	Limit int
}

// UserPage is one page of an organisation's users, sorted by id.
type UserPage struct {
	Users []UserView
	// More says users may follow the last one: the next page is the one
	// after it (it may turn out empty when a filter matches none of them).
	More bool
}

// OrganizationUsers returns a page of org's listed users matching f, sorted
// by id. Paging by the last id seen is stable: a user listed in org from
// the first page to the last is on exactly one page, whatever changes
// meanwhile. An organisation the store never heard of is ErrNotFound.
func (s *Store) OrganizationUsers(org string, f UserFilter) (*UserPage, error) {
	if f.Limit <= 0 {
		f.Limit = DefaultPageLimit
	}
	f.Limit = min(f.Limit, MaxPageLimit)
	page := &UserPage{Users: []UserView{}}
	err := s.view(func(tx *bolt.Tx) error {
		t := newTxn(tx)
		known, err := orgKnown(t, org)
		if err != nil {
			return err
		}
		if !known {
			return fmt.Errorf("organization %q: %w", org, ErrNotFound)
		}
		held, err := s.heldUsers(t)
		if err != nil {
			return err
		}
		prefix := pair(org, "")
		c := t.index[ixOrg].Cursor()
		k, _ := c.Seek(append(slices.Clone(prefix), f.After...))
		for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			id := string(k[len(prefix):])
			if id <= f.After {
				continue
			}
			if len(page.Users) == f.Limit {
				page.More = true
				return nil
			}
			u, err := t.user(id)
			if err != nil {
				return err
			}
			if u == nil || !listed(u, held) || (f.State != "" && !strings.EqualFold(u.State, f.State)) ||
				(f.Badge != "" && !slices.Contains(mapping.Badges(u.Grants), f.Badge)) {
				continue
			}
			v, err := s.userView(t, u, held[id])
			if err != nil {
				return err
			}
			page.Users = append(page.Users, v)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return page, nil
}

// OrganizationView is an organisation at a glance.
type OrganizationView struct {
	ID string `json:"id"`
	// Directories are the ids of its directories (deleted ones included).
	Directories []string `json:"directories"`
	// Users counts its listed users, as OrganizationUsers lists them.
	Users int `json:"users"`
	// Admins counts the holders of the admin badge, those a last-admin
	// hold keeps included; HeldAdmins how many of them a hold keeps.
	Admins     int `json:"admins"`
	HeldAdmins int `json:"held_admins"`
	// Paused: the mass-deprovisioning breaker paused its sync, by hold
	// PausedBy, until an operator resumes it.
	Paused   bool   `json:"paused"`
	PausedBy uint64 `json:"paused_by_hold,omitempty"`
	// OpenHolds are its open holds, oldest first.
	OpenHolds []Hold `json:"open_holds"`
}

// Organization returns org at a glance, or ErrNotFound for an organisation
// the store never heard of.
func (s *Store) Organization(org string) (*OrganizationView, error) {
	var out *OrganizationView
	err := s.view(func(tx *bolt.Tx) error {
		t := newTxn(tx)
		known, err := orgKnown(t, org)
		if err != nil {
			return err
		}
		if !known {
			return fmt.Errorf("organization %q: %w", org, ErrNotFound)
		}
		v := &OrganizationView{ID: org, Directories: []string{}, OpenHolds: []Hold{}}
		err = t.dirs.ForEach(func(k, b []byte) error {
			var d dirRec
			if err := json.Unmarshal(b, &d); err != nil {
				return fmt.Errorf("directory %q: %w", k, err)
			}
			if d.OrganizationID == org {
				v.Directories = append(v.Directories, d.ID)
			}
			return nil
		})
		if err != nil {
			return err
		}
		_ = eachPrefix(t.index[ixOrg], org, func(string) error { v.Users++; return nil })
		held := map[string]bool{}
		err = s.eachOpenHold(t, func(h *Hold) error {
			if h.OrganizationID != org {
				return nil
			}
			v.OpenHolds = append(v.OpenHolds, *h)
			if h.Kind == HoldLastAdmin {
				held[h.UserID] = true
			}
			return nil
		})
		if err != nil {
			return err
		}
		_ = eachPrefix(t.orgAdmins, org, func(uid string) error {
			v.Admins++
			if held[uid] {
				v.HeldAdmins++
			}
			return nil
		})
		if p := t.paused.Get([]byte(org)); p != nil {
			v.Paused = true
			if len(p) == 8 {
				v.PausedBy = binary.BigEndian.Uint64(p)
			}
		}
		out = v
		return nil
	})
	return out, err
}

// orgKnown reports whether the store knows organisation org: a directory,
// a listed user, an admin or a hold of it, or its sync paused.
func orgKnown(t *txn, org string) (bool, error) {
	if org == "" {
		return false, nil
	}
	if hasPrefix(t.index[ixOrg], pair(org, "")) || hasPrefix(t.orgAdmins, pair(org, "")) || t.paused.Get([]byte(org)) != nil {
		return true, nil
	}
	found := false
	err := t.dirs.ForEach(func(k, b []byte) error {
		var d struct {
			OrganizationID string `json:"organization_id"`
		}
		if err := json.Unmarshal(b, &d); err != nil {
			return fmt.Errorf("directory %q: %w", k, err)
		}
		found = found || d.OrganizationID == org
		return nil
	})
	if err != nil || found {
		return found, err
	}
	err = t.holds.ForEach(func(_, b []byte) error {
		var h struct {
			OrganizationID string `json:"organization_id"`
		}
		if json.Unmarshal(b, &h) == nil && h.OrganizationID == org {
			found = true
		}
		return nil
	})
	return found, err
}

// dirKnown reports whether the store knows directory id: its record, or
// users of it (a user event may come before the directory's).
func dirKnown(t *txn, id string) bool {
	return id != "" && (t.dirs.Get([]byte(id)) != nil || hasPrefix(t.dirUsers, pair(id, "")))
}

func hasPrefix(b *bolt.Bucket, prefix []byte) bool {
	k, _ := b.Cursor().Seek(prefix)
	return k != nil && bytes.HasPrefix(k, prefix)
}
