package events

// This file is the one table of the event types dsyncd applies: for each,
// the shape of its data (which decoder reads it, what Peek looks for) and
// what it touches in the store. Handled, HandledTypes, Decode, Peek and the
// store's Apply all consult it; a new event type is a constant and a row here
// (and, for a new payload shape, a decoder and a case in the store's apply).

// The event types dsyncd applies. Every other type decodes as ignored.
const (
	DirectoryActivated Type = "dsync.activated"
	DirectoryDeleted   Type = "dsync.deleted"
	UserCreated        Type = "dsync.user.created"
	UserUpdated        Type = "dsync.user.updated"
	UserDeleted        Type = "dsync.user.deleted"
	GroupCreated       Type = "dsync.group.created"
	GroupUpdated       Type = "dsync.group.updated"
	GroupDeleted       Type = "dsync.group.deleted"
	GroupUserAdded     Type = "dsync.group.user_added"
	GroupUserRemoved   Type = "dsync.group.user_removed"
)

// Payload is the shape of a handled event's data.
type Payload uint8

// Payload shapes.
const (
	// PayloadDirectory: data is a directory (Event.Directory).
	PayloadDirectory Payload = iota + 1
	// PayloadUser: data is a directory user (Event.User).
	PayloadUser
	// PayloadGroup: data is a directory group (Event.Group).
	PayloadGroup
	// PayloadMembership: data is {directory_id, user, group} (Event.User and Event.Group).
	PayloadMembership
)

// String names the payload shape.
func (p Payload) String() string {
	switch p {
	case PayloadDirectory:
		return "directory"
	case PayloadUser:
		return "user"
	case PayloadGroup:
		return "group"
	case PayloadMembership:
		return "membership"
	}
	return "none"
}

// Entity is a set of the kinds of record the store keeps, each ordered by
// the Key of the newest event that touched it.
type Entity uint8

// Entities.
const (
	EntityDirectory Entity = 1 << iota
	EntityUser
	EntityGroup
	EntityMembership
)

// Kind is what dsyncd knows of one event type it applies.
type Kind struct {
	Type    Type
	Payload Payload
	// Ends: the event ends what its payload names (a delete, a removal
	// from a group); the store keeps a tombstone.
	Ends bool
	// Touches is every kind of record applying the event may change
	// (besides the badges of the users it touches): a deleted user or
	// group ends its memberships, a deleted directory may deprovision
	// its users, groups and memberships (safeguards.on_directory_deleted).
	Touches Entity
	// decode reads the event's data into its payload.
	decode func(ev *Event, data []byte) error
}

// kinds is the table, in a stable order (HandledTypes).
var kinds = [...]Kind{
	{Type: DirectoryActivated, Payload: PayloadDirectory, Touches: EntityDirectory, decode: (*Event).decodeDirectory},
	{Type: DirectoryDeleted, Payload: PayloadDirectory, Ends: true, Touches: EntityDirectory | EntityUser | EntityGroup | EntityMembership, decode: (*Event).decodeDirectory},
	{Type: UserCreated, Payload: PayloadUser, Touches: EntityUser, decode: (*Event).decodeUser},
	{Type: UserUpdated, Payload: PayloadUser, Touches: EntityUser, decode: (*Event).decodeUser},
	{Type: UserDeleted, Payload: PayloadUser, Ends: true, Touches: EntityUser | EntityMembership, decode: (*Event).decodeUser},
	{Type: GroupCreated, Payload: PayloadGroup, Touches: EntityGroup, decode: (*Event).decodeGroup},
	{Type: GroupUpdated, Payload: PayloadGroup, Touches: EntityGroup, decode: (*Event).decodeGroup},
	{Type: GroupDeleted, Payload: PayloadGroup, Ends: true, Touches: EntityGroup | EntityMembership, decode: (*Event).decodeGroup},
	{Type: GroupUserAdded, Payload: PayloadMembership, Touches: EntityUser | EntityGroup | EntityMembership, decode: (*Event).decodeMembership},
	{Type: GroupUserRemoved, Payload: PayloadMembership, Ends: true, Touches: EntityUser | EntityGroup | EntityMembership, decode: (*Event).decodeMembership},
}

var kindIndex = func() map[Type]int {
	m := make(map[Type]int, len(kinds))
	for i, k := range kinds {
		m[k.Type] = i
	}
	return m
}()

// KindOf returns the Kind of t, and false when dsyncd does not apply t.
func KindOf(t Type) (Kind, bool) {
	i, ok := kindIndex[t]
	if !ok {
		return Kind{}, false
	}
	return kinds[i], true
}

// Kind returns the Kind of the event's type (the zero Kind when ignored).
func (e *Event) Kind() Kind {
	k, _ := KindOf(e.Type)
	return k
}

// Handled reports whether dsyncd applies events of type t.
func (t Type) Handled() bool {
	_, ok := kindIndex[t]
	return ok
}

// HandledTypes lists every event type dsyncd applies, in a stable order.
func HandledTypes() []Type {
	out := make([]Type, len(kinds))
	for i, k := range kinds {
		out[i] = k.Type
	}
	return out
}

// Kinds lists the Kind of every event type dsyncd applies, in the order of HandledTypes.
func Kinds() []Kind {
	return append([]Kind(nil), kinds[:]...)
}
