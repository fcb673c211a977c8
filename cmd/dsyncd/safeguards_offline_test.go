package main

// Offline commands that apply events adopt the configuration's mapping
// through the checks serve makes at start, or refuse.

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func auditEv(id, typ string, at int, data any) string {
	b, _ := json.Marshal(map[string]any{"id": id, "event": typ,
		"created_at": time.Date(2024, 1, 1, 0, 0, at, 0, time.UTC).Format(time.RFC3339Nano), "data": data})
	return string(b)
}

func auditUsr(id, state string) map[string]any {
	return map[string]any{"id": id, "directory_id": "dir_1", "organization_id": "org_1", "idp_id": "i" + id,
		"email": id + "@x.example", "first_name": id, "last_name": "L", "state": state}
}

func auditMem(u map[string]any, gid, name string) map[string]any {
	return map[string]any{"directory_id": "dir_1", "user": u,
		"group": map[string]any{"id": gid, "directory_id": "dir_1", "organization_id": "org_1", "idp_id": "i" + gid, "name": name}}
}

const auditCfgHead = `mapping:
  admin_badge: admin
  default_badges: [member]
  groups:
`

// pausedStore replays a stream that pauses org_1, with u5's profile update
// (u5 is in group Eng, badge engineer) among the deferred events.
func pausedStore(t *testing.T, dir, cfg string) string {
	db := filepath.Join(dir, "s.db")
	lines := []string{
		auditEv("e1", "dsync.group.user_added", 1, auditMem(auditUsr("u1", "active"), "g_adm", "App Admins")),
		auditEv("e2", "dsync.user.created", 2, auditUsr("u2", "active")),
		auditEv("e3", "dsync.user.created", 3, auditUsr("u3", "active")),
		auditEv("e5", "dsync.group.user_added", 5, auditMem(auditUsr("u5", "active"), "g_eng", "Eng")),
		auditEv("d2", "dsync.user.deleted", 10, auditUsr("u2", "inactive")),
		auditEv("d3", "dsync.user.deleted", 11, auditUsr("u3", "inactive")), // trips count 1
		auditEv("p5", "dsync.user.updated", 12, auditUsr("u5", "active")),   // deferred
	}
	ev := writeFile(t, dir, "events.ndjson", strings.Join(lines, "\n"))
	if code, out, errs := runCLI(t, "replay", "--config", cfg, "--db", db, ev); code != 0 || !strings.Contains(out, "deferred 2") {
		t.Fatalf("replay: %d %s %s", code, out, errs)
	}
	return db
}

const auditSafeguards = `safeguards:
  max_deprovisions: {count: 1, percent: 0, window: 10m}
`

// Rule 5: "When a group rule disappears from the configuration, the removal
// needs an explicit on_unmap ... Without the choice, the change is refused."
// `resume ORG --config NEW.yaml` applies the deferred events with NEW.yaml's
// mapping, which removed rule Eng, without asking.
func TestResumeRefusesMappingThatDropsRuleWithoutChoice(t *testing.T) {
	dir := t.TempDir()
	oldCfg := writeFile(t, dir, "old.yaml", auditCfgHead+`    - {name: "App Admins", badges: [admin]}
    - {name: "Eng", badges: [engineer]}
`+auditSafeguards)
	newCfg := writeFile(t, dir, "new.yaml", auditCfgHead+`    - {name: "App Admins", badges: [admin]}
`+auditSafeguards)
	db := pausedStore(t, dir, oldCfg)
	// The same change through `apply` is refused without --on-unmap.
	if code, _, _ := runCLI(t, "plan", "--config", newCfg, "--db", db); code == 0 {
		t.Fatal("plan --config new.yaml accepted a removed rule without on_unmap")
	}
	code, out, errs := runCLI(t, "resume", "org_1", "--config", newCfg, "--db", db)
	if code == 0 || !strings.Contains(errs, "on-unmap") {
		t.Errorf("resume with a mapping that removed rule Eng (no on_unmap): exit %d\n%s\nstderr: %s", code, out, errs)
	}
	if _, why, _ := runCLI(t, "why", "u5", "engineer", "--config", oldCfg, "--db", db, "--offline"); !strings.Contains(why, "u5 has engineer") {
		t.Errorf("u5 lost engineer: %s", why)
	}
	// With the old mapping, resume applies the deferred events.
	if code, out, errs := runCLI(t, "resume", "org_1", "--config", oldCfg, "--db", db); code != 0 {
		t.Fatalf("resume with the mapping in force: exit %d\n%s\n%s", code, out, errs)
	}
}

// Rule 2: "otherwise serve, replay and plan refuse with a message naming the key".
func TestPlanOrgRefusesMappingWithoutAdminRule(t *testing.T) {
	dir := t.TempDir()
	okCfg := writeFile(t, dir, "ok.yaml", auditCfgHead+`    - {name: "App Admins", badges: [admin]}
    - {name: "Eng", badges: [engineer]}
`+auditSafeguards)
	noAdmin := writeFile(t, dir, "noadmin.yaml", auditCfgHead+`    - {name: "Eng", badges: [engineer]}
`+auditSafeguards)
	db := pausedStore(t, dir, okCfg)
	code, out, errs := runCLI(t, "plan", "--org", "org_1", "--config", noAdmin, "--db", db)
	if code == 0 || !strings.Contains(errs, "allow_no_admin_rule") {
		t.Errorf("plan --org with a mapping granting no admin: exit %d, stdout:\n%s\nstderr: %s", code, out, errs)
	}
}
