package events

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const eventsDir = "../testdata/workos/events"

var exampleTime = time.Date(2021, 6, 25, 19, 7, 33, 155e6, time.UTC)

func readExample(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(eventsDir, name))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// edit decodes an example, lets change modify it and re-encodes it.
func edit(tb testing.TB, name string, change func(ev map[string]any)) []byte {
	tb.Helper()
	var ev map[string]any
	if err := json.Unmarshal(readExample(tb, name), &ev); err != nil {
		tb.Fatal(err)
	}
	change(ev)
	b, err := json.Marshal(ev)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func obj(v any) map[string]any { return v.(map[string]any) }

func mustDecode(t *testing.T, b []byte) *Event {
	t.Helper()
	ev, err := Decode(b)
	if err != nil {
		t.Fatalf("Decode: %v\n%s", err, b)
	}
	if ev == nil {
		t.Fatal("Decode returned a nil event and no error")
	}
	return ev
}

func TestDecodeExamples(t *testing.T) {
	lela := &User{
		ID: "directory_user_01E1X1B89NH8Z3SDFJR4H7RGX7", DirectoryID: "directory_01ECAZ4NV9QMV47GW873HDCX74",
		OrganizationID: "org_01EZTR6WYX1A0DSE2CYMGXQ24Y", IdpID: "8931", Email: "lela.block@example.com",
		FirstName: "Lela", LastName: "Block", State: "active", Roles: []string{"member"},
	}
	inactiveLela := *lela
	inactiveLela.State = "inactive"
	eric := &User{
		ID: "directory_user_01E1X56GH84T3FB41SD6PZGDBX", DirectoryID: "directory_01ECAZ4NV9QMV47GW873HDCX74",
		OrganizationID: "org_01EZTR6WYX1A0DSE2CYMGXQ24Y", IdpID: "2936", Email: "eric@example.com",
		FirstName: "Eric", LastName: "Schneider", State: "active", Roles: []string{"member"},
	}
	developers := &Group{
		ID: "directory_group_01E1X5GPMMXF4T1DCERMVEEPVW", DirectoryID: "directory_01ECAZ4NV9QMV47GW873HDCX74",
		OrganizationID: "org_01EZTR6WYX1A0DSE2CYMGXQ24Y", IdpID: "02grqrue4294w24", Name: "Developers",
	}
	fooDir := &Directory{
		ID: "directory_01EHWNC0FCBHZ3BJ7EGKYXK0E6", OrganizationID: "org_01EZTR6WYX1A0DSE2CYMGXQ24Y",
		Name: "Foo Corp's Directory", Type: "generic scim v2.0", State: "active",
	}
	deletingDir := *fooDir
	deletingDir.State = "deleting"

	cases := []struct {
		file  string
		want  Event
		event string // only to name the subtest
	}{
		{file: "dsync_activated.json", want: Event{ID: "event_01FKJ843CVE8F7BXQSPFH0M53V", Type: DirectoryActivated, DirectoryID: fooDir.ID, Directory: fooDir}},
		{file: "dsync_deleted.json", want: Event{ID: "event_03FKJ843CVE8F7BXQSPFH0M53V", Type: DirectoryDeleted, DirectoryID: fooDir.ID, Directory: &deletingDir}},
		{file: "dsync_group_created.json", want: Event{ID: "event_44FKJ843CVE8F7BXQSPFH0M53V", Type: GroupCreated, DirectoryID: developers.DirectoryID, Group: developers}},
		{file: "dsync_group_updated.json", want: Event{ID: "event_54FKJ843CVE8F7BXQSPFH0M53V", Type: GroupUpdated, DirectoryID: developers.DirectoryID, Group: developers}},
		{file: "dsync_group_deleted.json", want: Event{ID: "event_06FKJ843CVE8F7BXQSPFH0M53V", Type: GroupDeleted, DirectoryID: developers.DirectoryID, Group: developers}},
		{file: "dsync_group_user_added.json", want: Event{ID: "event_04FKJ843CVE8F7BXQSPFH0M53V", Type: GroupUserAdded, DirectoryID: developers.DirectoryID, User: eric, Group: developers}},
		{file: "dsync_group_user_removed.json", want: Event{ID: "event_05FKJ843CVE8F7BXQSPFH0M53V", Type: GroupUserRemoved, DirectoryID: developers.DirectoryID, User: eric, Group: developers}},
		{file: "dsync_user_created.json", want: Event{ID: "event_07FKJ843CVE8F7BXQSPFH0M53V", Type: UserCreated, DirectoryID: lela.DirectoryID, User: lela}},
		{file: "dsync_user_updated.json", want: Event{ID: "event_08FKJ843CVE8F7BXQSPFH0M53V", Type: UserUpdated, DirectoryID: lela.DirectoryID, User: lela}},
		{file: "dsync_user_deleted.json", want: Event{ID: "event_09FKJ843CVE8F7BXQSPFH0M53V", Type: UserDeleted, DirectoryID: lela.DirectoryID, User: &inactiveLela}},
		{file: "scim_raw_attributes_user_created.json", want: Event{ID: "wh_123", Type: UserCreated, DirectoryID: "directory_01F9M7F68PZP8QXP8G7X5QRHS7", User: &User{
			ID: "directory_user_01FAEAJCR3ZBZ30D8BD1924TVG", DirectoryID: "directory_01F9M7F68PZP8QXP8G7X5QRHS7",
			IdpID: "00u1e8mutl6wlH3lL4x7", FirstName: "Blair", LastName: "Lunchford", State: "active",
		}}},
	}
	files, err := filepath.Glob(filepath.Join(eventsDir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	for _, c := range cases {
		if !slices.Contains(names, c.file) {
			t.Errorf("expected example %s is missing from %s", c.file, eventsDir)
		}
	}
	if len(names) != len(cases) {
		t.Errorf("%s holds %d examples %v, the table covers %d: add the new ones", eventsDir, len(names), names, len(cases))
	}
	for _, c := range cases {
		t.Run(strings.TrimSuffix(c.file, ".json")+" decodes", func(t *testing.T) {
			ev := mustDecode(t, readExample(t, c.file))
			c.want.CreatedAt = exampleTime
			checkEvent(t, ev, &c.want)
			if ev.Ignored() || !ev.Type.Handled() {
				t.Errorf("%s reports Ignored", ev.Type)
			}
			if k := ev.Key(); k.ID != c.want.ID || !k.At.Equal(exampleTime) || k.IsZero() {
				t.Errorf("Key() = %+v", k)
			}
		})
	}
}

func checkEvent(t *testing.T, got, want *Event) {
	t.Helper()
	if got.ID != want.ID || got.Type != want.Type || got.DirectoryID != want.DirectoryID {
		t.Errorf("ID, Type, DirectoryID = %q, %q, %q; want %q, %q, %q", got.ID, got.Type, got.DirectoryID, want.ID, want.Type, want.DirectoryID)
	}
	if !got.CreatedAt.Equal(want.CreatedAt) || got.CreatedAt.Location() != time.UTC {
		t.Errorf("CreatedAt = %v, want %v in UTC", got.CreatedAt, want.CreatedAt)
	}
	jsonEqual(t, "Directory", got.Directory, want.Directory)
	jsonEqual(t, "User", got.User, want.User)
	jsonEqual(t, "Group", got.Group, want.Group)
}

func jsonEqual(t *testing.T, what string, got, want any) {
	t.Helper()
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if string(g) != string(w) {
		t.Errorf("%s = %s\n want %s", what, g, w)
	}
}

func TestParseTimeLayouts(t *testing.T) {
	cases := []struct {
		name, in string
		want     time.Time
	}{
		{"RFC 3339 with milliseconds and Z", "2021-06-25T19:07:33.155Z", exampleTime},
		{"space-separated without a zone is UTC", "2023-04-28 20:05:31.093", time.Date(2023, 4, 28, 20, 5, 31, 93e6, time.UTC)},
		{"offset without a colon", "2021-07-31T05:10:19+0000", time.Date(2021, 7, 31, 5, 10, 19, 0, time.UTC)},
		{"space-separated same instant", "2021-06-25 19:07:33.155", exampleTime},
		{"colon-less offset same instant", "2021-06-25T19:07:33.155+0000", exampleTime},
		{"non-UTC offset converts", "2021-06-25T21:07:33.155+02:00", exampleTime},
		{"non-UTC colon-less offset converts", "2021-06-25T14:07:33.155-0500", exampleTime},
		{"T without a zone is UTC", "2021-06-25T19:07:33.155", exampleTime},
		{"microseconds", "2021-06-25T19:07:33.155000Z", exampleTime},
		{"no fraction", "2021-07-31T05:10:19Z", time.Date(2021, 7, 31, 5, 10, 19, 0, time.UTC)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseTime(c.in)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(c.want) || got.Location() != time.UTC {
				t.Errorf("ParseTime(%q) = %v, want %v in UTC", c.in, got, c.want)
			}
			// Decode gives the same instant.
			b := edit(t, "dsync_user_created.json", func(ev map[string]any) { ev["created_at"] = c.in })
			if ev := mustDecode(t, b); !ev.CreatedAt.Equal(c.want) {
				t.Errorf("Decode created_at %q = %v, want %v", c.in, ev.CreatedAt, c.want)
			}
		})
	}
	for _, bad := range []string{"", "yesterday", "2021-06-25", "2021-06-25T19:07", "1624648053155", "2021-13-25T19:07:33Z", "2021-06-25T19:07:33.155ZZ", "2021-06-25T19:07:33.155 UTC"} {
		t.Run("rejects "+bad, func(t *testing.T) {
			if got, err := ParseTime(bad); err == nil {
				t.Errorf("ParseTime(%q) = %v, want an error", bad, got)
			}
		})
	}
}

func TestDecodeTolerates(t *testing.T) {
	const user = "dsync_user_created.json"
	cases := []struct {
		name   string
		body   []byte
		check  func(t *testing.T, ev *Event)
		ignore bool
	}{
		{name: "missing object and context decode", body: edit(t, user, func(ev map[string]any) {
			delete(ev, "object")
			delete(ev, "context")
		})},
		{name: "object and non-empty context decode", body: edit(t, user, func(ev map[string]any) {
			ev["object"] = "event"
			ev["context"] = map[string]any{"client_id": "client_1", "actor": map[string]any{"id": "x"}}
		})},
		{name: "null deprecated fields decode", body: edit(t, user, func(ev map[string]any) {
			d := obj(ev["data"])
			d["emails"], d["username"], d["job_title"], d["raw_attributes"] = nil, nil, nil, nil
		})},
		{name: "empty deprecated fields decode", body: edit(t, user, func(ev map[string]any) {
			d := obj(ev["data"])
			d["emails"], d["username"], d["job_title"], d["raw_attributes"] = []any{}, "", "", map[string]any{}
		})},
		{name: "unknown fields everywhere decode", body: edit(t, user, func(ev map[string]any) {
			ev["future_field"] = []any{1, "two", nil}
			d := obj(ev["data"])
			d["name"] = "Lela Block"
			d["previous_attributes"] = map[string]any{"custom_attributes": map[string]any{"department": nil}}
			d["something_new"] = map[string]any{"deep": true}
			obj(d["custom_attributes"])["manager_email"] = "boss@example.com"
		})},
		{name: "null organization_id, names and roles decode empty", body: edit(t, user, func(ev map[string]any) {
			d := obj(ev["data"])
			d["organization_id"], d["first_name"], d["last_name"], d["role"], d["roles"] = nil, nil, nil, nil, nil
		}), check: func(t *testing.T, ev *Event) {
			if u := ev.User; u.OrganizationID != "" || u.FirstName != "" || u.LastName != "" || u.Roles != nil {
				t.Errorf("User = %+v", u)
			}
		}},
		{name: "reordered keys decode", body: []byte(`{"created_at":"2021-06-25T19:07:33.155Z","data":{"directory_id":"directory_1","id":"directory_user_1","email":"a@example.com"},"event":"dsync.user.created","id":"event_1"}`),
			check: func(t *testing.T, ev *Event) {
				if ev.ID != "event_1" || ev.User.ID != "directory_user_1" || ev.DirectoryID != "directory_1" || ev.User.Email != "a@example.com" {
					t.Errorf("event = %+v, user %+v", ev, ev.User)
				}
			}},
		{name: "a dsync.deleted state is carried as sent", body: readExample(t, "dsync_deleted.json"), check: func(t *testing.T, ev *Event) {
			if ev.Directory.State != "deleting" {
				t.Errorf("State = %q", ev.Directory.State)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev := mustDecode(t, c.body)
			if ev.Type != UserCreated && ev.Type != DirectoryDeleted {
				t.Fatalf("Type = %q", ev.Type)
			}
			if ev.ID == "" || ev.DirectoryID == "" || !ev.CreatedAt.Equal(exampleTime) {
				t.Errorf("ID %q, DirectoryID %q, CreatedAt %v", ev.ID, ev.DirectoryID, ev.CreatedAt)
			}
			if c.check != nil {
				c.check(t, ev)
			} else if ev.User.Email != "lela.block@example.com" || ev.User.ID != "directory_user_01E1X1B89NH8Z3SDFJR4H7RGX7" {
				t.Errorf("User = %+v", ev.User)
			}
		})
	}
}

func TestDecodeEmailFallback(t *testing.T) {
	list := func(entries ...[2]any) []any {
		var l []any
		for _, e := range entries {
			l = append(l, map[string]any{"primary": e[0], "type": "work", "value": e[1]})
		}
		return l
	}
	cases := []struct {
		name string
		set  func(d map[string]any)
		want string
	}{
		{"email wins over the lists", func(d map[string]any) {
			d["emails"] = list([2]any{true, "old@example.com"})
		}, "lela.block@example.com"},
		{"null email falls back to the primary of emails", func(d map[string]any) {
			d["email"] = nil
			d["emails"] = list([2]any{false, "second@example.com"}, [2]any{true, "primary@example.com"})
		}, "primary@example.com"},
		{"empty email falls back to the primary of emails", func(d map[string]any) {
			d["email"] = ""
			d["emails"] = list([2]any{true, "primary@example.com"})
		}, "primary@example.com"},
		{"missing email and null emails fall back to custom_attributes.emails", func(d map[string]any) {
			delete(d, "email")
			d["emails"] = nil
			obj(d["custom_attributes"])["emails"] = list([2]any{false, "x@example.com"}, [2]any{true, "custom@example.com"})
		}, "custom@example.com"},
		{"a primary of custom_attributes.emails wins over a non-primary of emails", func(d map[string]any) {
			d["email"] = nil
			d["emails"] = list([2]any{false, "old-alias@example.com"})
			obj(d["custom_attributes"])["emails"] = list([2]any{true, "custom@example.com"})
		}, "custom@example.com"},
		{"emails without a primary give way to the primary of custom_attributes.emails", func(d map[string]any) {
			d["email"] = nil
			d["emails"] = list([2]any{false, ""}, [2]any{false, "first@example.com"}, [2]any{false, "second@example.com"})
		}, "lela.block@example.com"},
		{"no primary anywhere takes the first non-empty of emails", func(d map[string]any) {
			d["email"] = nil
			d["emails"] = list([2]any{false, ""}, [2]any{false, "first@example.com"}, [2]any{false, "second@example.com"})
			delete(obj(d["custom_attributes"]), "emails")
		}, "first@example.com"},
		{"emails with an empty primary give way to the primary of custom_attributes.emails", func(d map[string]any) {
			d["email"] = nil
			d["emails"] = list([2]any{true, ""}, [2]any{false, "first@example.com"})
		}, "lela.block@example.com"},
		{"an empty primary and no primary elsewhere take the first non-empty of emails", func(d map[string]any) {
			d["email"] = nil
			d["emails"] = list([2]any{true, ""}, [2]any{false, "first@example.com"})
			delete(obj(d["custom_attributes"]), "emails")
		}, "first@example.com"},
		{"emails with only empty values fall back to custom_attributes", func(d map[string]any) {
			d["email"] = nil
			d["emails"] = list([2]any{true, ""})
		}, "lela.block@example.com"},
		{"no email anywhere is empty", func(d map[string]any) {
			d["email"] = nil
			delete(d, "custom_attributes")
		}, ""},
		{"null custom_attributes is empty", func(d map[string]any) {
			d["email"] = nil
			d["custom_attributes"] = nil
		}, ""},
		{"custom_attributes.emails that is not a list is ignored", func(d map[string]any) {
			d["email"] = nil
			d["emails"] = list([2]any{true, "primary@example.com"})
			obj(d["custom_attributes"])["emails"] = "lela@example.com"
		}, "primary@example.com"},
		{"emails that is not a list is ignored", func(d map[string]any) {
			d["email"] = nil
			d["emails"] = map[string]any{"value": "x@example.com"}
		}, "lela.block@example.com"},
		{"list entries of the wrong type are ignored", func(d map[string]any) {
			d["email"] = nil
			d["emails"] = []any{"a@example.com"}
			obj(d["custom_attributes"])["emails"] = []any{map[string]any{"primary": "yes", "value": 5}}
		}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := edit(t, "dsync_user_created.json", func(ev map[string]any) { c.set(obj(ev["data"])) })
			if got := mustDecode(t, b).User.Email; got != c.want {
				t.Errorf("Email = %q, want %q", got, c.want)
			}
		})
	}
	t.Run("the SCIM raw-attributes user has no email and no organization", func(t *testing.T) {
		u := mustDecode(t, readExample(t, "scim_raw_attributes_user_created.json")).User
		if u.Email != "" || u.OrganizationID != "" {
			t.Errorf("User = %+v", u)
		}
	})
}

func TestDecodeRolesAndMemberships(t *testing.T) {
	t.Run("roles are the sorted union of role and roles", func(t *testing.T) {
		b := edit(t, "dsync_user_created.json", func(ev map[string]any) {
			d := obj(ev["data"])
			d["role"] = map[string]any{"slug": "member"}
			d["roles"] = []any{map[string]any{"slug": "admin"}, map[string]any{"slug": "member"}, map[string]any{"slug": ""}, map[string]any{"slug": "billing"}}
		})
		if got := mustDecode(t, b).User.Roles; !slices.Equal(got, []string{"admin", "billing", "member"}) {
			t.Errorf("Roles = %q", got)
		}
	})
	t.Run("roles without role decode", func(t *testing.T) {
		b := edit(t, "dsync_user_created.json", func(ev map[string]any) {
			d := obj(ev["data"])
			delete(d, "role")
			d["roles"] = []any{map[string]any{"slug": "owner"}}
		})
		if got := mustDecode(t, b).User.Roles; !slices.Equal(got, []string{"owner"}) {
			t.Errorf("Roles = %q", got)
		}
	})
	t.Run("absent or null roles are not sent, an empty list is", func(t *testing.T) {
		for _, c := range []struct {
			name string
			set  func(d map[string]any)
			sent bool
		}{
			{"neither key", func(d map[string]any) { delete(d, "role"); delete(d, "roles") }, false},
			{"both null", func(d map[string]any) { d["role"], d["roles"] = nil, nil }, false},
			{"empty roles", func(d map[string]any) { delete(d, "role"); d["roles"] = []any{} }, true},
			{"role only", func(d map[string]any) { delete(d, "roles"); d["role"] = map[string]any{"slug": "x"} }, true},
		} {
			b := edit(t, "dsync_user_updated.json", func(ev map[string]any) { c.set(obj(ev["data"])) })
			if u := mustDecode(t, b).User; u.RolesSent != c.sent {
				t.Errorf("%s: RolesSent = %v, want %v (roles %q)", c.name, u.RolesSent, c.sent, u.Roles)
			}
			// The encoding/json path (a body the scanner declines) agrees.
			var generic map[string]any
			if err := json.Unmarshal(b, &generic); err != nil {
				t.Fatal(err)
			}
			// Nesting deeper than the scanner goes: encoding/json decodes it.
			obj(generic["data"])["deep"] = json.RawMessage(strings.Repeat("[", 300) + strings.Repeat("]", 300))
			b2, _ := json.Marshal(generic)
			if u := mustDecode(t, b2).User; u.RolesSent != c.sent {
				t.Errorf("%s (encoding/json): RolesSent = %v, want %v", c.name, u.RolesSent, c.sent)
			}
		}
	})
	t.Run("a membership takes its directory from the user or group", func(t *testing.T) {
		b := edit(t, "dsync_group_user_added.json", func(ev map[string]any) {
			d := obj(ev["data"])
			delete(d, "directory_id")
			delete(obj(d["user"]), "directory_id")
		})
		ev := mustDecode(t, b)
		const dir = "directory_01ECAZ4NV9QMV47GW873HDCX74"
		if ev.DirectoryID != dir || ev.User.DirectoryID != dir || ev.Group.DirectoryID != dir {
			t.Errorf("directories %q, %q, %q", ev.DirectoryID, ev.User.DirectoryID, ev.Group.DirectoryID)
		}
	})
	t.Run("a membership keeps the user's missing organization as sent", func(t *testing.T) {
		b := edit(t, "dsync_group_user_removed.json", func(ev map[string]any) {
			d := obj(ev["data"])
			obj(d["user"])["organization_id"] = nil
		})
		if ev := mustDecode(t, b); ev.User.OrganizationID != "" || ev.Group.OrganizationID != "org_01EZTR6WYX1A0DSE2CYMGXQ24Y" {
			t.Errorf("User.OrganizationID = %q, Group.OrganizationID = %q", ev.User.OrganizationID, ev.Group.OrganizationID)
		}
	})
}

func TestDecodeIgnoresUnhandledTypes(t *testing.T) {
	captured := loadCapturedBody(t)
	cases := []struct {
		name string
		body string
		typ  Type
		at   time.Time
	}{
		{"dsync.token.created is ignored", `{"id":"event_tok","event":"dsync.token.created","data":{"id":"tok_1"},"created_at":"2021-06-25T19:07:33.155Z"}`, "dsync.token.created", exampleTime},
		{"the captured connection.activated is ignored", captured, "connection.activated", exampleTime},
		{"user.created is ignored", `{"id":"event_u","event":"user.created","data":{"id":"user_1","email":"a@b.c"},"created_at":"2023-04-28 20:05:31.093"}`, "user.created", time.Date(2023, 4, 28, 20, 5, 31, 93e6, time.UTC)},
		{"an ignored type without id, data or created_at is ignored", `{"event":"organization.updated"}`, "organization.updated", time.Time{}},
		{"an ignored type with a bad created_at is ignored", `{"id":"e","event":"session.created","created_at":"soon","data":5}`, "session.created", time.Time{}},
		{"a near-miss dsync type is ignored", `{"id":"e","event":"dsync.user.created.v2","data":{},"created_at":"2021-06-25T19:07:33.155Z"}`, "dsync.user.created.v2", exampleTime},
		{"a differently cased type is ignored", `{"id":"e","event":"DSYNC.USER.CREATED","data":{}}`, "DSYNC.USER.CREATED", time.Time{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev := mustDecode(t, []byte(c.body))
			if ev.Type != c.typ || !ev.Ignored() || ev.Type.Handled() {
				t.Errorf("Type %q, Ignored %v", ev.Type, ev.Ignored())
			}
			if !ev.CreatedAt.Equal(c.at) {
				t.Errorf("CreatedAt = %v, want %v", ev.CreatedAt, c.at)
			}
			if ev.User != nil || ev.Group != nil || ev.Directory != nil || ev.DirectoryID != "" {
				t.Errorf("an ignored event carries data: %+v", ev)
			}
		})
	}
}

func loadCapturedBody(t *testing.T) string {
	for _, v := range loadVectors(t) {
		if strings.Contains(v.Body, `"connection.activated"`) {
			return v.Body
		}
	}
	t.Fatal("no connection.activated vector")
	return ""
}

func TestDecodeRejectsMalformed(t *testing.T) {
	cases := []struct{ name, body string }{
		{"empty body is malformed", ""},
		{"whitespace is malformed", " \n"},
		{"truncated JSON is malformed", `{"id":"event_1","event":"dsync.user.created"`},
		{"a JSON array is malformed", `[{"event":"dsync.user.created"}]`},
		{"JSON null is malformed", `null`},
		{"a JSON string is malformed", `"dsync.user.created"`},
		{"trailing garbage is malformed", `{"id":"e","event":"dsync.activated"} x`},
		{"two objects are malformed", `{"event":"a"}{"event":"b"}`},
		{"no event type is malformed", `{"id":"event_1","data":{},"created_at":"2021-06-25T19:07:33.155Z"}`},
		{"an empty event type is malformed", `{"id":"event_1","event":""}`},
		{"a numeric event type is malformed", `{"id":"event_1","event":5}`},
		{"a numeric id is malformed", `{"id":1,"event":"dsync.user.created"}`},
		{"a numeric created_at is malformed", `{"id":"e","event":"dsync.user.created","created_at":1624648053155}`},
		{"a non-object data is malformed", `{"id":"e","event":"dsync.user.created","created_at":"2021-06-25T19:07:33.155Z","data":[1]}`},
		{"a numeric data.id is malformed", `{"id":"e","event":"dsync.group.created","created_at":"2021-06-25T19:07:33.155Z","data":{"id":5,"directory_id":"d"}}`},
		{"a string membership user is malformed", `{"id":"e","event":"dsync.group.user_added","created_at":"2021-06-25T19:07:33.155Z","data":{"directory_id":"d","user":"u","group":{"id":"g"}}}`},
		{"a string role is malformed", `{"id":"e","event":"dsync.user.created","created_at":"2021-06-25T19:07:33.155Z","data":{"id":"u","directory_id":"d","role":"admin"}}`},
		{"invalid UTF-8 outside strings is malformed", "{\"id\":\"e\",\xff\"event\":\"dsync.activated\"}"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev, err := Decode([]byte(c.body))
			if !errors.Is(err, ErrMalformed) || errors.Is(err, ErrInvalid) || ev != nil {
				t.Fatalf("Decode = %v, %v; want only ErrMalformed", ev, err)
			}
		})
	}
}

func TestDecodeRejectsInvalid(t *testing.T) {
	del := func(keys ...string) func(map[string]any) {
		return func(m map[string]any) {
			for _, k := range keys {
				delete(m, k)
			}
		}
	}
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
		field  string // must appear in the message
	}{
		{"a user event without id is invalid", "dsync_user_created.json", del("id"), "missing id"},
		{"a directory event with an empty id is invalid", "dsync_activated.json", set("id", ""), "missing id"},
		{"a group event without created_at is invalid", "dsync_group_created.json", del("created_at"), "missing created_at"},
		{"a bad created_at is invalid", "dsync_user_updated.json", set("created_at", "2021-06-25"), "created_at"},
		{"a zero created_at is invalid", "dsync_user_updated.json", set("created_at", "0001-01-01T00:00:00Z"), "created_at"},
		{"a missing data is invalid", "dsync_group_deleted.json", del("data"), "missing data"},
		{"a null data is invalid", "dsync_user_deleted.json", set("data", nil), "missing data"},
		{"a directory without data.id is invalid", "dsync_activated.json", inData(del("id")), "data.id"},
		{"a deleted directory without data.id is invalid", "dsync_deleted.json", inData(set("id", "")), "data.id"},
		{"a user without data.id is invalid", "dsync_user_created.json", inData(del("id")), "data.id"},
		{"a user without directory_id is invalid", "dsync_user_deleted.json", inData(del("directory_id")), "data.directory_id"},
		{"a user with a null directory_id is invalid", "dsync_user_updated.json", inData(set("directory_id", nil)), "data.directory_id"},
		{"a group without data.id is invalid", "dsync_group_updated.json", inData(del("id")), "data.id"},
		{"a group without directory_id is invalid", "dsync_group_created.json", inData(del("directory_id")), "data.directory_id"},
		{"a membership without a user is invalid", "dsync_group_user_added.json", inData(del("user")), "data.user.id"},
		{"a membership with a null user is invalid", "dsync_group_user_added.json", inData(set("user", nil)), "data.user.id"},
		{"a membership without a user id is invalid", "dsync_group_user_removed.json", inDataObj("user", del("id")), "data.user.id"},
		{"a membership without a group is invalid", "dsync_group_user_added.json", inData(del("group")), "data.group.id"},
		{"a membership without a group id is invalid", "dsync_group_user_removed.json", inDataObj("group", del("id")), "data.group.id"},
		{"a membership without any directory id is invalid", "dsync_group_user_added.json", func(ev map[string]any) {
			d := obj(ev["data"])
			delete(d, "directory_id")
			delete(obj(d["user"]), "directory_id")
			delete(obj(d["group"]), "directory_id")
		}, "data.directory_id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev, err := Decode(edit(t, c.file, c.change))
			if !errors.Is(err, ErrInvalid) || errors.Is(err, ErrMalformed) || ev != nil {
				t.Fatalf("Decode = %v, %v; want only ErrInvalid", ev, err)
			}
			if !strings.Contains(err.Error(), c.field) {
				t.Errorf("error %q does not name %q", err, c.field)
			}
		})
	}
}

