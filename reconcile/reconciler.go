package reconcile

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/storage"
	"github.com/dsyncd/dsyncd/worker"
)

// Store is what the reconciler reads and changes; *storage.Store implements it.
type Store interface {
	Export() (*storage.Snapshot, error)
	User(id string) (*storage.UserView, error)
	// ApplyAt applies events in one transaction (worker.Apply applies the
	// corrections through it, as it does every event).
	ApplyAt(evs []*events.Event, seq uint64) ([]storage.Outcome, error)
	Preview(evs []*events.Event) (*storage.Plan, error)
}

// ReconcilerOptions configures a Reconciler.
type ReconcilerOptions struct {
	ClientOptions
	// Interval is the pause between two runs of Run. Zero means 1h.
	Interval time.Duration
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Active, if set, is asked before each scheduled run of Run: false
	// skips it (another node of a cluster holds the leader lease).
	Active func() bool
	// Publish, if set, takes the corrective events instead of the store:
	// the daemon of a cluster publishes them to the stream, so that every
	// node applies them at the same position. Their outcomes are then
	// "published" (the worker applies them later).
	Publish Publisher
}

// Published is the outcome of a corrective event published to the stream
// (ReconcilerOptions.Publish) rather than applied by the reconciler.
const Published storage.Outcome = "published"

// Scope selects the directories to reconcile: one directory, the
// directories of one organisation, or (both empty) every directory the API
// key sees.
type Scope struct {
	Directory    string
	Organization string
}

// Kinds of Difference.
const (
	DirectoryMissing         = "directory_missing"          // listed by WorkOS, unknown locally: dsync.activated
	DirectoryChanged         = "directory_changed"          // organisation or name differ: dsync.activated
	DirectoryDeletedLocally  = "directory_deleted_locally"  // reported only; the directory is skipped
	DirectoryUnknownRemotely = "directory_unknown_remotely" // reported only: never deleted by reconcile
	UserMissing              = "user_missing"               // dsync.user.created
	UserChanged              = "user_changed"               // dsync.user.updated
	UserUnknownRemotely      = "user_unknown_remotely"      // dsync.user.deleted
	GroupMissing             = "group_missing"              // dsync.group.created
	GroupChanged             = "group_changed"              // dsync.group.updated
	GroupUnknownRemotely     = "group_unknown_remotely"     // dsync.group.deleted
	MembershipMissing        = "membership_missing"         // dsync.group.user_added
	MembershipUnknown        = "membership_unknown_remotely"
)

// Difference is one way the store differs from WorkOS, and the corrective
// event for it (none for the kinds that are only reported).
type Difference struct {
	Directory string          `json:"directory"`
	Kind      string          `json:"kind"`
	UserID    string          `json:"user_id,omitempty"`
	GroupID   string          `json:"group_id,omitempty"`
	Fields    []string        `json:"fields,omitempty"` // what differs, for *_changed
	Event     string          `json:"event,omitempty"`
	EventID   string          `json:"event_id,omitempty"`
	Outcome   storage.Outcome `json:"outcome,omitempty"` // what applying it did (not in a dry run)
}

// DirectoryResult sums up one directory.
type DirectoryResult struct {
	ID             string `json:"id"`
	OrganizationID string `json:"organization_id"`
	Name           string `json:"name"`
	State          string `json:"state"`
	Users          int    `json:"users"`       // as listed by WorkOS
	Groups         int    `json:"groups"`      // as listed by WorkOS
	Memberships    int    `json:"memberships"` // as listed by WorkOS
	Differences    int    `json:"differences"`
	Skipped        string `json:"skipped,omitempty"` // why it was not reconciled
	Error          string `json:"error,omitempty"`
}

// Result is what a reconciliation found and did.
type Result struct {
	DryRun      bool              `json:"dry_run"`
	Directories []DirectoryResult `json:"directories"`
	Differences []Difference      `json:"differences"`
	// Plan is what applying the corrective events would do (dry run only).
	Plan *storage.Plan `json:"plan,omitempty"`
	// Outcomes counts what applying the corrective events did.
	Outcomes map[storage.Outcome]int `json:"outcomes,omitempty"`
}

