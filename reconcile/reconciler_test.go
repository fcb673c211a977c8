package reconcile

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/reconcile/workostest"
	"github.com/dsyncd/dsyncd/storage"
)

const (
	henry     = "directory_user_01FAZYNPC8TJBP7Y2ERT51MGDF" // Team - Platform, Department - Engineering
	bob       = "directory_user_01FAZYNPC8M0HRYTKFP2GNX852" // role "member"; Team - Platform, Department - Infra
	workosU   = "directory_user_01FAZYNPC8DYPEWZ0BSHBA21RM" // Department - Marketing
	platform  = "directory_group_01FAZYNNQ4HQ6EBF29MPTH7VKB"
	marketing = "directory_group_01FAZYNMWS67E66CD01E7A1PC4"
	infra     = "directory_group_01FAZYNN1NZWMBRAXXDSTB5NFH"
)

func newReconciler(t *testing.T, fake *workostest.Server, st Store, pageSize int) (*Reconciler, logs) {
	t.Helper()
	log, logged := newLogs()
	return NewReconciler(ReconcilerOptions{ClientOptions: clientOpts(fake, pageSize)}, st, log), logged
}

func kinds(res *Result) map[string]int {
	out := map[string]int{}
	for _, d := range res.Differences {
		out[d.Kind]++
	}
	return out
}

// assertMatches checks that the store holds directory dir exactly as the fake lists it.
func assertMatches(t *testing.T, st *storage.Store, fake *workostest.Server, dir string) {
	t.Helper()
	snap, err := st.Export()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(snap.Directories, storage.ExportDirectory{ID: dir, OrganizationID: workostest.UsersOrganization, Name: "Recorded users", State: "active"}) {
		t.Errorf("directory %s not stored as WorkOS lists it: %+v", dir, snap.Directories)
	}
	var users []string
	for _, u := range snap.Users {
		if u.DirectoryID == dir {
			users = append(users, u.ID)
			// The user's own organisation as WorkOS lists it, or (as
			// the snapshot may show it) its directory's.
			var api struct {
				OrganizationID string `json:"organization_id"`
			}
			_ = json.Unmarshal(fake.User(u.ID), &api)
			if u.OrganizationID != api.OrganizationID && u.OrganizationID != workostest.UsersOrganization {
				t.Errorf("user %s: organization %q", u.ID, u.OrganizationID)
			}
		}
	}
	want := fake.Users(dir)
	slices.Sort(want)
	if !slices.Equal(users, want) {
		t.Errorf("users %v, want %v", users, want)
	}
	groups := map[string]storage.ExportGroup{}
	for _, g := range snap.Groups {
		if g.DirectoryID == dir {
			groups[g.ID] = g
		}
	}
	if len(groups) != len(fake.Groups(dir)) {
		t.Errorf("%d groups, want %d", len(groups), len(fake.Groups(dir)))
	}
	for _, gid := range fake.Groups(dir) {
		g, ok := groups[gid]
		if !ok {
			t.Errorf("group %s missing", gid)
			continue
		}
		var api struct{ Name string }
		_ = json.Unmarshal(fake.Group(gid), &api)
		if g.Name != api.Name {
			t.Errorf("group %s named %q, want %q", gid, g.Name, api.Name)
		}
		if want := fake.Members(gid); !slices.Equal(g.Members, want) {
			t.Errorf("group %s members %v, want %v", gid, g.Members, want)
		}
	}
}

func badgesOf(t *testing.T, st *storage.Store, id string) []mapping.Badge {
	t.Helper()
	u, err := st.User(id)
	if err != nil {
		t.Fatalf("user %s: %v", id, err)
	}
	if u.Deleted {
		return nil
	}
	return u.Badges
}

