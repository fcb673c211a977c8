// Package synth generates synthetic WorkOS Directory Sync event streams:
// random directory lifecycles for property tests, and large initial syncs
// for benchmarks and load generation. Streams are deterministic for a seed and
// come in created_at order (the order WorkOS would have produced them in).
package synth

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"
)

// Options shapes a generated stream.
type Options struct {
	// Seed makes the stream reproducible.
	Seed uint64
	// DirectoryID and OrganizationID name the directory; defaults are derived from Seed.
	DirectoryID    string
	OrganizationID string
	// Users and Groups are how many of each the initial sync creates.
	Users, Groups int
	// MembershipsPerUser is how many groups each user joins in the initial sync.
	MembershipsPerUser int
	// Changes is how many random lifecycle events follow the initial sync.
	Changes int
	// Start is the created_at of the first event. Zero means 2024-01-01.
	Start time.Time
	// AdminGroupName names group 0, so a mapping can grant admin by name.
	AdminGroupName string
}

// Event is one generated event.
type Event struct {
	ID   string
	Type string
	Body []byte // the JSON envelope, as WorkOS would post it
}

type user struct {
	ID, IdpID, Email, First, Last, State string
	Roles                                []string
	deleted                              bool
}

type group struct {
	ID, IdpID, Name string
	deleted         bool
}

type gen struct {
	o      Options
	r      *rand.Rand
	t      time.Time
	n      int
	out    []Event
	users  []*user
	groups []*group
	member map[[2]int]bool
}