// Reconciler compares the store with WorkOS's Directory Sync API and turns
// each difference into a corrective event applied through Store.Apply, so
// through the safeguards (break-glass, last admin, mass-deprovisioning
// breaker).
//
// Corrective events are dsync events like WorkOS's, with ids
// "reconcile_<unix nanos>_<n>" and created_at the time the directory's
// listing started: every event WorkOS created before that is reflected in
// the listing, so the corrective event rightly supersedes it, and any event
// created since (delivered during or after the run) is newer and wins over
// the correction, as it should.
//
// Memberships are read per group (GET /directory_users?group=…), not from
// the users' `groups` field, which WorkOS deprecated and leaves empty for
// teams created from May 2026 on: trusting it would remove every membership.
type Reconciler struct {
	opts   ReconcilerOptions
	client *Client
	st     Store
	log    *zap.Logger
	seq    atomic.Uint64
}

// NewReconciler returns a Reconciler. It does no I/O.
func NewReconciler(opts ReconcilerOptions, st Store, log *zap.Logger) *Reconciler {
	if log == nil {
		log = zap.NewNop()
	}
	if opts.Interval <= 0 {
		opts.Interval = time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log = log.Named("reconcile")
	return &Reconciler{opts: opts, client: NewClient(opts.ClientOptions, log), st: st, log: log}
}

// Run reconciles every directory every Interval (the first time one
// Interval after it starts) until ctx is cancelled; it returns nil then.
func (r *Reconciler) Run(ctx context.Context) error {
	r.log.Info("periodic reconciliation on", zap.Duration("interval", r.opts.Interval))
	for {
		if sleep(ctx, r.opts.Interval) != nil {
			return nil
		}
		if r.opts.Active != nil && !r.opts.Active() {
			continue
		}
		start := time.Now()
		res, err := r.Reconcile(ctx, Scope{}, false)
		if ctx.Err() != nil {
			return nil
		}
		if res != nil {
			kinds := map[string]int{}
			for _, d := range res.Differences {
				kinds[d.Kind]++
			}
			r.log.Info("reconciliation done", zap.Int("directories", len(res.Directories)),
				zap.Int("differences", len(res.Differences)), zap.Any("kinds", kinds),
				zap.Any("outcomes", res.Outcomes), zap.Duration("took", time.Since(start)))
		}
		if err != nil {
			r.log.Error("reconciliation failed", zap.Error(err))
		}
	}
}

// Reconcile compares the directories of scope with the store. With dryRun
// it changes nothing and returns the Plan of the corrective events;
// otherwise it applies them, one transaction per directory. A directory
// whose listing fails is left untouched and reported; the returned error
// then joins every such failure, next to a Result for the others.
func (r *Reconciler) Reconcile(ctx context.Context, scope Scope, dryRun bool) (*Result, error) {
	dirs, err := r.directories(ctx, scope)
	if err != nil {
		return nil, err
	}
	res := &Result{DryRun: dryRun, Directories: []DirectoryResult{}, Differences: []Difference{}}
	if !dryRun {
		res.Outcomes = map[storage.Outcome]int{}
	}
	var errs []error
	var pending []*events.Event // dry run: previewed together at the end
	var pendingDiffs []int
	listed := map[string]bool{}
	for _, d := range dirs {
		listed[d.ID] = true
		dr := DirectoryResult{ID: d.ID, OrganizationID: d.OrganizationID, Name: d.Name, State: d.State}
		if !linked(d.State) {
			dr.Skipped = fmt.Sprintf("state %q: only linked directories are reconciled", d.State)
			res.Directories = append(res.Directories, dr)
			continue
		}
		diffs, evs, err := r.directory(ctx, d, &dr)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			dr.Error = err.Error()
			errs = append(errs, fmt.Errorf("directory %s: %w", d.ID, err))
			res.Directories = append(res.Directories, dr)
			r.log.Error("directory not reconciled", zap.String("directory", d.ID), zap.Error(err))
			continue
		}
		dr.Differences = len(diffs)
		res.Directories = append(res.Directories, dr)
		base := len(res.Differences)
		res.Differences = append(res.Differences, diffs...)
		idx := eventDiffs(diffs, base)
		if len(evs) == 0 {
			continue
		}
		if dryRun {
			pending = append(pending, evs...)
			pendingDiffs = append(pendingDiffs, idx...)
			continue
		}
		if r.opts.Publish != nil {
			for i, ev := range evs {
				if _, err := r.opts.Publish.Publish(ctx, ev.DirectoryID, string(ev.Type), ev.ID, ev.Raw); err != nil {
					return res, fmt.Errorf("directory %s: publish correction %s: %w", d.ID, ev.ID, err)
				}
				res.Differences[idx[i]].Outcome = Published
				res.Outcomes[Published]++
			}
			continue
		}
		// The worker's apply path: one transaction; when it fails because
		// of a correction, the earlier ones are applied and the run stops
		// at that one, naming it.
		var failed error
		ar := worker.Apply(r.st, evs, nil, worker.Hooks{
			Hold: func(int) bool { return failed != nil },
			Failed: func(i int, err error) {
				failed = fmt.Errorf("correction %s (%s): %w", evs[i].ID, evs[i].Type, err)
			},
		})
		for i, o := range ar.Outcomes {
			if o == "" {
				continue
			}
			res.Differences[idx[i]].Outcome = o
			res.Outcomes[o]++
		}
		if err := cmp.Or(ar.Err, failed); err != nil {
			return res, fmt.Errorf("directory %s: apply: %w", d.ID, err)
		}
	}
	if scope.Directory == "" {
		unknown, err := r.unknownDirectories(scope, listed)
		if err != nil {
			return res, err
		}
		res.Differences = append(res.Differences, unknown...)
	}
	if dryRun {
		plan, err := r.st.Preview(pending)
		if err != nil {
			return res, fmt.Errorf("preview: %w", err)
		}
		res.Plan = plan
	}
	return res, errors.Join(errs...)
}

