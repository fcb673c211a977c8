package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/cmd/dsyncd-load/harness"
	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/storage"
)

// natsCluster is three nats-servers with JetStream, routed to each other on
// loopback, each storing in its own directory; a server can be stopped and
// started again on the same ports and directory.
type natsCluster struct {
	t       *testing.T
	opts    []*natsserver.Options
	mu      sync.Mutex
	servers []*natsserver.Server
}

// freePort is a port for a server started next (harness.FreePort: outside
// the range the kernel takes connections' source ports from).
func freePort(t *testing.T) int {
	t.Helper()
	p, err := harness.FreePort()
	mustf(t, err, "free port")
	return p
}

func startNATSCluster(t *testing.T, n int) *natsCluster {
	t.Helper()
	c := &natsCluster{t: t, servers: make([]*natsserver.Server, n)}
	var routes []string
	clusterPorts := make([]int, n)
	for i := range n {
		clusterPorts[i] = freePort(t)
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", clusterPorts[i]))
	}
	for i := range n {
		c.opts = append(c.opts, &natsserver.Options{
			ServerName: fmt.Sprintf("nats-%d", i+1),
			Host:       "127.0.0.1",
			Port:       freePort(t),
			NoSigs:     true,
			NoLog:      true,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			Cluster:    natsserver.ClusterOpts{Name: "dsyncd-test", Host: "127.0.0.1", Port: clusterPorts[i]},
			Routes:     natsserver.RoutesFromStr(strings.Join(routes, ",")),
		})
	}
	for i := range n {
		c.start(i)
	}
	t.Cleanup(func() {
		for i := range n {
			c.stop(i)
		}
	})
	// JetStream answers once the servers elected a meta leader.
	nc, err := nats.Connect(c.URL())
	mustf(t, err, "connect to the cluster")
	defer nc.Close()
	js, err := jetstream.New(nc)
	mustf(t, err, "jetstream")
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("JetStream cluster not ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
	return c
}

func (c *natsCluster) start(i int) {
	c.t.Helper()
	o := *c.opts[i]
	s, err := natsserver.NewServer(&o)
	mustf(c.t, err, "nats server %d", i+1)
	go s.Start()
	if !s.ReadyForConnections(20 * time.Second) {
		c.t.Fatalf("nats server %d not ready", i+1)
	}
	c.mu.Lock()
	c.servers[i] = s
	c.mu.Unlock()
}

func (c *natsCluster) stop(i int) {
	c.mu.Lock()
	s := c.servers[i]
	c.servers[i] = nil
	c.mu.Unlock()
	if s != nil {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// URL lists every server's client URL.
func (c *natsCluster) URL() string {
	var urls []string
	for _, o := range c.opts {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", o.Port))
	}
	return strings.Join(urls, ",")
}

const clusterToken = "cluster-test-token"

// clusterConfig is node id's configuration on cluster c.
func clusterConfig(t *testing.T, c *natsCluster, id string) config.Config {
	cfg := testConfig(t)
	cfg.NATS.URL = c.URL()
	cfg.NATS.Replicas = 3
	cfg.Node.ID = id
	cfg.API.Token = clusterToken
	cfg.Log.Level = "info"
	// No snapshots: the stream keeps every event, so that the test can
	// replay it whole into a fresh store.
	if os.Getenv("CLUSTER_SNAPSHOTS") == "" {
		cfg.Store.SnapshotsKept = 0
	}
	return cfg
}

// clusterNodeProcess starts node id as a "dsyncd serve" child process (so
// that it can be SIGKILLed) on dataDir.
func clusterNodeProcess(t *testing.T, c *natsCluster, id, dataDir string) *serveProcess {
	t.Helper()
	cfg := writeFile(t, dataDir, "dsyncd.yaml", fmt.Sprintf(`data_dir: %s
log: {level: info, format: json}
http: {listen: "127.0.0.1:0"}
webhook: {secrets: [%s]}
api: {token: %s}
nats: {url: "%s", replicas: 3}
node: {id: %s}
store: {snapshots_kept: 0}
`, filepath.Join(dataDir, "data"), testSecret, clusterToken, c.URL(), id)+adminMappingYAML)
	cmd := exec.Command(os.Args[0], "serve", "--config", cfg)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	p := startServeCmd(t, cmd)
	go func() { // keep reading its log, so that it never blocks on a full pipe
		f, _ := os.Create(filepath.Join(dataDir, fmt.Sprintf("log-%d.ndjson", time.Now().UnixNano())))
		for _, l := range p.seen {
			b, _ := json.Marshal(l)
			fmt.Fprintf(f, "%s\n", b)
		}
		for l := range p.logs {
			b, _ := json.Marshal(l)
			fmt.Fprintf(f, "%s\n", b)
		}
		f.Close()
	}()
	return p
}

// clusterGet reads path from the node at addr.
func clusterGet(addr, path string) ([]byte, error) {
	return apiGet(context.Background(), "http://"+addr, path, clusterToken)
}

// deliver posts body, signed, to the nodes in turn starting at first, as
// WorkOS retries a failed delivery, until one answers 2xx; it returns the
// node that did.
func deliver(t *testing.T, addrs func() []string, first int, body []byte) int {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for attempt := 0; ; attempt++ {
		as := addrs()
		i := (first + attempt) % len(as)
		if as[i] != "" {
			req, _ := http.NewRequest(http.MethodPost, "http://"+as[i]+"/webhooks/workos", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set(events.HeaderName, events.Sign(testSecret, time.Now(), body))
			if resp, err := httpClient.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode/100 == 2 {
					return i
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no node stored %s within 45s", firstBytes(body, 80))
		}
		if attempt%len(as) == len(as)-1 {
			time.Sleep(100 * time.Millisecond) // WorkOS-style retry pause after a round of refusals
		}
	}
}

// TestClusterNodesConverge: three dsyncd nodes on a three-server NATS
// cluster (stream replicas 3) take WorkOS-signed events round-robin while
// one NATS server is stopped and restarted and one node is SIGKILLed and
// restarted; a hold is approved on node 1 and the mapping changed on node 2.
// In the end every node's export (change_seq included) and change feed are
// byte-identical, seq for seq, the export equals the stream applied to a
// fresh store, and every event answered 2xx was applied.
func TestClusterNodesConverge(t *testing.T) {
	if testing.Short() {
		t.Skip("three NATS servers and three nodes: not with -short")
	}
	c := startNATSCluster(t, 3)
	d1 := startDaemon(t, clusterConfig(t, c, "n1"), nil)
	cfg2 := clusterConfig(t, c, "n2")
	d2 := startDaemon(t, cfg2, nil)
	n3dir := os.Getenv("CLUSTER_N3_DIR")
	if n3dir == "" {
		n3dir = t.TempDir()
	}
	n3 := clusterNodeProcess(t, c, "n3", n3dir)

	var addrMu sync.Mutex
	addrs := []string{d1.Addr(), d2.Addr(), n3.addr}
	current := func() []string { addrMu.Lock(); defer addrMu.Unlock(); return append([]string(nil), addrs...) }

	// The load: three directories of synthetic lifecycles, and one whose
	// only admin leaves its admin group (a last-admin hold).
	var load []synth.Event
	for seed := uint64(1); seed <= 3; seed++ {
		load = append(load, synth.Stream(synth.Options{Seed: seed, Users: 25, Groups: 4, MembershipsPerUser: 2, Changes: 120})...)
	}
	hold := synth.Stream(synth.Options{Seed: 99, Users: 1, Groups: 1, MembershipsPerUser: 1})
	added := hold[len(hold)-1]
	if added.Type != "dsync.group.user_added" {
		t.Fatalf("the hold directory's last event is %s", added.Type)
	}
	removed := bytes.Replace(added.Body, []byte(`"dsync.group.user_added"`), []byte(`"dsync.group.user_removed"`), 1)
	removed = bytes.Replace(removed, []byte(added.ID), []byte("event_99_removed"), 1)
	removed = bytes.Replace(removed, []byte(`"created_at":"2024-01-01`), []byte(`"created_at":"2024-01-02`), 1)

	var acked []string
	post := func(evs []synth.Event, from int) {
		for i, ev := range evs {
			deliver(t, current, from+i, ev.Body)
			acked = append(acked, ev.ID)
		}
	}
	third := len(load) / 3

	// 1. A third with everything up.
	post(load[:third], 0)

	// 2. A third while NATS server 2 is down, then while node 3 is killed.
	c.stop(1)
	post(load[third:third+third/2], 1)
	mustf(t, n3.cmd.Process.Kill(), "SIGKILL node 3")
	<-n3.exit
	addrMu.Lock()
	addrs[2] = ""
	addrMu.Unlock()
	c.start(1)
	post(load[third+third/2:2*third], 2)
	n3 = clusterNodeProcess(t, c, "n3", n3dir) // its own dead predecessor: the lease is taken over at once
	addrMu.Lock()
	addrs[2] = n3.addr
	addrMu.Unlock()

	// 3. A hold, approved on node 1.
	post(hold, 0)
	deliver(t, current, 0, removed)
	acked = append(acked, "event_99_removed")
	var holdID uint64
	waitFor(t, 30*time.Second, "the last-admin hold on node 1", func() bool {
		hs, err := d1.st.Holds(true)
		if err == nil && len(hs) > 0 {
			for _, h := range hs {
				if h.Kind == storage.HoldLastAdmin {
					holdID = h.ID
					return true
				}
			}
		}
		return false
	})
	code, body := postJSON(t, "http://"+d1.Addr()+fmt.Sprintf("/v1/holds/%d/approve", holdID), clusterToken)
	if code != http.StatusOK {
		t.Fatalf("approve hold %d on node 1: %d %s", holdID, code, body)
	}

	// 4. A mapping change on node 2 (SIGHUP's path): every node adopts it.
	next := cfg2
	next.Mapping.Groups = append(append([]mapping.GroupRule(nil), cfg2.Mapping.Groups...), mapping.GroupRule{Name: "Group 1", Badges: []mapping.Badge{"eng"}})
	mustf(t, d2.Reload(next), "reload node 2")

	// 5. The last third.
	post(load[2*third:], 0)

	// Every node converges on the same export.
	var want []byte
	var last string
	converged := func() bool {
		var exps [][]byte
		for i, a := range current() {
			b, err := clusterGet(a, "/v1/export")
			if err != nil {
				last = fmt.Sprintf("node %d export: %v", i+1, err)
				return false
			}
			// The change feed too, seq for seq: appended, so that
			// the nodes' exports are compared with their feeds.
			feed, err := clusterFeed(a)
			if err != nil {
				last = fmt.Sprintf("node %d changes: %v", i+1, err)
				return false
			}
			exps = append(exps, append(append(b, "\nfeed: "...), feed...))
		}
		var pending []string
		for _, durable := range []string{"dsyncd-worker-n1", "dsyncd-worker-n2", "dsyncd-worker-n3"} {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			n, err := d1.q.Pending(ctx, durable)
			cancel()
			if err != nil || n > 0 {
				pending = append(pending, fmt.Sprintf("%s: %d %v", durable, n, err))
			}
		}
		last = fmt.Sprintf("exports 1=2 %v, 1=3 %v (%d, %d, %d bytes); pending %v", bytes.Equal(exps[0], exps[1]), bytes.Equal(exps[0], exps[2]),
			len(exps[0]), len(exps[1]), len(exps[2]), pending)
		want = exps[0]
		if !bytes.Equal(exps[0], exps[2]) {
			var a, b storage.Snapshot
			if json.Unmarshal(exps[0], &a) == nil && json.Unmarshal(exps[2], &b) == nil {
				last += fmt.Sprintf("; node 3 against node 1: %v", diffSnapshots(&a, &b))
			}
		}
		return len(pending) == 0 && bytes.Equal(exps[0], exps[1]) && bytes.Equal(exps[0], exps[2])
	}
	deadline := time.Now().Add(60 * time.Second)
	for !converged() {
		if time.Now().After(deadline) {
			t.Fatalf("the nodes did not converge within 60s: %s", last)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not a wait for work
	}
	want, _, _ = bytes.Cut(want, []byte("\nfeed: "))
	for _, id := range acked {
		for i, a := range current() {
			b, err := clusterGet(a, "/v1/events/"+id)
			if err != nil || !bytes.Contains(b, []byte(`"processed": true`)) {
				t.Fatalf("node %d: event %s answered 2xx but not applied: %s %v", i+1, id, b, err)
			}
		}
	}

	// What the nodes hold is the stream applied to a fresh store, decisions
	// included, and it has the decisions' effects.
	fresh, err := storage.Open(storeOptions(clusterConfig(t, c, "fresh"), filepath.Join(t.TempDir(), "fresh.db")))
	mustf(t, err, "fresh store")
	defer fresh.Close()
	_, err = fresh.ApplyMapping(clusterConfig(t, c, "fresh").Mapping, "", false)
	mustf(t, err, "fresh mapping")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mustf(t, applyStream(ctx, d1.q, fresh, 0, nil, nil, nil, &rebuildReport{}), "apply the stream to a fresh store")
	var rb bytes.Buffer
	mustf(t, fresh.ExportFeedTo(&rb, func(uint64) {}), "export")
	replayed := rb.Bytes()
	if !bytes.Equal(replayed, want) && os.Getenv("CLUSTER_SNAPSHOTS") == "" {
		at := 0
		for at < min(len(want), len(replayed)) && want[at] == replayed[at] {
			at++
		}
		t.Fatalf("the nodes' export differs from the stream replayed into a fresh store, from byte %d:\nnodes: %s\nfresh: %s", at, firstBytes(want[max(0, at-200):], 400), firstBytes(replayed[max(0, at-200):], 400))
	}
	var exp storage.Snapshot
	mustf(t, json.Unmarshal(want, &exp), "decode export")
	eng, heldOpen := 0, false
	for _, u := range exp.Users {
		for _, b := range u.Badges {
			if b == "eng" {
				eng++
			}
		}
	}
	for _, h := range exp.Holds {
		if h.ID == holdID {
			heldOpen = true
		}
	}
	t.Logf("%d events acknowledged, %d users, %d with eng, hold %d approved, %d holds open; export %d bytes on every node",
		len(acked), len(exp.Users), eng, holdID, len(exp.Holds), len(want))
	if eng == 0 {
		t.Error("no user has the badge the mapping change on node 2 grants")
	}
	if heldOpen {
		t.Errorf("hold %d approved on node 1 is still open in the export", holdID)
	}
	// Node 1's file lacks node 2's rule: it says so.
	resp, err := httpClient.Get("http://" + d1.Addr() + "/readyz")
	mustf(t, err, "GET /readyz")
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(b, []byte("differs from this node's configuration file")) {
		t.Errorf("node 1's /readyz does not say its mapping file differs: %s", b)
	}
	if resp, err := httpClient.Get("http://" + d2.Addr() + "/readyz"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if bytes.Contains(b, []byte("differs from this node's configuration file")) {
			t.Errorf("node 2, whose file has the mapping in force, says it differs: %s", b)
		}
	}
}

// postJSON posts an empty JSON body with the bearer token.
func postJSON(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := httpClient.Do(req)
	mustf(t, err, "POST %s", url)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitFor polls cond every 50 ms until it holds, failing the test after within.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not a wait for work
	}
}

// TestSecondNodeWithTheSameIDRefuses: a live node holds its id; a second
// node given the same id (or, both without node.id, the same single-node
// consumer) refuses to start and names the live one.
func TestSecondNodeWithTheSameIDRefuses(t *testing.T) {
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	mustf(t, err, "nats server")
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(ns.Shutdown)
	for _, tc := range []struct {
		name, id string
		want     []string
	}{
		{"same node.id", "n1", []string{"node.id n1: consumer dsyncd-worker-n1 is in use by the live node n1", "give each node its own node.id"}},
		{"both without node.id", "", []string{"consumer dsyncd-worker is in use by the live node", "set node.id on every node of a cluster"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.NATS.URL = ns.ClientURL()
			cfg.Node.ID = tc.id
			first := startDaemon(t, cfg, nil)
			second := cfg
			second.DataDir = t.TempDir()
			d := newDaemon(second, zap.NewNop())
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := d.Open(ctx)
			if err == nil {
				_ = d.Close()
				t.Fatal("a second node with the same id started")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("refusal %q does not say %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), first.cfg.StorePath()) {
				t.Errorf("refusal %q does not name the live node's store %s", err, first.cfg.StorePath())
			}
		})
	}
}

// TestReceiverOnlyNodeStoresWebhooksAndServesNoStore: worker.enabled false
// takes webhooks into the stream (another node applies them) and answers
// /v1 with 503.
func TestReceiverOnlyNodeStoresWebhooksAndServesNoStore(t *testing.T) {
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	mustf(t, err, "nats server")
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(ns.Shutdown)
	cfg := testConfig(t)
	cfg.NATS.URL = ns.ClientURL()
	cfg.Node.ID = "applier"
	applier := startDaemon(t, cfg, nil)
	rcfg := testConfig(t)
	rcfg.NATS.URL = ns.ClientURL()
	rcfg.Node.ID = "receiver"
	rcfg.Worker.Enabled = false
	rcfg.API.Token = "receiver-token"
	receiver := startDaemon(t, rcfg, nil)

	evs := synth.Stream(synth.Options{Seed: 7, Users: 3, Groups: 1, MembershipsPerUser: 1})
	for _, ev := range evs {
		postSigned(t, receiver, ev.Body)
	}
	waitApplied(t, applier)
	for _, ev := range evs {
		if ok, err := applier.st.Processed(ev.ID); err != nil || !ok {
			t.Fatalf("event %s taken by the receiver-only node not applied by the other: %v", ev.ID, err)
		}
	}
	if ok, _ := receiver.st.Processed(evs[0].ID); ok {
		t.Error("the receiver-only node applied an event")
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+receiver.Addr()+"/v1/export", nil)
	req.Header.Set("Authorization", "Bearer receiver-token")
	resp, err := httpClient.Do(req)
	mustf(t, err, "GET /v1/export")
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !bytes.Contains(b, []byte("worker.enabled: false")) {
		t.Errorf("receiver-only /v1/export = %d %s, want 503 naming worker.enabled", resp.StatusCode, b)
	}
	if code := getStatus(t, "http://"+receiver.Addr()+"/readyz"); code != http.StatusOK {
		t.Errorf("receiver-only /readyz = %d, want 200 (it takes webhooks)", code)
	}
}

func getStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := httpClient.Get(url)
	mustf(t, err, "GET %s", url)
	resp.Body.Close()
	return resp.StatusCode
}

// TestApplyOnAClusterNodeNeverChangesAStoreAlone: a node's store changed
// alone would leave the others, so on a node of a cluster apply only goes
// through a running node; with none, or asked for the store offline, it
// refuses and names the node, and no store is created or changed.
func TestApplyOnAClusterNodeNeverChangesAStoreAlone(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir, "dsyncd.yaml", "data_dir: "+filepath.Join(dir, "data")+"\nwebhook: {secrets: ["+testSecret+"]}\nnode: {id: app-1}\n"+
		fmt.Sprintf("http: {listen: \"127.0.0.1:%d\"}\n", freePort(t))+adminMappingYAML)
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"no running node is refused", nil, []string{"node.id app-1: a node of a cluster takes a new mapping through a running node", "connection refused", "--server URL"}},
		{"--offline is refused", []string{"--offline"}, []string{"node.id app-1", "--offline and --db would change this store alone"}},
		{"--db is refused", []string{"--db", filepath.Join(dir, "other.db")}, []string{"node.id app-1", "--offline and --db would change this store alone"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runCLI(t, append([]string{"apply", "--config", cfg}, tc.args...)...)
			for _, w := range tc.want {
				if code == 0 || !strings.Contains(errOut, w) {
					t.Errorf("apply on a node of a cluster: exit %d, stderr %q, want it to say %q", code, errOut, w)
				}
			}
			for _, db := range []string{filepath.Join(dir, "data", "dsyncd.db"), filepath.Join(dir, "other.db")} {
				if _, err := os.Stat(db); !os.IsNotExist(err) {
					t.Errorf("apply created or changed %s although it refused: %v", db, err)
				}
			}
		})
	}
}

// clusterFeed reads a node's whole change feed from /v1/changes, page by
// page: the records' JSON, one per line.
func clusterFeed(addr string) ([]byte, error) {
	var out []byte
	after := uint64(0)
	for {
		b, err := clusterGet(addr, fmt.Sprintf("/v1/changes?after=%d&limit=1000", after))
		if err != nil {
			return nil, err
		}
		var page struct {
			Changes []json.RawMessage `json:"changes"`
			Next    uint64            `json:"next"`
		}
		if err := json.Unmarshal(b, &page); err != nil {
			return nil, err
		}
		if len(page.Changes) == 0 {
			return out, nil
		}
		for _, c := range page.Changes {
			out = append(append(out, c...), '\n')
		}
		after = page.Next
	}
}
