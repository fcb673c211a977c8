package events

import (
	"encoding/json"
	"fmt"
)

// Header is what the webhook receiver needs of an event to store it: its id,
// its type and its directory.
type Header struct {
	ID          string
	Type        Type
	DirectoryID string
}

type peekRef struct {
	ID          string `json:"id"`
	DirectoryID string `json:"directory_id"`
}

type peekData struct {
	ID          string   `json:"id"`
	DirectoryID string   `json:"directory_id"`
	User        *peekRef `json:"user"`
	Group       *peekRef `json:"group"`
}

type peekEnvelope struct {
	ID        string    `json:"id"`
	Event     Type      `json:"event"`
	CreatedAt string    `json:"created_at"`
	Data      *peekData `json:"data"`
}

// Peek checks b the way Decode does — the same error classes for the same
// bodies as far as ids, type and created_at go — but extracts only the
// Header. Fields Decode also checks (their JSON types, the organisation ids'
// length) are not checked: the receiver runs Decode, the one validation the
// worker runs too.
//
// Its errors are logged by the receiver, so they carry no value of the body
// but the event's type, one dsyncd handles: not its id, not the bad value.
func Peek(b []byte) (Header, error) {
	var env peekEnvelope
	if !scanPeek(b, &env) {
		env = peekEnvelope{}
		if err := json.Unmarshal(b, &env); err != nil {
			return Header{}, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
	}
	if env.Event == "" {
		return Header{}, fmt.Errorf("%w: no \"event\" type", ErrMalformed)
	}
	h := Header{ID: env.ID, Type: env.Event}
	if !h.Type.Handled() {
		return h, nil
	}
	if h.ID == "" {
		return Header{}, fmt.Errorf("%w: %s: missing id", ErrInvalid, h.Type)
	}
	if len(h.ID) > MaxIDBytes {
		return Header{}, fmt.Errorf("%w: %s: id is longer than %d bytes", ErrInvalid, h.Type, MaxIDBytes)
	}
	if env.CreatedAt == "" {
		return Header{}, fmt.Errorf("%w: %s: missing created_at", ErrInvalid, h.Type)
	}
	if t, err := ParseTime(env.CreatedAt); err != nil || t.IsZero() {
		return Header{}, fmt.Errorf("%w: %s: created_at is not a timestamp in a layout WorkOS uses", ErrInvalid, h.Type)
	}
	d := env.Data
	if d == nil {
		return Header{}, fmt.Errorf("%w: %s: missing data", ErrInvalid, h.Type)
	}
	miss := func(f string) (Header, error) {
		return Header{}, fmt.Errorf("%s: %w", h.Type, missing(f))
	}
	kind, _ := KindOf(h.Type)
	switch kind.Payload {
	case PayloadDirectory:
		if d.ID == "" {
			return miss("data.id")
		}
		h.DirectoryID = d.ID
	case PayloadMembership:
		if d.User == nil || d.User.ID == "" {
			return miss("data.user.id")
		}
		if d.Group == nil || d.Group.ID == "" {
			return miss("data.group.id")
		}
		h.DirectoryID = firstNonEmpty(d.DirectoryID, d.User.DirectoryID, d.Group.DirectoryID)
	default:
		if d.ID == "" {
			return miss("data.id")
		}
		h.DirectoryID = d.DirectoryID
	}
	if h.DirectoryID == "" {
		return miss("data.directory_id")
	}
	for _, id := range []string{d.ID, d.DirectoryID, h.DirectoryID} {
		if len(id) > MaxIDBytes {
			return Header{}, fmt.Errorf("%w: %s: an id of data is longer than %d bytes", ErrInvalid, h.Type, MaxIDBytes)
		}
	}
	for _, r := range []*peekRef{d.User, d.Group} {
		if r != nil && (len(r.ID) > MaxIDBytes || len(r.DirectoryID) > MaxIDBytes) {
			return Header{}, fmt.Errorf("%w: %s: an id of data is longer than %d bytes", ErrInvalid, h.Type, MaxIDBytes)
		}
	}
	return h, nil
}