// eventDiffs returns the indexes (offset by base) of the differences that carry an event, in order.
func eventDiffs(diffs []Difference, base int) []int {
	var idx []int
	for i, d := range diffs {
		if d.Event != "" {
			idx = append(idx, base+i)
		}
	}
	return idx
}

func linked(state string) bool {
	switch strings.ToLower(state) {
	case "linked", "active", "":
		return true
	}
	return false
}

func (r *Reconciler) directories(ctx context.Context, scope Scope) ([]Directory, error) {
	switch {
	case scope.Directory != "":
		d, err := r.client.GetDirectory(ctx, scope.Directory)
		if err != nil {
			return nil, fmt.Errorf("get directory %s: %w", scope.Directory, err)
		}
		if scope.Organization != "" && d.OrganizationID != scope.Organization {
			return nil, fmt.Errorf("directory %s belongs to organization %s, not %s", d.ID, d.OrganizationID, scope.Organization)
		}
		return []Directory{d}, nil
	default:
		ds, err := r.client.ListDirectories(ctx, scope.Organization)
		if err != nil {
			return nil, fmt.Errorf("list directories: %w", err)
		}
		slices.SortFunc(ds, func(a, b Directory) int { return strings.Compare(a.ID, b.ID) })
		return ds, nil
	}
}

// unknownDirectories reports the store's live directories (of scope's
// organisation, if any) that WorkOS did not list. Reconcile never deletes a
// directory: a wrong API key or environment would look the same.
func (r *Reconciler) unknownDirectories(scope Scope, listed map[string]bool) ([]Difference, error) {
	snap, err := r.st.Export()
	if err != nil {
		return nil, err
	}
	var out []Difference
	for _, d := range snap.Directories {
		if listed[d.ID] || d.State == "deleted" || (scope.Organization != "" && d.OrganizationID != scope.Organization) {
			continue
		}
		out = append(out, Difference{Directory: d.ID, Kind: DirectoryUnknownRemotely})
	}
	return out, nil
}

// remoteUser is a user as WorkOS lists it: its JSON (without the deprecated
// `groups`), as a corrective event carries it, and its decoded form.
type remoteUser struct {
	raw  json.RawMessage
	user *events.User
}

