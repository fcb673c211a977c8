package main

// What mapping a node of a cluster starts a new store with: never its
// file's alone. Nodes of a new cluster started together with different
// files end with one mapping and byte-identical exports, the loser saying
// so; a node added later starts from the cluster's, not its file's.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/mapping"
)

const fileDiffers = "differs from this node's configuration file"

// TestFreshClusterNodesStartedTogetherWithDifferentFilesEndAlike: three
// new nodes of a new cluster start at the same moment, node 3's file with
// a rule the others' lack. They end with one mapping in force (whichever
// file's was published last), byte-identical exports after WorkOS-signed
// events round-robin, the mapping in force recorded in NATS, and exactly
// the nodes whose file is not the mapping in force say so in /readyz and
// their log.
func TestFreshClusterNodesStartedTogetherWithDifferentFilesEndAlike(t *testing.T) {
	if testing.Short() {
		t.Skip("three NATS servers and three nodes: not with -short")
	}
	// Nothing exists yet: the nodes create the streams and buckets at
	// once, which JetStream leaves unanswered at first (nats-server issue
	// 3677); each asks again (queue.retryUnanswered).
	n := &threeNodes{c: startNATSCluster(t, 3)}
	for i := range 3 {
		cfg := clusterConfig(t, n.c, fmt.Sprintf("n%d", i+1))
		if i == 2 {
			cfg.Mapping = withEngRule(cfg.Mapping)
		}
		n.cfgs = append(n.cfgs, cfg)
		n.logs = append(n.logs, &syncBuffer{})
		n.ds = append(n.ds, newDaemon(cfg, jsonLog(n.logs[i])))
	}
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i, d := range n.ds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			errs[i] = d.Open(ctx)
		}()
	}
	wg.Wait()
	for i, d := range n.ds {
		if errs[i] != nil {
			t.Errorf("node %d did not start: %v\n%s", i+1, errs[i], n.logs[i].String())
			continue
		}
		t.Cleanup(func() { mustf(t, d.Close(), "close node %d", i+1) })
	}
	if t.Failed() {
		t.FailNow()
	}
	for i, ev := range synth.Stream(synth.Options{Seed: 34, Users: 12, Groups: 3, MembershipsPerUser: 2, OrganizationID: "org_1"}) {
		postSigned(t, n.ds[i%3], ev.Body)
	}
	exp := n.exports(t)

	inForce := n.ds[0].st.Mapping()
	for i, d := range n.ds {
		if got := d.st.Mapping(); normalMapping(got) != normalMapping(inForce) {
			t.Errorf("node %d's mapping in force is %+v, node 1's %+v", i+1, got, inForce)
		}
	}
	engWins := normalMapping(inForce) == normalMapping(n.cfgs[2].Mapping)
	if !engWins && normalMapping(inForce) != normalMapping(n.cfgs[0].Mapping) {
		t.Fatalf("the mapping in force %+v is neither file's", inForce)
	}
	if got := bytes.Contains(exp, []byte(`"eng"`)); got != engWins {
		t.Errorf("the export has the badge eng: %v; want %v (node 3's file's mapping in force: %v)", got, engWins, engWins)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec, _, err := n.ds[1].mappingInForce(ctx)
	if err != nil || rec == nil || rec.Seq == 0 || normalMapping(rec.Mapping) != normalMapping(inForce) {
		t.Errorf("the mapping recorded in NATS = %+v, %v; want the mapping in force with its control's seq", rec, err)
	}
	losers := 0
	for i, d := range n.ds {
		lost := normalMapping(n.cfgs[i].Mapping) != normalMapping(inForce)
		if lost {
			losers++
		}
		_, body := getReadyz(t, d)
		if says := strings.Contains(body, fileDiffers); says != lost {
			t.Errorf("node %d's /readyz says its file differs: %v, want %v: %s", i+1, says, lost, body)
		}
		if says := strings.Contains(n.logs[i].String(), fileDiffers); lost && !says {
			t.Errorf("node %d, whose file's mapping is not in force, does not say so in its log", i+1)
		}
	}
	if losers == 0 {
		t.Error("no node's file lost, although node 3's differs from the others'")
	}
	published := 0
	for _, l := range n.logs {
		if strings.Contains(l.String(), "publishing this node's file's mapping") {
			published++
		}
	}
	if published == 0 {
		t.Error("no node published its file's mapping in a new cluster")
	}
	t.Logf("%d node(s) published their file's mapping; the mapping in force is node 3's file's: %v; %d node(s) say their file differs", published, engWins, losers)
}

