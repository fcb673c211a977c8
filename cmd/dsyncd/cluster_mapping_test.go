package main

// Who changes the mapping: a node of a cluster starting with a file that
// differs never publishes it; a single node does; dsyncd apply publishes a
// file's mapping through a running node to every node.

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/mapping"
)

// threeNodes is three in-process nodes, n1..n3, on a three-server NATS
// cluster (replicas 3), fed one synthetic directory and caught up.
type threeNodes struct {
	c    *natsCluster
	cfgs []config.Config
	ds   []*daemon
	logs []*syncBuffer
	// files are the nodes' configuration files as they are now, which
	// serve reads again after a new mapping: rolled out with rollOut.
	files [3]atomic.Pointer[config.Config]
}

// rollOut puts cfg's mapping in node i's configuration file, as an
// operator rolls a file out, without reloading the node.
func (n *threeNodes) rollOut(i int, m mapping.Config) {
	cfg := n.cfgs[i]
	cfg.Mapping = m
	n.files[i].Store(&cfg)
}

func startThreeNodes(t *testing.T) *threeNodes {
	t.Helper()
	if testing.Short() {
		t.Skip("three NATS servers and three nodes: not with -short")
	}
	n := &threeNodes{c: startNATSCluster(t, 3)}
	for i := range 3 {
		cfg := clusterConfig(t, n.c, fmt.Sprintf("n%d", i+1))
		logs := &syncBuffer{}
		n.cfgs = append(n.cfgs, cfg)
		n.logs = append(n.logs, logs)
		n.files[i].Store(&cfg)
		n.ds = append(n.ds, startDaemon(t, cfg, logs, func(d *daemon) {
			d.readConfig = func() (config.Config, error) { return *n.files[i].Load(), nil }
		}))
	}
	for i, ev := range synth.Stream(synth.Options{Seed: 31, Users: 12, Groups: 3, MembershipsPerUser: 2, OrganizationID: "org_1"}) {
		postSigned(t, n.ds[i%3], ev.Body)
	}
	return n
}