// remote is one directory as WorkOS lists it.
type remote struct {
	dir     Directory
	users   map[string]*remoteUser
	groups  map[string]Group
	members map[string]map[string]bool // group -> users
	// undecodable users are never deleted nor touched; noID makes the
	// listing too uncertain to delete any user or membership.
	undecodable map[string]bool
	noID        bool
}

func (r *Reconciler) list(ctx context.Context, d Directory) (*remote, error) {
	rm := &remote{dir: d, users: map[string]*remoteUser{}, groups: map[string]Group{},
		members: map[string]map[string]bool{}, undecodable: map[string]bool{}}
	users, err := r.client.ListUsers(ctx, d.ID, "")
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	for _, raw := range users {
		rm.addUser(raw, r.log)
	}
	groups, err := r.client.ListGroups(ctx, d.ID)
	if err != nil {
		return nil, fmt.Errorf("list groups: %w", err)
	}
	for _, g := range groups {
		if g.DirectoryID == "" {
			g.DirectoryID = d.ID
		}
		rm.groups[g.ID] = g
	}
	for _, g := range sortedKeys(rm.groups) {
		members, err := r.client.ListUsers(ctx, d.ID, g)
		if err != nil {
			return nil, fmt.Errorf("list members of group %s: %w", g, err)
		}
		set := map[string]bool{}
		for _, raw := range members {
			id := rm.addUser(raw, r.log)
			if id != "" {
				set[id] = true
			}
		}
		rm.members[g] = set
	}
	return rm, nil
}

// addUser records a listed user (once) and returns its id.
func (rm *remote) addUser(raw json.RawMessage, log *zap.Logger) string {
	id := envelopeID(raw)
	if id == "" {
		rm.noID = true
		log.Warn("directory user without an id listed; no user or membership of this directory will be removed", zap.String("directory", rm.dir.ID))
		return ""
	}
	if rm.users[id] != nil || rm.undecodable[id] {
		return id
	}
	norm, u, err := normalizeUser(raw, rm.dir.ID)
	if err != nil {
		rm.undecodable[id] = true
		log.Warn("directory user skipped: cannot decode it; it is left as it is", zap.String("directory", rm.dir.ID), zap.String("user", id), zap.Error(err))
		return id
	}
	rm.users[id] = &remoteUser{raw: norm, user: u}
	return id
}

// normalizeUser drops the deprecated `groups` (memberships come from group
// listings), fills a missing directory_id, and decodes the user the way
// events.Decode decodes a webhook's.
func normalizeUser(raw json.RawMessage, dirID string) (json.RawMessage, *events.User, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, nil, err
	}
	delete(m, "groups")
	if v, ok := m["directory_id"]; !ok || string(v) == "null" || string(v) == `""` {
		b, _ := json.Marshal(dirID)
		m["directory_id"] = b
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, nil, err
	}
	norm := json.RawMessage(b)
	env, err := json.Marshal(map[string]any{"id": "probe", "event": events.UserUpdated, "created_at": "2000-01-01T00:00:00Z", "data": norm})
	if err != nil {
		return nil, nil, err
	}
	ev, err := events.Decode(env)
	if err != nil {
		return nil, nil, err
	}
	return norm, ev.User, nil
}

// directory lists one directory, compares it with the store and returns
// the differences and the corrective events, in the order they apply.
func (r *Reconciler) directory(ctx context.Context, d Directory, dr *DirectoryResult) ([]Difference, []*events.Event, error) {
	at := r.opts.Now().UTC()
	rm, err := r.list(ctx, d)
	if err != nil {
		return nil, nil, err
	}
	dr.Users, dr.Groups = len(rm.users)+len(rm.undecodable), len(rm.groups)
	for _, m := range rm.members {
		dr.Memberships += len(m)
	}
	snap, err := r.st.Export()
	if err != nil {
		return nil, nil, err
	}
	b := &builder{r: r, at: at, dir: d.ID}
	if err := r.compare(rm, snap, b, dr); err != nil {
		return nil, nil, err
	}
	return b.diffs, b.evs, b.err
}

