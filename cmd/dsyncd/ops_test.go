package main

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/dsyncd/dsyncd/mapping"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"

	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/storage"
)

const opsToken = "ops-test-token"

// opsConfigYAML is the configuration of the operations tests: listen is the
// daemon's HTTP address (127.0.0.1:0 to start it, its actual address for
// the CLI).
func opsConfigYAML(dataDir, listen string) string {
	return `data_dir: ` + dataDir + `
log:
  level: warn
http:
  listen: ` + listen + `
webhook:
  secrets: [` + testSecret + `]
api:
  token: ` + opsToken + `
store:
  open_timeout: 200ms
mapping:
  admin_badge: admin
  default_badges: [member]
  groups:
    - {name: App Admins, badges: [admin]}
`
}

// opsDaemon starts a real daemon in-process on a temporary data directory
// and returns it with a CLI configuration file pointing at it.
func opsDaemon(t *testing.T) (*daemon, string) {
	t.Helper()
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	cfg, err := loadConfig(writeFile(t, dir, "serve.yaml", opsConfigYAML(dataDir, "127.0.0.1:0")), nil, true)
	mustf(t, err, "config")
	d := newDaemon(cfg, zaptest.NewLogger(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	mustf(t, d.Open(ctx), "open daemon")
	t.Cleanup(func() { _ = d.Close() })
	return d, writeFile(t, dir, "cli.yaml", opsConfigYAML(dataDir, d.Addr()))
}

// opsEvents builds small dsync events with fresh, increasing timestamps.
type opsEvents struct{ at time.Time }

func (e *opsEvents) next() string {
	e.at = e.at.Add(time.Millisecond)
	return e.at.UTC().Format(time.RFC3339Nano)
}

const opsDir, opsOrg = "directory_ops", "org_ops"

func (e *opsEvents) group(id, gid, name string) []byte {
	return fmt.Appendf(nil, `{"id":%q,"event":"dsync.group.created","created_at":%q,"data":{"id":%q,"directory_id":%q,"organization_id":%q,"idp_id":"idp_%s","name":%q}}`,
		id, e.next(), gid, opsDir, opsOrg, gid, name)
}

func opsUser(uid string) string {
	return fmt.Sprintf(`{"id":%q,"directory_id":%q,"organization_id":%q,"idp_id":"idp_%s","email":"%s@example.com","first_name":"F","last_name":"L","state":"active"}`,
		uid, opsDir, opsOrg, uid, uid)
}

func (e *opsEvents) user(id, uid string) []byte {
	return fmt.Appendf(nil, `{"id":%q,"event":"dsync.user.created","created_at":%q,"data":%s}`, id, e.next(), opsUser(uid))
}

func (e *opsEvents) member(typ, id, uid, gid, name string) []byte {
	g := fmt.Sprintf(`{"id":%q,"directory_id":%q,"organization_id":%q,"idp_id":"idp_%s","name":%q}`, gid, opsDir, opsOrg, gid, name)
	return fmt.Appendf(nil, `{"id":%q,"event":"dsync.group.%s","created_at":%q,"data":{"directory_id":%q,"user":%s,"group":%s}}`,
		id, typ, e.next(), opsDir, opsUser(uid), g)
}

// opsEventually polls cond until it holds, failing the test after 30s.
func opsEventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// cli runs the command line and fails the test unless it exits with want.
func cli(t *testing.T, want int, args ...string) string {
	t.Helper()
	code, out, errOut := runCLI(t, args...)
	if code != want {
		t.Fatalf("dsyncd %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, out, errOut)
	}
	return out + errOut
}

// waitAudited waits until the store has an audit entry of event id (the
// consumer's pending count can read 0 a moment before a new message counts).
func waitAudited(t *testing.T, d *daemon, id string) {
	t.Helper()
	opsEventually(t, "an audit entry of "+id, func() bool {
		es, err := d.st.Audit(storage.AuditFilter{})
		mustf(t, err, "audit")
		for _, e := range es {
			if e.EventID == id {
				return true
			}
		}
		return false
	})
}

func snapshotJSON(t *testing.T, st *storage.Store) string {
	t.Helper()
	snap, err := st.Export()
	mustf(t, err, "export")
	b, err := storage.MarshalSnapshot(snap)
	mustf(t, err, "marshal")
	return string(b)
}

// storeFileSnapshot opens a store file (a backup, a rebuilt store) and exports it.
func storeFileSnapshot(t *testing.T, path string) string {
	t.Helper()
	st, err := storage.Open(storage.Options{Path: path})
	mustf(t, err, "open %s", path)
	defer st.Close()
	mustf(t, st.Check(), "check %s", path)
	return snapshotJSON(t, st)
}

func deadLetters(t *testing.T, d *daemon) []queue.DeadLetter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dl, err := d.q.DeadLetters(ctx)
	mustf(t, err, "dead letters")
	return dl
}

// TestOperationsOnlineThenOffline drives holds, audit, why, dlq, backup and
// rebuild against a running daemon through its API, then the same commands
// offline on its stopped store, and checks they agree.
func TestOperationsOnlineThenOffline(t *testing.T) {
	d, cliCfg := opsDaemon(t)
	c := []string{"--config", cliCfg}
	ev := &opsEvents{at: time.Now()}

	for _, b := range [][]byte{
		ev.group("ev_group", "g_admins", "App Admins"),
		ev.user("ev_u1", "u1"), ev.user("ev_u2", "u2"),
		ev.member("user_added", "ev_add_u1", "u1", "g_admins", "App Admins"),
		ev.member("user_added", "ev_add_u2", "u2", "g_admins", "App Admins"),
	} {
		postSigned(t, d, b)
	}
	waitApplied(t, d)
	waitAudited(t, d, "ev_add_u2")

	// why, while u1 is an admin through the group.
	out := cli(t, 0, append([]string{"why", "u1", "admin"}, c...)...)
	if want := `u1 has admin: member of group g_admins "App Admins" matched by rule group:name=App Admins (granted by event ev_add_u1 at `; !strings.HasPrefix(out, want) {
		t.Fatalf("why u1 admin = %q, want prefix %q", out, want)
	}

	// u2 leaves the group (revoked), then u1, the last admin (held).
	postSigned(t, d, ev.member("user_removed", "ev_rm_u2", "u2", "g_admins", "App Admins"))
	postSigned(t, d, ev.member("user_removed", "ev_rm_u1", "u1", "g_admins", "App Admins"))
	waitApplied(t, d)
	waitAudited(t, d, "ev_rm_u1")

	online := map[string]string{}
	for name, args := range map[string][]string{
		"why u2":      {"why", "u2", "admin"},
		"why u1":      {"why", "u1", "admin"},
		"why u1 json": {"why", "u1", "admin", "--format", "json"},
		"holds":       {"holds", "--format", "json"},
		"holds all":   {"holds", "--all"},
		"audit u2":    {"audit", "--user", "u2", "--format", "json"},
		"audit org":   {"audit", "--org", opsOrg, "--badge", "admin", "--since", "1h"},
	} {
		online[name] = cli(t, 0, append(args, c...)...)
	}
	if want := "u2 does not have admin: revoked at "; !strings.HasPrefix(online["why u2"], want) ||
		!strings.Contains(online["why u2"], "because no rule grants it any more (by event ev_rm_u2)") {
		t.Errorf("why u2 admin = %q", online["why u2"])
	}
	if want := "u1 has admin: kept by an open last-admin hold (hold 1: revoking admin"; !strings.HasPrefix(online["why u1"], want) {
		t.Errorf("why u1 admin = %q, want prefix %q", online["why u1"], want)
	}
	var holds struct{ Holds []storage.Hold }
	mustf(t, json.Unmarshal([]byte(online["holds"]), &holds), "holds json")
	if len(holds.Holds) != 1 || holds.Holds[0].Kind != storage.HoldLastAdmin || holds.Holds[0].UserID != "u1" {
		t.Errorf("holds = %+v, want one last_admin hold of u1: the last-admin safeguard let the organisation's last admin go", holds.Holds)
	}
	if !strings.Contains(online["holds all"], "last_admin") || !strings.HasPrefix(online["holds all"], "ID") {
		t.Errorf("holds table = %q", online["holds all"])
	}
	var audit struct{ Entries []storage.AuditEntry }
	mustf(t, json.Unmarshal([]byte(online["audit u2"]), &audit), "audit json")
	var actions []string
	for _, e := range audit.Entries {
		if e.Badge == "admin" {
			actions = append(actions, string(e.Action)+":"+e.EventID)
		}
	}
	if strings.Join(actions, ",") != "grant:ev_add_u2,revoke:ev_rm_u2" {
		t.Errorf("admin audit of u2 = %v", actions)
	}
	if !strings.Contains(online["audit org"], "ev_rm_u2") || !strings.Contains(online["audit org"], "hold") {
		t.Errorf("audit --org table = %q", online["audit org"])
	}
	// The API keeps the newest entries itself: the CLI need not fetch the whole trail.
	var newest struct{ Entries []storage.AuditEntry }
	mustf(t, json.Unmarshal(apiGetT(t, d, "/v1/audit?user=u2&badge=admin&limit=1"), &newest), "audit limit json")
	if len(newest.Entries) != 1 || newest.Entries[0].EventID != "ev_rm_u2" || newest.Entries[0].Action != storage.ActionRevoke {
		t.Errorf("GET /v1/audit?user=u2&badge=admin&limit=1 = %+v, want only the revoke by ev_rm_u2", newest.Entries)
	}
	// Tailing: after the first entry, one at a time, through the CLI and its API.
	var whole, next struct{ Entries []storage.AuditEntry }
	mustf(t, json.Unmarshal([]byte(cli(t, 0, append([]string{"audit", "--format", "json"}, c...)...)), &whole), "audit json")
	out = cli(t, 0, append([]string{"audit", "--after", strconv.FormatUint(whole.Entries[0].Seq, 10), "--limit", "1", "--format", "json"}, c...)...)
	mustf(t, json.Unmarshal([]byte(out), &next), "audit --after json")
	if len(whole.Entries) < 2 || len(next.Entries) != 1 || next.Entries[0] != whole.Entries[1] {
		t.Errorf("audit --after %d --limit 1 = %+v, want the second entry of the trail %+v", whole.Entries[0].Seq, next.Entries, whole.Entries[1:2])
	}
	if _, err := apiGet(context.Background(), "http://"+d.Addr(), "/v1/audit?limit=-1", opsToken); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("GET /v1/audit?limit=-1: %v, want 400", err)
	}

	// export goes through the running daemon's API by default.
	if got, want := cli(t, 0, append([]string{"export"}, c...)...), snapshotJSON(t, d.st); got != want {
		t.Errorf("export through the daemon:\n%s\nwant the live export:\n%s", got, want)
	}
	if out := cli(t, exitUsage, append([]string{"export", "--db", d.cfg.StorePath(), "--server", "http://" + d.Addr()}, c...)...); !strings.Contains(out, "exclude each other") {
		t.Errorf("export --db --server: %q", out)
	}

	// --offline while serve holds the store: refused, clearly.
	if out := cli(t, 1, append([]string{"holds", "--offline"}, c...)...); !strings.Contains(out, "drop --offline") {
		t.Errorf("holds --offline while serving: %q", out)
	}
	// A wrong token is an error, not a fallback.
	if out := cli(t, 1, "holds", "--config", writeFile(t, t.TempDir(), "bad.yaml", strings.Replace(readString(t, cliCfg), opsToken, "wrong", 1))); !strings.Contains(out, "401") {
		t.Errorf("holds with a wrong token: %q", out)
	}

	// Hot backup while serving equals the live export.
	backupFile := filepath.Join(t.TempDir(), "hot.db")
	out = cli(t, 0, append([]string{"backup", backupFile}, c...)...)
	if !strings.Contains(out, "from the running daemon") {
		t.Errorf("backup output = %q", out)
	}
	if got, want := storeFileSnapshot(t, backupFile), snapshotJSON(t, d.st); got != want {
		t.Fatalf("hot backup export differs from the live export:\n%s\nwant:\n%s", got, want)
	}
	cli(t, 1, append([]string{"backup", backupFile}, c...)...) // exists, no --force

	// Dead letters: garbage straight into the stream gets parked.
	ctx := context.Background()
	for _, g := range []string{"a", "b"} {
		_, err := d.q.Publish(ctx, opsDir, "dsync.user.created", "garbage-"+g, []byte("not json "+g))
		mustf(t, err, "publish garbage")
	}
	opsEventually(t, "two dead letters", func() bool { return len(deadLetters(t, d)) == 2 })
	dls := deadLetters(t, d)
	seqA, seqB := dls[0].Seq, dls[1].Seq
	if string(dls[0].Data) != "not json a" {
		seqA, seqB = seqB, seqA
	}
	var list struct {
		DeadLetters []dlqView `json:"dead_letters"`
	}
	mustf(t, json.Unmarshal([]byte(cli(t, 0, append([]string{"dlq", "list", "--format", "json"}, c...)...)), &list), "dlq list json")
	if len(list.DeadLetters) != 2 || !strings.Contains(list.DeadLetters[0].Reason, "undecodable") || list.DeadLetters[0].EventID == "" {
		t.Fatalf("dlq list = %+v", list.DeadLetters)
	}
	if out := cli(t, 0, append([]string{"dlq", "show", strconv.FormatUint(seqA, 10)}, c...)...); !strings.Contains(out, "not json a") || !strings.Contains(out, "garbage-a") {
		t.Errorf("dlq show = %q", out)
	}
	if out := cli(t, 1, append([]string{"dlq", "show", "999"}, c...)...); !strings.Contains(out, "not found") || !strings.Contains(out, "404") {
		t.Errorf("dlq show 999 = %q", out)
	}
	// Replay goes through the stream: the worker parks it again, under a new id.
	cli(t, 0, append([]string{"dlq", "replay", strconv.FormatUint(seqA, 10)}, c...)...)
	opsEventually(t, "the replayed dead letter parked again", func() bool {
		for _, dl := range deadLetters(t, d) {
			if dl.Seq > max(seqA, seqB) && string(dl.Data) == "not json a" {
				return true
			}
		}
		return false
	})
	if out := cli(t, 0, append([]string{"dlq", "drop", strconv.FormatUint(seqB, 10)}, c...)...); !strings.Contains(out, "recorded in the audit trail") {
		t.Errorf("dlq drop = %q", out)
	}
	if dl := deadLetters(t, d); len(dl) != 1 || string(dl[0].Data) != "not json a" {
		t.Fatalf("dead letters after replay and drop = %+v", dl)
	}
	drops, err := d.st.Audit(storage.AuditFilter{})
	mustf(t, err, "audit")
	if last := drops[len(drops)-1]; last.Action != storage.ActionDrop || last.EventID != "garbage-b" {
		t.Errorf("last audit entry = %+v, want the drop of garbage-b", last)
	}

	// Rebuild refuses while serve runs.
	if out := cli(t, 1, append([]string{"rebuild"}, c...)...); !strings.Contains(out, "serve is running") {
		t.Errorf("rebuild while serving: %q", out)
	}

	live := snapshotJSON(t, d.st)
	mustf(t, d.Close(), "close daemon")

	// Offline: the same configuration falls back to the store when nothing
	// listens at http.listen, and answers the same.
	for name, args := range map[string][]string{
		"why u2":      {"why", "u2", "admin"},
		"why u1":      {"why", "u1", "admin"},
		"why u1 json": {"why", "u1", "admin", "--format", "json"},
		"holds":       {"holds", "--format", "json"},
		"holds all":   {"holds", "--all"},
		"audit u2":    {"audit", "--user", "u2", "--format", "json"},
	} {
		if got := cli(t, 0, append(args, c...)...); got != online[name] {
			t.Errorf("%s offline:\n%s\nonline:\n%s", name, got, online[name])
		}
	}
	if got := cli(t, 0, append([]string{"export"}, c...)...); got != live {
		t.Errorf("export offline:\n%s\nwant the live export:\n%s", got, live)
	}
	var off struct {
		DeadLetters []dlqView `json:"dead_letters"`
	}
	mustf(t, json.Unmarshal([]byte(cli(t, 0, append([]string{"dlq", "list", "--offline", "--format", "json"}, c...)...)), &off), "dlq list offline")
	if len(off.DeadLetters) != 1 || off.DeadLetters[0].Data != "not json a" {
		t.Fatalf("offline dlq list = %+v", off.DeadLetters)
	}
	seqA2 := strconv.FormatUint(off.DeadLetters[0].Seq, 10)
	cli(t, 0, append([]string{"dlq", "drop", seqA2}, c...)...)
	if out := cli(t, 0, append([]string{"dlq", "list"}, c...)...); strings.TrimSpace(out) != "ID  PARKED  SUBJECT  EVENT  ATTEMPTS  BYTES  REASON" {
		t.Errorf("dlq list after the offline drop = %q", out)
	}
	if out := cli(t, 0, append([]string{"dlq", "replay", "--all"}, c...)...); !strings.Contains(out, "no dead letters") {
		t.Errorf("dlq replay --all with none = %q", out)
	}
	if out := cli(t, 0, append([]string{"audit", "--limit", "2", "--format", "json"}, c...)...); strings.Count(out, `"action": "drop"`) != 2 {
		t.Errorf("the last two audit entries are not the two drops: %s", out)
	}

	// Offline backup equals the live export too.
	cold := filepath.Join(t.TempDir(), "cold.db")
	if out := cli(t, 0, append([]string{"backup", cold}, c...)...); !strings.Contains(out, "offline") {
		t.Errorf("offline backup output = %q", out)
	}
	if got := storeFileSnapshot(t, cold); got != live {
		t.Fatalf("offline backup export differs from the live export:\n%s\nwant:\n%s", got, live)
	}

	// Rebuild from the stream equals the live store.
	out = cli(t, 0, append([]string{"rebuild", "--dry-run"}, c...)...)
	if !strings.Contains(out, "identical to the previous store") || !strings.Contains(out, "not replaced") {
		t.Fatalf("rebuild --dry-run:\n%s", out)
	}
	out = cli(t, 0, append([]string{"rebuild"}, c...)...)
	// From the newest snapshot: how many undecodable messages it left in the
	// stream depends on when serve took it.
	if !strings.Contains(out, "identical to the previous store") || !strings.Contains(out, "from snapshot snapshot-") {
		t.Errorf("rebuild:\n%s", out)
	}
	storePath := d.cfg.StorePath()
	if got := storeFileSnapshot(t, storePath); got != live {
		t.Fatalf("rebuilt store differs from the live one:\n%s\nwant:\n%s", got, live)
	}
	if got := storeFileSnapshot(t, storePath+".pre-rebuild"); got != live {
		t.Fatalf("the pre-rebuild store is not the previous store")
	}
	if _, err := os.Stat(storePath + ".rebuild"); !os.IsNotExist(err) {
		t.Errorf("the rebuild's work file is left behind: %v", err)
	}
	// The rebuilt store still knows the drops, and says it was rebuilt.
	out = cli(t, 0, append([]string{"audit", "--format", "json"}, c...)...)
	if strings.Count(out, `"action": "drop"`) != 2 || !strings.Contains(out, `"action": "rebuild"`) {
		t.Errorf("audit of the rebuilt store lacks the drops or the rebuild:\n%s", out)
	}

	// A backup plus the stream: the events the backup has change nothing.
	out = cli(t, 0, append([]string{"rebuild", "--from", backupFile, "--format", "json"}, c...)...)
	var rep rebuildReport
	mustf(t, json.Unmarshal([]byte(out), &rep), "rebuild --from json: %s", out)
	// (The stream holds the events after the oldest kept snapshot: those
	// the backup has come back as duplicates, if any are left.)
	if !rep.Identical || rep.Outcomes.Applied != 0 || rep.Outcomes.Duplicate+rep.Outcomes.Invalid+rep.Decisions != int(rep.Messages) {
		t.Errorf("rebuild --from the hot backup = %+v", rep)
	}
	if got := storeFileSnapshot(t, storePath); got != live {
		t.Fatalf("store rebuilt from the backup differs from the live one:\n%s\nwant:\n%s", got, live)
	}
	older, _ := filepath.Glob(storePath + ".pre-rebuild.*")
	if len(older) != 1 {
		t.Errorf("the first pre-rebuild store was not kept aside: %v", older)
	}
	out = cli(t, 0, append([]string{"audit", "--format", "json"}, c...)...)
	if strings.Count(out, `"action": "drop"`) != 2 {
		t.Errorf("drops not carried over exactly once:\n%s", out)
	}
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	mustf(t, err, "read %s", path)
	return string(b)
}

// TestRebuildWithoutAStore: no store yet, an empty stream.
func TestRebuildWithoutAStore(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir, "c.yaml", opsConfigYAML(filepath.Join(dir, "data"), "127.0.0.1:0"))
	// Nothing to open offline: say so rather than create a store.
	if out := cli(t, 1, "holds", "--config", cfg); !strings.Contains(out, "no store at") {
		t.Errorf("holds without a store: %q", out)
	}
	mustf(t, os.MkdirAll(filepath.Join(dir, "data", "jetstream"), 0o700), "mkdir")
	out := cli(t, 0, "rebuild", "--config", cfg, "--format", "json")
	var rep rebuildReport
	mustf(t, json.Unmarshal([]byte(out), &rep), "rebuild json: %s", out)
	if rep.Compared || rep.PreRebuild != "" || rep.Messages != 0 {
		t.Errorf("rebuild report = %+v", rep)
	}
	if got := storeFileSnapshot(t, filepath.Join(dir, "data", "dsyncd.db")); !strings.Contains(got, `"users": []`) {
		t.Errorf("rebuilt empty store = %s", got)
	}
}