// TestANodeAddedLaterStartsFromTheClustersMappingNotItsFile: the mapping
// of a running cluster was changed (a reload on node 2); node 4, added with
// a new store and a file whose mapping is neither the old nor the new one
// (a rule granting ops), applies the whole stream from the mapping the
// cluster started with and ends with the mapping in force, an export
// byte-identical to the others' (no ops badge), and says in its log and
// /readyz that its file differs. It publishes nothing.
func TestANodeAddedLaterStartsFromTheClustersMappingNotItsFile(t *testing.T) {
	n := startThreeNodes(t)
	n.exports(t)
	cfg2 := n.cfgs[1]
	cfg2.Mapping = withEngRule(cfg2.Mapping)
	mustf(t, n.ds[1].Reload(cfg2), "reload node 2")
	for i, ev := range synth.Stream(synth.Options{Seed: 35, Users: 10, Groups: 3, MembershipsPerUser: 2, OrganizationID: "org_2"}) {
		postSigned(t, n.ds[i%3], ev.Body)
	}
	want := n.exports(t)
	if !bytes.Contains(want, []byte(`"eng"`)) {
		t.Fatalf("no user has the badge node 2's change grants: %s", firstBytes(want, 300))
	}

	cfg4 := clusterConfig(t, n.c, "n4")
	cfg4.Mapping.Groups = append(append([]mapping.GroupRule(nil), cfg4.Mapping.Groups...),
		mapping.GroupRule{Name: "Group 2", Badges: []mapping.Badge{"ops"}, OnUnmap: "keep"})
	logs := &syncBuffer{}
	d4 := startDaemon(t, cfg4, logs)
	var got []byte
	waitFor(t, 60*time.Second, "node 4 caught up with the others' export", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		p, err := d4.q.Pending(ctx, d4.durable)
		cancel()
		if err != nil || p > 0 {
			return false
		}
		got = apiGetT(t, d4, "/v1/export")
		return bytes.Equal(got, want)
	})
	if bytes.Contains(got, []byte(`"ops"`)) {
		t.Errorf("node 4 granted its own file's badge ops: %s", firstBytes(got, 300))
	}
	if m := d4.st.Mapping(); normalMapping(m) != normalMapping(n.ds[0].st.Mapping()) {
		t.Errorf("node 4's mapping in force is %+v, want the cluster's %+v", m, n.ds[0].st.Mapping())
	}
	if code, body := getReadyz(t, d4); code != 200 || !strings.Contains(body, fileDiffers) {
		t.Errorf("node 4's /readyz = %d %s, want 200 saying its file differs", code, body)
	}
	log := logs.String()
	if !strings.Contains(log, fileDiffers) || !strings.Contains(log, "starting from the first mapping the stream carries") {
		t.Errorf("node 4's log does not say where it started from and that its file differs:\n%s", log)
	}
	if strings.Contains(log, "publishing this node's file's mapping") {
		t.Errorf("node 4 published its file's mapping:\n%s", log)
	}
}

// TestAStaleWriterNeverMovesTheRecordedMappingBack: the first node of a new
// cluster records its published mapping; a change (a reload) moves the
// record forward with its control's seq; a node applying an older control
// (replaying the stream) leaves it where it is.
func TestAStaleWriterNeverMovesTheRecordedMappingBack(t *testing.T) {
	ns := startNATS(t)
	node := func(id string) config.Config {
		cfg := testConfig(t)
		cfg.NATS.URL, cfg.Node.ID, cfg.Store.SnapshotsKept = ns.ClientURL(), id, 0
		return cfg
	}
	cfg1 := node("n1")
	d1 := startDaemon(t, cfg1, nil, shortLease)
	d2 := startDaemon(t, node("n2"), nil, shortLease)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first, _, err := d2.mappingInForce(ctx)
	if err != nil || first == nil || first.Seq == 0 || normalMapping(first.Mapping) != normalMapping(cfg1.Mapping) {
		t.Fatalf("after the first node's start the recorded mapping is %+v, %v; want its file's with its control's seq", first, err)
	}
	next := cfg1
	next.Mapping = withEngRule(cfg1.Mapping)
	mustf(t, d1.Reload(next), "reload node 1")
	moved, _, err := d2.mappingInForce(ctx)
	if err != nil || moved == nil || moved.Seq <= first.Seq || normalMapping(moved.Mapping) != normalMapping(next.Mapping) {
		t.Fatalf("after a reload the recorded mapping is %+v, %v; want the new one at a later seq than %d", moved, err, first.Seq)
	}
	d2.recordMapping(first.Mapping, first.Seq) // a node replaying the first control
	mustf(t, d2.writeMapping(ctx, mapping.Config{}, 0, false), "a writer with an older seq")
	if again, _, err := d1.mappingInForce(ctx); err != nil || again == nil || normalMapping(again.Mapping) != normalMapping(moved.Mapping) || again.Seq != moved.Seq {
		t.Errorf("stale writers moved the recorded mapping back: %+v, %v; want %+v", again, err, moved)
	}
}

