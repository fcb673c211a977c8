package storage_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/storage"
)

func viewIDs(vs []storage.UserView) []string {
	ids := []string{}
	for _, v := range vs {
		ids = append(ids, v.ID)
	}
	return ids
}

func TestUsersByEmailIgnoresCaseAndFollowsChanges(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	ann := usr("u1", "Ann", "active")
	ann["email"] = "Ann.Lee@Corp.Example"
	other := usr("u2", "Ann", "active")
	other["email"], other["directory_id"], other["organization_id"] = "ann.lee@corp.example", "dir_2", "org_2"
	mustApply(t, st, ev("e1", "dsync.user.created", 1, ann), ev("e2", "dsync.user.created", 2, other))
	lookup := func(email string) []string {
		t.Helper()
		vs, err := st.UsersByEmail(email)
		if err != nil {
			t.Fatal(err)
		}
		return viewIDs(vs)
	}
	if got := lookup("ANN.LEE@corp.example"); !slices.Equal(got, []string{"u1", "u2"}) {
		t.Fatalf("by email, any case: %v, want both directories' users", got)
	}
	vs, _ := st.UsersByEmail("ann.lee@corp.example")
	if len(vs) != 2 || vs[0].Email != "Ann.Lee@Corp.Example" || !slices.Equal(vs[0].Badges, []mapping.Badge{"member"}) {
		t.Fatalf("view = %+v, want the user as GET /v1/users/{id} shows it", vs[0])
	}
	ann["email"] = "ann@corp.example"
	mustApply(t, st, ev("e3", "dsync.user.updated", 3, ann))
	if got := lookup("ann.lee@corp.example"); !slices.Equal(got, []string{"u2"}) {
		t.Fatalf("old address after a change: %v, want only u2", got)
	}
	if got := lookup("Ann@Corp.Example"); !slices.Equal(got, []string{"u1"}) {
		t.Fatalf("new address: %v, want u1", got)
	}
	mustApply(t, st, ev("e4", "dsync.user.deleted", 4, ann))
	if got := lookup("ann@corp.example"); len(got) != 0 {
		t.Fatalf("deleted user found by email: %v", got)
	}
	if got := lookup("nobody@corp.example"); len(got) != 0 {
		t.Fatalf("unknown address: %v", got)
	}
}

func TestUsersByIdpIDAreUniqueOnlyWithinADirectory(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	a := usr("u1", "A", "active")
	b := usr("u2", "B", "active")
	a["idp_id"], b["idp_id"] = "00u-okta-1", "00u-okta-1"
	b["directory_id"], b["organization_id"] = "dir_2", "org_2"
	mustApply(t, st, ev("e1", "dsync.user.created", 1, a), ev("e2", "dsync.user.created", 2, b))
	for _, c := range []struct {
		dir  string
		want []string
	}{{"", []string{"u1", "u2"}}, {"dir_1", []string{"u1"}}, {"dir_2", []string{"u2"}}, {"dir_3", []string{}}} {
		vs, err := st.UsersByIdpID("00u-okta-1", c.dir)
		if err != nil {
			t.Fatal(err)
		}
		if got := viewIDs(vs); !slices.Equal(got, c.want) {
			t.Errorf("idp id in directory %q: %v, want %v", c.dir, got, c.want)
		}
	}
	if vs, _ := st.UsersByIdpID("00u-okta", ""); len(vs) != 0 {
		t.Fatalf("a prefix of an idp id matched: %v", viewIDs(vs))
	}
}

// pageAll reads every page of org's users matching f.
func pageAll(t *testing.T, st *storage.Store, org string, f storage.UserFilter) (ids []string, pages int) {
	t.Helper()
	for {
		p, err := st.OrganizationUsers(org, f)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		ids = append(ids, viewIDs(p.Users)...)
		if !p.More {
			return ids, pages
		}
		if len(p.Users) > 0 {
			f.After = p.Users[len(p.Users)-1].ID
		} else {
			t.Fatal("a page with More and no user")
		}
	}
}

