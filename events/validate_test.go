package events

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDecodeErrorsArePublicWithoutBodyValues: every refusal of a handled
// event names the field and the problem; its public form (what the receiver
// logs and answers) quotes no value of the body, however long.
func TestDecodeErrorsArePublicWithoutBodyValues(t *testing.T) {
	const marker = "VALUE-MARKER"
	long := marker + strings.Repeat("x", MaxIDBytes)
	set := func(k string, v any) func(map[string]any) { return func(m map[string]any) { m[k] = v } }
	inData := func(f func(map[string]any)) func(map[string]any) {
		return func(ev map[string]any) { f(obj(ev["data"])) }
	}
	inDataObj := func(key string, f func(map[string]any)) func(map[string]any) {
		return func(ev map[string]any) { f(obj(obj(ev["data"])[key])) }
	}
	cases := []struct {
		name   string
		file   string
		change func(map[string]any)
		class  error
		public string // the whole public message
	}{
		{"an event id of 100 KB is invalid", "dsync_user_created.json", set("id", marker+strings.Repeat("e", 100<<10)), ErrInvalid,
			"invalid event: dsync.user.created: id is longer than 1024 bytes"},
		{"an event id one byte over the limit is invalid", "dsync_user_created.json", set("id", strings.Repeat("e", MaxIDBytes+1)), ErrInvalid,
			"invalid event: dsync.user.created: id is longer than 1024 bytes"},
		{"a user id over 32 KB is invalid", "dsync_user_updated.json", inData(set("id", long+strings.Repeat("u", 32<<10))), ErrInvalid,
			"invalid event: dsync.user.updated: data.id is longer than 1024 bytes"},
		{"a long directory id is invalid", "dsync_group_created.json", inData(set("directory_id", long)), ErrInvalid,
			"invalid event: dsync.group.created: data.directory_id is longer than 1024 bytes"},
		{"a long organization id is invalid", "dsync_activated.json", inData(set("organization_id", long)), ErrInvalid,
			"invalid event: dsync.activated: data.organization_id is longer than 1024 bytes"},
		{"a long member id is invalid", "dsync_group_user_added.json", inDataObj("user", set("id", long)), ErrInvalid,
			"invalid event: dsync.group.user_added: data.user.id is longer than 1024 bytes"},
		{"a numeric first_name is malformed", "dsync_user_created.json", inData(set("first_name", 123)), ErrMalformed,
			"malformed event: dsync.user.created: data: data.first_name: a JSON number where a string belongs"},
		{"an object email is malformed", "dsync_user_updated.json", inData(set("email", map[string]any{"v": marker})), ErrMalformed,
			"malformed event: dsync.user.updated: data: data.email: a JSON object where a string belongs"},
		{"a boolean state is malformed", "dsync_user_created.json", inData(set("state", true)), ErrMalformed,
			"malformed event: dsync.user.created: data: data.state: a JSON bool where a string belongs"},
		{"a string roles list is malformed", "dsync_user_created.json", inData(set("roles", marker)), ErrMalformed,
			"malformed event: dsync.user.created: data: data.roles: a JSON string where an array belongs"},
		{"a numeric group name is malformed", "dsync_group_updated.json", inData(set("name", 7)), ErrMalformed,
			"malformed event: dsync.group.updated: data: data.name: a JSON number where a string belongs"},
		{"a numeric member first_name is malformed", "dsync_group_user_added.json", inDataObj("user", set("first_name", 5)), ErrMalformed,
			"malformed event: dsync.group.user_added: data: data.user.first_name: a JSON number where a string belongs"},
		{"a numeric event id is malformed", "dsync_user_created.json", set("id", 42), ErrMalformed,
			"malformed event: id: a JSON number where a string belongs"},
		{"a bad created_at is invalid, its value kept out", "dsync_user_created.json", set("created_at", marker), ErrInvalid,
			"invalid event: dsync.user.created: created_at is not a timestamp in a layout WorkOS uses"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev, err := Decode(edit(t, c.file, c.change))
			if ev != nil || !errors.Is(err, c.class) {
				t.Fatalf("Decode = %v, %v; want %v", ev, err, c.class)
			}
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %T is not a *DecodeError", err)
			}
			if got := de.Public(); got != c.public {
				t.Errorf("Public() = %q, want %q", got, c.public)
			}
			if len(err.Error()) > 600 {
				t.Errorf("Error() is %d bytes long: a long id must be cut", len(err.Error()))
			}
		})
	}
}

// TestDecodeAcceptsIDsUpToTheLimit: an id of exactly MaxIDBytes is fine.
func TestDecodeAcceptsIDsUpToTheLimit(t *testing.T) {
	b := edit(t, "dsync_group_user_added.json", func(ev map[string]any) {
		ev["id"] = strings.Repeat("e", MaxIDBytes)
		d := obj(ev["data"])
		obj(d["user"])["id"] = strings.Repeat("u", MaxIDBytes)
		obj(d["group"])["id"] = strings.Repeat("g", MaxIDBytes)
	})
	ev := mustDecode(t, b)
	if len(ev.ID) != MaxIDBytes || len(ev.User.ID) != MaxIDBytes || len(ev.Group.ID) != MaxIDBytes {
		t.Fatalf("ids cut: %d %d %d", len(ev.ID), len(ev.User.ID), len(ev.Group.ID))
	}
}

// TestCheckHeaderDecidesWhatNeedsNoBody: CheckHeader refuses what Verify
// refuses for the header alone, with the same error class, and lets through
// a well-formed, fresh header whatever its v1 (only the body can tell).
func TestCheckHeaderDecidesWhatNeedsNoBody(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	v := NewVerifier([]string{"whsec_a"}, time.Minute).WithClock(func() time.Time { return now })
	body := []byte(`{"id":"e"}`)
	hex := strings.Repeat("ab", 32)
	ms := func(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }
	cases := []struct {
		name   string
		header string
		want   error // nil: CheckHeader passes it
	}{
		{"absent is not signed", "", ErrNotSigned},
		{"garbage is malformed", "garbage", ErrMalformedSignature},
		{"no v1 is malformed", "t=" + ms(now), ErrMalformedSignature},
		{"short v1 is malformed", "t=" + ms(now) + ", v1=abc", ErrMalformedSignature},
		{"old is stale", Sign("whsec_a", now.Add(-2*time.Minute), body), ErrStale},
		{"future is stale", Sign("whsec_a", now.Add(2*time.Minute), body), ErrStale},
		{"fresh and right passes", Sign("whsec_a", now, body), nil},
		{"fresh but forged passes (only the body can tell)", "t=" + ms(now) + ", v1=" + hex, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := v.CheckHeader(c.header)
			verr := v.Verify(c.header, body)
			if c.want == nil {
				if err != nil {
					t.Fatalf("CheckHeader = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, c.want) || !errors.Is(verr, c.want) {
				t.Fatalf("CheckHeader = %v, Verify = %v; want both %v", err, verr, c.want)
			}
		})
	}
}
