package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The change feed: an outbox of every change a product can see, written in
// the transaction that makes the change, read by /v1/changes, the JetStream
// relay and the webhooks out (package feed).
//
// After each event it applies (and at the end of every write transaction)
// the store compares (writeChanges), for every user the event read or
// wrote, the user's view as the export shows it (exportUser) with the view
// the feed last told (bucket feed_users): when they differ, one change
// record carries the new view, under the next sequence number of bucket
// changes. So folding the feed by user id gives the export's users, by
// construction: a user whose view an event changed gets one record for
// that event, with the kind of its most significant difference and the list
// of fields that changed. Holds opened and closed and organisations paused
// and resumed get a record each, before the event's user records. Records
// are dated by the event's stream time, and do not depend on how events
// fell into transactions: every node applying the same stream writes the
// same feed, seq for seq.

var (
	bktChanges   = []byte("changes")    // seq (8 bytes BE) -> time (8 bytes BE unix nano) + Change JSON
	bktFeedUsers = []byte("feed_users") // user id -> the view (ExportUser JSON) the feed last told
)

// metaFeedMirror marks feed_users as in step with the users: it is rebuilt
// at Open when missing (a store from before the feed, or one whose feed was
// off for a while).
var metaFeedMirror = []byte("changes:mirror")

// DefaultChangesRetention is how long change records are kept.
const DefaultChangesRetention = 7 * 24 * time.Hour

// ChangesOptions configures the change feed.
type ChangesOptions struct {
	// Off turns the feed off: no change record is written (dsyncd's
	// changes.enabled: false). Turned back on, the feed goes on from the
	// sequence it had, after a gap a reader is told of (ErrChangesGone).
	Off bool
	// Retention is how long change records are kept; older ones are
	// removed a bounded number at a time by Apply. Zero means 7 days.
	Retention time.Duration
}

// ChangeKind says what a change record is about.
type ChangeKind string

// The kinds of change records. A user record's kind is the most significant
// of its differences, in this order; Changed lists them all.
const (
	ChangeUserCreated     ChangeKind = "user.created"     // the user appears in the export
	ChangeUserDeleted     ChangeKind = "user.deleted"     // the user leaves the export: fold it away
	ChangeUserDeactivated ChangeKind = "user.deactivated" // its state became inactive (or it was deleted while a hold keeps it)
	ChangeUserReactivated ChangeKind = "user.reactivated" // its state became active again
	ChangeUserBadges      ChangeKind = "user.badges_changed"
	ChangeUserGroups      ChangeKind = "user.groups_changed"
	ChangeUserUpdated     ChangeKind = "user.updated" // any other field of its view
	ChangeHoldOpened      ChangeKind = "hold.opened"
	ChangeHoldClosed      ChangeKind = "hold.closed"
	ChangeOrgPaused       ChangeKind = "organization.paused"
	ChangeOrgResumed      ChangeKind = "organization.resumed"
)

// Change is one record of the change feed.
type Change struct {
	Seq            uint64     `json:"seq"`
	Time           time.Time  `json:"time"`
	Kind           ChangeKind `json:"kind"`
	OrganizationID string     `json:"organization_id"`
	DirectoryID    string     `json:"directory_id,omitempty"`
	// Changed lists, for a user record, the fields of its view that
	// differ from the previous record's (every field for user.created).
	Changed []string `json:"changed,omitempty"`
	// User is the user's full new view, as /v1/export lists it (for
	// user.deleted, its last one, deleted: true).
	User *ExportUser `json:"user,omitempty"`
	// Hold is the hold opened or closed (for organization.paused, the
	// mass-deprovisioning hold that paused it).
	Hold *Hold `json:"hold,omitempty"`
}

// storedChange is an organisation's record as written (a user's is written
// by appendUserChange).
type storedChange struct {
	Seq            uint64     `json:"seq"`
	Time           time.Time  `json:"time"`
	Kind           ChangeKind `json:"kind"`
	OrganizationID string     `json:"organization_id"`
	Hold           *Hold      `json:"hold,omitempty"`
}

// RawChange is a change record as stored: its JSON is what /v1/changes, the
// JetStream relay and the webhooks send.
type RawChange struct {
	Seq            uint64
	Time           time.Time
	OrganizationID string
	UserID         string // "" for an organisation's own records (holds, pause)
	JSON           []byte
}