// builder collects differences and their corrective events.
type builder struct {
	r     *Reconciler
	at    time.Time
	dir   string
	diffs []Difference
	evs   []*events.Event
	err   error
}

func (b *builder) report(d Difference) {
	d.Directory = b.dir
	b.diffs = append(b.diffs, d)
}

func (b *builder) add(d Difference, typ events.Type, data any) {
	if b.err != nil {
		return
	}
	id := fmt.Sprintf("reconcile_%d_%06d", b.at.UnixNano(), b.r.seq.Add(1))
	raw, err := json.Marshal(map[string]any{
		"object": "event", "id": id, "event": typ, "created_at": b.at.Format(time.RFC3339Nano),
		"data": data, "context": map[string]string{"source": "dsyncd reconcile"},
	})
	if err == nil {
		var ev *events.Event
		if ev, err = events.Decode(raw); err == nil {
			b.evs = append(b.evs, ev)
		}
	}
	if err != nil {
		b.err = fmt.Errorf("build %s for %s%s: %w", typ, d.UserID, d.GroupID, err)
		return
	}
	d.Event, d.EventID = string(typ), id
	b.report(d)
}

func groupData(g Group) map[string]string {
	return map[string]string{"id": g.ID, "directory_id": g.DirectoryID, "organization_id": g.OrganizationID, "idp_id": g.IdpID, "name": g.Name}
}

func exportGroupData(g storage.ExportGroup) map[string]string {
	return map[string]string{"id": g.ID, "directory_id": g.DirectoryID, "organization_id": g.OrganizationID, "idp_id": g.IdpID, "name": g.Name}
}

func exportUserData(u storage.ExportUser) map[string]string {
	return map[string]string{"id": u.ID, "directory_id": u.DirectoryID, "organization_id": u.OrganizationID, "idp_id": u.IdpID,
		"email": u.Email, "first_name": u.FirstName, "last_name": u.LastName, "state": u.State}
}

