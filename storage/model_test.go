package storage_test

// A deliberately naive reference model of the apply rules of issue 2
// (points 4 and 5): sort every distinct event by (created_at, id) and fold
// them in that order into plain maps; compute badges from the final state.
// It shares no code with the store beyond the export's JSON shape: it
// parses the envelopes itself, with its own time layouts and fallbacks.
// The store, fed the same events in any order and with duplicates, must
// export exactly what the model computes, and `replay` counts must follow
// the model's rule for stale events.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/storage"
)

// ---- the model ----

type mEnv struct {
	ID        string          `json:"id"`
	Event     string          `json:"event"`
	CreatedAt string          `json:"created_at"`
	Data      json.RawMessage `json:"data"`
}

type mEmail struct {
	Primary bool   `json:"primary"`
	Value   string `json:"value"`
}

type mUserW struct {
	ID               string                  `json:"id"`
	DirectoryID      string                  `json:"directory_id"`
	OrganizationID   *string                 `json:"organization_id"`
	IdpID            string                  `json:"idp_id"`
	Email            *string                 `json:"email"`
	Emails           []mEmail                `json:"emails"`
	FirstName        *string                 `json:"first_name"`
	LastName         *string                 `json:"last_name"`
	State            string                  `json:"state"`
	Role             *struct{ Slug string }  `json:"role"`
	Roles            []struct{ Slug string } `json:"roles"`
	CustomAttributes struct {
		Emails []mEmail `json:"emails"`
	} `json:"custom_attributes"`
}

type mGroupW struct {
	ID             string  `json:"id"`
	DirectoryID    string  `json:"directory_id"`
	OrganizationID *string `json:"organization_id"`
	IdpID          string  `json:"idp_id"`
	Name           *string `json:"name"`
}

type mDirW struct {
	ID             string  `json:"id"`
	OrganizationID *string `json:"organization_id"`
	Name           *string `json:"name"`
}

type mUser struct {
	id, dir, org, idp, email, first, last, state string
	roles                                        []string
	rolesSent                                    bool // the payload had "role" or "roles", not null
	deleted                                      bool
}

type mGroup struct {
	id, dir, org, idp, name string
	deleted                 bool
}

type mDir struct {
	org, name string
	deleted   bool
}

type mEvent struct {
	raw  []byte
	id   string
	typ  string
	at   time.Time
	dir  *mDirW
	user *mUserW
	grp  *mGroupW
}

func (e *mEvent) before(o *mEvent) bool {
	if !e.at.Equal(o.at) {
		return e.at.Before(o.at)
	}
	return e.id < o.id
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func mParseTime(s string) time.Time {
	for _, l := range []string{"2006-01-02T15:04:05.000Z", "2006-01-02 15:04:05.000", "2006-01-02T15:04:05-0700", "2006-01-02T15:04:05Z"} {
		if t, err := time.Parse(l, s); err == nil {
			return t
		}
	}
	panic("model: layout of " + s)
}

func mParse(raw []byte) *mEvent {
	var env mEnv
	if err := json.Unmarshal(raw, &env); err != nil {
		panic(err)
	}
	e := &mEvent{raw: raw, id: env.ID, typ: env.Event, at: mParseTime(env.CreatedAt)}
	switch {
	case env.Event == "dsync.activated" || env.Event == "dsync.deleted":
		e.dir = &mDirW{}
		must(json.Unmarshal(env.Data, e.dir))
	case strings.HasPrefix(env.Event, "dsync.user."):
		e.user = &mUserW{}
		must(json.Unmarshal(env.Data, e.user))
	case env.Event == "dsync.group.user_added" || env.Event == "dsync.group.user_removed":
		var m struct {
			User  *mUserW  `json:"user"`
			Group *mGroupW `json:"group"`
		}
		must(json.Unmarshal(env.Data, &m))
		e.user, e.grp = m.User, m.Group
	case strings.HasPrefix(env.Event, "dsync.group."):
		e.grp = &mGroupW{}
		must(json.Unmarshal(env.Data, e.grp))
	}
	return e
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func mPrimary(l []mEmail) string {
	for _, e := range l {
		if e.Primary {
			return e.Value
		}
	}
	return ""
}

func (w *mUserW) model() mUser {
	u := mUser{id: w.ID, dir: w.DirectoryID, org: str(w.OrganizationID), idp: w.IdpID, email: str(w.Email),
		first: str(w.FirstName), last: str(w.LastName), state: w.State}
	if u.email == "" {
		u.email = mPrimary(w.Emails)
	}
	if u.email == "" {
		u.email = mPrimary(w.CustomAttributes.Emails)
	}
	u.rolesSent = w.Role != nil || w.Roles != nil
	if w.Role != nil && w.Role.Slug != "" {
		u.roles = append(u.roles, w.Role.Slug)
	}
	for _, r := range w.Roles {
		u.roles = append(u.roles, r.Slug)
	}
	return u
}

func (w *mGroupW) model() mGroup {
	return mGroup{id: w.ID, dir: w.DirectoryID, org: str(w.OrganizationID), idp: w.IdpID, name: str(w.Name)}
}

type model struct {
	deprovision bool
	cfg         mapping.Config
	dirs        map[string]*mDir
	users       map[string]*mUser
	groups      map[string]*mGroup
	member      map[[2]string]bool // (group, user)
}

// modelExport folds the distinct events, sorted by (created_at, id), and
// renders the export the rules of issue 2 call for.
func modelExport(bodies [][]byte, cfg mapping.Config, deprovision bool) []byte {
	m := &model{deprovision: deprovision, cfg: cfg, dirs: map[string]*mDir{}, users: map[string]*mUser{},
		groups: map[string]*mGroup{}, member: map[[2]string]bool{}}
	seen := map[string]bool{}
	var evs []*mEvent
	for _, b := range bodies {
		e := mParse(b)
		if seen[e.id] || modelFuture(e) {
			continue
		}
		seen[e.id] = true
		evs = append(evs, e)
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].before(evs[j]) })
	for _, e := range evs {
		m.fold(e)
	}
	return m.export()
}

