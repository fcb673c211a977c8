package storage_test

// Rules of the safeguards, each through the real apply path: holds per
// organisation, the breaker counting users, on_unmap keep that lasts, and
// operator decisions that say who made them.

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/storage"
)

func usrO(id, org, state string) map[string]any {
	u := usr(id, id, state)
	u["organization_id"], u["directory_id"] = org, "dir_"+org
	return u
}

func grpO(id, name, org string) map[string]any {
	g := grp(id, name)
	g["organization_id"], g["directory_id"] = org, "dir_"+org
	return g
}

func memO(u, g map[string]any) map[string]any {
	m := mem(u, g)
	m["directory_id"] = u["directory_id"]
	return m
}

// Rule 1: "Holds are re-evaluated after every applied event: once another
// admin exists, the held revocation is applied and the hold closes by itself."
// Two organisations each hold their last admin; org_b gets a new admin.
func TestHoldReleasedInOneOrganisationWhileAnotherStaysHeld(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	ga, gb := grpO("g_a", "App Admins", "org_a"), grpO("g_b", "App Admins", "org_b")
	mustApply(t, st,
		ev("e1", "dsync.group.user_added", 1, memO(usrO("ua", "org_a", "active"), ga)),
		ev("e2", "dsync.group.user_added", 2, memO(usrO("ub", "org_b", "active"), gb)),
		ev("e3", "dsync.group.user_removed", 3, memO(usrO("ua", "org_a", "active"), ga)),
		ev("e4", "dsync.group.user_removed", 4, memO(usrO("ub", "org_b", "active"), gb)),
	)
	if n := len(openHolds(t, st)); n != 2 {
		t.Fatalf("open holds = %d, want 2 (one per org)", n)
	}
	// A second admin appears in org_b only.
	mustApply(t, st, ev("e5", "dsync.group.user_added", 5, memO(usrO("ub2", "org_b", "active"), gb)))
	for _, h := range openHolds(t, st) {
		if h.OrganizationID == "org_b" {
			t.Errorf("org_b hold %d (user %s) still open although org_b has another admin (ub2); ub badges = %v",
				h.ID, h.UserID, badgesOf(t, st, "ub"))
		}
	}
	if slices.Contains(badgesOf(t, st, "ub"), "admin") {
		t.Errorf("ub still holds admin: the held revocation was not applied")
	}
}

// Rule 1 with the admin granted by a role and demoted by a role change.
func TestLastAdminDemotedByRoleIsHeld(t *testing.T) {
	m := testMapping
	m.Roles = append(slices.Clone(m.Roles), mapping.RoleRule{Slug: "owner", Badges: []mapping.Badge{"admin"}})
	st := MustOpen(t, storage.Options{Mapping: m})
	u := usr("u1", "A", "active")
	u["role"] = map[string]string{"slug": "owner"}
	mustApply(t, st, ev("e1", "dsync.user.created", 1, u))
	u2 := usr("u1", "A", "active")
	u2["role"] = map[string]string{"slug": "member"}
	mustApply(t, st, ev("e2", "dsync.user.updated", 2, u2))
	if !slices.Contains(badgesOf(t, st, "u1"), "admin") || len(openHolds(t, st)) != 1 {
		t.Fatalf("role demotion of the last admin: badges %v holds %+v", badgesOf(t, st, "u1"), openHolds(t, st))
	}
}

