package storage

import (
	"errors"
	"time"
)

// Held moves, part of the last-admin safeguard: when the directory moves an
// organisation's last admin to another organisation (its organization_id,
// or its directory's, changes), the user is kept in the old one, as its
// admin, by a HoldLastAdmin hold with MovedTo set. The hold closes by itself
// when the old organisation gets another admin or the user comes back; an
// operator may approve it (the move happens) but not reject it: the
// directory moved the user.

// userOrg returns the organisation u belongs to for the safeguards and the
// mapping: the one a held move keeps it in, else its own, else its
// directory's.
func (s *Store) userOrg(t *txn, u *userRec) (string, error) {
	if u.HeldOrg != "" {
		return u.HeldOrg, nil
	}
	return s.organization(t, u.OrganizationID, u.DirectoryID)
}

// ErrNotRejectable is returned by DecideHold when rejecting a last-admin hold
// on a move: the directory moved the user; approve the hold, or give the old
// organisation another admin (the hold then closes by itself).
var ErrNotRejectable = errors.New("a held move cannot be rejected: approve it, or give the organisation another admin")

// moveDecidable says whether a held move may be decided that way.
func moveDecidable(approve bool) error {
	if !approve {
		return ErrNotRejectable
	}
	return nil
}

// releaseMove, when a held move's hold closes, puts the user where the
// directory says.
func (s *Store) releaseMove(t *txn, h *Hold) error {
	u, err := t.user(h.UserID)
	if err != nil {
		return err
	}
	if u != nil && u.HeldOrg == h.OrganizationID {
		u.HeldOrg = ""
		return t.putUser(u)
	}
	return nil
}

// holdMoves replans every plan whose move holdLastAdmins held: the user
// stays in its old organisation, as its admin, with its badges under that
// organisation's rules.
func (s *Store) holdMoves(t *txn, plans []*grantPlan, eventID string, now time.Time) error {
	for i, p := range plans {
		if !p.holdMove {
			continue
		}
		p.u.HeldOrg = p.moveFrom
		np, err := s.planGrants(t, p.u, eventID, now)
		if err != nil {
			return err
		}
		np.holdAdmin, np.movedTo = true, p.org
		plans[i] = np
	}
	return nil
}