// Stream returns the events of an initial sync followed by o.Changes random
// lifecycle events: renames, deactivations, reactivations, membership
// changes, user and group deletes, new users.
func Stream(o Options) []Event {
	if o.DirectoryID == "" {
		o.DirectoryID = fmt.Sprintf("directory_synth%d", o.Seed)
	}
	if o.OrganizationID == "" {
		o.OrganizationID = fmt.Sprintf("org_synth%d", o.Seed)
	}
	if o.Start.IsZero() {
		o.Start = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	if o.AdminGroupName == "" {
		o.AdminGroupName = "App Admins"
	}
	g := &gen{o: o, r: rand.New(rand.NewPCG(o.Seed, o.Seed^0x9e3779b97f4a7c15)), t: o.Start, member: map[[2]int]bool{}}
	g.initial()
	for i := 0; i < o.Changes; i++ {
		g.change()
	}
	return g.out
}

func (g *gen) emit(typ string, data any) {
	// Mostly strictly increasing times; sometimes the same millisecond, so
	// the event id breaks the tie.
	if g.r.IntN(10) != 0 {
		g.t = g.t.Add(time.Duration(1+g.r.IntN(1000)) * time.Millisecond)
	}
	g.n++
	id := fmt.Sprintf("event_%d_%08d", g.o.Seed, g.n)
	env := map[string]any{"id": id, "event": typ, "data": data, "created_at": g.stamp()}
	if g.n%2 == 0 {
		env["object"] = "event"
	}
	body, err := json.Marshal(env)
	if err != nil {
		panic(err) // only maps of strings: cannot fail
	}
	g.out = append(g.out, Event{ID: id, Type: typ, Body: body})
}

// stamp renders g.t in one of the three layouts WorkOS uses.
func (g *gen) stamp() string {
	switch g.n % 3 {
	case 0:
		return g.t.Format("2006-01-02 15:04:05.000")
	case 1:
		return g.t.Format("2006-01-02T15:04:05.000Z07:00")
	}
	if g.t.Nanosecond() == 0 {
		return g.t.Format("2006-01-02T15:04:05-0700")
	}
	return g.t.Format("2006-01-02T15:04:05.000Z07:00")
}

func (g *gen) userData(u *user) map[string]any {
	roles := []map[string]string{}
	for _, r := range u.Roles {
		roles = append(roles, map[string]string{"slug": r})
	}
	d := map[string]any{
		"object": "directory_user", "id": u.ID, "directory_id": g.o.DirectoryID, "organization_id": g.o.OrganizationID,
		"idp_id": u.IdpID, "email": u.Email, "first_name": u.First, "last_name": u.Last, "state": u.State,
		"custom_attributes": map[string]any{"emails": []map[string]any{{"primary": true, "type": "work", "value": u.Email}}},
		"roles":             roles, "created_at": "2024-01-01T00:00:00.000Z", "updated_at": g.t.Format(time.RFC3339Nano),
	}
	if len(u.Roles) > 0 {
		d["role"] = map[string]string{"slug": u.Roles[0]}
	}
	return d
}

func (g *gen) groupData(gr *group) map[string]any {
	return map[string]any{"object": "directory_group", "id": gr.ID, "idp_id": gr.IdpID, "directory_id": g.o.DirectoryID,
		"organization_id": g.o.OrganizationID, "name": gr.Name, "created_at": "2024-01-01T00:00:00.000Z", "updated_at": g.t.Format(time.RFC3339Nano)}
}

func (g *gen) membership(typ string, ui, gi int) {
	g.emit(typ, map[string]any{"directory_id": g.o.DirectoryID, "user": g.userData(g.users[ui]), "group": g.groupData(g.groups[gi])})
}

var roleSlugs = []string{"member", "billing", "viewer"}

func (g *gen) newUser() {
	i := len(g.users)
	u := &user{ID: fmt.Sprintf("directory_user_%d_%06d", g.o.Seed, i), IdpID: fmt.Sprintf("u%06d", i),
		Email: fmt.Sprintf("user%06d@synth.example", i), First: fmt.Sprintf("First%d", i), Last: fmt.Sprintf("Last%d", i),
		State: "active", Roles: []string{roleSlugs[g.r.IntN(len(roleSlugs))]}}
	g.users = append(g.users, u)
	g.emit("dsync.user.created", g.userData(u))
}

func (g *gen) newGroup() {
	i := len(g.groups)
	name := fmt.Sprintf("Group %d", i)
	if i == 0 {
		name = g.o.AdminGroupName
	}
	gr := &group{ID: fmt.Sprintf("directory_group_%d_%05d", g.o.Seed, i), IdpID: fmt.Sprintf("g%05d", i), Name: name}
	g.groups = append(g.groups, gr)
	g.emit("dsync.group.created", g.groupData(gr))
}

func (g *gen) initial() {
	g.emit("dsync.activated", map[string]any{"object": "directory", "id": g.o.DirectoryID, "organization_id": g.o.OrganizationID,
		"name": "Synthetic " + g.o.DirectoryID, "type": "okta scim v2.0", "state": "active", "domains": []any{},
		"created_at": "2024-01-01T00:00:00.000Z", "updated_at": "2024-01-01T00:00:00.000Z"})
	for i := 0; i < g.o.Users; i++ {
		g.newUser()
	}
	for i := 0; i < g.o.Groups; i++ {
		g.newGroup()
	}
	if g.o.Groups == 0 {
		return
	}
	for ui := range g.users {
		for k := 0; k < g.o.MembershipsPerUser; k++ {
			gi := g.r.IntN(len(g.groups))
			if !g.member[[2]int{ui, gi}] {
				g.member[[2]int{ui, gi}] = true
				g.membership("dsync.group.user_added", ui, gi)
			}
		}
	}
}

func (g *gen) liveUser() int {
	for range 20 {
		i := g.r.IntN(len(g.users))
		if !g.users[i].deleted {
			return i
		}
	}
	return -1
}

func (g *gen) liveGroup() int {
	for range 20 {
		i := g.r.IntN(len(g.groups))
		if !g.groups[i].deleted {
			return i
		}
	}
	return -1
}

func (g *gen) change() {
	if len(g.users) == 0 || len(g.groups) == 0 {
		g.newUser()
		return
	}
	ui, gi := g.liveUser(), g.liveGroup()
	if ui < 0 || gi < 0 {
		g.newUser()
		return
	}
	u, gr := g.users[ui], g.groups[gi]
	switch p := g.r.IntN(100); {
	case p < 30:
		if g.member[[2]int{ui, gi}] {
			g.member[[2]int{ui, gi}] = false
			g.membership("dsync.group.user_removed", ui, gi)
		} else {
			g.member[[2]int{ui, gi}] = true
			g.membership("dsync.group.user_added", ui, gi)
		}
	case p < 45:
		u.First = fmt.Sprintf("Renamed%d", g.n)
		g.emit("dsync.user.updated", g.userData(u))
	case p < 55:
		if u.State == "active" {
			u.State = "inactive"
		} else {
			u.State = "active"
		}
		g.emit("dsync.user.updated", g.userData(u))
	case p < 62:
		u.Roles = []string{roleSlugs[g.r.IntN(len(roleSlugs))]}
		if g.r.IntN(4) == 0 {
			u.Roles = nil
		}
		g.emit("dsync.user.updated", g.userData(u))
	case p < 72:
		if g.r.IntN(3) == 0 {
			gr.Name = g.o.AdminGroupName
		} else {
			gr.Name = fmt.Sprintf("Group renamed %d", g.n)
		}
		g.emit("dsync.group.updated", g.groupData(gr))
	case p < 80:
		u.deleted = true
		u.State = "inactive"
		for k := range g.member {
			if k[0] == ui {
				delete(g.member, k)
			}
		}
		g.emit("dsync.user.deleted", g.userData(u))
	case p < 83:
		gr.deleted = true
		for k := range g.member {
			if k[1] == gi {
				delete(g.member, k)
			}
		}
		g.emit("dsync.group.deleted", g.groupData(gr))
	case p < 86:
		g.newGroup()
	default:
		g.newUser()
	}
}

// Shuffle returns the bodies of evs in a random order, with about dupPercent
// percent of them delivered a second time at random positions.
func Shuffle(evs []Event, seed uint64, dupPercent int) [][]byte {
	r := rand.New(rand.NewPCG(seed, seed+1))
	out := make([][]byte, 0, len(evs)+len(evs)*dupPercent/100+1)
	for _, e := range evs {
		out = append(out, e.Body)
		if r.IntN(100) < dupPercent {
			out = append(out, e.Body)
		}
	}
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}