func TestOrganizationUsersPageByIDWithFilters(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	var bodies [][]byte
	var all, inactive, engineers []string
	for i := range 25 {
		id := fmt.Sprintf("u%02d", i)
		state := "active"
		if i%5 == 0 {
			state = "inactive"
			inactive = append(inactive, id)
		}
		all = append(all, id)
		u := usr(id, "A", state)
		if i%3 == 0 {
			bodies = append(bodies, ev("m"+id, "dsync.group.user_added", i, mem(u, grp("g_eng", "Eng"))))
			if state == "active" {
				engineers = append(engineers, id)
			}
		} else {
			bodies = append(bodies, ev("c"+id, "dsync.user.created", i, u))
		}
	}
	other := usr("o1", "O", "active")
	other["organization_id"], other["directory_id"] = "org_2", "dir_2"
	bodies = append(bodies, ev("co1", "dsync.user.created", 30, other))
	mustApply(t, st, bodies...)

	ids, pages := pageAll(t, st, "org_1", storage.UserFilter{Limit: 10})
	if !slices.Equal(ids, all) || pages != 3 {
		t.Fatalf("pages of 10: %d pages, %v; want 3 pages of %v", pages, ids, all)
	}
	if ids, _ := pageAll(t, st, "org_1", storage.UserFilter{State: "INACTIVE", Limit: 2}); !slices.Equal(ids, inactive) {
		t.Fatalf("state inactive: %v, want %v", ids, inactive)
	}
	if ids, _ := pageAll(t, st, "org_1", storage.UserFilter{Badge: "engineer"}); !slices.Equal(ids, engineers) {
		t.Fatalf("badge engineer: %v, want %v", ids, engineers)
	}
	if ids, _ := pageAll(t, st, "org_2", storage.UserFilter{}); !slices.Equal(ids, []string{"o1"}) {
		t.Fatalf("org_2: %v", ids)
	}
	if _, err := st.OrganizationUsers("org_nope", storage.UserFilter{}); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("unknown organisation: %v, want ErrNotFound", err)
	}
	if _, err := st.Organization("org_nope"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("unknown organisation: %v, want ErrNotFound", err)
	}
	if _, err := st.UsersWithBadge("dir_nope", ""); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("unknown directory: %v, want ErrNotFound", err)
	}
}

func TestOrganizationUsersFollowTheirDirectorysOrganisation(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	dir := map[string]any{"id": "dir_1", "organization_id": "org_a", "name": "Corp"}
	u := usr("u1", "A", "active")
	delete(u, "organization_id")
	mustApply(t, st, ev("e1", "dsync.activated", 1, dir), ev("e2", "dsync.user.created", 2, u))
	if ids, _ := pageAll(t, st, "org_a", storage.UserFilter{}); !slices.Equal(ids, []string{"u1"}) {
		t.Fatalf("org_a: %v, want the user of its directory", ids)
	}
	dir["organization_id"] = "org_b"
	mustApply(t, st, ev("e3", "dsync.activated", 3, dir))
	if ids, _ := pageAll(t, st, "org_b", storage.UserFilter{}); !slices.Equal(ids, []string{"u1"}) {
		t.Fatalf("org_b after the directory moved: %v", ids)
	}
	if p, err := st.OrganizationUsers("org_a", storage.UserFilter{}); err == nil && len(p.Users) != 0 {
		t.Fatalf("org_a still lists %v", viewIDs(p.Users))
	}
}