func (m *model) fold(e *mEvent) {
	switch e.typ {
	case "dsync.activated", "dsync.deleted":
		d := m.dirs[e.dir.ID]
		if d == nil {
			d = &mDir{}
			m.dirs[e.dir.ID] = d
		}
		d.org, d.name, d.deleted = str(e.dir.OrganizationID), str(e.dir.Name), e.typ == "dsync.deleted"
		if d.deleted && m.deprovision {
			for _, u := range m.users {
				if u.dir == e.dir.ID {
					u.deleted, u.roles = true, nil // roles older than the deprovisioning are forgotten
					m.endMemberships("", u.id)
				}
			}
			for _, g := range m.groups {
				if g.dir == e.dir.ID {
					g.deleted = true
					m.endMemberships(g.id, "")
				}
			}
		}
	case "dsync.user.created", "dsync.user.updated":
		u := m.keepRoles(e.user.model())
		m.users[u.id] = &u
	case "dsync.user.deleted":
		u := m.keepRoles(e.user.model())
		u.deleted = true
		m.users[u.id] = &u
		m.endMemberships("", u.id)
	case "dsync.group.created", "dsync.group.updated":
		g := e.grp.model()
		m.groups[g.id] = &g
	case "dsync.group.deleted":
		g := e.grp.model()
		g.deleted = true
		m.groups[g.id] = &g
		m.endMemberships(g.id, "")
	case "dsync.group.user_added", "dsync.group.user_removed":
		u, g := m.keepRoles(e.user.model()), e.grp.model()
		m.users[u.id], m.groups[g.id] = &u, &g
		m.member[[2]string{g.id, u.id}] = e.typ == "dsync.group.user_added"
	}
}

// keepRoles gives u, from a payload without the role attribute, the roles
// the user had: absent is not empty.
func (m *model) keepRoles(u mUser) mUser {
	if prev := m.users[u.id]; prev != nil && !u.rolesSent {
		u.roles = prev.roles
	}
	return u
}

func (m *model) endMemberships(gid, uid string) {
	for k := range m.member {
		if (gid != "" && k[0] == gid) || (uid != "" && k[1] == uid) {
			m.member[k] = false
		}
	}
}

func (m *model) groupOrg(g *mGroup) string {
	if g.org != "" {
		return g.org
	}
	if d := m.dirs[g.dir]; d != nil {
		return d.org
	}
	return ""
}

