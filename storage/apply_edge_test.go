package storage_test

import (
	"bytes"
	"slices"
	"testing"

	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/storage"
)

// Each test here delivers a stream out of order and checks the state that
// in-order delivery reaches (each entity takes the state of the newest
// event that touched it; a group's or user's delete touches its
// memberships).

func TestOlderGroupDeleteDeliveredAfterRecreateStillEndsOlderMemberships(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	g := grp("g_eng", "Eng")
	out := mustApply(t, st,
		ev("e1", "dsync.group.user_added", 1, mem(usr("u1", "Ann", "active"), g)),
		ev("e3", "dsync.group.created", 3, g), // the group is re-created after its delete
		ev("e2", "dsync.group.deleted", 2, g), // the delete, delivered late
	)
	if out[2] != storage.Applied {
		t.Fatalf("late delete outcome = %s, want applied (it ends the membership)", out[2])
	}
	if u := findUser(t, st, "u1"); len(u.Groups) != 0 || slices.Contains(u.Badges, "engineer") {
		t.Fatalf("user = %+v, want no groups and no engineer: the delete (e2) is newer than the add (e1)", u)
	}
	// A second late delete, older still, changes nothing.
	if out := mustApply(t, st, ev("e1b", "dsync.group.deleted", 1, g)); out[0] != storage.Stale {
		t.Fatalf("older late delete outcome = %s, want stale", out[0])
	}
}

func TestOlderUserDeleteDeliveredAfterReactivationStillEndsOlderMemberships(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	u := usr("u1", "Ann", "active")
	out := mustApply(t, st,
		ev("e1", "dsync.group.user_added", 1, mem(u, grp("g_eng", "Eng"))),
		ev("e3", "dsync.user.created", 3, u), // re-created after its delete
		ev("e2", "dsync.user.deleted", 2, u), // the delete, delivered late
	)
	if out[2] != storage.Applied {
		t.Fatalf("late delete outcome = %s, want applied (it ends the membership)", out[2])
	}
	got := findUser(t, st, "u1")
	if got == nil || got.State != "active" || len(got.Groups) != 0 || !slices.Equal(got.Badges, []mapping.Badge{"member"}) {
		t.Fatalf("user = %+v, want active (e3), no groups (e2 ended e1), badges [member]", got)
	}
}

func TestMembershipEventOlderThanTheUsersDeleteIsStale(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	u, g := usr("u1", "Ann", "active"), grp("g_eng", "Eng")
	out := mustApply(t, st,
		ev("e4", "dsync.group.created", 4, g),
		ev("e5", "dsync.user.deleted", 5, u),
		ev("e3", "dsync.group.user_added", 3, mem(u, g)),
	)
	if out[2] != storage.Stale {
		t.Fatalf("user_added older than the user's delete and the group's state = %s, want stale", out[2])
	}
	out = mustApply(t, st,
		ev("e7", "dsync.group.deleted", 7, g),
		ev("e3z", "dsync.group.user_removed", 3, mem(u, g)), // newer than e3, older than both deletes
	)
	if out[1] != storage.Stale {
		t.Fatalf("user_removed older than the group's and the user's deletes = %s, want stale", out[1])
	}
}

func TestDeprovisionedDirectoryEndsMembershipsOfUsersNewerThanItsDeletion(t *testing.T) {
	st := MustOpen(t, storage.Options{Safeguards: storage.Safeguards{OnDirectoryDeleted: storage.OnDirectoryDeletedDeprovision}})
	dir := map[string]any{"id": "dir_1", "organization_id": "org_1", "name": "Corp"}
	mustApply(t, st,
		ev("e1", "dsync.activated", 1, dir),
		ev("e2", "dsync.group.user_added", 2, mem(usr("u1", "Ann", "active"), grp("g_eng", "Eng"))),
		ev("e4", "dsync.user.updated", 4, usr("u1", "Ann", "active")), // newer than the deletion
		ev("e3", "dsync.deleted", 3, dir),                             // delivered late
	)
	u := findUser(t, st, "u1")
	if u == nil || len(u.Groups) != 0 || !slices.Equal(u.Badges, []mapping.Badge{"member"}) {
		t.Fatalf("user = %+v, want kept (e4 is newer than the deletion) without groups or engineer", u)
	}
}

func TestFirstEventOfADirectoryBeingItsDeletionGivesUsersItsOrganisation(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	u := usr("u1", "Ann", "active")
	delete(u, "organization_id")
	g := grp("g_sup", "Support")
	g["idp_id"], g["organization_id"] = "idp_sup", nil // rule idp_sup is scoped to org_1
	mustApply(t, st, ev("e1", "dsync.group.user_added", 1, mem(u, g)))
	if got := findUser(t, st, "u1"); slices.Contains(got.Badges, "support") {
		t.Fatalf("badges %v before the organisation is known", got.Badges)
	}
	mustApply(t, st, ev("e2", "dsync.deleted", 2, map[string]any{"id": "dir_1", "organization_id": "org_1", "name": "Corp"}))
	if got := findUser(t, st, "u1"); !slices.Equal(got.Badges, []mapping.Badge{"member", "support"}) {
		t.Fatalf("badges %v, want [member support]: the group's organisation is its directory's, org_1", got.Badges)
	}
}

func TestOlderDirectoryDeletionWithKeepIsStale(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	dir := map[string]any{"id": "dir_1", "organization_id": "org_1", "name": "Corp"}
	out := mustApply(t, st, ev("e2", "dsync.activated", 2, dir), ev("e1", "dsync.deleted", 1, dir))
	if out[1] != storage.Stale {
		t.Fatalf("older dsync.deleted with keep = %s, want stale", out[1])
	}
}

func TestEqualInstantsInTheThreeLayoutsAreOrderedByEventID(t *testing.T) {
	body := func(id, at, first string) []byte {
		b := ev(id, "dsync.user.updated", 0, usr("u1", first, "active"))
		out := bytes.Replace(b, []byte(`"2024-01-01T00:00:00Z"`), []byte(`"`+at+`"`), 1)
		if bytes.Equal(out, b) {
			t.Fatalf("created_at not replaced in %s", b)
		}
		return out
	}
	// The same instant, 2024-01-01 10:00:00.5 UTC, in each layout WorkOS uses.
	a := body("event_A", "2024-01-01T10:00:00.500Z", "A")
	b := body("event_B", "2024-01-01 10:00:00.500", "B")
	c := body("event_C", "2024-01-01T12:00:00.5+0200", "C")
	for _, order := range [][][]byte{{a, b, c}, {c, b, a}, {b, c, a}} {
		st := MustOpen(t, storage.Options{})
		mustApply(t, st, order...)
		if u := findUser(t, st, "u1"); u.FirstName != "C" {
			t.Fatalf("first name %q, want C: equal instants are ordered by event id", u.FirstName)
		}
	}
}
