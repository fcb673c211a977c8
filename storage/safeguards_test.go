package storage_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/storage"
)

func badgesOf(t *testing.T, st *storage.Store, id string) []mapping.Badge {
	t.Helper()
	u, err := st.User(id)
	if err != nil {
		t.Fatalf("user %s: %v", id, err)
	}
	return u.Badges
}

func openHolds(t *testing.T, st *storage.Store) []storage.Hold {
	t.Helper()
	hs, err := st.Holds(true)
	if err != nil {
		t.Fatal(err)
	}
	return hs
}

func TestLastAdminIsHeldThenReleased(t *testing.T) {
	var seen []storage.Hold
	st := MustOpen(t, storage.Options{OnHold: func(h storage.Hold) { seen = append(seen, h) }})
	admins := grp("g_adm", "App Admins")
	mustApply(t, st,
		ev("e1", "dsync.group.user_added", 1, mem(usr("u1", "A", "active"), admins)),
		ev("e2", "dsync.group.user_added", 2, mem(usr("u2", "B", "active"), admins)),
		ev("e3", "dsync.group.deleted", 3, admins),
	)
	// The group delete would take org_1 from two admins to none: both
	// revocations are held, as one change.
	for _, u := range []string{"u1", "u2"} {
		if !slices.Contains(badgesOf(t, st, u), "admin") {
			t.Fatalf("%s lost admin: the organisation has no admin left", u)
		}
	}
	hs := openHolds(t, st)
	if len(hs) != 2 || hs[0].Kind != storage.HoldLastAdmin || hs[0].UserID != "u1" || hs[1].UserID != "u2" || hs[0].EventID != "e3" || hs[0].OrganizationID != "org_1" {
		t.Fatalf("holds = %+v, want last_admin holds for u1 and u2 by e3", hs)
	}
	if len(seen) != 2 || seen[0].ID != hs[0].ID {
		t.Fatalf("OnHold saw %+v", seen)
	}
	// Another admin appears: the held revocation applies and the hold closes by itself.
	mustApply(t, st, ev("e4", "dsync.group.user_added", 4, mem(usr("u3", "C", "active"), grp("g_adm2", "App Admins"))))
	for _, u := range []string{"u1", "u2"} {
		if slices.Contains(badgesOf(t, st, u), "admin") {
			t.Errorf("%s still admin after another admin appeared", u)
		}
	}
	if hs := openHolds(t, st); len(hs) != 0 {
		t.Fatalf("open holds = %+v, want none", hs)
	}
	all, _ := st.Holds(false)
	if len(all) != 2 || all[0].Resolution != storage.ResolutionReleased || all[1].Resolution != storage.ResolutionReleased {
		t.Fatalf("closed hold = %+v", all)
	}
	why, err := st.Audit(storage.AuditFilter{UserID: "u2", Badge: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	actions := []string{}
	for _, e := range why {
		actions = append(actions, string(e.Action))
	}
	if !slices.Equal(actions, []string{"grant", "hold", "release", "revoke"}) {
		t.Fatalf("u2 admin audit = %v", actions)
	}
}

func TestBreakGlassIsNeverRevokedNorDeleted(t *testing.T) {
	st := MustOpen(t, storage.Options{Safeguards: storage.Safeguards{BreakGlass: []string{"U1@X.EXAMPLE"}}})
	mustApply(t, st,
		ev("e1", "dsync.group.user_added", 1, mem(usr("u1", "A", "active"), grp("g_eng", "Eng"))),
		ev("e2", "dsync.group.user_added", 2, mem(usr("u2", "B", "active"), grp("g_adm", "App Admins"))),
		ev("e3", "dsync.user.updated", 3, usr("u1", "Renamed", "inactive")),
		ev("e4", "dsync.user.deleted", 4, usr("u1", "Renamed", "inactive")),
	)
	u := findUser(t, st, "u1")
	if u == nil {
		t.Fatal("break-glass user was deleted")
	}
	if u.FirstName != "Renamed" || !slices.Equal(u.Badges, []mapping.Badge{"engineer", "member"}) {
		t.Fatalf("break-glass user = %+v, want profile updated and badges kept", u)
	}
	entries, _ := st.Audit(storage.AuditFilter{UserID: "u1"})
	skips := 0
	for _, e := range entries {
		if e.Action == storage.ActionSkip {
			skips++
		}
	}
	if skips < 2 {
		t.Fatalf("audit = %+v, want the skipped revocations and delete explained", entries)
	}
}

func TestMassDeprovisioningPausesOnlyThatOrganisation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	opts := storage.Options{Path: path, Safeguards: storage.Safeguards{MaxDeprovisions: storage.Breaker{Count: 2, Window: 10 * time.Minute}}}
	st, err := storage.Open(withMapping(opts))
	if err != nil {
		t.Fatal(err)
	}
	var bodies [][]byte
	for i, id := range []string{"u1", "u2", "u3", "u4", "u5"} {
		bodies = append(bodies, ev("c"+id, "dsync.user.created", i, usr(id, id, "active")))
	}
	other := usr("o1", "Other", "active")
	other["organization_id"], other["directory_id"] = "org_2", "dir_2"
	bodies = append(bodies, ev("co1", "dsync.user.created", 5, other))
	mustApply(t, st, bodies...)
	var deact [][]byte
	for i, id := range []string{"u1", "u2", "u3", "u4"} {
		deact = append(deact, ev("d"+id, "dsync.user.updated", 100+i, usr(id, id, "inactive")))
	}
	other2 := usr("o1", "Other", "inactive")
	other2["organization_id"], other2["directory_id"] = "org_2", "dir_2"
	deact = append(deact, ev("do1", "dsync.user.updated", 110, other2))
	got := mustApply(t, st, deact...)
	want := []storage.Outcome{storage.Applied, storage.Applied, storage.Deferred, storage.Deferred, storage.Applied}
	if !slices.Equal(got, want) {
		t.Fatalf("outcomes = %v, want %v", got, want)
	}
	if b := badgesOf(t, st, "u3"); len(b) == 0 {
		t.Fatalf("u3 lost its badges while org_1 is paused")
	}
	if b := badgesOf(t, st, "o1"); len(b) != 0 {
		t.Fatalf("org_2 should carry on: o1 badges = %v", b)
	}
	// Nothing is lost across a restart while paused.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = MustOpen(t, withMapping(opts))
	if got := mustApply(t, st, ev("d5", "dsync.user.updated", 120, usr("u5", "u5", "inactive"))); got[0] != storage.Deferred {
		t.Fatalf("event after restart = %v, want deferred", got[0])
	}
	hs := openHolds(t, st)
	if len(hs) != 1 || hs[0].Kind != storage.HoldMassDeprovision || hs[0].OrganizationID != "org_1" || hs[0].Deferred != 3 {
		t.Fatalf("holds = %+v", hs)
	}
	plan, err := st.Resume("org_1", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Organizations) != 1 || len(plan.Organizations[0].Losses["member"]) != 3 {
		t.Fatalf("plan = %+v, want 3 users losing member", plan)
	}
	if b := badgesOf(t, st, "u3"); len(b) == 0 {
		t.Fatal("a dry-run resume changed the store")
	}
	if _, err := st.Resume("org_1", false); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"u3", "u4", "u5"} {
		if b := badgesOf(t, st, id); len(b) != 0 {
			t.Errorf("%s badges after resume = %v", id, b)
		}
	}
	if _, err := st.Resume("org_1", false); !errors.Is(err, storage.ErrNotPaused) {
		t.Fatalf("second resume err = %v", err)
	}
}