func TestKeyOrder(t *testing.T) {
	t0 := exampleTime
	a := Key{At: t0, ID: "event_a"}
	b := Key{At: t0, ID: "event_b"}
	later := Key{At: t0.Add(time.Millisecond), ID: "event_0"}
	if a.Compare(b) != -1 || b.Compare(a) != 1 || a.Compare(a) != 0 {
		t.Error("equal times must order by id")
	}
	if !later.Newer(b) || b.Newer(later) || a.Newer(a) {
		t.Error("a later time must win over the id")
	}
	sameInstant := Key{At: t0.In(time.FixedZone("X", 3600)), ID: "event_a"}
	if a.Compare(sameInstant) != 0 {
		t.Error("the zone must not matter")
	}
	if !(Key{}).IsZero() || a.IsZero() || (Key{}).Compare(a) != -1 {
		t.Error("IsZero")
	}
}

func TestHandledTypes(t *testing.T) {
	types := HandledTypes()
	if len(types) != 10 {
		t.Fatalf("%d handled types", len(types))
	}
	for _, ty := range types {
		if !ty.Handled() {
			t.Errorf("%s not Handled", ty)
		}
	}
	for _, ty := range []Type{"", "dsync.token.created", "connection.activated", "dsync.user"} {
		if ty.Handled() {
			t.Errorf("%q Handled", ty)
		}
	}
}

