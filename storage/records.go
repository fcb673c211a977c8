package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
)

// key is the persisted form of events.Key: the ordering key of the newest
// event that touched a record.
type key struct {
	S  int64  `json:"s,omitempty"`
	N  int32  `json:"n,omitempty"`
	ID string `json:"id,omitempty"`
}

func toKey(k events.Key) key {
	return key{S: k.At.Unix(), N: int32(k.At.Nanosecond()), ID: k.ID}
}

func (k key) cmp(o key) int {
	switch {
	case k.S < o.S:
		return -1
	case k.S > o.S:
		return 1
	case k.N < o.N:
		return -1
	case k.N > o.N:
		return 1
	}
	return strings.Compare(k.ID, o.ID)
}

func (k key) newer(o key) bool { return k.cmp(o) > 0 }

func maxKey(ks ...key) key {
	var m key
	for _, k := range ks {
		if k.newer(m) {
			m = k
		}
	}
	return m
}

func (k key) time() time.Time { return time.Unix(k.S, int64(k.N)).UTC() }

type dirRec struct {
	events.Directory
	Key     key  `json:"key"`
	Deleted bool `json:"deleted,omitempty"`
	// DeletedKey is the newest dsync.deleted; with on_directory_deleted:
	// deprovision it ends every user, group and membership older than it.
	DeletedKey key `json:"deleted_key"`
}

type userRec struct {
	events.User
	Key     key  `json:"key"`
	Deleted bool `json:"deleted,omitempty"`
	// DeletedKey is the newest delete that touched the user; it ends every
	// membership older than it.
	DeletedKey key             `json:"deleted_key"`
	Grants     []mapping.Grant `json:"grants,omitempty"`
	// AdminOrg is the organisation under which the user is indexed as an
	// admin holder (bucket org_admins), when AdminIndexed.
	AdminIndexed bool   `json:"admin_indexed,omitempty"`
	AdminOrg     string `json:"admin_org,omitempty"`
	// RolesKey is the key of the newest event that carried the user's
	// roles: an event without the attribute leaves them as they are, and
	// an older one that carried them still sets them if newer than this.
	RolesKey key `json:"roles_key"`
	// BreakGlassBy is the safeguards.break_glass entry the user matched
	// when first seen as a break-glass account: it stays recognised by its
	// id while that entry is configured, whatever its email becomes.
	BreakGlassBy string `json:"break_glass_by,omitempty"`
	// HeldOrg is the organisation the user is kept in, as its admin, by a
	// last-admin hold on a move to another organisation.
	HeldOrg string `json:"held_org,omitempty"`
	// MappedOrg is the organisation under which the user is counted as
	// holding a mapped (non-default) badge (bucket org_holders), or "".
	MappedOrg string `json:"mapped_org,omitempty"`
}

type groupRec struct {
	events.Group
	Key        key  `json:"key"`
	Deleted    bool `json:"deleted,omitempty"`
	DeletedKey key  `json:"deleted_key"`
}

type memberRec struct {
	Key     key  `json:"key"`
	Present bool `json:"present"`
}

// encode renders a membership compactly: present flag, seconds, nanoseconds, event id.
func (m *memberRec) encode() []byte {
	b := make([]byte, 13, 13+len(m.Key.ID))
	if m.Present {
		b[0] = 1
	}
	binary.BigEndian.PutUint64(b[1:], uint64(m.Key.S))
	binary.BigEndian.PutUint32(b[9:], uint32(m.Key.N))
	return append(b, m.Key.ID...)
}

func getMember(b *bolt.Bucket, k []byte) (*memberRec, error) {
	v := b.Get(k)
	if v == nil {
		return nil, nil
	}
	if len(v) < 13 {
		return nil, fmt.Errorf("corrupt membership record %q", k)
	}
	return &memberRec{Present: v[0] == 1, Key: key{S: int64(binary.BigEndian.Uint64(v[1:])), N: int32(binary.BigEndian.Uint32(v[9:])), ID: string(v[13:])}}, nil
}