// Rule 1 through user deletion, inactive state and directory deprovisioning.
func TestLastAdminLostByDeleteInactiveOrDirectoryIsHeld(t *testing.T) {
	admins := grp("g_adm", "App Admins")
	for _, tc := range []struct {
		name string
		last []byte
		dep  bool
	}{
		{"user deleted", ev("e9", "dsync.user.deleted", 9, usr("u1", "A", "inactive")), false},
		{"user inactive", ev("e9", "dsync.user.updated", 9, usr("u1", "A", "inactive")), false},
		{"directory deprovisioned", ev("e9", "dsync.deleted", 9, map[string]any{"id": "dir_1", "organization_id": "org_1", "name": "D", "state": "active"}), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sg := storage.Safeguards{}
			if tc.dep {
				sg.OnDirectoryDeleted = storage.OnDirectoryDeletedDeprovision
			}
			st := MustOpen(t, storage.Options{Safeguards: sg})
			mustApply(t, st,
				ev("e0", "dsync.activated", 0, map[string]any{"id": "dir_1", "organization_id": "org_1", "name": "D", "state": "active"}),
				ev("e1", "dsync.group.user_added", 1, mem(usr("u1", "A", "active"), admins)), tc.last)
			hs := openHolds(t, st)
			if len(hs) != 1 || hs[0].UserID != "u1" || hs[0].EventID != "e9" {
				t.Fatalf("holds = %+v, want one last_admin hold for u1 by e9", hs)
			}
		})
	}
}

// Rule 3: break-glass matched by email when the payload has no `email`
// (fallback to the primary entry of emails), case-insensitively.
func TestBreakGlassMatchesFallbackEmail(t *testing.T) {
	st := MustOpen(t, storage.Options{Safeguards: storage.Safeguards{BreakGlass: []string{"Boss@X.example"}}})
	u := usr("u9", "A", "active")
	delete(u, "email")
	u["emails"] = []any{map[string]any{"primary": false, "value": "other@x.example"}, map[string]any{"primary": true, "value": "boss@x.EXAMPLE"}}
	mustApply(t, st, ev("e1", "dsync.group.user_added", 1, mem(u, grp("g_eng", "Eng"))))
	d := usr("u9", "A", "inactive")
	delete(d, "email")
	d["emails"] = u["emails"]
	mustApply(t, st, ev("e2", "dsync.user.deleted", 2, d))
	if got := findUser(t, st, "u9"); got == nil || !slices.Contains(got.Badges, "engineer") {
		t.Fatalf("break-glass user by fallback email = %+v", got)
	}
}

// Rule 4: "more users ... would lose all their badges within the window than
// allowed". One user flapping inactive/active three times is one user.
func TestBreakerCountsUsersNotEvents(t *testing.T) {
	st := breakerStore(t, 50, storage.Breaker{Count: 2, Window: 10 * time.Minute})
	var out []storage.Outcome
	for i, state := range []string{"inactive", "active", "inactive", "active", "inactive"} {
		out = append(out, mustApply(t, st, ev(fmt.Sprintf("f%d", i), "dsync.user.updated", 10+i, usr("u00", "A", state)))...)
	}
	for i, o := range out {
		if o == storage.Deferred {
			t.Fatalf("outcomes = %v: org paused at event %d though only 1 user (limit 2) lost its badges", out, i)
		}
	}
}

// Rule 4 at the threshold: count 3 allows exactly 3; the 4th trips.
func TestBreakerAllowsExactlyCountThenDefers(t *testing.T) {
	st := breakerStore(t, 10, storage.Breaker{Count: 3, Window: 10 * time.Minute})
	var out []storage.Outcome
	for i := range 4 {
		out = append(out, mustApply(t, st, ev(fmt.Sprintf("d%d", i), "dsync.user.deleted", 10+i, usr(fmt.Sprintf("u%02d", i), "A", "inactive")))...)
	}
	want := []storage.Outcome{storage.Applied, storage.Applied, storage.Applied, storage.Deferred}
	if !slices.Equal(out, want) {
		t.Fatalf("outcomes = %v, want %v", out, want)
	}
	// A duplicate of the deferred event, and an older out-of-order event, while paused.
	dup := mustApply(t, st, ev("d3", "dsync.user.deleted", 13, usr("u03", "A", "inactive")))
	late := mustApply(t, st, ev("old", "dsync.user.updated", -1, usr("u05", "Late", "active"))) // older than u05's create
	if dup[0] != storage.Duplicate || late[0] != storage.Deferred {
		t.Fatalf("dup %v late %v", dup, late)
	}
	plan, err := st.Resume("org_1", false)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Applied.Applied != 1 || plan.Applied.Stale != 1 {
		t.Fatalf("resume counts = %v", plan.Applied)
	}
	if findUser(t, st, "u03") != nil {
		t.Fatal("u03 not deleted after resume")
	}
}

