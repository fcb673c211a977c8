package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Type is a WorkOS event type such as "dsync.user.created".
type Type string

// ErrMalformed is wrapped by every error about a body that is not a JSON event envelope.
var ErrMalformed = errors.New("malformed event")

// ErrInvalid is wrapped by every error about a dsync event that lacks what it needs
// (an id, a directory id, a parsable created_at).
var ErrInvalid = errors.New("invalid event")

// Key orders events: by created_at, then by event id. Each entity in the store
// takes the state of the event with the greatest Key that touched it.
type Key struct {
	At time.Time
	ID string
}

// Compare returns -1, 0 or +1 as k is older than, the same as, or newer than o.
func (k Key) Compare(o Key) int {
	if c := k.At.Compare(o.At); c != 0 {
		return c
	}
	return strings.Compare(k.ID, o.ID)
}

// IsZero reports whether k is the zero Key (no event).
func (k Key) IsZero() bool { return k.ID == "" && k.At.IsZero() }

// Newer reports whether k is strictly newer than o.
func (k Key) Newer(o Key) bool { return k.Compare(o) > 0 }

// Directory is the directory of dsync.activated and dsync.deleted.
type Directory struct {
	ID             string `json:"id"`
	OrganizationID string `json:"organization_id"`
	Name           string `json:"name"`
	Type           string `json:"type"`
	State          string `json:"state"`
}

// User is a directory user as carried by dsync.user.* and dsync.group.user_*.
type User struct {
	ID             string   `json:"id"`
	DirectoryID    string   `json:"directory_id"`
	OrganizationID string   `json:"organization_id"`
	IdpID          string   `json:"idp_id"`
	Email          string   `json:"email"`
	FirstName      string   `json:"first_name"`
	LastName       string   `json:"last_name"`
	State          string   `json:"state"`
	Roles          []string `json:"roles,omitempty"` // WorkOS role slugs: role.slug ∪ roles[].slug, sorted, unique
	// RolesSent reports whether the payload carried the role attribute at
	// all ("role" or "roles", not null). Without it Roles says nothing:
	// the user's roles are unknown, not empty.
	RolesSent bool `json:"-"`
}

// Group is a directory group.
type Group struct {
	ID             string `json:"id"`
	DirectoryID    string `json:"directory_id"`
	OrganizationID string `json:"organization_id"`
	IdpID          string `json:"idp_id"`
	Name           string `json:"name"`
}

// Event is a decoded WorkOS event. For an ignored type only ID, Type and
// CreatedAt (when parsable) are set.
type Event struct {
	ID          string
	Type        Type
	CreatedAt   time.Time
	DirectoryID string

	Directory *Directory // dsync.activated, dsync.deleted
	User      *User      // dsync.user.*, dsync.group.user_*
	Group     *Group     // dsync.group.*, dsync.group.user_*

	// Raw is the body the event was decoded from (not copied: the caller
	// must not reuse the buffer while the event is in use).
	Raw []byte

	// Stored is when the stream stored the event (set by whoever read it
	// from the stream; zero for an event from elsewhere, e.g. a fixture
	// file). The store dates what the event does by it, so that every node
	// applying the stream dates it alike.
	Stored time.Time
}

// Key returns the event's ordering key.
func (e *Event) Key() Key { return Key{At: e.CreatedAt, ID: e.ID} }

// Ignored reports whether dsyncd does not apply this event's type.
func (e *Event) Ignored() bool { return !e.Type.Handled() }

type envelope struct {
	ID        string          `json:"id"`
	Event     Type            `json:"event"`
	Data      json.RawMessage `json:"data"`
	CreatedAt string          `json:"created_at"`
}

type wireEmail struct {
	Primary bool   `json:"primary"`
	Value   string `json:"value"`
}

// emailList is a list of emails that decodes anything but a list of email
// objects as empty: it only serves as a fallback for a null "email", and the
// deprecated "emails" and customer-mapped custom_attributes.emails must not
// make a whole event undecodable.
type emailList []wireEmail

func (l *emailList) UnmarshalJSON(b []byte) error {
	var v []wireEmail
	if json.Unmarshal(b, &v) == nil {
		*l = v
	} else {
		*l = nil
	}
	return nil
}

type wireSlug struct {
	Slug string `json:"slug"`
}

type wireUser struct {
	ID               string     `json:"id"`
	DirectoryID      string     `json:"directory_id"`
	OrganizationID   *string    `json:"organization_id"`
	IdpID            string     `json:"idp_id"`
	Email            *string    `json:"email"`
	Emails           emailList  `json:"emails"`
	FirstName        *string    `json:"first_name"`
	LastName         *string    `json:"last_name"`
	State            string     `json:"state"`
	Role             *wireSlug  `json:"role"`
	Roles            []wireSlug `json:"roles"`
	CustomAttributes struct {
		Emails emailList `json:"emails"`
	} `json:"custom_attributes"`
}

