package storage

import (
	"reflect"
	"testing"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
)

func TestRecordCodecRoundTrips(t *testing.T) {
	u := &userRec{
		User: events.User{ID: "u1", DirectoryID: "d", OrganizationID: "o", IdpID: "i", Email: "e@x", FirstName: "F", LastName: "L", State: "active", Roles: []string{"a", "b"}},
		Key:  key{S: 1700000000, N: 5, ID: "event_1"}, Deleted: true, DeletedKey: key{S: -3, N: 0, ID: "event_0"},
		Grants:       []mapping.Grant{{Badge: "admin", Rule: "group:name=X", Group: "g", Source: "group"}, {Badge: "member", Rule: "default", Source: "default"}},
		AdminIndexed: true, AdminOrg: "o",
		RolesKey: key{S: 1700000000, N: 4, ID: "event_0"}, BreakGlassBy: "e@x", HeldOrg: "o_old", MappedOrg: "o",
	}
	got, err := decodeUser(u.encode())
	if err != nil || !reflect.DeepEqual(got, u) {
		t.Fatalf("user round trip = %+v, %v; want %+v", got, err, u)
	}
	g := &groupRec{Group: events.Group{ID: "g", DirectoryID: "d", OrganizationID: "o", IdpID: "i", Name: "N"}, Key: key{S: 9, ID: "e"}, Deleted: true}
	gotG, err := decodeGroup(g.encode())
	if err != nil || !reflect.DeepEqual(gotG, g) {
		t.Fatalf("group round trip = %+v, %v", gotG, err)
	}
	// A record written before the later fields decodes with them zero.
	old := *u
	old.RolesKey, old.BreakGlassBy, old.HeldOrg, old.MappedOrg = key{}, "", "", ""
	ext := enc{}
	ext.key(key{})
	ext.str("")
	ext.str("")
	ext.str("")
	oldLen := len(old.encode()) - len(ext.b)
	gotOld, err := decodeUser(old.encode()[:oldLen])
	if err != nil || !reflect.DeepEqual(gotOld, &old) {
		t.Fatalf("record without the later fields = %+v, %v; want %+v", gotOld, err, &old)
	}
	// Every other truncation is an error, never a panic.
	b := u.encode()
	for i := 0; i < len(b); i++ {
		if i == oldLen {
			continue
		}
		if _, err := decodeUser(b[:i]); err == nil {
			t.Fatalf("decodeUser of %d/%d bytes succeeded", i, len(b))
		}
	}
}