// Rule 4 + 1: resuming applies through the last-admin safeguard.
func TestResumeAppliesThroughLastAdmin(t *testing.T) {
	st := MustOpen(t, storage.Options{Safeguards: storage.Safeguards{MaxDeprovisions: storage.Breaker{Count: 1, Window: 10 * time.Minute}}})
	admins := grp("g_adm", "App Admins")
	mustApply(t, st,
		ev("e1", "dsync.group.user_added", 1, mem(usr("u1", "A", "active"), admins)),
		ev("e2", "dsync.user.created", 2, usr("u2", "B", "active")),
		ev("e3", "dsync.user.created", 3, usr("u3", "C", "active")),
	)
	out := mustApply(t, st,
		ev("d2", "dsync.user.deleted", 10, usr("u2", "B", "inactive")),
		ev("d3", "dsync.user.deleted", 11, usr("u3", "C", "inactive")), // trips (2 > 1)
		ev("d1", "dsync.user.deleted", 12, usr("u1", "A", "inactive")), // deferred behind it
	)
	if want := []storage.Outcome{storage.Applied, storage.Deferred, storage.Deferred}; !slices.Equal(out, want) {
		t.Fatalf("outcomes %v, want %v", out, want)
	}
	if _, err := st.Resume("org_1", false); err != nil {
		t.Fatal(err)
	}
	hs := openHolds(t, st)
	if len(hs) != 1 || hs[0].Kind != storage.HoldLastAdmin || hs[0].UserID != "u1" {
		t.Fatalf("holds after resume = %+v", hs)
	}
	if findUser(t, st, "u3") != nil {
		t.Fatal("u3 not deleted by resume")
	}
}

// engineerRuleKept returns a store where u1 got engineer through rule g_eng,
// then the mapping it returns removed that rule with on_unmap keep.
func engineerRuleKept(t *testing.T) (*storage.Store, mapping.Config) {
	t.Helper()
	st := MustOpen(t, storage.Options{})
	if _, err := st.ApplyMapping(testMapping, "", false); err != nil {
		t.Fatal(err)
	}
	mustApply(t, st, ev("e1", "dsync.group.user_added", 1, mem(usr("u1", "A", "active"), grp("g_eng", "Eng"))))
	next := testMapping
	next.Groups = slices.DeleteFunc(slices.Clone(next.Groups), func(r mapping.GroupRule) bool { return r.ID == "g_eng" })
	if _, err := st.ApplyMapping(next, mapping.OnUnmapKeep, false); err != nil {
		t.Fatal(err)
	}
	return st, next
}

// Rule 5: "keep leaves the badges as retained" — and they stay retained when
// the user is recomputed by a later, unrelated event.
func TestKeptBadgeStaysRetainedAfterNextEvent(t *testing.T) {
	st, _ := engineerRuleKept(t)
	u, _ := st.User("u1")
	if !slices.ContainsFunc(u.Grants, func(g mapping.Grant) bool { return g.Badge == "engineer" && g.Source == mapping.SourceRetained }) {
		t.Errorf("after keep, engineer grant is not recorded as retained: %+v", u.Grants)
	}
	// A profile change, unrelated to groups, recomputes u1.
	mustApply(t, st, ev("e2", "dsync.user.updated", 2, usr("u1", "Renamed", "active")))
	if b := badgesOf(t, st, "u1"); !slices.Contains(b, "engineer") {
		t.Errorf("retained engineer badge revoked by a profile update: badges = %v", b)
	}
}

