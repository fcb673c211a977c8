package client

import "time"

// User is a user as the API shows it. The change records and the export
// carry the view (ID to MovedToOrganizationID); the lookups
// (User, UsersByEmail, UsersByIdpID, OrganizationUsers) add Roles to
// UpdatedAtEvent.
type User struct {
	ID             string   `json:"id"`
	DirectoryID    string   `json:"directory_id"`
	OrganizationID string   `json:"organization_id"`
	IdpID          string   `json:"idp_id"`
	Email          string   `json:"email"`
	FirstName      string   `json:"first_name"`
	LastName       string   `json:"last_name"`
	State          string   `json:"state"`
	Groups         []string `json:"groups"`
	Badges         []string `json:"badges"`
	// Deleted: the directory deleted the user. A deleted user is listed
	// (and in the export) only while a last-admin hold keeps it an admin:
	// then HeldBy is that hold's id.
	Deleted bool   `json:"deleted,omitempty"`
	HeldBy  uint64 `json:"held_by,omitempty"`
	// MovedToOrganizationID: the directory moved the user there, but a
	// hold keeps it in OrganizationID (it was its old one's last admin).
	MovedToOrganizationID string `json:"moved_to_organization_id,omitempty"`

	Roles          []string          `json:"roles,omitempty"`
	GroupNames     map[string]string `json:"group_names,omitempty"`
	Grants         []Grant           `json:"grants,omitempty"`
	UpdatedByEvent string            `json:"updated_by_event,omitempty"`
	UpdatedAtEvent time.Time         `json:"updated_at_event,omitzero"`
}

// Active reports whether the user's state is active and it is not deleted.
func (u *User) Active() bool { return u.State == "active" && !u.Deleted }

// HasBadge reports whether the user holds badge.
func (u *User) HasBadge(badge string) bool {
	for _, b := range u.Badges {
		if b == badge {
			return true
		}
	}
	return false
}

// Grant says what gives a user one of its badges.
type Grant struct {
	Badge  string `json:"badge"`
	Rule   string `json:"rule"`
	Group  string `json:"group,omitempty"`
	Role   string `json:"role,omitempty"`
	Source string `json:"source"`
}

// Hold is a safeguard hold: in a change record (hold.opened, hold.closed,
// organization.paused), in an organisation's open holds, and in the
// export (which has fewer fields).
type Hold struct {
	ID             uint64     `json:"id"`
	Kind           string     `json:"kind"`
	OrganizationID string     `json:"organization_id"`
	UserID         string     `json:"user_id,omitempty"`
	Badge          string     `json:"badge,omitempty"`
	Rule           string     `json:"rule,omitempty"`
	Reason         string     `json:"reason"`
	EventID        string     `json:"event_id,omitempty"`
	CreatedAt      time.Time  `json:"created_at,omitzero"`
	DeferredEvents int        `json:"deferred_events,omitempty"`
	Users          int        `json:"users,omitempty"`
	MovedTo        string     `json:"moved_to,omitempty"`
	ClosedAt       *time.Time `json:"closed_at,omitempty"`
	Resolution     string     `json:"resolution,omitempty"`
	ClosedBecause  string     `json:"closed_because,omitempty"`
}

// Organization is an organisation at a glance (GET /v1/organizations/{org}).
type Organization struct {
	ID          string   `json:"id"`
	Directories []string `json:"directories"`
	// Users counts the users it lists; Admins the holders of the admin
	// badge, HeldAdmins those of them a last-admin hold keeps.
	Users      int  `json:"users"`
	Admins     int  `json:"admins"`
	HeldAdmins int  `json:"held_admins"`
	Paused     bool `json:"paused"`
	// PausedByHold is the mass-deprovisioning hold that paused it.
	PausedByHold uint64 `json:"paused_by_hold,omitempty"`
	OpenHolds    []Hold `json:"open_holds"`
}

// UserPage is one page of an organisation's users.
type UserPage struct {
	Users []User `json:"users"`
	// NextCursor is the cursor of the next page; empty on the last.
	NextCursor string `json:"next_cursor,omitempty"`
}

// UserFilter narrows OrganizationUsers. Zero values filter nothing.
type UserFilter struct {
	Badge string // only users holding this badge
	State string // only users in this state (active, inactive, …)
	Limit int    // users per page, 1 to 1000; 0 is the server's default (100)
}

// Directory is a directory in the export.
type Directory struct {
	ID             string `json:"id"`
	OrganizationID string `json:"organization_id"`
	Name           string `json:"name"`
	State          string `json:"state"`
}

// Group is a group in the export.
type Group struct {
	ID             string   `json:"id"`
	DirectoryID    string   `json:"directory_id"`
	OrganizationID string   `json:"organization_id"`
	IdpID          string   `json:"idp_id"`
	Name           string   `json:"name"`
	Members        []string `json:"members"`
}

// Export is the canonical snapshot (GET /v1/export).
type Export struct {
	// ChangeSeq is the seq of the last change record the snapshot
	// reflects: follow the changes after it and nothing is missed.
	ChangeSeq   uint64      `json:"change_seq"`
	Directories []Directory `json:"directories"`
	Users       []User      `json:"users"`
	Groups      []Group     `json:"groups"`
	Holds       []Hold      `json:"holds"`
}

// The kinds of change records.
const (
	ChangeUserCreated     = "user.created"     // the user appears in the export
	ChangeUserDeleted     = "user.deleted"     // it leaves the export: remove it
	ChangeUserDeactivated = "user.deactivated" // its state became inactive (or it was deleted while a hold keeps it)
	ChangeUserReactivated = "user.reactivated"
	ChangeUserBadges      = "user.badges_changed"
	ChangeUserGroups      = "user.groups_changed"
	ChangeUserUpdated     = "user.updated" // any other field of its view
	ChangeHoldOpened      = "hold.opened"
	ChangeHoldClosed      = "hold.closed"
	ChangeOrgPaused       = "organization.paused"
	ChangeOrgResumed      = "organization.resumed"
)

// Change is one record of the change feed.
type Change struct {
	// Seq increases by one from each record to the next.
	Seq            uint64    `json:"seq"`
	Time           time.Time `json:"time"`
	Kind           string    `json:"kind"`
	OrganizationID string    `json:"organization_id"`
	DirectoryID    string    `json:"directory_id,omitempty"`
	// Changed lists, for a user record, the fields of the view that
	// differ from the user's previous record.
	Changed []string `json:"changed,omitempty"`
	// User is a user record's full new view (for user.deleted its last
	// one). Nil for hold and organisation records.
	User *User `json:"user,omitempty"`
	// Hold is the hold opened or closed, or the one that paused the
	// organisation.
	Hold *Hold `json:"hold,omitempty"`
}

// ChangesPage is one answer of the long-poll.
type ChangesPage struct {
	Changes []Change `json:"changes"`
	// Next is the seq to ask after next time.
	Next uint64 `json:"next"`
	// Last is the feed's last seq when the server answered (header
	// Dsyncd-Change-Seq).
	Last uint64 `json:"-"`
}

// Fold applies c to users, a mirror keyed by user id: a user record's
// view replaces the user's, user.deleted removes it; other records change
// nothing. Folding every record after an export's ChangeSeq into the
// export's users gives the users of a later export.
func Fold(users map[string]User, c Change) {
	if c.User == nil {
		return
	}
	if c.Kind == ChangeUserDeleted {
		delete(users, c.User.ID)
		return
	}
	users[c.User.ID] = *c.User
}