func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(eventsDir, "*.json"))
	if len(files) == 0 {
		f.Fatal("no example events")
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, v := range loadVectors(f) {
		f.Add([]byte(v.Body))
	}
	for _, s := range []string{
		``, `null`, `{}`, `{"event":"dsync.user.created"}`,
		`{"id":"e","event":"dsync.group.user_added","created_at":"2023-04-28 20:05:31.093","data":{"user":{"id":"u"},"group":{"id":"g","directory_id":"d"}}}`,
		`{"id":"e","event":"dsync.activated","created_at":"2021-07-31T05:10:19+0000","data":{"id":"d"}}`,
		`{"id":"e","event":"dsync.user.updated","created_at":"0001-01-01T00:00:00Z","data":{"id":"u","directory_id":"d"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := Decode(b)
		if err != nil {
			if ev != nil {
				t.Fatalf("Decode returned an event and an error %v", err)
			}
			if errors.Is(err, ErrMalformed) == errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v must wrap exactly one of ErrMalformed, ErrInvalid", err)
			}
			return
		}
		if ev == nil {
			t.Fatal("nil event and nil error")
		}
		if ev.Type == "" {
			t.Fatal("an event without a type")
		}
		if !ev.Type.Handled() {
			if ev.User != nil || ev.Group != nil || ev.Directory != nil {
				t.Fatalf("ignored %s carries data", ev.Type)
			}
			return
		}
		if ev.ID == "" || ev.CreatedAt.IsZero() || ev.DirectoryID == "" || ev.Key().IsZero() {
			t.Fatalf("handled %s: ID %q, CreatedAt %v, DirectoryID %q", ev.Type, ev.ID, ev.CreatedAt, ev.DirectoryID)
		}
		if ev.CreatedAt.Location() != time.UTC {
			t.Fatalf("CreatedAt %v not in UTC", ev.CreatedAt)
		}
		switch ev.Type {
		case DirectoryActivated, DirectoryDeleted:
			if ev.Directory == nil || ev.Directory.ID != ev.DirectoryID {
				t.Fatalf("%s: Directory %+v", ev.Type, ev.Directory)
			}
		case UserCreated, UserUpdated, UserDeleted:
			if ev.User == nil || ev.User.ID == "" || ev.User.DirectoryID != ev.DirectoryID {
				t.Fatalf("%s: User %+v", ev.Type, ev.User)
			}
		case GroupCreated, GroupUpdated, GroupDeleted:
			if ev.Group == nil || ev.Group.ID == "" || ev.Group.DirectoryID != ev.DirectoryID {
				t.Fatalf("%s: Group %+v", ev.Type, ev.Group)
			}
		case GroupUserAdded, GroupUserRemoved:
			if ev.User == nil || ev.Group == nil || ev.User.ID == "" || ev.Group.ID == "" {
				t.Fatalf("%s: User %+v, Group %+v", ev.Type, ev.User, ev.Group)
			}
		}
		if ev.User != nil && !slices.IsSorted(ev.User.Roles) {
			t.Fatalf("roles not sorted: %q", ev.User.Roles)
		}
	})
}

func BenchmarkParseTime(b *testing.B) {
	for _, s := range []string{"2021-06-25T19:07:33.155Z", "2023-04-28 20:05:31.093", "2021-07-31T05:10:19+0000"} {
		b.Run(s, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ParseTime(s); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