// Rule 5: remove a rule with keep, re-add it, remove again: needs a choice again;
// re-applying the same mapping changes nothing.
func TestMappingReappliedChangesNothingAndRemovalAsksAgain(t *testing.T) {
	st, next := engineerRuleKept(t)
	if b := badgesOf(t, st, "u1"); !slices.Equal(b, []mapping.Badge{"engineer", "member"}) {
		t.Fatalf("badges after keep = %v", b)
	}
	p, err := st.ApplyMapping(next, "", false)
	if err != nil || len(p.Organizations) != 0 {
		t.Fatalf("re-applying the same mapping: %v %+v", err, p)
	}
	if _, err := st.ApplyMapping(testMapping, "", false); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ApplyMapping(next, "", false); err == nil {
		t.Fatal("second removal without a choice accepted")
	}
	if _, err := st.ApplyMapping(next, "remove", false); err != nil {
		t.Fatal(err)
	}
	if b := badgesOf(t, st, "u1"); !slices.Equal(b, []mapping.Badge{"member"}) {
		t.Fatalf("badges after remove = %v", b)
	}
}

// Rule 8: "Every grant, revocation, hold and release is recorded with time,
// event id, rule and reason." Approving a last-admin hold: the release and
// the revocation it applies carry the decision's id, as a mapping change
// carries "config:mapping".
func TestHoldDecisionEntriesCarryOperatorEventID(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	admins := grp("g_adm", "App Admins")
	mustApply(t, st,
		ev("e1", "dsync.group.user_added", 1, mem(usr("u1", "A", "active"), admins)),
		ev("e2", "dsync.group.user_removed", 2, mem(usr("u1", "A", "active"), admins)),
	)
	hs := openHolds(t, st)
	if len(hs) != 1 {
		t.Fatalf("holds %+v", hs)
	}
	if _, err := st.DecideHold(hs[0].ID, true, false); err != nil {
		t.Fatal(err)
	}
	entries, err := st.Audit(storage.AuditFilter{UserID: "u1", Badge: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("operator:hold:%d", hs[0].ID)
	decided := 0
	for _, e := range entries {
		switch {
		case e.EventID == "":
			t.Errorf("audit entry without event id: %+v", e)
		case e.EventID == want:
			decided++
		}
	}
	if decided != 2 { // the release and the revocation it applies
		t.Errorf("%d entries carry %s, want 2: %+v", decided, want, entries)
	}
}

// Absent is not empty: a user event without "role"/"roles" leaves the roles
// and what they grant; "roles": [] revokes the role-granted badges, and the
// audit says the IdP removed the role. Delivered in either order.
func TestRolesAbsentKeepEmptyRevokes(t *testing.T) {
	withRole := usr("u1", "A", "active")
	withRole["roles"] = []map[string]string{{"slug": "billing"}}
	absent := usr("u1", "A2", "active") // no role attribute at all
	empty := usr("u1", "A3", "active")
	empty["roles"] = []any{}
	for _, c := range []struct {
		name   string
		bodies [][]byte
		want   []mapping.Badge
	}{
		{"absent keeps, in order", [][]byte{ev("e1", "dsync.user.created", 1, withRole), ev("e2", "dsync.user.updated", 2, absent)}, []mapping.Badge{"billing", "member"}},
		{"absent keeps, newer first", [][]byte{ev("e2", "dsync.user.updated", 2, absent), ev("e1", "dsync.user.created", 1, withRole)}, []mapping.Badge{"billing", "member"}},
		{"empty revokes, in order", [][]byte{ev("e1", "dsync.user.created", 1, withRole), ev("e2", "dsync.user.updated", 2, empty)}, []mapping.Badge{"member"}},
		{"empty revokes, newer first", [][]byte{ev("e2", "dsync.user.updated", 2, empty), ev("e1", "dsync.user.created", 1, withRole)}, []mapping.Badge{"member"}},
		{"a membership payload without roles keeps them", [][]byte{ev("e1", "dsync.user.created", 1, withRole),
			ev("e2", "dsync.group.user_added", 2, mem(usr("u1", "A", "active"), grp("g_eng", "Engineering")))}, []mapping.Badge{"billing", "member"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := MustOpen(t, storage.Options{})
			for _, b := range c.bodies {
				mustApply(t, st, b)
			}
			got := badgesOf(t, st, "u1")
			for _, b := range c.want {
				if !slices.Contains(got, b) {
					t.Fatalf("badges %v, want %v", got, c.want)
				}
			}
			if !slices.Contains(c.want, "billing") && slices.Contains(got, "billing") {
				t.Fatalf("badges %v: roles: [] did not revoke billing", got)
			}
			if u := findUser(t, st, "u1"); u.FirstName == "A" && c.name != "a membership payload without roles keeps them" {
				t.Fatalf("the newer event's profile was not applied: %+v", u)
			}
		})
	}
	st := MustOpen(t, storage.Options{})
	mustApply(t, st, ev("e1", "dsync.user.created", 1, withRole), ev("e2", "dsync.user.updated", 2, empty))
	entries, err := st.Audit(storage.AuditFilter{UserID: "u1", Badge: "billing"})
	if err != nil {
		t.Fatal(err)
	}
	last := entries[len(entries)-1]
	if last.Action != storage.ActionRevoke || last.Reason != "the IdP removed role billing" || last.EventID != "e2" {
		t.Fatalf("audit of the revocation = %+v, want a revoke by e2 saying the IdP removed role billing", last)
	}
}

// An event dated later than the clock plus MaxFuture is not applied, not
// recorded as processed (its dead letter can be replayed once due), and
// does not make later real events stale.
func TestFutureDatedEventIsRefusedAndFreezesNothing(t *testing.T) {
	now := time.Date(2024, 1, 1, 0, 1, 0, 0, time.UTC)
	st := MustOpen(t, storage.Options{MaxFuture: 3 * time.Minute, Now: func() time.Time { return now }})
	future, err := json.Marshal(map[string]any{"id": "e2099", "event": "dsync.user.updated", "created_at": "2099-01-01T00:00:00Z",
		"data": usr("u1", "Frozen", "inactive")})
	if err != nil {
		t.Fatal(err)
	}
	out := mustApply(t, st, ev("e1", "dsync.user.created", 1, usr("u1", "A", "active")), future, ev("e2", "dsync.user.updated", 2, usr("u1", "B", "active")))
	if !slices.Equal(out, []storage.Outcome{storage.Applied, storage.Future, storage.Applied}) {
		t.Fatalf("outcomes = %v, want applied, future, applied", out)
	}
	if u := findUser(t, st, "u1"); u.FirstName != "B" || u.State != "active" {
		t.Fatalf("u1 = %+v, want the real later event applied", u)
	}
	if ok, _ := st.Processed("e2099"); ok {
		t.Fatal("the future-dated event is recorded as processed")
	}
	// Within the tolerance: applied.
	soon := time.Date(2024, 1, 1, 0, 3, 0, 0, time.UTC).Format(time.RFC3339)
	b, _ := json.Marshal(map[string]any{"id": "e3", "event": "dsync.user.updated", "created_at": soon, "data": usr("u1", "C", "active")})
	if out := mustApply(t, st, b); out[0] != storage.Applied {
		t.Fatalf("an event 2m ahead with a 3m tolerance = %s, want applied", out[0])
	}
}

// A held admin is visible as an admin everywhere: export, the user, the
// directory's listing by badge show the deleted or deactivated last admin
// with its badges and the hold's id until the hold closes.
func TestHeldAdminIsVisibleOnEveryReadSurfaceUntilReleased(t *testing.T) {
	for _, c := range []struct {
		name string
		last []byte
	}{
		{"deleted", ev("e3", "dsync.user.deleted", 3, usr("u1", "A", "inactive"))},
		{"deactivated", ev("e3", "dsync.user.updated", 3, usr("u1", "A", "inactive"))},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := MustOpen(t, storage.Options{})
			admins := grp("g_adm", "App Admins")
			mustApply(t, st, ev("e1", "dsync.group.user_added", 1, mem(usr("u1", "A", "active"), admins)),
				ev("e2", "dsync.user.created", 2, usr("u2", "B", "active")), c.last)
			hs := openHolds(t, st)
			if len(hs) != 1 {
				t.Fatalf("holds = %+v, want the last admin held", hs)
			}
			u := findUser(t, st, "u1")
			if u == nil || !slices.Contains(u.Badges, "admin") || u.HeldBy != hs[0].ID || u.State != "inactive" {
				t.Fatalf("export of the held admin = %+v, want it listed, inactive, with admin and held_by %d", u, hs[0].ID)
			}
			listed, err := st.UsersWithBadge("dir_1", "admin")
			if err != nil || len(listed) != 1 || listed[0].ID != "u1" || listed[0].HeldBy != hs[0].ID {
				t.Fatalf("admins of dir_1 = %+v, %v; want u1 held by %d", listed, err, hs[0].ID)
			}
			v, err := st.User("u1")
			if err != nil || v.HeldBy != hs[0].ID || !slices.Contains(v.Badges, "admin") {
				t.Fatalf("user u1 = %+v, %v", v, err)
			}
			// Another admin: the hold releases, u1 loses admin.
			mustApply(t, st, ev("e4", "dsync.group.user_added", 4, mem(usr("u2", "B", "active"), admins)))
			listed, _ = st.UsersWithBadge("dir_1", "admin")
			if len(listed) != 1 || listed[0].ID != "u2" || listed[0].HeldBy != 0 {
				t.Fatalf("admins after release = %+v, want u2 only", listed)
			}
			if u := findUser(t, st, "u1"); (c.name == "deleted") != (u == nil) || (u != nil && u.HeldBy != 0) {
				t.Fatalf("export of u1 after release = %+v", u)
			}
		})
	}
}

