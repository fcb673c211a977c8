package main

// k. cluster: three nats-server processes in one JetStream cluster and three
// `dsyncd serve` nodes on it (stream replicas 3), as issue 22 asks of the
// soak: WorkOS-signed events posted round-robin to the nodes while one
// nats-server is SIGKILLed and restarted and one node is SIGKILLed and
// restarted; a hold approved on node 1 and a mapping change (SIGHUP) on
// node 2 meanwhile. In the end every node's export equals the others' and a
// replay of the stream into a fresh store (dsyncd rebuild --from-scratch),
// and every event answered 2xx was applied on every node.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dsyncd/dsyncd/cmd/dsyncd-load/harness"
	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/storage"
)

const (
	clusterSize  = 3
	clusterToken = "dsyncd-soak-cluster-token"
)

// changeSeqField is an export's change_seq. The nodes' feeds are the same
// seq for seq, so their exports are compared whole; a rebuild writes a new
// feed (it leaves out what was parked and dropped), so it is compared
// without it.
var changeSeqField = regexp.MustCompile(`"change_seq":\s*\d+,\s*`)

func withoutChangeSeq(b []byte) []byte { return changeSeqField.ReplaceAll(b, nil) }

// clusterPhase (k).
func (e *env) clusterPhase(ctx context.Context, o options) *result {
	r := &result{phase: "k. cluster (3+3 procs)"}
	if _, err := os.Stat(o.natsServer); err != nil {
		r.skipped = fmt.Sprintf("no nats-server binary at %s (make build builds it): %v", o.natsServer, err)
		return r
	}
	dir, err := e.phaseDir("cluster")
	if err != nil {
		r.fail("%v", err)
		return r
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()

	// The load: three directories of synthetic lifecycles; and one whose
	// only admin leaves the admin group, which opens a last-admin hold.
	var load []synth.Event
	for seed := uint64(31); seed < 31+clusterSize; seed++ {
		load = append(load, synth.Stream(synth.Options{Seed: seed, Users: 40, Groups: 5, MembershipsPerUser: 2, Changes: 150})...)
	}
	hold := synth.Stream(synth.Options{Seed: 39, Users: 1, Groups: 1, MembershipsPerUser: 1})
	added := hold[len(hold)-1]
	removed := bytes.Replace(added.Body, []byte(`"dsync.group.user_added"`), []byte(`"dsync.group.user_removed"`), 1)
	removed = bytes.Replace(removed, []byte(added.ID), []byte("event_39_removed"), 1)
	removed = bytes.Replace(removed, []byte(`"created_at":"2024-01-01`), []byte(`"created_at":"2024-01-02`), 1)
	r.events = len(load) + len(hold) + 1

	servers, urls, err := harness.StartNATSCluster(ctx, o.natsServer, dir, "dsyncd-soak", clusterSize, "")
	defer func() {
		for _, s := range servers {
			stop(s)
		}
	}()
	if err != nil {
		r.fail("%v", err)
		return r
	}
	nodes := make([]*harness.Daemon, clusterSize)
	defer func() {
		for _, d := range nodes {
			if d != nil {
				stop(d)
			}
		}
	}()
	for i := range clusterSize {
		if nodes[i], err = e.startClusterNode(ctx, dir, i, urls); err != nil {
			r.fail("%v", err)
			return r
		}
	}
	r.note("3 nats-servers (%s) and 3 nodes n1..n3, stream replicas 3", strings.Join(urls, ","))

	// Posters: each event goes to the nodes in turn, from its own, WorkOS
	// style, until one answers 2xx; a node down or refusing passes it on.
	var nodesMu sync.Mutex
	up := func(i int) *harness.Daemon {
		nodesMu.Lock()
		defer nodesMu.Unlock()
		return nodes[i]
	}
	dl := newDelivery(false)
	client := harness.NewClient(8, 5*time.Second)
	var next atomic.Int64
	deliverOne := func(pctx context.Context, body []byte, first int) bool {
		for attempt := 0; pctx.Err() == nil; attempt++ {
			d := up((first + attempt) % clusterSize)
			if d != nil && d.Running() {
				p := &harness.Poster{Client: client, URL: d.WebhookURL(), Secret: secret}
				code, err := p.Post(pctx, body)
				dl.observe(harness.Attempt{Status: code, Err: err})
				if err == nil && code/100 == 2 {
					dl.mu.Lock()
					dl.ackedIDs[eventID(body)] = true
					dl.mu.Unlock()
					return true
				}
			}
			if attempt%clusterSize == clusterSize-1 {
				select {
				case <-pctx.Done():
				case <-time.After(100 * time.Millisecond): // WorkOS-style pause after a round of refusals
				}
			}
		}
		return false
	}
	pctx, cancelPost := context.WithTimeout(ctx, 90*time.Second)
	defer cancelPost()

	// The hold first, so that it can be approved during the load.
	for i, ev := range append(bodiesOf(hold), removed) {
		if !deliverOne(pctx, ev, i) {
			r.fail("hold event %d never got a 2xx", i)
			return r
		}
	}
	const spread = 12 * time.Second
	start := time.Now()
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			for pctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(len(load)) {
					return
				}
				due := start.Add(time.Duration(float64(spread) * float64(i) / float64(len(load))))
				select {
				case <-pctx.Done():
					return
				case <-time.After(time.Until(due)): // pacing the load over spread
				}
				if !deliverOne(pctx, load[i].Body, int(i)) {
					dl.mu.Lock()
					dl.failed = append(dl.failed, load[i].ID)
					dl.mu.Unlock()
				}
			}
		})
	}

	// During the load: nats-2 SIGKILLed and restarted, node 3 SIGKILLed
	// and restarted, a hold approved on node 1, the mapping changed on node 2.
	at := func(d time.Duration) {
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(start.Add(d))): // the fault schedule
		}
	}
	at(2 * time.Second)
	if err := servers[1].Kill(); err != nil {
		r.fail("SIGKILL nats-2: %v", err)
	} else {
		r.kills++
	}
	at(4 * time.Second)
	if err := e.restartNATS(ctx, servers[1]); err != nil {
		r.fail("restart nats-2: %v", err)
	}
	holdID, err := e.approveHold(ctx, nodes[0])
	if err != nil {
		r.fail("approve the hold on node 1: %v", err)
	} else {
		r.note("last-admin hold %d approved on node 1 during the load", holdID)
	}
	at(6 * time.Second)
	if err := e.changeMapping(nodes[1], nodes); err != nil {
		r.fail("mapping change on node 2: %v", err)
	}
	at(7 * time.Second)
	n3 := up(2)
	nodesMu.Lock()
	nodes[2] = nil
	nodesMu.Unlock()
	if err := n3.Kill(); err != nil {
		r.fail("SIGKILL node 3: %v", err)
	} else {
		r.kills++
	}
	at(9 * time.Second)
	t := time.Now()
	if starts, err := e.startNode(ctx, n3); err != nil {
		r.fail("restart node 3: %v", err)
	} else {
		r.note("node 3 SIGKILLed and restarted on its own store: ready again in %s (%d start(s): serve exits while JetStream does not answer)",
			time.Since(t).Round(time.Millisecond), starts)
	}
	nodesMu.Lock()
	nodes[2] = n3
	nodesMu.Unlock()
	wg.Wait()
	r.posted, r.acked = dl.posted.Load(), dl.acked.Load()
	r.note("answers: %s", dl.statuses())
	if len(dl.failed) > 0 {
		r.fail("%d events never got a 2xx", len(dl.failed))
	}
	if n := dl.count4xx(); n > 0 {
		r.fail("%d answers were 4xx for valid, signed events", n)
	}
	if len(r.failures) > 0 {
		return r
	}

	// Converged: nothing pending on any node and the same export everywhere.
	t = time.Now()
	var exports [][]byte
	var why string
	for {
		exports, why = e.clusterExports(ctx, nodes)
		if why == "" {
			break
		}
		if ctx.Err() != nil || time.Since(t) > time.Minute {
			r.fail("the nodes did not converge within a minute of the last 2xx: %s", why)
			return r
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
	r.note("every node's export equal, change_seq included, %s after the last 2xx: %d bytes", time.Since(t).Round(time.Millisecond), len(exports[0]))

	// Every event answered 2xx is applied on every node.
	dl.mu.Lock()
	ids := make([]string, 0, len(dl.ackedIDs))
	for id := range dl.ackedIDs {
		ids = append(ids, id)
	}
	dl.mu.Unlock()
	for i, d := range nodes {
		missing := 0
		for _, id := range ids {
			code, b, err := harness.GetWithToken(ctx, e.ctl, d.URL()+"/v1/events/"+id, clusterToken)
			if err != nil || code != http.StatusOK || !bytes.Contains(b, []byte(`"processed": true`)) {
				missing++
			}
		}
		if missing > 0 {
			r.lost += missing
			r.fail("node %d: %d of the %d events answered 2xx not applied", i+1, missing, len(ids))
		}
	}

	// What the decisions did, as every node shows it.
	var snap storage.Snapshot
	if err := json.Unmarshal(exports[0], &snap); err != nil {
		r.fail("decode the export: %v", err)
		return r
	}
	eng := 0
	for _, u := range snap.Users {
		for _, b := range u.Badges {
			if b == "eng" {
				eng++
			}
		}
	}
	for _, h := range snap.Holds {
		if h.ID == holdID {
			r.fail("hold %d, approved on node 1, is still open", holdID)
		}
	}
	if eng == 0 {
		r.fail("no user has the badge node 2's mapping change grants")
	}
	r.note("%d users, %d with the badge of node 2's mapping change, %d holds open", len(snap.Users), eng, len(snap.Holds))

	// The oracle: the stream replayed into a fresh store equals the nodes.
	if err := nodes[0].Stop(time.Minute); err != nil {
		r.fail("stop node 1: %v", err)
		return r
	}
	// The replay starts from the mapping the cluster started with (the
	// stream carries the change), as node 1's file was then.
	if out, err := harness.Run(ctx, e.bin, nodes[0].Env, "rebuild", "--config", nodes[0].Config+".orig", "--from-scratch"); err != nil {
		r.fail("dsyncd rebuild --from-scratch on node 1: %v: %s", err, out)
		return r
	}
	replayed, err := e.export(ctx, nodes[0], filepath.Join(dir, "data-1", "dsyncd.db"))
	if err != nil {
		r.fail("export the rebuilt store: %v", err)
		return r
	}
	if !compareExport(r, dir, withoutChangeSeq(exports[1]), withoutChangeSeq(replayed)) {
		return r
	}
	r.note("live exports = the stream replayed into a fresh store (dsyncd rebuild --from-scratch)")
	r.applied = fmt.Sprintf("%d on each of 3 nodes (= replay)", len(ids))
	for _, d := range nodes[1:] {
		if err := d.Stop(time.Minute); err != nil {
			r.fail("stop: %v", err)
		}
	}
	return r
}

// restartNATS starts a killed nats-server again on its configuration and store.
func (e *env) restartNATS(ctx context.Context, ns *harness.Daemon) error {
	if err := ns.Start(); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return ns.WaitListening(wctx, ns.Listen)
}

// clusterNodeEnv is node i's environment: the cluster, replicas 3, its id.
func clusterNodeEnv(i int, urls []string) []string {
	return []string{"DSYNCD_STORE_SNAPSHOTS_KEPT=0", "DSYNCD_NATS_URL=" + strings.Join(urls, ","), "DSYNCD_NATS_REPLICAS=3",
		fmt.Sprintf("DSYNCD_NODE_ID=n%d", i+1), "DSYNCD_API_TOKEN=" + clusterToken}
}

// startClusterNode writes node i's configuration (the admin rule: holds
// happen) and starts it; the first start waits for the cluster to elect
// its JetStream leader (serve exits at once while it has none).
func (e *env) startClusterNode(ctx context.Context, dir string, i int, urls []string) (*harness.Daemon, error) {
	port, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	cfg := filepath.Join(dir, fmt.Sprintf("dsyncd-%d.yaml", i+1))
	if err := harness.WriteConfig(cfg, harness.Config{DataDir: filepath.Join(dir, fmt.Sprintf("data-%d", i+1)), Listen: listen,
		Secret: secret, AdminRule: true, LogLevel: "info"}); err != nil {
		return nil, err
	}
	if err := harness.WriteConfig(cfg+".orig", harness.Config{DataDir: filepath.Join(dir, fmt.Sprintf("data-%d", i+1)), Listen: listen,
		Secret: secret, AdminRule: true, LogLevel: "info"}); err != nil {
		return nil, err
	}
	d := &harness.Daemon{Bin: e.bin, Config: cfg, Listen: listen, LogPath: filepath.Join(dir, fmt.Sprintf("dsyncd-%d.log", i+1)),
		Env: clusterNodeEnv(i, urls)}
	if _, err := e.startNode(ctx, d); err != nil {
		return nil, fmt.Errorf("node %d: %w", i+1, err)
	}
	return d, nil
}

// startNode starts d and waits for it to be ready, starting it again a
// second after it exits, as systemd's Restart=on-failure would: serve
// exits when JetStream does not answer in time at start (no meta leader
// yet, or a stream's leader being elected after a server restarted). It
// returns how many starts it took.
func (e *env) startNode(ctx context.Context, d *harness.Daemon) (int, error) {
	deadline := time.Now().Add(time.Minute)
	for starts := 1; ; starts++ {
		if err := d.Start(); err != nil {
			return starts, err
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := d.WaitReady(rctx, e.ctl)
		cancel()
		if err == nil {
			return starts, nil
		}
		if d.Running() {
			_ = d.Kill()
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return starts, fmt.Errorf("not ready within a minute (%d starts): %w", starts, err)
		}
		time.Sleep(time.Second) // systemd's RestartSec
	}
}

// approveHold waits for node's last-admin hold and approves it there.
func (e *env) approveHold(ctx context.Context, node *harness.Daemon) (uint64, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, b, err := harness.GetWithToken(ctx, e.ctl, node.URL()+"/v1/holds", clusterToken)
		if err == nil && code == http.StatusOK {
			var hs struct {
				Holds []storage.Hold `json:"holds"`
			}
			_ = json.Unmarshal(b, &hs)
			for _, h := range hs.Holds {
				if h.Kind != storage.HoldLastAdmin {
					continue
				}
				// A 503 changed nothing (a JetStream election after the
				// server's restart): the operator tries again.
				for {
					err := postDecision(ctx, e.ctl, node.URL()+fmt.Sprintf("/v1/holds/%d/approve", h.ID))
					if err == nil || !strings.Contains(err.Error(), ": 503 ") || time.Now().After(deadline) {
						return h.ID, err
					}
					time.Sleep(200 * time.Millisecond) // the operator's pause before trying again
				}
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return 0, fmt.Errorf("no last-admin hold on the node within 30s (last answer %d %s %v)", code, firstBytes(b, 200), err)
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
}

func postDecision(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader("{}"))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+clusterToken)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return fmt.Errorf("POST %s: %d %s", url, resp.StatusCode, firstBytes(b.Bytes(), 200))
	}
	return nil
}

// changeMapping adds a rule to every node's configuration file, as an
// operator rolls out a file, and reloads node (SIGHUP): it publishes the
// mapping and every node adopts it at the same stream position. (A node
// that starts with a file that differs from the mapping in force keeps the
// one in force and says so: the files are aligned first.)
func (e *env) changeMapping(node *harness.Daemon, all []*harness.Daemon) error {
	for _, d := range all {
		b, err := os.ReadFile(d.Config)
		if err != nil {
			return err
		}
		const roles = "  roles:\n"
		if !bytes.Contains(b, []byte(roles)) {
			return fmt.Errorf("%s has no %q to add a rule before", d.Config, roles)
		}
		b = bytes.Replace(b, []byte(roles), []byte("    - name: Group 1\n      badges: [eng]\n      on_unmap: keep\n"+roles), 1)
		if err := os.WriteFile(d.Config, b, 0o600); err != nil {
			return err
		}
	}
	return syscall.Kill(node.PID(), syscall.SIGHUP)
}

// clusterExports returns every node's export once none has anything
// pending and all are equal, change_seq included; else why not.
func (e *env) clusterExports(ctx context.Context, nodes []*harness.Daemon) ([][]byte, string) {
	var out [][]byte
	for i, d := range nodes {
		m, err := harness.Scrape(ctx, e.ctl, d.URL())
		if err != nil {
			return nil, fmt.Sprintf("node %d metrics: %v", i+1, err)
		}
		if p := m.Pending(); p > 0 {
			return nil, fmt.Sprintf("node %d: %.0f pending", i+1, p)
		}
		code, b, err := harness.GetWithToken(ctx, e.ctl, d.URL()+"/v1/export", clusterToken)
		if err != nil || code != http.StatusOK {
			return nil, fmt.Sprintf("node %d export: %d %v", i+1, code, err)
		}
		out = append(out, b)
	}
	for i := 1; i < len(out); i++ {
		if !bytes.Equal(out[0], out[i]) {
			return nil, fmt.Sprintf("node %d's export (change_seq included) differs from node 1's (%s)", i+1, firstDiff(out[0], out[i]))
		}
	}
	return out, ""
}

func firstBytes(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}