func withMapping(o storage.Options) storage.Options {
	o.Mapping = testMapping
	return o
}

func TestMappingChangeNeedsAnUnmapChoice(t *testing.T) {
	for _, tc := range []struct {
		name       string
		choice     string
		wantErr    error
		wantBadges []mapping.Badge
	}{
		{"no choice is refused", "", storage.ErrUnmapChoice, []mapping.Badge{"engineer", "member"}},
		{"keep retains the badge", mapping.OnUnmapKeep, nil, []mapping.Badge{"engineer", "member"}},
		{"remove revokes the badge", mapping.OnUnmapRemove, nil, []mapping.Badge{"member"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := MustOpen(t, storage.Options{})
			if _, err := st.ApplyMapping(testMapping, "", false); err != nil {
				t.Fatal(err)
			}
			mustApply(t, st, ev("e1", "dsync.group.user_added", 1, mem(usr("u1", "A", "active"), grp("g_eng", "Eng"))))
			next := testMapping
			next.Groups = slices.DeleteFunc(slices.Clone(next.Groups), func(r mapping.GroupRule) bool { return r.ID == "g_eng" })
			plan, err := st.ApplyMapping(next, tc.choice, false)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if len(plan.Unmapped) != 1 || plan.Unmapped[0].Users != 1 {
				t.Fatalf("unmapped = %+v, want the removed rule with 1 user", plan.Unmapped)
			}
			if b := badgesOf(t, st, "u1"); !slices.Equal(b, tc.wantBadges) {
				t.Fatalf("badges = %v, want %v", b, tc.wantBadges)
			}
		})
	}
}

