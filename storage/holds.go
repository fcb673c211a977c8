package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
)

// ErrHoldClosed is returned when approving or rejecting a hold that is not open.
var ErrHoldClosed = errors.New("hold is not open")

// Hold is a change sync did not make on its own.
type Hold struct {
	ID             uint64        `json:"id"`
	Kind           HoldKind      `json:"kind"`
	OrganizationID string        `json:"organization_id"`
	UserID         string        `json:"user_id,omitempty"`
	Badge          mapping.Badge `json:"badge,omitempty"`
	Rule           string        `json:"rule,omitempty"`
	Reason         string        `json:"reason"`
	EventID        string        `json:"event_id,omitempty"`
	CreatedAt      time.Time     `json:"created_at"`
	Deferred       int           `json:"deferred_events,omitempty"` // mass_deprovision: events waiting
	Users          int           `json:"users,omitempty"`           // mass_deprovision: users who would lose badges within the window
	// MovedTo: a last_admin hold on a move; the organisation the user was
	// moved to. Until the hold closes the user stays in OrganizationID.
	MovedTo       string         `json:"moved_to,omitempty"`
	ClosedAt      *time.Time     `json:"closed_at,omitempty"`
	Resolution    HoldResolution `json:"resolution,omitempty"`
	ClosedBecause string         `json:"closed_because,omitempty"`
}

// Open reports whether the hold is still open.
func (h *Hold) Open() bool { return h.ClosedAt == nil }

func (s *Store) openNewHold(t *txn, h *Hold) error {
	id, err := t.holds.NextSequence()
	if err != nil {
		return err
	}
	h.ID = id
	if err := putJSON(t.holds, u64(id), h); err != nil {
		return err
	}
	t.newHolds = append(t.newHolds, *h)
	t.orgChange(ChangeHoldOpened, h.OrganizationID, h)
	return t.openHolds.Put(u64(id), nil)
}

func (s *Store) closeHold(t *txn, h *Hold, resolution HoldResolution, because, eventID string, now time.Time) error {
	h.ClosedAt, h.Resolution, h.ClosedBecause = &now, resolution, because
	if err := putJSON(t.holds, u64(h.ID), h); err != nil {
		return err
	}
	if err := t.openHolds.Delete(u64(h.ID)); err != nil {
		return err
	}
	t.orgChange(ChangeHoldClosed, h.OrganizationID, h)
	if rule := holdRuleOf(h.Kind); rule != nil {
		if err := rule.closed(s, t, h); err != nil {
			return err
		}
	}
	return s.addAudit(t, AuditEntry{Time: now, EventID: eventID, OrganizationID: h.OrganizationID, UserID: h.UserID,
		Badge: h.Badge, Rule: h.Rule, Action: ActionRelease, Reason: fmt.Sprintf("hold %d (%s) %s: %s", h.ID, h.Kind, resolution, because)})
}

// eachOpenHold calls fn for every open hold, oldest first.
func (s *Store) eachOpenHold(t *txn, fn func(h *Hold) error) error {
	var ids [][]byte
	if err := t.openHolds.ForEach(func(k, _ []byte) error { ids = append(ids, slices.Clone(k)); return nil }); err != nil {
		return err
	}
	for _, k := range ids {
		h, err := getJSON[Hold](t.holds, k)
		if err != nil {
			return err
		}
		if h != nil && h.Open() {
			if err := fn(h); err != nil {
				return err
			}
		}
	}
	return nil
}

// openHold returns the open hold of kind for (org, user), if any.
func (s *Store) openHold(t *txn, kind HoldKind, org, userID string) (*Hold, error) {
	if k, _ := t.openHolds.Cursor().First(); k == nil {
		return nil, nil
	}
	var found *Hold
	err := s.eachOpenHold(t, func(h *Hold) error {
		if found == nil && h.Kind == kind && h.OrganizationID == org && h.UserID == userID {
			found = h
		}
		return nil
	})
	return found, err
}

// eventOrg returns the organisation an event belongs to: its payload's,
// else its directory's.
func (s *Store) eventOrg(t *txn, ev *events.Event) (string, error) {
	switch {
	case ev.User != nil && ev.User.OrganizationID != "":
		return ev.User.OrganizationID, nil
	case ev.Group != nil && ev.Group.OrganizationID != "":
		return ev.Group.OrganizationID, nil
	case ev.Directory != nil && ev.Directory.OrganizationID != "":
		return ev.Directory.OrganizationID, nil
	}
	return s.organization(t, "", ev.DirectoryID)
}

// Holds returns the holds, open ones only when openOnly, oldest first.
func (s *Store) Holds(openOnly bool) ([]Hold, error) {
	var out []Hold
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		out, err = s.holds(newTxn(tx), openOnly)
		return err
	})
	return out, err
}

// holds lists the holds, open ones only when openOnly.
func (s *Store) holds(t *txn, openOnly bool) ([]Hold, error) {
	out := []Hold{}
	err := t.holds.ForEach(func(_, v []byte) error {
		var h Hold
		if err := json.Unmarshal(v, &h); err != nil {
			return err
		}
		if openOnly && !h.Open() {
			return nil
		}
		out = append(out, h)
		return nil
	})
	return out, err
}

// Paused lists the organisations whose sync is paused.
func (s *Store) Paused() ([]string, error) {
	var out []string
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bktPaused).ForEach(func(k, _ []byte) error { out = append(out, string(k)); return nil })
	})
	return out, err
}
