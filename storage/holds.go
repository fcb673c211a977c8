package storage

import (
	"encoding/json"
	"time"
)

// Hold is a change sync did not make on its own: a revocation that would
// have left an organisation without an admin, or an organisation paused by
// the mass-deprovisioning breaker.
type Hold struct {
	ID             uint64     `json:"id"`
	Kind           string     `json:"kind"` // "last_admin" or "mass_deprovision"
	OrganizationID string     `json:"organization_id"`
	UserID         string     `json:"user_id,omitempty"`
	Badge          string     `json:"badge,omitempty"`
	Reason         string     `json:"reason"`
	EventID        string     `json:"event_id,omitempty"`
	CreatedAt      time.Time  `json:"created_at"`
	ClosedAt       *time.Time `json:"closed_at,omitempty"`
	Resolution     string     `json:"resolution,omitempty"` // "released", "approved", "rejected"
}

// holds lists the holds, open ones only when openOnly.
func (s *Store) holds(t *txn, openOnly bool) ([]Hold, error) {
	out := []Hold{}
	err := t.holds.ForEach(func(_, v []byte) error {
		var h Hold
		if err := json.Unmarshal(v, &h); err != nil {
			return err
		}
		if openOnly && h.ClosedAt != nil {
			return nil
		}
		out = append(out, h)
		return nil
	})
	return out, err
}