func TestReconcileCreatesWhatIsMissingAndThenFindsNothing(t *testing.T) {
	fake := newFake(t)
	st := openStore(t, "")
	r, logged := newReconciler(t, fake, st, 2)
	res, err := r.Reconcile(testCtx(t), Scope{Directory: workostest.UsersDirectory}, false)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{DirectoryMissing: 1, GroupMissing: 8, UserMissing: 4, MembershipMissing: 11}
	if got := kinds(res); !mapsEqual(got, want) {
		t.Fatalf("differences %v, want %v", got, want)
	}
	if res.Outcomes[storage.Applied] != 24 {
		t.Errorf("outcomes %v", res.Outcomes)
	}
	for _, d := range res.Differences {
		if d.Outcome != storage.Applied || !strings.HasPrefix(d.EventID, "reconcile_") {
			t.Errorf("difference %+v", d)
		}
	}
	assertMatches(t, st, fake, workostest.UsersDirectory)
	if b := badgesOf(t, st, henry); !slices.Equal(b, []mapping.Badge{"admin", "member"}) {
		t.Errorf("henry's badges %v (Team - Platform grants admin)", b)
	}
	if b := badgesOf(t, st, bob); !slices.Equal(b, []mapping.Badge{"admin", "member", "staff"}) {
		t.Errorf("bob's badges %v (role member grants staff)", b)
	}
	u, _ := st.User(henry)
	if u.Email != "henry@workos.com" {
		t.Errorf("henry's email %q: the primary of emails[]", u.Email)
	}

	again, err := r.Reconcile(testCtx(t), Scope{Directory: workostest.UsersDirectory}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Differences) != 0 {
		t.Fatalf("second run found %+v", again.Differences)
	}
	if dr := again.Directories[0]; dr.Users != 4 || dr.Groups != 8 || dr.Memberships != 11 {
		t.Errorf("directory summary %+v", dr)
	}
	logged.assertNoKey(t)
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// drift changes the fake after a first sync, as missed webhooks would leave
// the store: a user deleted, a user created, a membership added and one
// removed, a group renamed, a user's name changed.
func drift(t *testing.T, fake *workostest.Server) (newUser string) {
	t.Helper()
	fake.RemoveUser(workostest.UsersDirectory, henry)
	newUser = "directory_user_01NEWNEWNEWNEWNEWNEWNEWNEW"
	var u map[string]any
	if err := json.Unmarshal(fake.User(workosU), &u); err != nil {
		t.Fatal(err)
	}
	u["id"], u["idp_id"], u["first_name"] = newUser, "new-idp", "Newt"
	u["emails"] = []map[string]any{{"primary": true, "value": "newt@workos.com"}}
	b, _ := json.Marshal(u)
	fake.SetUser(workostest.UsersDirectory, b)
	fake.SetMember(marketing, newUser, true)
	fake.SetMember(marketing, bob, true)
	fake.SetMember(infra, bob, false)
	if err := json.Unmarshal(fake.User(workosU), &u); err != nil {
		t.Fatal(err)
	}
	u["last_name"] = "Renamed"
	b, _ = json.Marshal(u)
	fake.SetUser(workostest.UsersDirectory, b)
	return newUser
}

func TestReconcileRepairsADriftedStore(t *testing.T) {
	fake := newFake(t)
	st := openStore(t, "")
	r, logged := newReconciler(t, fake, st, 2)
	if _, err := r.Reconcile(testCtx(t), Scope{Directory: workostest.UsersDirectory}, false); err != nil {
		t.Fatal(err)
	}
	newUser := drift(t, fake)
	res, err := r.Reconcile(testCtx(t), Scope{Directory: workostest.UsersDirectory}, false)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{UserUnknownRemotely: 1, UserMissing: 1, UserChanged: 1, MembershipMissing: 2, MembershipUnknown: 1}
	if got := kinds(res); !mapsEqual(got, want) {
		t.Fatalf("differences %v, want %v\n%+v", got, want, res.Differences)
	}
	for _, d := range res.Differences {
		switch d.Kind {
		case UserUnknownRemotely:
			if d.UserID != henry || d.Event != string(events.UserDeleted) {
				t.Errorf("%+v", d)
			}
		case UserChanged:
			if d.UserID != workosU || !slices.Equal(d.Fields, []string{"last_name"}) {
				t.Errorf("%+v", d)
			}
		}
		if d.Outcome != storage.Applied {
			t.Errorf("%+v not applied", d)
		}
	}
	assertMatches(t, st, fake, workostest.UsersDirectory)
	if b := badgesOf(t, st, henry); len(b) != 0 {
		t.Errorf("henry, deleted in WorkOS, keeps %v", b)
	}
	if b := badgesOf(t, st, newUser); !slices.Equal(b, []mapping.Badge{"member"}) {
		t.Errorf("new user's badges %v", b)
	}
	if b := badgesOf(t, st, bob); !slices.Equal(b, []mapping.Badge{"admin", "member", "staff"}) {
		t.Errorf("bob's badges %v: roles must survive the corrective membership events", b)
	}
	again, err := r.Reconcile(testCtx(t), Scope{Directory: workostest.UsersDirectory}, false)
	if err != nil || len(again.Differences) != 0 {
		t.Fatalf("not converged: %v %+v", err, again.Differences)
	}
	logged.assertNoKey(t)
}

func TestReconcileDryRunChangesNothing(t *testing.T) {
	fake := newFake(t)
	st := openStore(t, "")
	r, _ := newReconciler(t, fake, st, 100)
	if _, err := r.Reconcile(testCtx(t), Scope{Directory: workostest.UsersDirectory}, false); err != nil {
		t.Fatal(err)
	}
	drift(t, fake)
	before := snapshot(t, st)
	auditBefore, _ := st.Audit(storage.AuditFilter{})
	res, err := r.Reconcile(testCtx(t), Scope{Directory: workostest.UsersDirectory}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !res.DryRun || len(res.Differences) != 6 || res.Plan == nil {
		t.Fatalf("dry run result %+v", res)
	}
	for _, d := range res.Differences {
		if d.Outcome != "" || d.Event == "" {
			t.Errorf("dry-run difference %+v", d)
		}
	}
	var org *storage.OrgPlan
	for i := range res.Plan.Organizations {
		if res.Plan.Organizations[i].Organization == workostest.UsersOrganization {
			org = &res.Plan.Organizations[i]
		}
	}
	if org == nil || !slices.Contains(org.Losses["admin"], henry) || !slices.Contains(org.Gains["member"], "directory_user_01NEWNEWNEWNEWNEWNEWNEWNEW") {
		t.Fatalf("plan %+v", res.Plan)
	}
	if after := snapshot(t, st); !bytes.Equal(before, after) {
		t.Fatalf("a dry run changed the store:\n%s\nwas\n%s", after, before)
	}
	if auditAfter, _ := st.Audit(storage.AuditFilter{}); len(auditAfter) != len(auditBefore) {
		t.Fatalf("a dry run added %d audit entries", len(auditAfter)-len(auditBefore))
	}
}

func TestReconcileRespectsTheUsersRateLimitAndRetries(t *testing.T) {
	fake := newFake(t)
	fake.Fail("/directory_users", workostest.Fault{Status: 429, RetryAfter: "1"})
	fake.Fail("/directory_groups", workostest.Fault{Status: 500}, workostest.Fault{Delay: 3 * time.Second})
	st := openStore(t, "")
	log, logged := newLogs()
	opts := clientOpts(fake, 2)
	opts.RequestTimeout = 300 * time.Millisecond
	opts.UsersPerSecond = 0 // the default: WorkOS's 4 per second per directory
	r := NewReconciler(ReconcilerOptions{ClientOptions: opts}, st, log)
	if _, err := r.Reconcile(testCtx(t), Scope{Directory: workostest.UsersDirectory}, false); err != nil {
		t.Fatal(err)
	}
	assertMatches(t, st, fake, workostest.UsersDirectory)
	reqs := fake.Requests("/directory_users")
	if len(reqs) < 9 {
		t.Fatalf("only %d requests to /directory_users", len(reqs))
	}
	slices.SortFunc(reqs, func(a, b workostest.Request) int { return a.At.Compare(b.At) })
	for i := 0; i+4 < len(reqs); i++ {
		if d := reqs[i+4].At.Sub(reqs[i].At); d < 950*time.Millisecond {
			t.Errorf("5 requests to /directory_users within %s (from #%d)", d, i)
		}
	}
	if reqs[0].Status != 429 || reqs[1].At.Sub(reqs[0].At) < 950*time.Millisecond {
		t.Errorf("429 with Retry-After: 1 not honoured: %v then %v", reqs[0], reqs[1].At.Sub(reqs[0].At))
	}
	logged.assertNoKey(t)
}

func TestReconcileLeavesADirectoryAloneWhenItsListingFails(t *testing.T) {
	fake := newFake(t)
	st := openStore(t, "")
	r, _ := newReconciler(t, fake, st, 2)
	if _, err := r.Reconcile(testCtx(t), Scope{Directory: workostest.UsersDirectory}, false); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, st)
	fake.RemoveUser(workostest.UsersDirectory, henry)
	faults := make([]workostest.Fault, 5) // MaxAttempts
	for i := range faults {
		faults[i] = workostest.Fault{Status: 502}
	}
	fake.Fail("/directory_groups", faults...)
	res, err := r.Reconcile(testCtx(t), Scope{Directory: workostest.UsersDirectory}, false)
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 502 {
		t.Fatalf("err %v, want the 502", err)
	}
	if res == nil || len(res.Directories) != 1 || res.Directories[0].Error == "" || len(res.Differences) != 0 {
		t.Fatalf("result %+v", res)
	}
	if after := snapshot(t, st); !bytes.Equal(before, after) {
		t.Fatal("a failed listing changed the store")
	}
}

func TestReconcileGoesThroughTheSafeguards(t *testing.T) {
	fake := newFake(t)
	st := openStore(t, "", func(o *storage.Options) { o.Safeguards.BreakGlass = []string{"henry@workos.com"} })
	r, _ := newReconciler(t, fake, st, 100)
	if _, err := r.Reconcile(testCtx(t), Scope{Directory: workostest.UsersDirectory}, false); err != nil {
		t.Fatal(err)
	}
	fake.RemoveUser(workostest.UsersDirectory, henry)
	res, err := r.Reconcile(testCtx(t), Scope{Directory: workostest.UsersDirectory}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Differences) != 1 || res.Differences[0].Kind != UserUnknownRemotely {
		t.Fatalf("differences %+v: want henry's delete refused (break-glass)", res.Differences)
	}
	if b := badgesOf(t, st, henry); !slices.Equal(b, []mapping.Badge{"admin", "member"}) {
		t.Fatalf("break-glass henry lost his badges: %v", b)
	}
	audit, _ := st.Audit(storage.AuditFilter{UserID: henry})
	if !slices.ContainsFunc(audit, func(e storage.AuditEntry) bool {
		return e.EventID == res.Differences[0].EventID && e.Action == storage.ActionSkip
	}) {
		t.Errorf("the refused delete is not audited: %+v", audit)
	}
}

func TestReconcileByOrganizationAndEveryDirectory(t *testing.T) {
	fake := newFake(t)
	st := openStore(t, "")
	// A directory the store knows from a webhook but WorkOS no longer lists.
	valid, _ := referenceEvents(t)
	var activated *events.Event
	for _, raw := range valid {
		if ev, err := events.Decode(raw); err == nil && ev.Type == events.DirectoryActivated {
			activated = ev
		}
	}
	if _, err := st.Apply([]*events.Event{activated}); err != nil {
		t.Fatal(err)
	}
	r, _ := newReconciler(t, fake, st, 100)
	res, err := r.Reconcile(testCtx(t), Scope{Organization: workostest.UsersOrganization}, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Directories) != 1 || res.Directories[0].ID != workostest.UsersDirectory {
		t.Fatalf("directories %+v", res.Directories)
	}
	if kinds(res)[DirectoryUnknownRemotely] != 0 {
		t.Errorf("a directory of another organisation reported: %+v", res.Differences)
	}
	if q := fake.Requests("/directories")[0].Query.Get("organization_id"); q != workostest.UsersOrganization {
		t.Errorf("organization_id=%q", q)
	}

	res, err = r.Reconcile(testCtx(t), Scope{}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Directories) != 12 {
		t.Errorf("%d directories reconciled, want the 12 listed", len(res.Directories))
	}
	var unknown []Difference
	for _, d := range res.Differences {
		if d.Kind == DirectoryUnknownRemotely {
			unknown = append(unknown, d)
		}
	}
	if len(unknown) != 1 || unknown[0].Directory != activated.DirectoryID || unknown[0].Event != "" {
		t.Errorf("unknown directories %+v: want %s, reported only", unknown, activated.DirectoryID)
	}
	assertMatches(t, st, fake, workostest.UsersDirectory)
	snap, _ := st.Export()
	groups := 0
	for _, g := range snap.Groups {
		if g.DirectoryID == workostest.GroupsDirectory {
			groups++
			if g.OrganizationID != "" && g.OrganizationID != workostest.GroupsOrganization {
				t.Errorf("group %s organization %q, want its directory's", g.ID, g.OrganizationID)
			}
		}
	}
	if groups != 10 {
		t.Errorf("%d groups of %s, want 10", groups, workostest.GroupsDirectory)
	}
}

func TestReconcileRetryAfterParsing(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"": 0, "1": time.Second, "0.5": 500 * time.Millisecond, "-3": 0, "soon": 0,
		now.Add(2 * time.Second).Format(http.TimeFormat): 2 * time.Second,
	} {
		if got := retryAfter(v, now); got != want {
			t.Errorf("Retry-After %q: %s, want %s", v, got, want)
		}
	}
}

