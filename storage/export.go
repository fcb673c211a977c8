package storage

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dsyncd/dsyncd/mapping"
)

// Snapshot is the canonical export: every list sorted by id, deleted users
// and groups left out.
type Snapshot struct {
	Directories []ExportDirectory `json:"directories"`
	Users       []ExportUser      `json:"users"`
	Groups      []ExportGroup     `json:"groups"`
	Holds       []ExportHold      `json:"holds"`
	// ChangeSeq is the seq of the last change record the snapshot
	// reflects, read in its transaction: a product that loads the
	// snapshot follows the change feed after it. /v1/export shows it as
	// change_seq; the canonical snapshot leaves it out.
	ChangeSeq uint64 `json:"-"`
}

// ExportHold is an open hold in the snapshot (without times, so that the
// snapshot stays byte-stable).
type ExportHold struct {
	ID             uint64        `json:"id"`
	Kind           HoldKind      `json:"kind"`
	OrganizationID string        `json:"organization_id"`
	UserID         string        `json:"user_id,omitempty"`
	Badge          mapping.Badge `json:"badge,omitempty"`
	EventID        string        `json:"event_id,omitempty"`
	Deferred       int           `json:"deferred_events,omitempty"`
	Users          int           `json:"users,omitempty"`
	MovedTo        string        `json:"moved_to,omitempty"`
	Reason         string        `json:"reason"`
}

// ExportDirectory is a directory in the snapshot. State is "active" or "deleted".
type ExportDirectory struct {
	ID             string `json:"id"`
	OrganizationID string `json:"organization_id"`
	Name           string `json:"name"`
	State          string `json:"state"`
}

// ExportUser is a user in the snapshot.
//
// A user whose admin badge an open last-admin hold keeps is listed, deleted
// or not, with the state the directory gave it, its badges (admin included)
// and HeldBy, the hold's id, until the hold is released, approved or
// rejected: no read surface shows an organisation without an admin while a
// hold protects one. Deleted says the directory deleted it meanwhile.
type ExportUser struct {
	ID             string          `json:"id"`
	DirectoryID    string          `json:"directory_id"`
	OrganizationID string          `json:"organization_id"`
	IdpID          string          `json:"idp_id"`
	Email          string          `json:"email"`
	FirstName      string          `json:"first_name"`
	LastName       string          `json:"last_name"`
	State          string          `json:"state"`
	Groups         []string        `json:"groups"`
	Badges         []mapping.Badge `json:"badges"`
	Deleted        bool            `json:"deleted,omitempty"`
	HeldBy         uint64          `json:"held_by,omitempty"`
	// MovedTo: the directory moved the user to this organisation, but it
	// was its old one's last admin; until the hold closes the user is
	// listed in (OrganizationID) and has the badges of its old organisation.
	MovedTo string `json:"moved_to_organization_id,omitempty"`
}

// ExportGroup is a group in the snapshot.
type ExportGroup struct {
	ID             string   `json:"id"`
	DirectoryID    string   `json:"directory_id"`
	OrganizationID string   `json:"organization_id"`
	IdpID          string   `json:"idp_id"`
	Name           string   `json:"name"`
	Members        []string `json:"members"`
}