type wireGroup struct {
	ID             string  `json:"id"`
	DirectoryID    string  `json:"directory_id"`
	OrganizationID *string `json:"organization_id"`
	IdpID          string  `json:"idp_id"`
	Name           *string `json:"name"`
}

type wireDirectory struct {
	ID             string  `json:"id"`
	OrganizationID *string `json:"organization_id"`
	Name           *string `json:"name"`
	Type           string  `json:"type"`
	State          string  `json:"state"`
}

type wireMembership struct {
	DirectoryID string     `json:"directory_id"`
	User        *wireUser  `json:"user"`
	Group       *wireGroup `json:"group"`
}

// MaxIDBytes is the longest id an event may carry, in bytes: its own id and
// every id of its data (directory, organisation, user, group). The store
// keys records by these ids, some by two of them joined, and bbolt refuses a
// key over 32 KiB; JetStream refuses a message id (the event id) whose header
// passes 64 KiB. WorkOS's ids are about 40 bytes: 1 KiB leaves room for any
// identifier and none for an event that could only fail later.
const MaxIDBytes = 1024

// DecodeError is the error Decode returns. It wraps its Class.
type DecodeError struct {
	// Class is ErrMalformed (not a JSON event envelope, or a field of the
	// wrong JSON type) or ErrInvalid (a dsync event without what it needs).
	Class error
	// Type is the event's type when it has one; ID its id (for operators).
	Type Type
	ID   string
	// Reason says what is wrong, naming fields but quoting no value of the
	// body: the receiver logs it and answers it.
	Reason string
	// Detail adds what an operator may need (the value that failed, the
	// decoder's message); it may quote the body. Often empty.
	Detail string
}

// Error is "<class>: <type> <id>: <reason>[: <detail>]", with a long id cut.
func (e *DecodeError) Error() string {
	var b strings.Builder
	b.WriteString(e.Class.Error())
	b.WriteString(": ")
	if e.Type != "" {
		b.WriteString(string(e.Type))
		if e.ID != "" {
			b.WriteByte(' ')
			b.WriteString(shortID(e.ID))
		}
		b.WriteString(": ")
	}
	b.WriteString(e.Reason)
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	return b.String()
}

func (e *DecodeError) Unwrap() error { return e.Class }

// Public is the error without any value of the body: its class, the event
// type (when dsyncd handles it) and the reason. The receiver logs it and
// puts it in its 400 answer.
func (e *DecodeError) Public() string {
	if e.Type.Handled() {
		return e.Class.Error() + ": " + string(e.Type) + ": " + e.Reason
	}
	return e.Class.Error() + ": " + e.Reason
}

// shortID is id, cut to 64 bytes (and how long it was) when longer.
func shortID(id string) string {
	if len(id) <= 64 {
		return id
	}
	cut := 64
	for cut > 0 && !utf8.RuneStart(id[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…(%d bytes)", id[:cut], len(id))
}

// jsonReason describes a decoding error of encoding/json without quoting the
// body; path prefixes the field names it reports (e.g. "data.").
func jsonReason(err error, path string) string {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		field := strings.TrimSuffix(path, ".")
		if te.Field != "" {
			field = path + te.Field
		}
		if field == "" {
			return "a JSON " + te.Value + " where an object belongs"
		}
		return fmt.Sprintf("%s: a JSON %s where %s belongs", field, te.Value, jsonKind(te.Type))
	case errors.As(err, &se):
		return fmt.Sprintf("not valid JSON (at byte %d)", se.Offset)
	}
	return "not valid JSON"
}

// jsonKind names the JSON type a Go type decodes from.
func jsonKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	}
	return "a number"
}