func (m *model) badges(u *mUser, groups []*mGroup) []mapping.Badge {
	if s := strings.ToLower(u.state); s == "inactive" || s == "suspended" {
		return []mapping.Badge{}
	}
	set := map[mapping.Badge]bool{}
	for _, b := range m.cfg.DefaultBadges {
		set[b] = true
	}
	for _, r := range m.cfg.Groups {
		for _, g := range groups {
			if r.Organization != "" && r.Organization != m.groupOrg(g) {
				continue
			}
			if (r.ID != "" && r.ID == g.id) || (r.IdpID != "" && r.IdpID == g.idp) || (r.Name != "" && strings.EqualFold(r.Name, g.name)) {
				for _, b := range r.Badges {
					set[b] = true
				}
			}
		}
	}
	for _, r := range m.cfg.Roles {
		if slices.Contains(u.roles, r.Slug) {
			for _, b := range r.Badges {
				set[b] = true
			}
		}
	}
	out := []mapping.Badge{}
	for b := range set {
		out = append(out, b)
	}
	slices.Sort(out)
	return out
}

func (m *model) export() []byte {
	snap := &storage.Snapshot{Directories: []storage.ExportDirectory{}, Users: []storage.ExportUser{}, Groups: []storage.ExportGroup{}, Holds: []storage.ExportHold{}}
	for id, d := range m.dirs {
		state := "active"
		if d.deleted {
			state = "deleted"
		}
		snap.Directories = append(snap.Directories, storage.ExportDirectory{ID: id, OrganizationID: d.org, Name: d.name, State: state})
	}
	members := map[string][]string{}
	for _, u := range m.users {
		if u.deleted {
			continue
		}
		var gs []*mGroup
		ids := []string{}
		for k, present := range m.member {
			if g := m.groups[k[0]]; present && k[1] == u.id && g != nil && !g.deleted {
				gs = append(gs, g)
				ids = append(ids, g.id)
				members[g.id] = append(members[g.id], u.id)
			}
		}
		slices.Sort(ids)
		snap.Users = append(snap.Users, storage.ExportUser{ID: u.id, DirectoryID: u.dir, OrganizationID: u.org, IdpID: u.idp,
			Email: u.email, FirstName: u.first, LastName: u.last, State: u.state, Groups: ids, Badges: m.badges(u, gs)})
	}
	for _, g := range m.groups {
		if g.deleted {
			continue
		}
		ms := members[g.id]
		if ms == nil {
			ms = []string{}
		}
		slices.Sort(ms)
		snap.Groups = append(snap.Groups, storage.ExportGroup{ID: g.id, DirectoryID: g.dir, OrganizationID: g.org, IdpID: g.idp, Name: g.name, Members: ms})
	}
	slices.SortFunc(snap.Directories, func(a, b storage.ExportDirectory) int { return strings.Compare(a.ID, b.ID) })
	slices.SortFunc(snap.Users, func(a, b storage.ExportUser) int { return strings.Compare(a.ID, b.ID) })
	slices.SortFunc(snap.Groups, func(a, b storage.ExportGroup) int { return strings.Compare(a.ID, b.ID) })
	b, err := storage.MarshalSnapshot(snap)
	must(err)
	return b
}