// exports waits until every node has applied every event and their
// exports are byte-identical, and returns that export.
func (n *threeNodes) exports(t *testing.T) []byte {
	t.Helper()
	var exp []byte
	var last string
	deadline := time.Now().Add(60 * time.Second)
	for {
		pending := 0
		for _, d := range n.ds {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			p, err := d.q.Pending(ctx, d.durable)
			cancel()
			if err != nil {
				pending++
			}
			pending += int(p)
		}
		var exps [][]byte
		for _, d := range n.ds {
			b, err := clusterGet(d.Addr(), "/v1/export")
			if err != nil {
				t.Fatalf("node %s export: %v", d.node, err)
			}
			exps = append(exps, b)
		}
		exp = exps[0]
		if pending == 0 && bytes.Equal(exps[0], exps[1]) && bytes.Equal(exps[0], exps[2]) {
			return exp
		}
		last = fmt.Sprintf("pending %d, exports 1=2 %v, 1=3 %v", pending, bytes.Equal(exps[0], exps[1]), bytes.Equal(exps[0], exps[2]))
		if time.Now().After(deadline) {
			t.Fatalf("the nodes did not converge within 60s: %s", last)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not a wait for work
	}
}

// withEngRule is cfg's mapping plus a rule granting eng to Group 1's
// members (synth names its groups Group 1, Group 2, ...).
func withEngRule(m mapping.Config) mapping.Config {
	m.Groups = append(append([]mapping.GroupRule(nil), m.Groups...), mapping.GroupRule{Name: "Group 1", Badges: []mapping.Badge{"eng"}, OnUnmap: "keep"})
	return m
}

// TestARestartedClusterNodeNeverPublishesItsFilesMapping: node 2, restarted
// with a file whose mapping differs from the one in force (an old image, a
// file not rolled out), applies the mapping in force: every node's mapping
// and export stay as they were, and node 2 says in its log and /readyz
// that its file differs and what to do.
func TestARestartedClusterNodeNeverPublishesItsFilesMapping(t *testing.T) {
	n := startThreeNodes(t)
	before := n.exports(t)
	if bytes.Contains(before, []byte(`"eng"`)) {
		t.Fatal("a badge eng before any rule grants it")
	}
	mustf(t, n.ds[1].Close(), "stop node 2")
	cfg2 := n.cfgs[1]
	cfg2.Mapping = withEngRule(cfg2.Mapping)
	logs := &syncBuffer{}
	n.ds[1] = startDaemon(t, cfg2, logs)

	// Published, the rule would be applied on every node by the time node 2
	// answers: its start waited for it. Caught up, nothing changed.
	after := n.exports(t)
	if !bytes.Equal(after, before) {
		t.Errorf("node 2's start changed the nodes' exports:\nbefore %s\nafter  %s", firstBytes(before, 300), firstBytes(after, 300))
	}
	for i, d := range n.ds {
		if got := d.st.Mapping(); normalMapping(got) != normalMapping(n.cfgs[0].Mapping) {
			t.Errorf("node %d's mapping in force is now %+v, want the one the cluster started with", i+1, got)
		}
	}
	if code, body := getReadyz(t, n.ds[1]); code != 200 || !strings.Contains(body, "differs from this node's configuration file") {
		t.Errorf("node 2's /readyz = %d %s, want 200 saying its file differs", code, body)
	}
	if _, body := getReadyz(t, n.ds[0]); strings.Contains(body, "differs from this node's configuration file") {
		t.Errorf("node 1, whose file has the mapping in force, says it differs: %s", body)
	}
	log := logs.String()
	if strings.Contains(log, "publishing it") {
		t.Errorf("node 2 published its file's mapping at start:\n%s", log)
	}
	if strings.Count(log, "differs from this node's configuration file") != 1 || !strings.Contains(log, "dsyncd apply --config FILE against a running node") ||
		!strings.Contains(log, "systemctl reload dsyncd") {
		t.Errorf("node 2's log does not warn once that its file differs, naming dsyncd apply and systemctl reload:\n%s", log)
	}
}

// TestASingleNodeRestartedWithAnEditedFileAdoptsItsMapping: without node.id
// a start still makes the file's mapping the one in force (an edited file
// and a restart apply it).
func TestASingleNodeRestartedWithAnEditedFileAdoptsItsMapping(t *testing.T) {
	cfg := testConfig(t)
	d := startDaemon(t, cfg, nil)
	for _, ev := range synth.Stream(synth.Options{Seed: 32, Users: 8, Groups: 2, MembershipsPerUser: 2, OrganizationID: "org_1"}) {
		postSigned(t, d, ev.Body)
	}
	waitApplied(t, d)
	if bytes.Contains(apiGetT(t, d, "/v1/export"), []byte(`"eng"`)) {
		t.Fatal("a badge eng before any rule grants it")
	}
	mustf(t, d.Close(), "stop")
	cfg.Mapping = withEngRule(cfg.Mapping)
	d = startDaemon(t, cfg, nil)
	if got := d.st.Mapping(); normalMapping(got) != normalMapping(cfg.Mapping) {
		t.Errorf("after a restart with an edited file the mapping in force is %+v, want the file's", got)
	}
	if exp := apiGetT(t, d, "/v1/export"); !bytes.Contains(exp, []byte(`"eng"`)) {
		t.Errorf("no user has the badge the edited file's rule grants: %s", firstBytes(exp, 300))
	}
	if _, body := getReadyz(t, d); strings.Contains(body, "differs") {
		t.Errorf("a single node that adopted its file says it differs: %s", body)
	}
}

// nodeFile is the configuration file of node i of n, as an operator rolls
// it out, with mappingYAML as its mapping section: the CLI on that node's
// host reads its http.listen and api.token from it.
func (n *threeNodes) nodeFile(t *testing.T, i int, mappingYAML string) string {
	t.Helper()
	d := n.ds[i]
	return writeFile(t, t.TempDir(), "dsyncd.yaml", fmt.Sprintf(`data_dir: %s
http: {listen: "%s"}
webhook: {secrets: [%s]}
api: {token: %s}
nats: {url: "%s", replicas: 3}
node: {id: %s}
`, n.cfgs[i].DataDir, d.Addr(), testSecret, clusterToken, n.c.URL(), d.node)+mappingYAML)
}

// TestApplyPublishesTheMappingToEveryNode: dsyncd plan --config NEW.yaml
// on a node of a cluster previews it through the running node; dsyncd apply
// --config NEW.yaml sends NEW.yaml's mapping to the running node
// (POST /v1/mapping), which publishes it: all three nodes adopt it and end
// byte-identical. A change that removes a rule without an on_unmap choice
// exits non-zero with the daemon's 409 and changes nothing on any node.
func TestApplyPublishesTheMappingToEveryNode(t *testing.T) {
	n := startThreeNodes(t)
	before := n.exports(t)
	if bytes.Contains(before, []byte(`"eng"`)) {
		t.Fatal("a badge eng before any rule grants it")
	}
	withEng := n.nodeFile(t, 1, adminMappingYAML+"    - {name: Group 1, badges: [eng]}\n")
	newCfg, err := loadConfig(withEng, nil, true)
	mustf(t, err, "load NEW.yaml")
	n.rollOut(1, newCfg.Mapping) // nodes 2 and 3 have the new file; node 1 not
	n.rollOut(2, newCfg.Mapping)
	// plan previews it through the running node, changing nothing.
	code, out, errOut := runCLI(t, "plan", "--config", withEng)
	if code != 0 || !strings.Contains(out, "+ eng (") {
		t.Fatalf("plan --config NEW.yaml on node 2: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if exp := n.exports(t); !bytes.Equal(exp, before) {
		t.Fatal("plan changed the nodes' exports")
	}
	code, out, errOut = runCLI(t, "apply", "--config", withEng)
	if code != 0 || !strings.Contains(out, "organisation org_1: admins") || !strings.Contains(out, "+ eng (") {
		t.Fatalf("apply --config NEW.yaml on node 2: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	after := n.exports(t)
	if bytes.Count(after, []byte(`"eng"`)) == 0 {
		t.Fatalf("no node's export has the badge the new rule grants: %s", firstBytes(after, 300))
	}
	for i, d := range n.ds {
		if m := d.st.Mapping(); len(m.Groups) != 2 || m.Groups[1].Name != "Group 1" {
			t.Errorf("node %d's mapping in force is %+v, want NEW.yaml's", i+1, m)
		}
	}
	// Node 1's file was not rolled out: it says so; the others have it.
	for i, d := range n.ds {
		_, body := getReadyz(t, d)
		if differs := strings.Contains(body, "differs from this node's configuration file"); differs != (i == 0) {
			t.Errorf("node %d's /readyz says its file differs: %v, want %v (the file rolled out to nodes 2 and 3 only): %s", i+1, differs, i == 0, body)
		}
	}

	// Removing the rule without on_unmap: refused on every node, nothing changed.
	old := n.nodeFile(t, 1, adminMappingYAML)
	code, out, errOut = runCLI(t, "apply", "--config", old)
	if code == 0 || !strings.Contains(errOut, "a removed group rule needs on_unmap") || !strings.Contains(errOut, "HTTP 409") {
		t.Fatalf("apply removing a rule without on_unmap: exit %d, want non-zero with the daemon's 409\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if again := n.exports(t); !bytes.Equal(again, after) {
		t.Errorf("a refused mapping change changed the nodes' exports:\nbefore %s\nafter  %s", firstBytes(after, 300), firstBytes(again, 300))
	}
	for i, d := range n.ds {
		if m := d.st.Mapping(); len(m.Groups) != 2 {
			t.Errorf("node %d's mapping in force is %+v after a refused change, want the one before", i+1, m)
		}
	}
}