// Decode decodes one event envelope. It returns a *DecodeError wrapping
// ErrMalformed when b is not a JSON event envelope (or a field has the wrong
// JSON type) and one wrapping ErrInvalid when a dsync event lacks an id it
// needs or carries one longer than MaxIDBytes; the message says what is
// wrong. An event of a type dsyncd does not handle decodes without error and
// reports Ignored.
//
// It is the one validation of an event: the receiver runs it before it
// answers 2xx, the worker before it applies, so that what the worker would
// park for its own content is refused with 400 instead.
func Decode(b []byte) (*Event, error) {
	var env envelope
	if !scanEnvelope(b, &env) {
		env = envelope{}
		if err := json.Unmarshal(b, &env); err != nil {
			return nil, &DecodeError{Class: ErrMalformed, Reason: jsonReason(err, ""), Detail: err.Error()}
		}
	}
	if env.Event == "" {
		return nil, &DecodeError{Class: ErrMalformed, Reason: `no "event" type`}
	}
	ev := &Event{ID: env.ID, Type: env.Event, Raw: b}
	fail := func(class error, reason, detail string) (*Event, error) {
		return nil, &DecodeError{Class: class, Type: ev.Type, ID: ev.ID, Reason: reason, Detail: detail}
	}
	if env.CreatedAt != "" {
		t, err := ParseTime(env.CreatedAt)
		if err == nil && t.IsZero() {
			// A zero instant would make Key.IsZero true and lose to every event.
			err = errors.New("zero time")
		}
		if err == nil {
			ev.CreatedAt = t
		} else if ev.Type.Handled() {
			return fail(ErrInvalid, "created_at is not a timestamp in a layout WorkOS uses", fmt.Sprintf("%s: %v", quote(env.CreatedAt), err))
		}
	}
	if !ev.Type.Handled() {
		return ev, nil
	}
	if ev.ID == "" {
		return fail(ErrInvalid, "missing id", "")
	}
	if len(ev.ID) > MaxIDBytes {
		return fail(ErrInvalid, fmt.Sprintf("id is longer than %d bytes", MaxIDBytes), "")
	}
	if env.CreatedAt == "" {
		return fail(ErrInvalid, "missing created_at", "")
	}
	if len(bytes.TrimSpace(env.Data)) == 0 || bytes.Equal(bytes.TrimSpace(env.Data), []byte("null")) {
		return fail(ErrInvalid, "missing data", "")
	}
	err := ev.Kind().decode(ev, env.Data)
	if err == nil {
		err = ev.checkIDs()
	}
	if err != nil {
		var inv invalidField
		if errors.As(err, &inv) {
			return fail(ErrInvalid, inv.reason, "")
		}
		return fail(ErrMalformed, "data: "+jsonReason(err, "data."), err.Error())
	}
	return ev, nil
}

// invalidField is what the data decoders return for a dsync event that
// lacks an id or carries one too long. It wraps ErrInvalid.
type invalidField struct{ reason string }

func (e invalidField) Error() string { return ErrInvalid.Error() + ": " + e.reason }
func (e invalidField) Unwrap() error { return ErrInvalid }

// checkIDs refuses an id of the decoded data longer than MaxIDBytes.
func (ev *Event) checkIDs() error {
	type idField struct{ name, id string }
	var fields [6]idField // no allocation: Decode is on the receiver's hot path
	n := 0
	if d := ev.Directory; d != nil {
		fields[0], fields[1] = idField{"data.id", d.ID}, idField{"data.organization_id", d.OrganizationID}
		n = 2
	}
	if u := ev.User; u != nil {
		if ev.Group != nil {
			fields[0], fields[1], fields[2] = idField{"data.user.id", u.ID}, idField{"data.user.directory_id", u.DirectoryID},
				idField{"data.user.organization_id", u.OrganizationID}
		} else {
			fields[0], fields[1], fields[2] = idField{"data.id", u.ID}, idField{"data.directory_id", u.DirectoryID},
				idField{"data.organization_id", u.OrganizationID}
		}
		n = 3
	}
	if g := ev.Group; g != nil {
		if ev.User != nil {
			fields[3], fields[4], fields[5] = idField{"data.group.id", g.ID}, idField{"data.group.directory_id", g.DirectoryID},
				idField{"data.group.organization_id", g.OrganizationID}
			n = 6
		} else {
			fields[0], fields[1], fields[2] = idField{"data.id", g.ID}, idField{"data.directory_id", g.DirectoryID},
				idField{"data.organization_id", g.OrganizationID}
			n = 3
		}
	}
	for _, f := range fields[:n] {
		if len(f.id) > MaxIDBytes {
			return invalidField{fmt.Sprintf("%s is longer than %d bytes", f.name, MaxIDBytes)}
		}
	}
	return nil
}

func missing(field string) error { return invalidField{"missing " + field} }

func (ev *Event) decodeDirectory(data []byte) error {
	var w wireDirectory
	if !scanData(data, func(s *scanner) bool { return s.wireDirectoryObject(0, &w) }) {
		w = wireDirectory{}
		if err := json.Unmarshal(data, &w); err != nil {
			return err
		}
	}
	if w.ID == "" {
		return missing("data.id")
	}
	ev.Directory = &Directory{ID: w.ID, OrganizationID: deref(w.OrganizationID), Name: deref(w.Name), Type: w.Type, State: w.State}
	ev.DirectoryID = w.ID
	return nil
}

func (ev *Event) decodeUser(data []byte) error {
	var w wireUser
	if !scanData(data, func(s *scanner) bool { return s.wireUserObject(0, &w) }) {
		w = wireUser{}
		if err := json.Unmarshal(data, &w); err != nil {
			return err
		}
	}
	if w.ID == "" {
		return missing("data.id")
	}
	if w.DirectoryID == "" {
		return missing("data.directory_id")
	}
	ev.User = w.user()
	ev.DirectoryID = w.DirectoryID
	return nil
}