// TestARebuildForANewNodeKeepsTheSnapshotsMappingNotItsFile: a node added
// to a cluster whose mapping was changed (a reload) is rebuilt from the
// newest snapshot with a file whose mapping is neither the old nor the new
// one (a rule granting ops). The rebuild keeps the snapshot's mapping, its
// report says the file differs, and the node, started, ends with an export
// byte-identical to the others' and no ops badge.
func TestARebuildForANewNodeKeepsTheSnapshotsMappingNotItsFile(t *testing.T) {
	ns := startNATS(t)
	node := func(id string) config.Config {
		cfg := testConfig(t)
		cfg.NATS.URL, cfg.Node.ID, cfg.Log.Level = ns.ClientURL(), id, "info"
		return cfg
	}
	cfg1 := node("n1")
	d1 := startDaemon(t, cfg1, nil, shortLease)
	waitFor(t, 10*time.Second, "node 1 leads", d1.Leader)
	d2 := startDaemon(t, node("n2"), nil, shortLease)
	next := cfg1
	next.Mapping = withEngRule(cfg1.Mapping)
	mustf(t, d1.Reload(next), "reload node 1")
	post := func(o synth.Options) {
		for i, ev := range synth.Stream(o) {
			postSigned(t, []*daemon{d1, d2}[i%2], ev.Body)
		}
		waitApplied(t, d1)
		waitApplied(t, d2)
	}
	post(synth.Options{Seed: 36, Users: 10, Groups: 3, MembershipsPerUser: 2, OrganizationID: "org_1"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sn, err := d1.snap.Take(ctx)
	mustf(t, err, "snapshot")
	post(synth.Options{Seed: 37, Users: 10, Groups: 3, MembershipsPerUser: 2, OrganizationID: "org_2"})

	cfg3 := node("n3")
	cfg3.Mapping.Groups = append(append([]mapping.GroupRule(nil), cfg3.Mapping.Groups...),
		mapping.GroupRule{Name: "Group 2", Badges: []mapping.Badge{"ops"}, OnUnmap: "keep"})
	rep, err := (&app{ctx: ctx, stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard}).rebuild(ctx, cfg3, rebuildOptions{})
	mustf(t, err, "rebuild node 3")
	if rep.Snapshot != sn.Name {
		t.Fatalf("the rebuild started from snapshot %q, want %q", rep.Snapshot, sn.Name)
	}
	if !strings.Contains(strings.Join(rep.Warnings, "\n"), "this node's file's mapping differs from the cluster's: the store starts from the snapshot's mapping") {
		t.Errorf("the rebuild's report does not say the node's file differs: %q", rep.Warnings)
	}
	d3 := startDaemon(t, cfg3, nil, shortLease)
	want := apiGetT(t, d1, "/v1/export")
	var got []byte
	waitFor(t, 60*time.Second, "node 3 caught up with node 1's export", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		p, err := d3.q.Pending(ctx, d3.durable)
		cancel()
		if err != nil || p > 0 {
			return false
		}
		got = apiGetT(t, d3, "/v1/export")
		return bytes.Equal(got, want)
	})
	if bytes.Contains(got, []byte(`"ops"`)) || !bytes.Contains(got, []byte(`"eng"`)) {
		t.Errorf("node 3's export has ops (its file's) or lacks eng (the cluster's): %s", firstBytes(got, 300))
	}
	if _, body := getReadyz(t, d3); !strings.Contains(body, fileDiffers) {
		t.Errorf("node 3's /readyz does not say its file differs: %s", body)
	}
}