func (r *Reconciler) compare(rm *remote, snap *storage.Snapshot, b *builder, dr *DirectoryResult) error {
	d := rm.dir
	// The directory: its organisation is every user's and group's without one.
	var local *storage.ExportDirectory
	for i := range snap.Directories {
		if snap.Directories[i].ID == d.ID {
			local = &snap.Directories[i]
		}
	}
	dirOrg := d.OrganizationID
	dirMoved := false
	activated := map[string]any{"id": d.ID, "organization_id": d.OrganizationID, "name": d.Name, "type": d.Type, "state": d.State}
	switch {
	case local == nil:
		b.add(Difference{Kind: DirectoryMissing}, events.DirectoryActivated, activated)
	case local.State == "deleted":
		b.report(Difference{Kind: DirectoryDeletedLocally})
		dr.Skipped = "deleted in the store (dsync.deleted) but listed by WorkOS: not reconciled"
		return nil
	default:
		var fields []string
		if d.OrganizationID != "" && local.OrganizationID != d.OrganizationID {
			fields = append(fields, "organization_id")
			dirMoved = true
		}
		if d.Name != "" && local.Name != d.Name {
			fields = append(fields, "name")
		}
		if len(fields) > 0 {
			b.add(Difference{Kind: DirectoryChanged, Fields: fields}, events.DirectoryActivated, activated)
		}
		if dirOrg == "" {
			dirOrg = local.OrganizationID
		}
	}
	// localOrg is what a record's organisation will be once the directory
	// is corrected: the export shows a record without one of its own under
	// its directory's.
	localOrg := func(org string) string {
		if org == "" || (dirMoved && org == local.OrganizationID) {
			return dirOrg
		}
		return org
	}
	remoteOrg := func(org string) string {
		if org == "" {
			return dirOrg
		}
		return org
	}

	localGroups := map[string]storage.ExportGroup{}
	for _, g := range snap.Groups {
		if g.DirectoryID == d.ID {
			localGroups[g.ID] = g
		}
	}
	localUsers := map[string]storage.ExportUser{}
	for _, u := range snap.Users {
		if u.DirectoryID == d.ID {
			localUsers[u.ID] = u
		}
	}
	mayRemove := !rm.noID

	// Groups created or changed.
	for _, id := range sortedKeys(rm.groups) {
		g := rm.groups[id]
		lg, ok := localGroups[id]
		if !ok {
			b.add(Difference{Kind: GroupMissing, GroupID: id}, events.GroupCreated, groupData(g))
			continue
		}
		var fields []string
		if lg.Name != g.Name {
			fields = append(fields, "name")
		}
		if lg.IdpID != g.IdpID {
			fields = append(fields, "idp_id")
		}
		if localOrg(lg.OrganizationID) != remoteOrg(g.OrganizationID) {
			fields = append(fields, "organization_id")
		}
		if len(fields) > 0 {
			b.add(Difference{Kind: GroupChanged, GroupID: id, Fields: fields}, events.GroupUpdated, groupData(g))
		}
	}
	// Users created or changed.
	for _, id := range sortedKeys(rm.users) {
		ru := rm.users[id]
		lu, ok := localUsers[id]
		if !ok {
			b.add(Difference{Kind: UserMissing, UserID: id}, events.UserCreated, ru.raw)
			continue
		}
		view, err := r.st.User(id)
		if err != nil {
			return fmt.Errorf("read user %s: %w", id, err)
		}
		u := ru.user
		var fields []string
		for _, f := range []struct {
			name       string
			local, api string
		}{
			{"email", lu.Email, u.Email}, {"first_name", lu.FirstName, u.FirstName}, {"last_name", lu.LastName, u.LastName},
			{"state", lu.State, u.State}, {"idp_id", lu.IdpID, u.IdpID},
			{"organization_id", localOrg(lu.OrganizationID), remoteOrg(u.OrganizationID)},
		} {
			if f.local != f.api {
				fields = append(fields, f.name)
			}
		}
		if !slices.Equal(view.Roles, u.Roles) {
			fields = append(fields, "roles")
		}
		if len(fields) > 0 {
			b.add(Difference{Kind: UserChanged, UserID: id, Fields: fields}, events.UserUpdated, ru.raw)
		}
	}
	// Memberships added.
	localMembers := map[string]map[string]bool{}
	for _, g := range localGroups {
		set := map[string]bool{}
		for _, u := range g.Members {
			set[u] = true
		}
		localMembers[g.ID] = set
	}
	for _, gid := range sortedKeys(rm.members) {
		for _, uid := range sortedKeys(rm.members[gid]) {
			ru := rm.users[uid]
			if ru == nil || localMembers[gid][uid] {
				continue // undecodable users are left alone
			}
			b.add(Difference{Kind: MembershipMissing, GroupID: gid, UserID: uid}, events.GroupUserAdded,
				map[string]any{"directory_id": d.ID, "user": ru.raw, "group": groupData(rm.groups[gid])})
		}
	}
	if !mayRemove {
		dr.Skipped = "a listed user had no id: nothing removed"
		return nil
	}
	// Memberships removed, where both ends still exist (a deleted user or
	// group ends its memberships itself).
	for _, gid := range sortedKeys(localMembers) {
		rg, ok := rm.groups[gid]
		if !ok {
			continue
		}
		for _, uid := range sortedKeys(localMembers[gid]) {
			ru := rm.users[uid]
			if ru == nil || rm.members[gid][uid] {
				continue
			}
			b.add(Difference{Kind: MembershipUnknown, GroupID: gid, UserID: uid}, events.GroupUserRemoved,
				map[string]any{"directory_id": d.ID, "user": ru.raw, "group": groupData(rg)})
		}
	}
	// Groups and users WorkOS no longer has.
	for _, id := range sortedKeys(localGroups) {
		if _, ok := rm.groups[id]; !ok {
			b.add(Difference{Kind: GroupUnknownRemotely, GroupID: id}, events.GroupDeleted, exportGroupData(localGroups[id]))
		}
	}
	for _, id := range sortedKeys(localUsers) {
		if rm.users[id] == nil && !rm.undecodable[id] {
			b.add(Difference{Kind: UserUnknownRemotely, UserID: id}, events.UserDeleted, exportUserData(localUsers[id]))
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