func TestOrganizationShowsHeldAdminsAndHolds(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	admins := grp("g_adm", "App Admins")
	mustApply(t, st,
		ev("e1", "dsync.group.user_added", 1, mem(usr("u1", "A", "active"), admins)),
		ev("e2", "dsync.user.created", 2, usr("u2", "B", "active")),
		ev("e3", "dsync.user.deleted", 3, usr("u1", "A", "active")),
	)
	// u1 was org_1's last admin: its deletion is held, and it stays listed, as an admin.
	o, err := st.Organization("org_1")
	if err != nil {
		t.Fatal(err)
	}
	if o.Admins != 1 || o.HeldAdmins != 1 || o.Users != 2 || o.Paused || len(o.OpenHolds) != 1 || o.OpenHolds[0].Kind != storage.HoldLastAdmin {
		t.Fatalf("organisation = %+v, want 1 admin, held, 2 users, a last_admin hold", o)
	}
	p, err := st.OrganizationUsers("org_1", storage.UserFilter{Badge: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Users) != 1 || p.Users[0].ID != "u1" || !p.Users[0].Deleted || p.Users[0].HeldBy != o.OpenHolds[0].ID {
		t.Fatalf("admins listed = %+v, want u1, deleted, held by the hold", p.Users)
	}
	vs, _ := st.UsersByEmail("U1@x.example")
	if len(vs) != 1 || vs[0].HeldBy == 0 {
		t.Fatalf("held admin by email = %+v", vs)
	}
	// Another admin: the hold releases, u1 goes.
	mustApply(t, st, ev("e4", "dsync.group.user_added", 4, mem(usr("u2", "B", "active"), admins)))
	if ids, _ := pageAll(t, st, "org_1", storage.UserFilter{}); !slices.Equal(ids, []string{"u2"}) {
		t.Fatalf("after the release: %v, want u2 only", ids)
	}
	if o, _ := st.Organization("org_1"); o.Admins != 1 || o.HeldAdmins != 0 || len(o.OpenHolds) != 0 || o.Users != 1 {
		t.Fatalf("organisation after the release = %+v", o)
	}
}

func TestOrganizationSaysWhenPaused(t *testing.T) {
	st := breakerStore(t, 4, storage.Breaker{Count: 2, Window: 10 * time.Minute})
	var bodies [][]byte
	for i := range 4 {
		bodies = append(bodies, ev(fmt.Sprintf("d%02d", i), "dsync.user.updated", 10+i, usr(fmt.Sprintf("u%02d", i), "A", "inactive")))
	}
	mustApply(t, st, bodies...)
	o, err := st.Organization("org_1")
	if err != nil {
		t.Fatal(err)
	}
	if !o.Paused || o.PausedBy == 0 || len(o.OpenHolds) != 1 || o.OpenHolds[0].ID != o.PausedBy {
		t.Fatalf("organisation = %+v, want paused by its mass_deprovision hold", o)
	}
}

func TestStoreWrittenBeforeUserIndexesGetsThemAtOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	st, err := storage.Open(storage.Options{Path: path, Mapping: testMapping})
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, st,
		ev("e1", "dsync.user.created", 1, usr("u1", "A", "active")),
		ev("e2", "dsync.user.created", 2, usr("u2", "B", "active")),
		ev("e3", "dsync.user.deleted", 3, usr("u2", "B", "active")),
	)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	// An older dsyncd's file: no index buckets, no marker.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range []string{"user_email", "user_idp", "org_members"} {
			if err := tx.DeleteBucket([]byte(b)); err != nil {
				return err
			}
		}
		return tx.Bucket([]byte("meta")).Delete([]byte("user_index"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	st = MustOpen(t, storage.Options{Path: path}) // its cleanup checks the indexes
	if vs, err := st.UsersByEmail("U1@X.EXAMPLE"); err != nil || len(vs) != 1 {
		t.Fatalf("by email after the upgrade: %v, %v", viewIDs(vs), err)
	}
	if vs, err := st.UsersByIdpID("iu1", "dir_1"); err != nil || len(vs) != 1 {
		t.Fatalf("by idp id after the upgrade: %v, %v", viewIDs(vs), err)
	}
	if ids, _ := pageAll(t, st, "org_1", storage.UserFilter{}); !slices.Equal(ids, []string{"u1"}) {
		t.Fatalf("org_1 after the upgrade: %v", ids)
	}
}

func TestCheckFindsAStaleUserIndex(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	st, err := storage.Open(storage.Options{Path: path, Mapping: testMapping})
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, st, ev("e1", "dsync.user.created", 1, usr("u1", "A", "active")))
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("org_members")).Put([]byte("org_9\x00u1"), nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	st, err = storage.Open(storage.Options{Path: path, Mapping: testMapping})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Check(); !errors.Is(err, storage.ErrDamaged) {
		t.Fatalf("Check with a stale index key: %v, want ErrDamaged", err)
	}
}