// modelOutcomes says, in delivery order, what each event does under the
// rule "an event is stale when every entity it touches holds a newer
// event": entities are the directory, the user, the group and the
// membership (group, user), a membership being touched also by its user's
// and its group's deletes and, with deprovision, by its directory's
// deletion (which touches every entity of the directory).
func modelOutcomes(bodies [][]byte, deprovision bool) []storage.Outcome {
	type k = struct {
		at time.Time
		id string
	}
	newer := func(a, b k) bool { return a.at.After(b.at) || (a.at.Equal(b.at) && a.id > b.id) }
	maxk := func(ks ...k) k {
		var m k
		for _, x := range ks {
			if newer(x, m) {
				m = x
			}
		}
		return m
	}
	dirKey, dirDel := map[string]k{}, map[string]k{}
	userKey, userDel, groupKey, groupDel := map[string]k{}, map[string]k{}, map[string]k{}, map[string]k{}
	memKey := map[[2]string]k{}
	floor := func(dir string) k {
		if deprovision {
			return dirDel[dir]
		}
		return k{}
	}
	rolesKey := map[string]k{} // the newest event that carried a user's roles
	roles := func(w *mUserW, ek k) bool {
		if (w.Role == nil && w.Roles == nil) || !newer(ek, maxk(rolesKey[w.ID], floor(w.DirectoryID))) {
			return false
		}
		rolesKey[w.ID] = ek
		return true
	}
	eff := func(g, u, dir string) k { return maxk(memKey[[2]string{g, u}], userDel[u], groupDel[g], floor(dir)) }
	seen := map[string]bool{}
	var out []storage.Outcome
	for _, b := range bodies {
		e := mParse(b)
		if !strings.HasPrefix(e.typ, "dsync.") || e.typ == "dsync.token.created" {
			out = append(out, storage.Ignored)
			continue
		}
		if modelFuture(e) {
			out = append(out, storage.Future)
			continue
		}
		if seen[e.id] {
			out = append(out, storage.Duplicate)
			continue
		}
		seen[e.id] = true
		ek := k{e.at, e.id}
		applied := false
		switch e.typ {
		case "dsync.activated", "dsync.deleted":
			d := e.dir.ID
			if newer(ek, dirKey[d]) {
				dirKey[d], applied = ek, true
			}
			if e.typ == "dsync.deleted" && newer(ek, dirDel[d]) {
				dirDel[d] = ek
				applied = applied || deprovision
			}
		case "dsync.user.created", "dsync.user.updated", "dsync.user.deleted":
			u, fl := e.user.ID, floor(e.user.DirectoryID)
			if newer(ek, maxk(userKey[u], fl)) {
				userKey[u], applied = ek, true
			}
			applied = roles(e.user, ek) || applied
			if e.typ == "dsync.user.deleted" && newer(ek, fl) {
				for mk := range memKey {
					if mk[1] == u && newer(ek, eff(mk[0], u, e.user.DirectoryID)) {
						applied = true
					}
				}
				userDel[u] = maxk(userDel[u], ek)
			}
		case "dsync.group.created", "dsync.group.updated", "dsync.group.deleted":
			g, fl := e.grp.ID, floor(e.grp.DirectoryID)
			if newer(ek, maxk(groupKey[g], fl)) {
				groupKey[g], applied = ek, true
			}
			if e.typ == "dsync.group.deleted" && newer(ek, fl) {
				for mk := range memKey {
					if mk[0] == g && newer(ek, eff(g, mk[1], e.grp.DirectoryID)) {
						applied = true
					}
				}
				groupDel[g] = maxk(groupDel[g], ek)
			}
		default:
			g, u := e.grp.ID, e.user.ID
			if fl := floor(e.grp.DirectoryID); newer(ek, maxk(groupKey[g], fl)) {
				groupKey[g], applied = ek, true
			}
			if fl := floor(e.user.DirectoryID); newer(ek, maxk(userKey[u], fl)) {
				userKey[u], applied = ek, true
			}
			applied = roles(e.user, ek) || applied
			if newer(ek, eff(g, u, e.user.DirectoryID)) {
				applied = true
			}
			// A membership event below its directory's deprovisioning
			// leaves no trace (the store records none either).
			if newer(ek, memKey[[2]string{g, u}]) && newer(ek, floor(e.user.DirectoryID)) {
				memKey[[2]string{g, u}] = ek
			}
		}
		if applied {
			out = append(out, storage.Applied)
		} else {
			out = append(out, storage.Stale)
		}
	}
	return out
}

// modelMaxFuture is how far past the clock an event may be dated and still
// be applied (webhook.tolerance's default).
const modelMaxFuture = 3 * time.Minute

// modelFuture reports whether e is dated later than the clock plus
// modelMaxFuture: it is not applied, whatever else it is.
func modelFuture(e *mEvent) bool { return e.at.After(time.Now().Add(modelMaxFuture)) }

// ---- the generator ----

var modelMapping = mapping.Config{
	AdminBadge:    "admin", // no rule grants it: the last-admin safeguard stays out of the way
	DefaultBadges: []mapping.Badge{"member"},
	Groups: []mapping.GroupRule{
		{Name: "staff", Badges: []mapping.Badge{"staff"}},
		{ID: "g2", Badges: []mapping.Badge{"eng"}},
		{IdpID: "idp_g3", Organization: "org_1", Badges: []mapping.Badge{"support"}},
		{Name: "Ops Team", Organization: "org_2", Badges: []mapping.Badge{"ops"}},
	},
	Roles: []mapping.RoleRule{{Slug: "billing", Badges: []mapping.Badge{"billing"}}, {Slug: "auditor", Badges: []mapping.Badge{"audit", "staff"}}},
}