// ErrChangesGone is returned by Changes for a position the feed no longer
// (or never) had: the reader must resync from the export.
var ErrChangesGone = errors.New("changes gone")

// ErrChangesOff is returned by Changes when the feed is off.
var ErrChangesOff = errors.New("the change feed is off (changes.enabled: false)")

// GoneError is the ErrChangesGone of one request.
type GoneError struct {
	After, Oldest, Last uint64
}

func (e *GoneError) Error() string {
	if e.After > e.Last {
		return fmt.Sprintf("after=%d is past the feed's last change %d (the store was replaced or rebuilt): "+
			"resync from GET /v1/export and follow from its change_seq", e.After, e.Last)
	}
	return fmt.Sprintf("the changes after %d are no longer kept (the oldest kept is %d, changes.retention): "+
		"resync from GET /v1/export and follow from its change_seq", e.After, e.Oldest)
}

func (e *GoneError) Unwrap() error { return ErrChangesGone }

// ChangesPage is what Changes returns.
type ChangesPage struct {
	Changes []RawChange
	// Next is the position to ask from next: the last change's seq, or
	// the position asked from when there was none.
	Next uint64
	// Last is the feed's last seq when read.
	Last uint64
}

// notifier wakes every waiter at once: each waits on the channel it got,
// closed (and replaced) at the next broadcast.
type notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

func (n *notifier) wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch == nil {
		n.ch = make(chan struct{})
	}
	return n.ch
}

func (n *notifier) broadcast() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch != nil {
		close(n.ch)
		n.ch = nil
	}
}

// ChangesOn reports whether the change feed is on.
func (s *Store) ChangesOn() bool { return !s.opts.Changes.Off }

// ChangesNotify returns a channel closed after the next commit that wrote
// change records (or when the store closes). Take it before reading the
// feed, so that no commit in between goes unnoticed.
func (s *Store) ChangesNotify() <-chan struct{} { return s.feedNote.wait() }

// LastChangeSeq returns the seq of the feed's last change record (0 before the first).
func (s *Store) LastChangeSeq() (uint64, error) {
	var seq uint64
	err := s.view(func(tx *bolt.Tx) error {
		seq = tx.Bucket(bktChanges).Sequence()
		return nil
	})
	return seq, err
}

// Changes returns at most limit change records after seq after, in order.
// A position older than the oldest record kept, or past the last, is an
// error wrapping ErrChangesGone (a *GoneError).
func (s *Store) Changes(after uint64, limit int) (*ChangesPage, error) {
	if s.opts.Changes.Off {
		return nil, ErrChangesOff
	}
	if limit <= 0 {
		limit = 1
	}
	page := &ChangesPage{Next: after}
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bktChanges)
		page.Last = b.Sequence()
		c := b.Cursor()
		oldest := page.Last + 1
		if k, _ := c.First(); k != nil {
			oldest = binary.BigEndian.Uint64(k)
		}
		if after > page.Last || after+1 < oldest {
			return &GoneError{After: after, Oldest: oldest, Last: page.Last}
		}
		for k, v := c.Seek(u64(after + 1)); k != nil && len(page.Changes) < limit; k, v = c.Next() {
			rc, err := decodeRawChange(k, v)
			if err != nil {
				return err
			}
			page.Changes = append(page.Changes, rc)
			page.Next = rc.Seq
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return page, nil
}

// OldestChange returns the seq and time of the oldest change record kept,
// and whether there is one.
func (s *Store) OldestChange() (uint64, time.Time, bool, error) {
	var seq uint64
	var at time.Time
	var ok bool
	err := s.view(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(bktChanges).Cursor().First()
		if k == nil || len(v) < 8 {
			return nil
		}
		seq, at, ok = binary.BigEndian.Uint64(k), time.Unix(0, int64(binary.BigEndian.Uint64(v))).UTC(), true
		return nil
	})
	return seq, at, ok, err
}

func decodeRawChange(k, v []byte) (RawChange, error) {
	if len(k) != 8 || len(v) < 8 {
		return RawChange{}, fmt.Errorf("corrupt change record %x", k)
	}
	body := slices.Clone(v[8:])
	rc := RawChange{Seq: binary.BigEndian.Uint64(k), Time: time.Unix(0, int64(binary.BigEndian.Uint64(v))).UTC(), JSON: body}
	if org, user, ok := userChangeIDs(body); ok {
		rc.OrganizationID, rc.UserID = org, user
		return rc, nil
	}
	var ids struct {
		OrganizationID string `json:"organization_id"`
		User           *struct {
			ID string `json:"id"`
		} `json:"user"`
	}
	if err := json.Unmarshal(body, &ids); err != nil {
		return RawChange{}, fmt.Errorf("change record %d: %w", rc.Seq, err)
	}
	rc.OrganizationID = ids.OrganizationID
	if ids.User != nil {
		rc.UserID = ids.User.ID
	}
	return rc, nil
}