// TestReconcileDryRunPlansWhatTheBreakerLets: with the mass-deprovisioning
// breaker allowing one user, three users gone remotely pause the
// organisation after the first. The dry run's plan lists the losses the
// real run then makes, and no more.
func TestReconcileDryRunPlansWhatTheBreakerLets(t *testing.T) {
	fake := newFake(t)
	st := openStore(t, "", func(o *storage.Options) {
		o.Safeguards.MaxDeprovisions = storage.Breaker{Count: 1, Window: time.Hour}
	})
	r, _ := newReconciler(t, fake, st, 100)
	if _, err := r.Reconcile(testCtx(t), Scope{Directory: workostest.UsersDirectory}, false); err != nil {
		t.Fatal(err)
	}
	gone := []string{henry, bob, workosU}
	for _, id := range gone {
		fake.RemoveUser(workostest.UsersDirectory, id)
	}
	dry, err := r.Reconcile(testCtx(t), Scope{Directory: workostest.UsersDirectory}, true)
	if err != nil {
		t.Fatal(err)
	}
	var planned []string
	for _, o := range dry.Plan.Organizations {
		for _, us := range o.Losses {
			planned = append(planned, us...)
		}
	}
	slices.Sort(planned)
	planned = slices.Compact(planned)
	if _, err := r.Reconcile(testCtx(t), Scope{Directory: workostest.UsersDirectory}, false); err != nil {
		t.Fatal(err)
	}
	var lost []string
	for _, id := range gone {
		if len(badgesOf(t, st, id)) == 0 {
			lost = append(lost, id)
		}
	}
	slices.Sort(lost)
	if len(lost) == 0 || len(lost) == len(gone) {
		t.Fatalf("the real run removed the badges of %v: want the breaker to stop it after the first", lost)
	}
	if !slices.Equal(planned, lost) {
		t.Errorf("the dry run planned losses for %v; the real run removed the badges of %v", planned, lost)
	}
	if dry.Plan.Applied.WouldPause != 1 || dry.Plan.Applied.Deferred == 0 {
		t.Errorf("dry-run counts %v: want one would_pause and the later events deferred", dry.Plan.Applied)
	}
}