// MarshalSnapshot renders s as indented, byte-stable JSON with a trailing newline.
func MarshalSnapshot(s *Snapshot) ([]byte, error) {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// changeSeqLine is how ExportFeedTo writes the change seq: the first field.
const changeSeqLine = "\n  \"change_seq\": "

// CanonicalExport returns an export as ExportFeedTo writes it without its
// change_seq: the canonical snapshot (b itself if it has none).
func CanonicalExport(b []byte) []byte {
	rest, ok := bytes.CutPrefix(b, []byte("{"+changeSeqLine))
	if !ok {
		return b
	}
	i := bytes.IndexByte(rest, ',')
	if i < 0 {
		return b
	}
	return append([]byte{'{'}, rest[i+1:]...)
}

// Export returns the canonical snapshot of the store.
func (s *Store) Export() (*Snapshot, error) {
	snap := &Snapshot{Directories: []ExportDirectory{}, Users: []ExportUser{}, Groups: []ExportGroup{}, Holds: []ExportHold{}}
	err := s.view(func(tx *bolt.Tx) error {
		t := newTxn(tx)
		snap.ChangeSeq = tx.Bucket(bktChanges).Sequence()
		err := t.dirs.ForEach(func(_, v []byte) error {
			var d dirRec
			if err := json.Unmarshal(v, &d); err != nil {
				return err
			}
			state := "active"
			if d.Deleted {
				state = "deleted"
			}
			snap.Directories = append(snap.Directories, ExportDirectory{ID: d.ID, OrganizationID: d.OrganizationID, Name: d.Name, State: state})
			return nil
		})
		if err != nil {
			return err
		}
		members := map[string][]string{}
		held, err := s.heldUsers(t)
		if err != nil {
			return err
		}
		err = s.eachExportUser(t, held, func(eu ExportUser) error {
			for _, g := range eu.Groups {
				members[g] = append(members[g], eu.ID)
			}
			snap.Users = append(snap.Users, eu)
			return nil
		})
		if err != nil {
			return err
		}
		err = t.groups.ForEach(func(_, v []byte) error {
			g, err := decodeGroup(v)
			if err != nil {
				return err
			}
			if g.Deleted {
				return nil
			}
			m := members[g.ID]
			if m == nil {
				m = []string{}
			}
			slices.Sort(m)
			snap.Groups = append(snap.Groups, ExportGroup{ID: g.ID, DirectoryID: g.DirectoryID, OrganizationID: g.OrganizationID, IdpID: g.IdpID, Name: g.Name, Members: m})
			return nil
		})
		if err != nil {
			return err
		}
		hs, err := s.holds(t, true)
		for _, h := range hs {
			snap.Holds = append(snap.Holds, ExportHold{ID: h.ID, Kind: h.Kind, OrganizationID: h.OrganizationID, UserID: h.UserID,
				Badge: h.Badge, EventID: h.EventID, Deferred: h.Deferred, Users: h.Users, MovedTo: h.MovedTo, Reason: h.Reason})
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("storage: export: %w", err)
	}
	return snap, nil
}

// ExportTo writes the canonical snapshot to w as it reads the store, in one
// read transaction: the bytes MarshalSnapshot(Export()) would give, in
// memory bounded by one record rather than by the store. A group's members
// are read from the members bucket (group, user) instead of being collected
// from every user first. On an error the output stops where it was, so a
// reader of w must treat only a nil error as a complete snapshot.
func (s *Store) ExportTo(w io.Writer) error { return s.exportTo(w, nil) }

// ExportFeedTo is ExportTo with, as the snapshot's first field, change_seq:
// the seq of the last change record it reflects, read in its transaction. It
// calls seq with it before writing anything (/v1/export puts it in a header
// too): a product that loads the snapshot follows the change feed after it.
func (s *Store) ExportFeedTo(w io.Writer, seq func(uint64)) error { return s.exportTo(w, seq) }

func (s *Store) exportTo(w io.Writer, seq func(uint64)) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	err := s.view(func(tx *bolt.Tx) error {
		t := newTxn(tx)
		e := &exportWriter{w: bw}
		if seq != nil {
			n := tx.Bucket(bktChanges).Sequence()
			seq(n)
			e.prefix = changeSeqLine + strconv.FormatUint(n, 10) + ","
		}
		e.open("directories")
		err := t.dirs.ForEach(func(_, v []byte) error {
			var d dirRec
			if err := json.Unmarshal(v, &d); err != nil {
				return err
			}
			state := "active"
			if d.Deleted {
				state = "deleted"
			}
			return e.item(ExportDirectory{ID: d.ID, OrganizationID: d.OrganizationID, Name: d.Name, State: state})
		})
		if err != nil {
			return err
		}
		e.close()
		held, err := s.heldUsers(t)
		if err != nil {
			return err
		}
		e.open("users")
		err = s.eachExportUser(t, held, func(eu ExportUser) error {
			t.forget()
			return e.item(eu)
		})
		if err != nil {
			return err
		}
		e.close()
		e.open("groups")
		floors := map[string]key{}
		err = t.groups.ForEach(func(_, v []byte) error {
			g, err := decodeGroup(v)
			if err != nil {
				return err
			}
			if g.Deleted {
				return nil
			}
			m := []string{}
			err = eachPrefix(t.members, g.ID, func(uid string) error {
				u, err := getUser(t.users, []byte(uid))
				if err != nil || u == nil || u.Deleted {
					return err
				}
				floor, ok := floors[u.DirectoryID]
				if !ok {
					if floor, err = s.floor(t, u.DirectoryID); err != nil {
						return err
					}
					floors[u.DirectoryID] = floor
				}
				mr, err := getMember(t.members, pair(g.ID, uid))
				if err != nil {
					return err
				}
				if isMember(mr, g, u, floor) {
					m = append(m, uid)
				}
				return nil
			})
			if err != nil {
				return err
			}
			t.forget()
			return e.item(ExportGroup{ID: g.ID, DirectoryID: g.DirectoryID, OrganizationID: g.OrganizationID, IdpID: g.IdpID, Name: g.Name, Members: m})
		})
		if err != nil {
			return err
		}
		e.close()
		hs, err := s.holds(t, true)
		if err != nil {
			return err
		}
		e.open("holds")
		for _, h := range hs {
			err := e.item(ExportHold{ID: h.ID, Kind: h.Kind, OrganizationID: h.OrganizationID, UserID: h.UserID,
				Badge: h.Badge, EventID: h.EventID, Deferred: h.Deferred, Users: h.Users, MovedTo: h.MovedTo, Reason: h.Reason})
			if err != nil {
				return err
			}
		}
		e.close()
		e.str("\n}\n")
		return e.err
	})
	if err != nil {
		return fmt.Errorf("storage: export: %w", err)
	}
	return bw.Flush()
}

// exportWriter writes the snapshot's JSON as json.MarshalIndent(snap, "",
// "  ") lays it out: each list a field of the top object, each element
// indented by four spaces.
type exportWriter struct {
	w      *bufio.Writer
	prefix string // written after the opening brace (ExportFeedTo's change_seq)
	lists  int    // lists opened so far
	filled bool   // the open list has an element
	err    error
}

func (e *exportWriter) str(s string) {
	if e.err == nil {
		_, e.err = e.w.WriteString(s)
	}
}

func (e *exportWriter) open(name string) {
	if e.lists == 0 {
		e.str("{" + e.prefix + "\n")
	} else {
		e.str(",\n")
	}
	e.lists++
	e.filled = false
	e.str(`  "` + name + `": [`)
}

func (e *exportWriter) item(v any) error {
	b, err := json.MarshalIndent(v, "    ", "  ")
	if err != nil {
		return err
	}
	if e.filled {
		e.str(",")
	}
	e.filled = true
	e.str("\n    ")
	if e.err == nil {
		_, e.err = e.w.Write(b)
	}
	return e.err
}

func (e *exportWriter) close() {
	if e.filled {
		e.str("\n  ")
	}
	e.str("]")
}

// forget drops what a read transaction cached, so that a walk over every
// user keeps one user's records in memory, not the store's.
func (t *txn) forget() {
	clear(t.userCache)
	clear(t.memberCache)
	if len(t.groupCache) > 4096 {
		clear(t.groupCache)
	}
}

// exportUser renders u as the snapshot shows it: its fields as WorkOS sent
// them (no organisation is made up for a user whose payloads had none).
func (s *Store) exportUser(t *txn, u *userRec, heldBy uint64) (ExportUser, error) {
	groups, err := s.userGroups(t, u)
	if err != nil {
		return ExportUser{}, err
	}
	ids := make([]string, 0, len(groups))
	for _, g := range groups {
		ids = append(ids, g.ID)
	}
	eu := ExportUser{ID: u.ID, DirectoryID: u.DirectoryID, OrganizationID: u.OrganizationID, IdpID: u.IdpID, Email: u.Email,
		FirstName: u.FirstName, LastName: u.LastName, State: u.State, Groups: ids, Badges: mapping.Badges(u.Grants),
		Deleted: u.Deleted, HeldBy: heldBy}
	if u.HeldOrg != "" {
		dirOrg, err := s.organization(t, u.OrganizationID, u.DirectoryID)
		if err != nil {
			return ExportUser{}, err
		}
		eu.OrganizationID, eu.MovedTo = u.HeldOrg, dirOrg
	}
	return eu, nil
}

// heldUsers maps each user an open last-admin hold keeps an admin to the
// hold's id.
func (s *Store) heldUsers(t *txn) (map[string]uint64, error) {
	out := map[string]uint64{}
	if k, _ := t.openHolds.Cursor().First(); k == nil {
		return out, nil
	}
	err := s.eachOpenHold(t, func(h *Hold) error {
		if h.Kind == HoldLastAdmin && out[h.UserID] == 0 {
			out[h.UserID] = h.ID
		}
		return nil
	})
	return out, err
}

// UserView is one user with its groups and, for each badge, what grants it.
type UserView struct {
	ExportUser
	Deleted    bool              `json:"deleted"`
	Roles      []string          `json:"roles"`
	GroupNames map[string]string `json:"group_names"`
	Grants     []mapping.Grant   `json:"grants"`
	UpdatedBy  string            `json:"updated_by_event"`
	UpdatedAt  time.Time         `json:"updated_at_event"`
}

// User returns the user with id, or ErrNotFound.
func (s *Store) User(id string) (*UserView, error) {
	var out *UserView
	err := s.view(func(tx *bolt.Tx) error {
		t := newTxn(tx)
		u, err := t.user(id)
		if err != nil {
			return err
		}
		if u == nil {
			return ErrNotFound
		}
		held, err := s.heldUsers(t)
		if err != nil {
			return err
		}
		v, err := s.userView(t, u, held[u.ID])
		out = &v
		return err
	})
	return out, err
}

// userView renders u as User shows it.
func (s *Store) userView(t *txn, u *userRec, heldBy uint64) (UserView, error) {
	eu, err := s.exportUser(t, u, heldBy)
	if err != nil {
		return UserView{}, err
	}
	names := map[string]string{}
	groups, err := s.userGroups(t, u)
	if err != nil {
		return UserView{}, err
	}
	for _, g := range groups {
		names[g.ID] = g.Name
	}
	grants := u.Grants
	if grants == nil {
		grants = []mapping.Grant{}
	}
	roles := u.Roles
	if roles == nil {
		roles = []string{}
	}
	return UserView{ExportUser: eu, Deleted: u.Deleted, Roles: roles, GroupNames: names, Grants: grants,
		UpdatedBy: u.Key.ID, UpdatedAt: u.Key.time()}, nil
}

// UsersWithBadge returns the live users of directory dirID, sorted by id,
// holding badge (every live user when badge is empty). A deleted user an
// open last-admin hold keeps an admin is live until the hold closes. A
// directory the store never heard of is ErrNotFound.
func (s *Store) UsersWithBadge(dirID string, badge mapping.Badge) ([]ExportUser, error) {
	out := []ExportUser{}
	err := s.view(func(tx *bolt.Tx) error {
		t := newTxn(tx)
		if !dirKnown(t, dirID) {
			return fmt.Errorf("directory %q: %w", dirID, ErrNotFound)
		}
		held, err := s.heldUsers(t)
		if err != nil {
			return err
		}
		return eachPrefix(t.dirUsers, dirID, func(uid string) error {
			u, err := t.user(uid)
			if err != nil || u == nil || (u.Deleted && held[uid] == 0) {
				return err
			}
			if badge != "" && !slices.Contains(mapping.Badges(u.Grants), badge) {
				return nil
			}
			eu, err := s.exportUser(t, u, held[uid])
			if err != nil {
				return err
			}
			out = append(out, eu)
			return nil
		})
	})
	return out, err
}

// AuditFilter selects audit entries. Zero fields match everything.
type AuditFilter struct {
	UserID         string
	OrganizationID string
	Badge          mapping.Badge
	Since          time.Time
	// After, if set, selects entries with a greater Seq only: a reader that
	// keeps the last Seq it saw tails the trail (to ship it elsewhere).
	After uint64
	// Limit bounds the entries returned; 0 means no limit. Without After
	// or Oldest they are the newest Limit matching entries, with them the
	// first Limit (after After).
	Limit int
	// Oldest makes Limit count from the start of the trail (to page
	// through it with After).
	Oldest bool
}

// auditClockSlack is how far back of Since a newest-first scan goes on
// before it stops: entries are in sequence order, and their times follow a
// clock that may have been stepped back a little.
const auditClockSlack = 5 * time.Minute

// Audit returns the audit entries matching f, oldest first. With a Limit it
// reads the trail from its newest end and stops once it has Limit entries
// (or has passed Since), so the newest few of a long trail come fast.
func (s *Store) Audit(f AuditFilter) ([]AuditEntry, error) {
	out := []AuditEntry{}
	match := func(e *AuditEntry) bool {
		return (f.UserID == "" || e.UserID == f.UserID) && (f.OrganizationID == "" || e.OrganizationID == f.OrganizationID) &&
			(f.Badge == "" || e.Badge == f.Badge) && (f.Since.IsZero() || !e.Time.Before(f.Since))
	}
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bktAudit)
		if f.Limit <= 0 || f.After > 0 || f.Oldest {
			c := b.Cursor()
			for k, v := c.Seek(u64(f.After + 1)); k != nil && (f.Limit <= 0 || len(out) < f.Limit); k, v = c.Next() {
				var e AuditEntry
				if err := json.Unmarshal(v, &e); err != nil {
					return err
				}
				if match(&e) {
					out = append(out, e)
				}
			}
			return nil
		}
		c := b.Cursor()
		for k, v := c.Last(); k != nil && len(out) < f.Limit; k, v = c.Prev() {
			var e AuditEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			if !f.Since.IsZero() && e.Time.Before(f.Since.Add(-auditClockSlack)) {
				break
			}
			if match(&e) {
				out = append(out, e)
			}
		}
		slices.Reverse(out)
		return nil
	})
	return out, err
}