// TestRebuildHelpers: what rebuild leaves out, and how it reports differences.
func TestRebuildHelpers(t *testing.T) {
	for in, want := range map[string]string{"event_01": "event_01", "event_01:replay:3": "event_01", "event_01:replay:3:replay:9": "event_01", "DSYNC:7:replay:2": "DSYNC:7"} {
		if got := eventIDOf(in); got != want {
			t.Errorf("eventIDOf(%q) = %q, want %q", in, got, want)
		}
	}
	u := func(id string, badges ...mapping.Badge) storage.ExportUser {
		return storage.ExportUser{ID: id, Badges: badges}
	}
	old := &storage.Snapshot{Users: []storage.ExportUser{u("a", "admin"), u("b"), u("c")}}
	cur := &storage.Snapshot{Users: []storage.ExportUser{u("a"), u("c"), u("d")}}
	if got := diffSnapshots(old, old); len(got) != 0 {
		t.Errorf("diff of equal snapshots = %q", got)
	}
	want := "users: 1 only in the previous store (b), 1 only in the rebuilt one (d), 1 changed (a)"
	if got := diffSnapshots(old, cur); len(got) != 1 || got[0] != want {
		t.Errorf("diff = %q, want [%q]", got, want)
	}
	if got := abbreviate([]string{"1", "2", "3", "4"}, 2); got != "1, 2, and 2 more" {
		t.Errorf("abbreviate = %q", got)
	}
}