// Moving the only admin to another organisation is held like a revocation:
// the user stays in the old organisation, as its admin, until another admin
// exists there (or an operator approves); then its badges are the new
// organisation's. A move that leaves an admin behind goes through at once.
func TestMovingTheOnlyAdminIsHeld(t *testing.T) {
	ga := grpO("g_a", "App Admins", "org_a")
	setup := func(t *testing.T) *storage.Store {
		st := MustOpen(t, storage.Options{})
		mustApply(t, st,
			ev("e1", "dsync.group.user_added", 1, memO(usrO("u1", "org_a", "active"), ga)),
			ev("e2", "dsync.user.created", 2, usrO("u2", "org_a", "active")))
		moved := usrO("u1", "org_a", "active")
		moved["organization_id"] = "org_b"
		mustApply(t, st, ev("e3", "dsync.user.updated", 3, moved))
		return st
	}
	held := func(t *testing.T, st *storage.Store) storage.Hold {
		t.Helper()
		hs := openHolds(t, st)
		if len(hs) != 1 || hs[0].OrganizationID != "org_a" || hs[0].UserID != "u1" || hs[0].MovedTo != "org_b" {
			t.Fatalf("holds = %+v, want u1's move to org_b held in org_a", hs)
		}
		u := findUser(t, st, "u1")
		if u.OrganizationID != "org_a" || u.MovedTo != "org_b" || u.HeldBy != hs[0].ID || !slices.Contains(u.Badges, "admin") {
			t.Fatalf("u1 = %+v, want listed in org_a as admin, moving to org_b", u)
		}
		return hs[0]
	}
	moved := func(t *testing.T, st *storage.Store) {
		t.Helper()
		u := findUser(t, st, "u1")
		if u.OrganizationID != "org_b" || u.MovedTo != "" || u.HeldBy != 0 || slices.Contains(u.Badges, "admin") {
			t.Fatalf("u1 = %+v, want in org_b without org_a's admin group rule", u)
		}
	}
	t.Run("released when the old organisation gets another admin", func(t *testing.T) {
		st := setup(t)
		held(t, st)
		mustApply(t, st, ev("e4", "dsync.group.user_added", 4, memO(usrO("u2", "org_a", "active"), ga)))
		moved(t, st)
		if len(openHolds(t, st)) != 0 {
			t.Fatalf("holds still open: %+v", openHolds(t, st))
		}
	})
	t.Run("approved by an operator", func(t *testing.T) {
		st := setup(t)
		h := held(t, st)
		if _, err := st.DecideHold(h.ID, true, false); err != nil {
			t.Fatal(err)
		}
		moved(t, st)
	})
	t.Run("cannot be rejected", func(t *testing.T) {
		st := setup(t)
		h := held(t, st)
		if _, err := st.DecideHold(h.ID, false, false); !errors.Is(err, storage.ErrNotRejectable) {
			t.Fatalf("reject = %v, want ErrNotRejectable", err)
		}
		held(t, st)
	})
	t.Run("released when the user is moved back", func(t *testing.T) {
		st := setup(t)
		held(t, st)
		mustApply(t, st, ev("e4", "dsync.user.updated", 4, usrO("u1", "org_a", "active")))
		if u := findUser(t, st, "u1"); u.OrganizationID != "org_a" || u.HeldBy != 0 || !slices.Contains(u.Badges, "admin") {
			t.Fatalf("u1 back in org_a = %+v, want an admin there, no hold", u)
		}
	})
	t.Run("goes through when the old organisation keeps an admin", func(t *testing.T) {
		st := MustOpen(t, storage.Options{})
		mustApply(t, st,
			ev("e1", "dsync.group.user_added", 1, memO(usrO("u1", "org_a", "active"), ga)),
			ev("e2", "dsync.group.user_added", 2, memO(usrO("u2", "org_a", "active"), ga)))
		m := usrO("u1", "org_a", "active")
		m["organization_id"] = "org_b"
		mustApply(t, st, ev("e3", "dsync.user.updated", 3, m))
		moved(t, st)
		if len(openHolds(t, st)) != 0 {
			t.Fatalf("holds = %+v, want none", openHolds(t, st))
		}
	})
}