// Drops returns every drop entry of the audit trail, oldest first: those
// still in it and those its retention (Options.AuditRetention) set aside.
// It is what an operator dropped, for rebuilding without it.
func (s *Store) Drops() ([]AuditEntry, error) {
	out := []AuditEntry{}
	err := s.view(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bktDrops, bktAudit} { // set aside first: they are the older
			b := tx.Bucket(name)
			if b == nil {
				continue
			}
			err := b.ForEach(func(k, v []byte) error {
				var e AuditEntry
				if err := json.Unmarshal(v, &e); err != nil {
					return fmt.Errorf("%s entry %x: %w", name, k, err)
				}
				if e.Action == ActionDrop {
					out = append(out, e)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// Processed reports whether the event with id was taken by Apply (applied,
// or found stale) within ProcessedRetention: applying it again would be a
// duplicate.
func (s *Store) Processed(id string) (bool, error) {
	var ok bool
	err := s.view(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bktProcessed).Get([]byte(id)) != nil
		return nil
	})
	return ok, err
}

// eachExportUser calls fn with the export view of every user the export
// lists, in id order: those not deleted, and deleted ones a hold keeps.
func (s *Store) eachExportUser(t *txn, held map[string]uint64, fn func(ExportUser) error) error {
	return t.users.ForEach(func(_, v []byte) error {
		u, err := decodeUser(v)
		if err != nil {
			return err
		}
		if u.Deleted && held[u.ID] == 0 {
			return nil
		}
		eu, err := s.exportUser(t, u, held[u.ID])
		if err != nil {
			return err
		}
		return fn(eu)
	})
}
