package mapping_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dsyncd/dsyncd/mapping"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/mapping")

const dir = "../testdata/mapping"

func readJSON[T any](t *testing.T, name string) T {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	var v T
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}

// TestGrantsGolden computes the grants of every subject of
// testdata/mapping/subjects.json under config.json and compares them with
// grants.golden.json (go test ./mapping -update rewrites it).
func TestGrantsGolden(t *testing.T) {
	cfg := readJSON[mapping.Config](t, "config.json")
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatalf("config.json: %v", errs)
	}
	cases := readJSON[[]struct {
		Name    string          `json:"name"`
		Subject mapping.Subject `json:"subject"`
	}](t, "subjects.json")
	type result struct {
		Name   string          `json:"name"`
		Badges []mapping.Badge `json:"badges"`
		Grants []mapping.Grant `json:"grants"`
	}
	got := make([]result, 0, len(cases))
	for _, c := range cases {
		g := cfg.Grants(c.Subject)
		got = append(got, result{Name: c.Name, Badges: mapping.Badges(g), Grants: g})
	}
	b, err := json.MarshalIndent(got, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, '\n')
	golden := filepath.Join(dir, "grants.golden.json")
	if *update {
		if err := os.WriteFile(golden, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./mapping -update)", err)
	}
	if !bytes.Equal(b, want) {
		t.Errorf("grants differ from %s (go test ./mapping -update rewrites it after review):\n%s", golden, b)
	}
}

// TestGrantsAreSortedAndUnique holds for any subject: the store compares
// grant lists to decide whether a user changed.
func TestGrantsAreSortedAndUnique(t *testing.T) {
	cfg := readJSON[mapping.Config](t, "config.json")
	s := mapping.Subject{Active: true, Roles: []string{"owner", "owner", "billing-admin"},
		Groups: []mapping.Group{{ID: "g1", Name: "App Admins"}, {ID: "g1", Name: "App Admins"}, {ID: "directory_group_eng"}}}
	g := cfg.Grants(s)
	for i := 1; i < len(g); i++ {
		a, b := g[i-1], g[i]
		if a == b {
			t.Errorf("grant %+v listed twice", a)
		}
		if a.Badge > b.Badge || (a.Badge == b.Badge && a.Rule > b.Rule) {
			t.Errorf("grants out of order: %+v before %+v", a, b)
		}
	}
}

func TestGrantsAdmin(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  mapping.Config
		want bool
	}{
		{"a group rule grants it", mapping.Config{AdminBadge: "admin", Groups: []mapping.GroupRule{{Name: "A", Badges: []mapping.Badge{"admin"}}}}, true},
		{"a role rule grants it", mapping.Config{AdminBadge: "admin", Roles: []mapping.RoleRule{{Slug: "owner", Badges: []mapping.Badge{"admin"}}}}, true},
		{"default badges do not count", mapping.Config{AdminBadge: "admin", DefaultBadges: []mapping.Badge{"admin"}}, false},
		{"no rule grants it", mapping.Config{AdminBadge: "admin", Groups: []mapping.GroupRule{{Name: "A", Badges: []mapping.Badge{"member"}}}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.cfg.GrantsAdmin(); got != tc.want {
				t.Errorf("GrantsAdmin = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRuleNames(t *testing.T) {
	for _, tc := range []struct {
		rule fmtString
		want string
	}{
		{mapping.GroupRule{Name: "App Admins"}, "group:name=App Admins"},
		{mapping.GroupRule{ID: "g1", IdpID: "00g", Organization: "org_1"}, "group:id=g1,idp_id=00g@org_1"},
		{mapping.RoleRule{Slug: "owner"}, "role:owner"},
	} {
		if got := tc.rule.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}

type fmtString interface{ String() string }

// TestValidateNamesEveryBadField: one error per problem, each naming its key.
func TestValidateNamesEveryBadField(t *testing.T) {
	cfg := mapping.Config{
		AdminBadge:    " ",
		DefaultBadges: []mapping.Badge{"member", ""},
		Groups: []mapping.GroupRule{
			{Badges: []mapping.Badge{"x"}},
			{Name: "A", OnUnmap: "forget"},
			{Name: "B", Badges: []mapping.Badge{" "}},
		},
		Roles: []mapping.RoleRule{{Badges: []mapping.Badge{"y"}}, {Slug: "owner"}},
	}
	var got []string
	for _, err := range cfg.Validate() {
		got = append(got, strings.SplitN(err.Error(), ":", 2)[0])
	}
	want := []string{
		"mapping.admin_badge",
		"mapping.default_badges[1]",
		"mapping.groups[0]",
		"mapping.groups[1].badges",
		"mapping.groups[1].on_unmap",
		"mapping.groups[2].badges[0]",
		"mapping.roles[0].slug",
		"mapping.roles[1].badges",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Validate named %q,\nwant %q", got, want)
	}
	valid := readJSON[mapping.Config](t, "config.json")
	if errs := valid.Validate(); len(errs) != 0 {
		t.Errorf("a valid mapping: %v", errs)
	}
}