func getUser(b *bolt.Bucket, k []byte) (*userRec, error) {
	v := b.Get(k)
	if v == nil {
		return nil, nil
	}
	u, err := decodeUser(v)
	if err != nil {
		return nil, fmt.Errorf("user %q: %w", k, err)
	}
	return u, nil
}

func getGroup(b *bolt.Bucket, k []byte) (*groupRec, error) {
	v := b.Get(k)
	if v == nil {
		return nil, nil
	}
	g, err := decodeGroup(v)
	if err != nil {
		return nil, fmt.Errorf("group %q: %w", k, err)
	}
	return g, nil
}

func pair(a, b string) []byte {
	k := make([]byte, 0, len(a)+1+len(b))
	k = append(k, a...)
	k = append(k, 0)
	return append(k, b...)
}

func splitPair(k []byte) (string, string) {
	for i, c := range k {
		if c == 0 {
			return string(k[:i]), string(k[i+1:])
		}
	}
	return string(k), ""
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func getJSON[T any](b *bolt.Bucket, k []byte) (*T, error) {
	v := b.Get(k)
	if v == nil {
		return nil, nil
	}
	var out T
	if err := json.Unmarshal(v, &out); err != nil {
		return nil, fmt.Errorf("corrupt record %q: %w", k, err)
	}
	return &out, nil
}

func putJSON(b *bolt.Bucket, k []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, data)
}

// txn bundles the buckets of one transaction and caches the records it
// reads, decoded: a batch touches the same groups and users many times.
// Writes go to the cache and reach bbolt in flush, before commit.
type txn struct {
	tx                                                *bolt.Tx
	dirs, users, groups, members, membersByUser       *bolt.Bucket
	dirUsers, dirGroups, processed, processedAt, meta *bolt.Bucket
	audit, holds, pending                             *bolt.Bucket
	openHolds, orgAdmins, deprov, paused, orgHolders  *bolt.Bucket
	newHolds                                          []Hold
	orgChanges                                        []Change // for the change feed (changes.go)
	auditStart                                        uint64   // the audit sequence when the transaction began
	orgUsers                                          *bolt.Bucket
	index                                             [3]*bolt.Bucket // the user indexes, by ixEmail, ixIdp, ixOrg (index.go)
	// userOrig, dirOrig and dirOrgs keep what org_users needs of the state
	// before this transaction (orgcount.go): the users it loaded, the
	// organisation of the directories it wrote, and of those it looked up.
	userOrig         map[string]committedUser
	dirOrig, dirOrgs map[string]string

	dirCache    map[string]*dirRec
	userCache   map[string]*userRec
	groupCache  map[string]*groupRec
	memberCache map[string]*memberRec
	dirtyUsers  map[string]bool
	dirtyGroups map[string]bool
	// groupsOf caches userGroups in a write transaction (the badges and the
	// change feed both ask). An entry holds for the user's deletion and
	// directory it was computed with; it goes when one of the user's
	// memberships is written, and every entry goes when a directory is
	// written or a group's name, ids, organisation or deletion changes.
	groupsOf map[string]groupsEntry
	// feedSeen holds the users read or written since the change feed last
	// looked (writeChanges): only their views can have changed since.
	feedSeen map[string]struct{}
	// feedViews keeps, for the users the feed compared in this
	// transaction, the view it last told (nil: none), written to bucket
	// feed_users once, when the transaction ends (endChanges).
	feedViews map[string][]byte
	// changesWrote counts the change records the transaction wrote.
	changesWrote int
}