// orgChange notes, in the transaction, a change of an organisation's own
// (a hold opened or closed, a pause, a resume), for writeChanges.
func (t *txn) orgChange(kind ChangeKind, org string, h *Hold) {
	var hc *Hold
	if h != nil {
		c := *h
		hc = &c
	}
	t.orgChanges = append(t.orgChanges, Change{Kind: kind, OrganizationID: org, Hold: hc})
}

// writeChanges writes the change records of what the transaction did since
// it last wrote them: its organisations' changes, then one per user whose
// view differs from the one the feed last told, by user id (the users read
// or written since, t.feedSeen, are the only ones whose view can differ).
// It adds how many it wrote to t.changesWrote.
func (s *Store) writeChanges(t *txn, now time.Time) error {
	if s.opts.Changes.Off {
		t.orgChanges = t.orgChanges[:0]
		clear(t.feedSeen)
		return nil
	}
	if len(t.orgChanges) == 0 && len(t.feedSeen) == 0 {
		return nil
	}
	b := t.tx.Bucket(bktChanges)
	mirror := t.tx.Bucket(bktFeedUsers)
	b.FillPercent = 1 // keys only grow
	// An organisation's records are few: encoding/json writes them.
	put := func(c *storedChange) error {
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		c.Seq, c.Time = seq, now
		body, err := json.Marshal(c)
		if err != nil {
			return err
		}
		v := make([]byte, 8, 8+len(body))
		binary.BigEndian.PutUint64(v, uint64(now.UnixNano()))
		t.changesWrote++
		return b.Put(u64(seq), append(v, body...))
	}
	for _, oc := range t.orgChanges {
		if err := put(&storedChange{Kind: oc.Kind, OrganizationID: oc.OrganizationID, Hold: oc.Hold}); err != nil {
			return err
		}
	}
	t.orgChanges = t.orgChanges[:0]
	if len(t.feedSeen) == 0 {
		return nil
	}
	ids := make([]string, 0, len(t.feedSeen))
	for id := range t.feedSeen {
		if t.userCache[id] != nil {
			ids = append(ids, id)
		}
	}
	clear(t.feedSeen)
	slices.Sort(ids)
	held, err := s.heldUsers(t)
	if err != nil {
		return err
	}
	for _, id := range ids {
		u := t.userCache[id]
		present := !u.Deleted || held[id] != 0
		old, ok := t.feedViews[id]
		if !ok {
			old = mirror.Get([]byte(id))
		}
		if !present && old == nil {
			continue
		}
		view, err := s.exportUser(t, u, held[id])
		if err != nil {
			return err
		}
		cur := encodeMirror(&view)
		if present && bytes.Equal(cur, old) {
			continue
		}
		kind, changed := userChangeKind(old, cur, present)
		org, err := s.organization(t, view.OrganizationID, view.DirectoryID)
		if err != nil {
			return err
		}
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		// A value Put must stay untouched until the commit: one buffer each.
		rec := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(cur)+160), uint64(now.UnixNano()))
		rec = appendUserChange(rec, seq, now, kind, org, view.DirectoryID, changed, cur[mirrorHeader:])
		if err := b.Put(u64(seq), rec); err != nil {
			return err
		}
		t.changesWrote++
		if !present {
			cur = nil
		}
		t.feedViews[id] = cur
	}
	return nil
}

// endChanges ends the transaction's change feed: the records of what is
// left (writeChanges), then the views told, into feed_users.
func (s *Store) endChanges(t *txn, now time.Time) error {
	if err := s.writeChanges(t, now); err != nil {
		return err
	}
	if len(t.feedViews) == 0 {
		return nil
	}
	mirror := t.tx.Bucket(bktFeedUsers)
	mirror.FillPercent = 0.9 // as the users bucket: keyed alike
	ids := make([]string, 0, len(t.feedViews))
	for id := range t.feedViews {
		ids = append(ids, id)
	}
	slices.Sort(ids) // bbolt inserts in key order fastest
	for _, id := range ids {
		var err error
		if v := t.feedViews[id]; v != nil {
			err = mirror.Put([]byte(id), v)
		} else {
			err = mirror.Delete([]byte(id))
		}
		if err != nil {
			return err
		}
	}
	clear(t.feedViews)
	return nil
}

