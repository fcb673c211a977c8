// Package events is what dsyncd knows of WorkOS's Directory Sync events: their
// envelope and payloads, their order, and their webhook signature. It imports
// nothing of the project and does no I/O beyond reading fixture files.
//
// # Basics
//
// A webhook body is verified with a Verifier (the WorkOS-Signature header:
// HMAC-SHA256 over "t.body" with any live secret, a two-sided tolerance, a
// constant-time compare; CheckHeader decides what the header alone can, before
// a body is read), then Decoded into an Event with its typed payload
// (Directory, User, Group, or a membership's user and group). Decode is the
// one validation of an event: the receiver runs it before answering 2xx and
// the worker before applying, so what the worker would park for its content
// (a field of the wrong JSON type, an id over MaxIDBytes) is refused with 400
// first. Its *DecodeError has a Public form quoting no value of the body.
// Peek extracts only the id, type and directory.
//
// Events are ordered by Key: created_at (any of WorkOS's layouts, see
// ParseTime), then the event id. The store gives each entity the state of the
// newest event that touched it.
//
// The dsync types dsyncd applies are one table (kinds.go): for each type its
// Kind says the shape of its data (which decoder reads it, what Peek looks
// for, which change the store applies) and what it touches. Handled,
// HandledTypes, Decode, Peek and the store consult it; any other type decodes
// as ignored, so WorkOS can add types without breaking the receiver.
// ReadFixtures reads files of events (JSON, NDJSON, arrays) for replay and
// tests; Sign signs a body the way WorkOS does, for tests and `dsyncd send`.
//
// # Caveats
//
// Errors are classified by sentinel: ErrMalformed (not an event envelope),
// ErrInvalid (a dsync event lacking what it needs), and for signatures
// ErrNotSigned, ErrMalformedSignature, ErrStale and ErrBadSignature. Callers
// test them with errors.Is; each is the event's own fault, never transient.
//
// Decode does not copy the body: Event.Raw is the caller's buffer, which must
// not be reused while the Event is alive.
package events