// TestRootIsRefusedOnTheServiceUsersDirectory: files root creates there
// would be unusable by serve.
func TestRootIsRefusedOnTheServiceUsersDirectory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	mustf(t, checkNotRootOnServiceDir(dir), "root on root's directory")
	mustf(t, os.Chown(dir, 65534, 65534), "chown")
	if err := checkNotRootOnServiceDir(dir); err == nil || !strings.Contains(err.Error(), "sudo -u dsyncd") {
		t.Fatalf("root on uid 65534's directory: %v", err)
	}
}

// TestCheckConfigListsEveryProblem: all problems at once, by key, exit 1.
func TestCheckConfigListsEveryProblem(t *testing.T) {
	dir := t.TempDir()
	bad := writeFile(t, dir, "bad.yaml", `data_dir: `+dir+`
log:
  level: loud
http:
  listen: nowhere
worker:
  batch_size: 0
store:
  processed_retention: 1h
mapping:
  admin_badge: admin
`)
	t.Setenv("DSYNCD_WEBHOOK_SECRETS", "")
	code, out, errOut := runCLI(t, "check-config", "--config", bad)
	if code != 1 {
		t.Fatalf("check-config on a bad file: exit %d, want 1\n%s%s", code, out, errOut)
	}
	for _, key := range []string{"log.level:", "http.listen:", "worker.batch_size:", "store.processed_retention:", "webhook.secrets:", "mapping: no group or role rule grants admin_badge"} {
		if !strings.Contains(out, "  "+key) {
			t.Errorf("check-config output lacks %q:\n%s", key, out)
		}
	}
	if !strings.Contains(out, "6 problem(s)") || !strings.Contains(errOut, "6 problem(s)") {
		t.Errorf("check-config does not count 6 problems:\nstdout:\n%s\nstderr:\n%s", out, errOut)
	}
	if strings.Contains(out, "warning: mapping") {
		t.Errorf("the admin rule is reported twice:\n%s", out)
	}

	// Keys the loader does not know and values of the wrong type, listed
	// with the problems of the keys that decoded.
	unknown := writeFile(t, dir, "unknown.yaml", "htp:\n  listen: x\nworker:\n  batch_size: many\nlog:\n  level: loud\n")
	code, out, _ = runCLI(t, "check-config", "--config", unknown, "--format", "json")
	var res struct{ Problems, Warnings []string }
	mustf(t, json.Unmarshal([]byte(out), &res), "check-config json: %s", out)
	all := strings.Join(res.Problems, "\n")
	if code != 1 || len(res.Problems) != 5 {
		t.Errorf("check-config on unknown keys: exit %d, %d problems, want 1 and 5: %+v", code, len(res.Problems), res)
	}
	for _, key := range []string{"htp.listen: unknown key", "worker.batch_size: ", "log.level: ", "webhook.secrets: ", "mapping: no group or role rule grants admin_badge"} {
		if !strings.Contains(all, key) {
			t.Errorf("check-config on unknown keys lacks %q: %+v", key, res)
		}
	}
	// serve refuses the same file naming every problem.
	if code, _, errOut := runCLI(t, "serve", "--config", unknown); code != 1 || !strings.Contains(errOut, "htp.listen: unknown key") || !strings.Contains(errOut, "log.level: ") {
		t.Errorf("serve on a bad file: exit %d\n%s", code, errOut)
	}

	// A good file passes, with its warnings.
	good := writeFile(t, dir, "good.yaml", strings.Replace(opsConfigYAML(dir, "127.0.0.1:8080"), "webhook:\n", "webhook:\n  enabled: false\n", 1))
	code, out, errOut = runCLI(t, "check-config", "--config", good)
	if code != 0 || !strings.Contains(out, ": OK") || !strings.Contains(out, "warning: webhook.enabled: false") {
		t.Errorf("check-config on a good file: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "dsyncd.db")); !os.IsNotExist(err) {
		t.Errorf("check-config created a store")
	}
}

// TestDLQShowsUndecodableStoredData: a message whose compressed data is
// corrupt is parked as stored, and dlq show says which encoding it was in.
func TestDLQShowsUndecodableStoredData(t *testing.T) {
	d, cliCfg := opsDaemon(t)
	c := []string{"--config", cliCfg}
	nc, err := nats.Connect(d.q.ClientURL())
	mustf(t, err, "connect")
	defer nc.Close()
	js, err := jetstream.New(nc)
	mustf(t, err, "jetstream")
	corrupt := &nats.Msg{Subject: d.q.Subject(opsDir, "dsync.user.created"), Header: nats.Header{queue.HeaderEncoding: {"s2"}}, Data: []byte("\x7fcorrupt")}
	_, err = js.PublishMsg(context.Background(), corrupt, jetstream.WithMsgID("corrupt-1"))
	mustf(t, err, "publish")
	opsEventually(t, "a dead letter", func() bool { return len(deadLetters(t, d)) == 1 })
	id := strconv.FormatUint(deadLetters(t, d)[0].Seq, 10)

	var v dlqView
	mustf(t, json.Unmarshal([]byte(cli(t, 0, append([]string{"dlq", "show", id, "--format", "json"}, c...)...)), &v), "dlq show json")
	if v.StoredEncoding != "s2" || v.Data != "\x7fcorrupt" || !strings.Contains(v.Reason, "undecodable message data: s2") {
		t.Fatalf("dlq show = %+v, want the stored bytes, encoding s2 and the reason", v)
	}
	if out := cli(t, 0, append([]string{"dlq", "show", id}, c...)...); !strings.Contains(out, "stored encoding: s2") {
		t.Errorf("dlq show = %q, want a stored encoding line", out)
	}
}