func (ev *Event) decodeGroup(data []byte) error {
	var w wireGroup
	if !scanData(data, func(s *scanner) bool { return s.wireGroupObject(0, &w) }) {
		w = wireGroup{}
		if err := json.Unmarshal(data, &w); err != nil {
			return err
		}
	}
	if w.ID == "" {
		return missing("data.id")
	}
	if w.DirectoryID == "" {
		return missing("data.directory_id")
	}
	ev.Group = w.group()
	ev.DirectoryID = w.DirectoryID
	return nil
}

func (ev *Event) decodeMembership(data []byte) error {
	var w wireMembership
	if !scanData(data, func(s *scanner) bool { return s.wireMembershipObject(0, &w) }) {
		w = wireMembership{}
		if err := json.Unmarshal(data, &w); err != nil {
			return err
		}
	}
	if w.User == nil || w.User.ID == "" {
		return missing("data.user.id")
	}
	if w.Group == nil || w.Group.ID == "" {
		return missing("data.group.id")
	}
	dir := firstNonEmpty(w.DirectoryID, w.User.DirectoryID, w.Group.DirectoryID)
	if dir == "" {
		return missing("data.directory_id")
	}
	if w.User.DirectoryID == "" {
		w.User.DirectoryID = dir
	}
	if w.Group.DirectoryID == "" {
		w.Group.DirectoryID = dir
	}
	ev.User = w.User.user()
	ev.Group = w.Group.group()
	ev.DirectoryID = dir
	return nil
}

func (w *wireUser) user() *User {
	u := &User{
		ID:             w.ID,
		DirectoryID:    w.DirectoryID,
		OrganizationID: deref(w.OrganizationID),
		IdpID:          w.IdpID,
		Email:          deref(w.Email),
		FirstName:      deref(w.FirstName),
		LastName:       deref(w.LastName),
		State:          w.State,
	}
	if u.Email == "" {
		// A primary entry in either list wins over any other entry; with no
		// primary anywhere, the first address given is better than none.
		u.Email = firstNonEmpty(primaryEmail(w.Emails), primaryEmail(w.CustomAttributes.Emails),
			firstEmail(w.Emails), firstEmail(w.CustomAttributes.Emails))
	}
	seen := map[string]bool{}
	add := func(s string) {
		if s != "" && !seen[s] {
			seen[s] = true
			u.Roles = append(u.Roles, s)
		}
	}
	u.RolesSent = w.Role != nil || w.Roles != nil
	if w.Role != nil {
		add(w.Role.Slug)
	}
	for _, r := range w.Roles {
		add(r.Slug)
	}
	slices.Sort(u.Roles)
	return u
}

func (w *wireGroup) group() *Group {
	return &Group{ID: w.ID, DirectoryID: w.DirectoryID, OrganizationID: deref(w.OrganizationID), IdpID: w.IdpID, Name: deref(w.Name)}
}

// primaryEmail returns the value of list's primary entry, or "".
func primaryEmail(list emailList) string {
	for _, e := range list {
		if e.Primary && e.Value != "" {
			return e.Value
		}
	}
	return ""
}

// firstEmail returns list's first non-empty value, or "".
func firstEmail(list emailList) string {
	for _, e := range list {
		if e.Value != "" {
			return e.Value
		}
	}
	return ""
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999999999Z0700",
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999Z0700",
	"2006-01-02 15:04:05.999999999",
	"2006-01-02T15:04:05.999999999",
}

// ParseTime parses the created_at layouts WorkOS uses:
// "2021-06-25T19:07:33.155Z", "2023-04-28 20:05:31.093" (no zone: UTC) and
// "2021-07-31T05:10:19+0000". The result is in UTC.
func ParseTime(s string) (time.Time, error) {
	layouts := timeLayouts
	if len(s) > 19 && (s[10] == 'T' || s[10] == ' ') {
		// Try first the layouts of s's shape (separator, zone or not):
		// each failed time.Parse allocates its error.
		zoned := s[len(s)-1] == 'Z' || strings.ContainsAny(s[19:], "+-")
		switch {
		case s[10] == 'T' && zoned && (s[len(s)-1] == 'Z' || s[len(s)-3] == ':'):
			layouts = timeLayouts[0:1]
		case s[10] == 'T' && zoned:
			layouts = timeLayouts[1:2]
		case s[10] == ' ' && zoned:
			layouts = timeLayouts[2:4]
		case s[10] == ' ':
			layouts = timeLayouts[4:5]
		default:
			layouts = timeLayouts[5:6]
		}
		for _, l := range layouts {
			if t, err := time.Parse(l, s); err == nil {
				return t.UTC(), nil
			}
		}
		layouts = timeLayouts
	}
	for _, l := range layouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("unrecognised timestamp layout")
}