func TestPlanLeavesNoAdminAndChangesNothing(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	if _, err := st.ApplyMapping(testMapping, "", false); err != nil {
		t.Fatal(err)
	}
	mustApply(t, st, ev("e1", "dsync.group.user_added", 1, mem(usr("u1", "A", "active"), grp("g_adm", "App Admins"))))
	next := testMapping
	next.Groups = []mapping.GroupRule{{Name: "App Admins", Badges: []mapping.Badge{"staff"}}}
	plan, err := st.ApplyMapping(next, mapping.OnUnmapRemove, true)
	if err != nil {
		t.Fatal(err)
	}
	if !plan.LeavesNoAdmin() || plan.Organizations[0].AdminsBefore != 1 || plan.Organizations[0].AdminsAfter != 0 {
		t.Fatalf("plan = %+v, want org_1 admins 1 -> 0", plan)
	}
	if b := badgesOf(t, st, "u1"); !slices.Contains(b, "admin") || slices.Contains(b, "staff") {
		t.Fatalf("dry run changed badges: %v", b)
	}
}

func TestRolesOnlyAdd(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	u := usr("u1", "A", "active")
	u["role"] = map[string]string{"slug": "billing"}
	mustApply(t, st, ev("e1", "dsync.group.user_added", 1, mem(u, grp("g_eng", "Eng"))))
	noRoles := usr("u1", "A", "active")
	noRoles["roles"] = []any{}
	mustApply(t, st, ev("e2", "dsync.user.updated", 2, noRoles))
	if b := badgesOf(t, st, "u1"); !slices.Equal(b, []mapping.Badge{"engineer", "member"}) {
		t.Fatalf("badges after empty roles = %v, want group badges kept", b)
	}
}

// TestLastAdminCountSurvivesMembershipPayloads: membership events rewrite
// the user record; the admin index must stay right through them.
func TestLastAdminCountSurvivesMembershipPayloads(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	admins := grp("g_adm", "App Admins")
	mustApply(t, st,
		ev("e1", "dsync.group.user_added", 1, mem(usr("u1", "A", "active"), admins)),
		ev("e2", "dsync.group.user_added", 2, mem(usr("u2", "B", "active"), admins)),
		ev("e3", "dsync.group.user_removed", 3, mem(usr("u2", "B", "active"), admins)),
		ev("e4", "dsync.group.user_removed", 4, mem(usr("u1", "A", "active"), admins)),
	)
	if slices.Contains(badgesOf(t, st, "u2"), "admin") {
		t.Fatal("u2's revocation left u1 and should have applied")
	}
	if !slices.Contains(badgesOf(t, st, "u1"), "admin") || len(openHolds(t, st)) != 1 {
		t.Fatalf("u1, the last admin, lost the badge (holds %+v)", openHolds(t, st))
	}
}

func TestBreakGlassDeleteArrivingFirstLeavesNoTombstone(t *testing.T) {
	for _, bg := range []string{"u1", "u1@x.example"} {
		st := MustOpen(t, storage.Options{Safeguards: storage.Safeguards{BreakGlass: []string{bg}}})
		mustApply(t, st,
			ev("e2", "dsync.user.deleted", 2, usr("u1", "Ann", "inactive")), // delivered before the create
			ev("e1", "dsync.user.created", 1, usr("u1", "Ann", "active")),
		)
		if u := findUser(t, st, "u1"); u == nil || !slices.Equal(u.Badges, []mapping.Badge{"member"}) {
			t.Fatalf("break-glass %q: user = %+v, want kept with [member]: sync never deletes a break-glass account", bg, u)
		}
		entries, _ := st.Audit(storage.AuditFilter{UserID: "u1"})
		if !slices.ContainsFunc(entries, func(e storage.AuditEntry) bool { return e.Action == storage.ActionSkip && e.EventID == "e2" }) {
			t.Fatalf("break-glass %q: audit %+v does not explain the skipped delete", bg, entries)
		}
	}
}