// userChangeKind compares the view the feed last told (old, a feed_users
// value; nil if none) with the new one (cur, likewise).
func userChangeKind(old, cur []byte, present bool) (ChangeKind, []string) {
	if !present {
		return ChangeUserDeleted, nil
	}
	_, now, _ := mirrorView(cur)
	_, was, ok := mirrorView(old)
	if !ok {
		var changed []string
		for i, f := range now {
			if len(f) > 0 {
				changed = append(changed, viewFieldNames[i])
			}
		}
		return ChangeUserCreated, changed
	}
	var changed []string
	for i := range now {
		if !bytes.Equal(was[i], now[i]) {
			changed = append(changed, viewFieldNames[i])
		}
	}
	wasActive, isActive := activeView(&was), activeView(&now)
	switch {
	case wasActive && !isActive:
		return ChangeUserDeactivated, changed
	case !wasActive && isActive:
		return ChangeUserReactivated, changed
	case slices.Contains(changed, "badges"):
		return ChangeUserBadges, changed
	case slices.Contains(changed, "groups"):
		return ChangeUserGroups, changed
	}
	return ChangeUserUpdated, changed
}

// pruneChanges removes change records older than the retention, oldest
// first, at most pruneBatch plus twice what the transaction wrote.
func (s *Store) pruneChanges(t *txn, now time.Time, wrote int) error {
	if s.opts.Changes.Off {
		return nil
	}
	limit := uint64(now.Add(-s.changesRetention()).UnixNano())
	c := t.tx.Bucket(bktChanges).Cursor()
	budget := pruneBatch + 2*wrote
	for k, v := c.First(); k != nil && budget > 0; k, v = c.First() {
		if len(v) >= 8 && binary.BigEndian.Uint64(v) >= limit {
			return nil
		}
		if err := c.Delete(); err != nil {
			return err
		}
		budget--
	}
	return nil
}

func (s *Store) changesRetention() time.Duration {
	if s.opts.Changes.Retention > 0 {
		return s.opts.Changes.Retention
	}
	return DefaultChangesRetention
}

// initFeed brings the feed in step with the store at Open: when on and
// feed_users is not marked in step (a store from before the feed, or whose
// feed was off), it drops the records kept (a reader then gets
// ErrChangesGone and resyncs) and records every user's view as told; when
// off, it removes the mark.
func initFeed(tx *bolt.Tx, s *Store) error {
	meta := tx.Bucket(bktMeta)
	if s.opts.Changes.Off {
		if meta.Get(metaFeedMirror) == nil {
			return nil
		}
		return meta.Delete(metaFeedMirror)
	}
	if meta.Get(metaFeedMirror) != nil {
		return nil
	}
	for _, name := range [][]byte{bktChanges, bktFeedUsers} {
		b := tx.Bucket(name)
		seq := b.Sequence()
		if err := tx.DeleteBucket(name); err != nil {
			return err
		}
		nb, err := tx.CreateBucket(name)
		if err != nil {
			return err
		}
		if err := nb.SetSequence(seq); err != nil {
			return err
		}
	}
	t := newTxn(tx)
	held, err := s.heldUsers(t)
	if err != nil {
		return err
	}
	mirror := tx.Bucket(bktFeedUsers)
	err = t.users.ForEach(func(k, v []byte) error {
		u, err := decodeUser(v)
		if err != nil {
			return err
		}
		if u.Deleted && held[u.ID] == 0 {
			return nil
		}
		view, err := s.exportUser(t, u, held[u.ID])
		if err != nil {
			return err
		}
		return mirror.Put(slices.Clone(k), encodeMirror(&view))
	})
	if err != nil {
		return err
	}
	return meta.Put(metaFeedMirror, []byte{1})
}

// FoldChanges folds change records into users by id, as a product following
// the feed would: the last view wins, user.deleted removes.
func FoldChanges(into map[string]ExportUser, cs []Change) {
	for _, c := range cs {
		if c.User == nil {
			continue
		}
		if c.Kind == ChangeUserDeleted {
			delete(into, c.User.ID)
			continue
		}
		into[c.User.ID] = *c.User
	}
}