func newTxn(tx *bolt.Tx) *txn {
	t := &txn{
		tx: tx, dirs: tx.Bucket(bktDirs), users: tx.Bucket(bktUsers), groups: tx.Bucket(bktGroups),
		members: tx.Bucket(bktMembers), membersByUser: tx.Bucket(bktMembersByUser),
		dirUsers: tx.Bucket(bktDirUsers), dirGroups: tx.Bucket(bktDirGroups),
		processed: tx.Bucket(bktProcessed), processedAt: tx.Bucket(bktProcessedAt), meta: tx.Bucket(bktMeta),
		audit: tx.Bucket(bktAudit), holds: tx.Bucket(bktHolds), pending: tx.Bucket(bktPending),
		openHolds: tx.Bucket(bktOpenHolds), orgAdmins: tx.Bucket(bktOrgAdmins), deprov: tx.Bucket(bktDeprov), paused: tx.Bucket(bktPaused),
		orgHolders: tx.Bucket(bktOrgHolders),
		dirCache:   map[string]*dirRec{}, userCache: map[string]*userRec{}, groupCache: map[string]*groupRec{},
		memberCache: map[string]*memberRec{}, dirtyUsers: map[string]bool{}, dirtyGroups: map[string]bool{},
		orgUsers: tx.Bucket(bktOrgUsers), index: [3]*bolt.Bucket{tx.Bucket(bktUserEmail), tx.Bucket(bktUserIdp), tx.Bucket(bktOrgMembers)}, userOrig: map[string]committedUser{}, dirOrig: map[string]string{}, dirOrgs: map[string]string{},
	}
	if tx.Writable() {
		t.groupsOf = map[string]groupsEntry{}
		t.feedSeen = map[string]struct{}{}
		t.feedViews = map[string][]byte{}
	}
	t.auditStart = t.audit.Sequence()
	// Keys of these buckets only grow (sequence numbers, processing times):
	// full pages instead of bbolt's half-full splits halve their size.
	t.audit.FillPercent, t.holds.FillPercent, t.processedAt.FillPercent = 1, 1, 1
	for _, b := range []*bolt.Bucket{t.users, t.members, t.membersByUser, t.dirUsers, t.processed, t.groups, t.dirGroups} {
		b.FillPercent = 0.9
	}
	return t
}

// cached returns the record under k in b, decoded once per transaction.
func cached[T any](cache map[string]*T, b *bolt.Bucket, k string, get func(*bolt.Bucket, []byte) (*T, error)) (*T, error) {
	if v, ok := cache[k]; ok {
		return v, nil
	}
	v, err := get(b, []byte(k))
	if err != nil {
		return nil, err
	}
	cache[k] = v
	return v, nil
}

func (t *txn) dir(id string) (*dirRec, error) { return cached(t.dirCache, t.dirs, id, getJSON[dirRec]) }

func (t *txn) putDir(d *dirRec) error {
	if _, ok := t.dirOrig[d.ID]; !ok {
		org, err := t.committedDirOrg(d.ID) // still the bucket's: written just below
		if err != nil {
			return err
		}
		t.dirOrig[d.ID] = org
	}
	t.dirCache[d.ID] = d
	clear(t.groupsOf)
	return putJSON(t.dirs, []byte(d.ID), d)
}

func (t *txn) user(id string) (*userRec, error) {
	if t.feedSeen != nil {
		t.feedSeen[id] = struct{}{}
	}
	if u, ok := t.userCache[id]; ok {
		return u, nil
	}
	u, err := getUser(t.users, []byte(id))
	if err != nil {
		return nil, err
	}
	t.userCache[id] = u
	// Loaded from the bucket, so as before this transaction (records reach
	// it only at flush): what org_users will need of it.
	if _, ok := t.userOrig[id]; !ok && t.tx.Writable() {
		t.userOrig[id] = noteCommitted(u)
	}
	return u, nil
}