type gen struct {
	r    *rand.Rand
	n    int
	base time.Time
}

var modelLayouts = []string{"2006-01-02T15:04:05.000Z", "2006-01-02 15:04:05.000", "2006-01-02T15:04:05-0700"}

func (g *gen) at() string {
	// Few distinct instants, so that ties (broken by id) and equal instants
	// in different layouts are frequent; whole seconds so that every layout
	// can express every instant.
	t := g.base.Add(time.Duration(g.r.IntN(40)) * time.Second)
	if g.r.IntN(30) == 0 {
		t = t.AddDate(75, 0, 0) // dated in the future: never applied
	}
	l := modelLayouts[g.r.IntN(len(modelLayouts))]
	if l == "2006-01-02T15:04:05-0700" && g.r.IntN(2) == 0 {
		return t.In(time.FixedZone("", 2*3600)).Format(l)
	}
	return t.Format(l)
}

func (g *gen) env(typ string, data any) []byte {
	g.n++
	// Ids are not in creation order: ties on created_at are broken by id.
	id := fmt.Sprintf("event_%02d_%04d", g.r.IntN(100), g.n)
	b, err := json.Marshal(map[string]any{"id": id, "event": typ, "created_at": g.at(), "data": data})
	must(err)
	return b
}

func pick[T any](r *rand.Rand, xs ...T) T { return xs[r.IntN(len(xs))] }

var modelUserDirs = map[string]string{"u1": "d1", "u2": "d1", "u3": "d1", "u4": "d1", "u5": "d2", "u6": "d2"}
var modelGroupDirs = map[string]string{"g1": "d1", "g2": "d1", "g3": "d1", "g4": "d2", "g5": "d2"}
var modelDirOrgs = map[string]string{"d1": "org_1", "d2": "org_2"}

func (g *gen) user(id string) map[string]any {
	dir := modelUserDirs[id]
	u := map[string]any{"id": id, "directory_id": dir, "idp_id": "idp_" + id, "object": "directory_user",
		"first_name": pick(g.r, "Ann", "Bob", "Cy"), "last_name": pick(g.r, "X", "Y"),
		"state": pick(g.r, "active", "active", "active", "inactive", "suspended"), "unknown_field": 1}
	switch g.r.IntN(4) {
	case 0:
		u["organization_id"] = nil // the directory's organisation applies to rules
	case 1:
		// missing
	default:
		u["organization_id"] = modelDirOrgs[dir]
	}
	email := pick(g.r, id+"@a.example", id+"@b.example")
	switch g.r.IntN(4) {
	case 0:
		u["email"] = nil
		u["emails"] = []map[string]any{{"primary": false, "value": "other@x.example"}, {"primary": true, "value": email}}
	case 1:
		u["custom_attributes"] = map[string]any{"emails": []map[string]any{{"primary": true, "value": email, "type": "work"}}}
	default:
		u["email"] = email
		u["emails"] = nil
	}
	switch g.r.IntN(5) {
	case 0:
		u["role"] = map[string]any{"slug": pick(g.r, "billing", "member", "auditor")}
	case 1:
		u["roles"] = []map[string]any{{"slug": pick(g.r, "billing", "member")}, {"slug": pick(g.r, "auditor", "member")}}
	case 2:
		u["roles"] = []any{}
	}
	return u
}

func (g *gen) group(id string) map[string]any {
	dir := modelGroupDirs[id]
	gr := map[string]any{"id": id, "directory_id": dir, "idp_id": "idp_" + id, "object": "directory_group",
		"name": pick(g.r, "Staff", "STAFF", "Engineering", "Ops Team", "ops team", "Sales")}
	if g.r.IntN(4) == 0 {
		gr["organization_id"] = nil
	} else {
		gr["organization_id"] = modelDirOrgs[dir]
	}
	return gr
}

func (g *gen) dir(id string) map[string]any {
	return map[string]any{"id": id, "organization_id": modelDirOrgs[id], "name": pick(g.r, "Corp "+id, "Renamed "+id),
		"object": "directory", "type": "okta scim v2.0", "state": "active"}
}