// breakerStore opens a store with breaker b and n active users of org_1,
// each holding a mapped badge (billing, by role).
func breakerStore(t *testing.T, n int, b storage.Breaker) *storage.Store {
	t.Helper()
	st := MustOpen(t, storage.Options{Safeguards: storage.Safeguards{MaxDeprovisions: b}})
	var bodies [][]byte
	for i := range n {
		u := usr(fmt.Sprintf("u%02d", i), "A", "active")
		u["roles"] = []map[string]string{{"slug": "billing"}}
		bodies = append(bodies, ev(fmt.Sprintf("c%02d", i), "dsync.user.created", 0, u))
	}
	mustApply(t, st, bodies...)
	return st
}

func TestBreakerPercent(t *testing.T) {
	for _, tc := range []struct {
		name  string
		users int
		typ   string
	}{
		// 10% of 25 holders is 2.5: the third user losing everything is more than that.
		{"trips on more than the exact share", 25, "dsync.user.updated"},
		// 10% of 20 holders is 2: two deletes are within the allowance even
		// though the organisation has 18 holders left; the third is not.
		{"counts the users its deletes removed", 20, "dsync.user.deleted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := breakerStore(t, tc.users, storage.Breaker{Percent: 10, Window: 10 * time.Minute})
			var out []storage.Outcome
			for i := range 3 {
				out = append(out, mustApply(t, st, ev(fmt.Sprintf("d%02d", i), tc.typ, 10+i, usr(fmt.Sprintf("u%02d", i), "A", "inactive")))...)
			}
			if want := []storage.Outcome{storage.Applied, storage.Applied, storage.Deferred}; !slices.Equal(out, want) {
				t.Fatalf("outcomes = %v, want %v", out, want)
			}
		})
	}
}

func TestBreakerWindowIsMeasuredOnCreatedAt(t *testing.T) {
	st := breakerStore(t, 10, storage.Breaker{Count: 1, Window: time.Minute})
	out := mustApply(t, st,
		ev("d0", "dsync.user.updated", 10, usr("u00", "A", "inactive")),
		ev("d1", "dsync.user.updated", 71, usr("u01", "A", "inactive")),  // 61s later: a new window
		ev("d2", "dsync.user.updated", 100, usr("u02", "A", "inactive")), // 29s after d1: two within a minute
	)
	if want := []storage.Outcome{storage.Applied, storage.Applied, storage.Deferred}; !slices.Equal(out, want) {
		t.Fatalf("outcomes = %v, want %v", out, want)
	}
}

// BenchmarkDeprovisionWave deletes 5% of a 20k-user organisation within the
// breaker's window, 256 events a batch: each delete is checked against the
// breaker's share of the organisation's holders (10% here, no count cap, so
// none trips).
func BenchmarkDeprovisionWave(b *testing.B) {
	const users, deletes = 20000, 1000
	defer storage.WithoutOrgCountCheck()()
	for range b.N {
		b.StopTimer()
		st := MustOpen(b, storage.Options{NoSync: true, Safeguards: storage.Safeguards{
			MaxDeprovisions: storage.Breaker{Percent: 10, Window: 10 * time.Minute}}})
		bodies := make([][]byte, 0, users)
		for i := range users {
			u := usr(fmt.Sprintf("u%05d", i), "A", "active")
			u["roles"] = []map[string]string{{"slug": "billing"}} // a mapped badge: each counts among the holders
			bodies = append(bodies, ev(fmt.Sprintf("c%05d", i), "dsync.user.created", 0, u))
		}
		applyBodies(b, st, bodies, 256)
		bodies = bodies[:0]
		for i := range deletes {
			bodies = append(bodies, ev(fmt.Sprintf("d%05d", i), "dsync.user.deleted", 1, usr(fmt.Sprintf("u%05d", i), "A", "active")))
		}
		b.StartTimer()
		start := time.Now()
		applyBodies(b, st, bodies, 256)
		b.ReportMetric(float64(time.Since(start).Microseconds())/deletes, "µs/delete")
	}
}

// Every safeguard that holds changes is listed, so that its metric exists
// from the start and its holds can be decided.
func TestHoldKindsListsEverySafeguardThatHolds(t *testing.T) {
	if got, want := storage.HoldKinds(), []storage.HoldKind{storage.HoldLastAdmin, storage.HoldMassDeprovision}; !slices.Equal(got, want) {
		t.Fatalf("HoldKinds() = %v, want %v", got, want)
	}
}