func (t *txn) putUser(u *userRec) error {
	if old, _ := t.userCache[u.ID]; old == nil || old.DirectoryID != u.DirectoryID {
		if err := t.dirUsers.Put(pair(u.DirectoryID, u.ID), nil); err != nil {
			return err
		}
	}
	t.userCache[u.ID] = u
	t.dirtyUsers[u.ID] = true
	if t.feedSeen != nil {
		t.feedSeen[u.ID] = struct{}{}
	}
	return nil
}

// groupsEntry is a cached userGroups, with what of the user it depends on.
type groupsEntry struct {
	groups     []*groupRec
	deleted    bool
	deletedKey key
	dir        string
}

func (e groupsEntry) holdsFor(u *userRec) bool {
	return e.deleted == u.Deleted && e.deletedKey == u.DeletedKey && e.dir == u.DirectoryID
}

func (t *txn) group(id string) (*groupRec, error) {
	return cached(t.groupCache, t.groups, id, getGroup)
}

func (t *txn) putGroup(g *groupRec) error {
	if old, _ := t.groupCache[g.ID]; old == nil || old.DirectoryID != g.DirectoryID {
		if err := t.dirGroups.Put(pair(g.DirectoryID, g.ID), nil); err != nil {
			return err
		}
	}
	if old := t.groupCache[g.ID]; old == nil || old == g || old.Deleted != g.Deleted || old.DeletedKey != g.DeletedKey ||
		old.Name != g.Name || old.IdpID != g.IdpID || old.OrganizationID != g.OrganizationID || old.DirectoryID != g.DirectoryID {
		// Its members' groups may change (or a cached list holds the
		// record, changed in place): forget every list. A newer payload
		// that changes none of these leaves them as they are.
		clear(t.groupsOf)
	}
	t.groupCache[g.ID] = g
	t.dirtyGroups[g.ID] = true
	return nil
}

func (t *txn) member(groupID, userID string) (*memberRec, error) {
	return cached(t.memberCache, t.members, string(pair(groupID, userID)), getMember)
}

func (t *txn) putMember(groupID, userID string, m *memberRec) error {
	k := string(pair(groupID, userID))
	if old, _ := t.memberCache[k]; old == nil {
		if err := t.membersByUser.Put(pair(userID, groupID), nil); err != nil {
			return err
		}
	}
	// Written through: eachPrefix over the members bucket lists a group's
	// members and must see this transaction's new ones.
	t.memberCache[k] = m
	delete(t.groupsOf, userID)
	return t.members.Put([]byte(k), m.encode())
}

// flush writes every record changed in this transaction.
func (t *txn) flush() error {
	if err := t.flushUserIndex(); err != nil {
		return err
	}
	if err := t.flushOrgUsers(); err != nil {
		return err
	}
	for id := range t.dirtyUsers {
		if err := t.users.Put([]byte(id), t.userCache[id].encode()); err != nil {
			return err
		}
	}
	for id := range t.dirtyGroups {
		if err := t.groups.Put([]byte(id), t.groupCache[id].encode()); err != nil {
			return err
		}
	}
	clear(t.dirtyUsers)
	clear(t.dirtyGroups)
	return nil
}

// errStop ends an eachPrefix walk early without error.
var errStop = errors.New("stop")

// eachPrefix calls fn with the second half of every pair key in b starting
// with first, until fn returns an error (errStop ends the walk quietly).
func eachPrefix(b *bolt.Bucket, first string, fn func(second string) error) error {
	prefix := pair(first, "")
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if err := fn(string(k[len(prefix):])); err != nil {
			if errors.Is(err, errStop) {
				return nil
			}
			return err
		}
	}
	return nil
}

// floor returns the key below which events for entities of directory dirID
// change nothing: the directory's deprovisioning, if any.
func (s *Store) floor(t *txn, dirID string) (key, error) {
	if s.opts.Safeguards.OnDirectoryDeleted != OnDirectoryDeletedDeprovision {
		return key{}, nil
	}
	d, err := t.dir(dirID)
	if err != nil || d == nil {
		return key{}, err
	}
	return d.DeletedKey, nil
}