// Break-glass cannot be slipped: an account matched by email stays
// recognised by its directory user id when one event changes its email and
// deactivates it, and when a later delete names the new email; the email
// change is applied and audited.
func TestBreakGlassStaysRecognisedAfterAnEmailChange(t *testing.T) {
	st := MustOpen(t, storage.Options{Safeguards: storage.Safeguards{BreakGlass: []string{"oncall@x.example"}}})
	u := usr("u1", "A", "active")
	u["email"] = "oncall@x.example"
	admins := grp("g_adm", "App Admins")
	mustApply(t, st, ev("e1", "dsync.group.user_added", 1, mem(u, admins)),
		ev("e2", "dsync.group.user_added", 2, mem(usr("u2", "B", "active"), admins)))
	renamed := usr("u1", "A", "inactive")
	renamed["email"] = "someone-else@x.example"
	mustApply(t, st, ev("e3", "dsync.user.updated", 3, renamed), ev("e4", "dsync.user.deleted", 4, renamed))
	got := findUser(t, st, "u1")
	if got == nil || !slices.Contains(got.Badges, "admin") || got.Email != "someone-else@x.example" {
		t.Fatalf("u1 = %+v, want kept with admin and the new email applied", got)
	}
	entries, err := st.Audit(storage.AuditFilter{UserID: "u1"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(entries, func(e storage.AuditEntry) bool {
		return e.Action == storage.ActionProfile && e.EventID == "e3" && strings.Contains(e.Reason, "oncall@x.example") && strings.Contains(e.Reason, "someone-else@x.example")
	}) {
		t.Fatalf("no audit entry for the email change: %+v", entries)
	}
}

// Absent is not empty for the group attributes rules match on: a group
// update without a name or idp_id does not unmatch its rules.
func TestGroupUpdateWithoutNameKeepsItsRules(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	mustApply(t, st, ev("e1", "dsync.group.user_added", 1, mem(usr("u1", "A", "active"), grp("g_adm", "App Admins"))),
		ev("e2", "dsync.group.user_added", 2, mem(usr("u2", "B", "active"), grp("g_adm", "App Admins"))))
	bare := map[string]any{"id": "g_adm", "directory_id": "dir_1", "organization_id": "org_1"}
	mustApply(t, st, ev("e3", "dsync.group.updated", 3, bare))
	for _, id := range []string{"u1", "u2"} {
		if !slices.Contains(badgesOf(t, st, id), "admin") {
			t.Fatalf("%s lost admin to a group update without a name: %v", id, badgesOf(t, st, id))
		}
	}
}