func (g *gen) event() []byte {
	users := []string{"u1", "u2", "u3", "u4", "u5", "u6"}
	switch g.r.IntN(20) {
	case 0:
		return g.env("dsync.activated", g.dir(pick(g.r, "d1", "d2")))
	case 1:
		return g.env("dsync.deleted", g.dir(pick(g.r, "d1", "d2")))
	case 2:
		return g.env(pick(g.r, "dsync.token.created", "connection.activated"), map[string]any{"id": "x"})
	case 3, 4:
		return g.env("dsync.user.created", g.user(pick(g.r, users...)))
	case 5, 6:
		return g.env("dsync.user.updated", g.user(pick(g.r, users...)))
	case 7:
		return g.env("dsync.user.deleted", g.user(pick(g.r, users...)))
	case 8:
		return g.env(pick(g.r, "dsync.group.created", "dsync.group.updated"), g.group(pick(g.r, "g1", "g2", "g3", "g4", "g5")))
	case 9:
		return g.env("dsync.group.deleted", g.group(pick(g.r, "g1", "g2", "g3", "g4", "g5")))
	}
	u := pick(g.r, users...)
	var grp string
	if modelUserDirs[u] == "d1" {
		grp = pick(g.r, "g1", "g2", "g3")
	} else {
		grp = pick(g.r, "g4", "g5")
	}
	typ := pick(g.r, "dsync.group.user_added", "dsync.group.user_added", "dsync.group.user_removed")
	return g.env(typ, map[string]any{"directory_id": modelUserDirs[u], "user": g.user(u), "group": g.group(grp)})
}

// ---- the comparison ----

func storeRun(t *testing.T, bodies [][]byte, deprovision bool, r *rand.Rand) ([]byte, []storage.Outcome) {
	t.Helper()
	policy := storage.OnDirectoryDeletedKeep
	if deprovision {
		policy = storage.OnDirectoryDeletedDeprovision
	}
	st := MustOpen(t, storage.Options{Mapping: modelMapping, NoSync: true, MaxFuture: modelMaxFuture, Safeguards: storage.Safeguards{OnDirectoryDeleted: policy}})
	var counts []storage.Outcome
	for i := 0; i < len(bodies); {
		n := 1 + r.IntN(8)
		counts = append(counts, mustApply(t, st, bodies[i:min(i+n, len(bodies))]...)...)
		i += n
	}
	return mustExport(t, st), counts
}

func deliver(r *rand.Rand, bodies [][]byte) [][]byte {
	out := slices.Clone(bodies)
	for _, b := range bodies {
		if r.IntN(100) < 20 {
			out = append(out, b)
		}
	}
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func checkAgainstModel(t *testing.T, name string, stream [][]byte, deprovision bool, r *rand.Rand) {
	t.Helper()
	want := modelExport(stream, modelMapping, deprovision)
	got, counts := storeRun(t, stream, deprovision, r)
	if !bytes.Equal(got, want) {
		t.Fatalf("%s (deprovision=%v): store export differs from the model at %s\nstore:\n%s\nmodel:\n%s\nstream:\n%s",
			name, deprovision, firstDiff(got, want), got, want, bytes.Join(stream, []byte("\n")))
	}
	wantOut := modelOutcomes(stream, deprovision)
	for i := range wantOut {
		if counts[i] != wantOut[i] {
			t.Fatalf("%s (deprovision=%v): event %d is %s, the model says %s: %s\nstream before it:\n%s",
				name, deprovision, i, counts[i], wantOut[i], stream[i], bytes.Join(stream[:i], []byte("\n")))
		}
	}
}

func TestModelRandomStreamsExportWhatTheNaiveFoldComputes(t *testing.T) {
	seeds := 300
	if testing.Short() {
		seeds = 60
	}
	if n, err := strconv.Atoi(os.Getenv("DSYNCD_MODEL_SEEDS")); err == nil {
		seeds = n
	}
	for seed := uint64(1); seed <= uint64(seeds); seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		g := &gen{r: r, base: time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC)}
		n := 10 + r.IntN(50)
		var stream [][]byte
		for range n {
			stream = append(stream, g.event())
		}
		deprovision := seed%2 == 0
		checkAgainstModel(t, fmt.Sprintf("seed %d in order of generation", seed), stream, deprovision, r)
		checkAgainstModel(t, fmt.Sprintf("seed %d shuffled with duplicates", seed), deliver(r, stream), deprovision, r)
		if t.Failed() {
			return
		}
	}
}
