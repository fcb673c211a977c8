package queue

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// runCluster starts n JetStream nats-servers routed into one new cluster and
// returns their client URLs, comma-separated. It does not wait for the
// cluster to elect its meta leader: that is the caller's to live with.
func runCluster(t *testing.T, n int) string {
	t.Helper()
	_, urls := runClusterServers(t, n, 0)
	return urls
}

// runClusterServers is runCluster, with the servers, named nats-1..nats-n,
// and plain more servers without JetStream after them (a client connected
// to one of those reaches JetStream through the routes).
func runClusterServers(t *testing.T, n, plain int) ([]*server.Server, string) {
	t.Helper()
	n += plain
	// Another process on the host may take a route port between routePort
	// and the bind (that server is then never ready): the cluster starts
	// again on other ports.
	for attempt := 1; ; attempt++ {
		if servers, urls := startClusterServers(t, n, plain); servers != nil {
			return servers, urls
		}
		if attempt == 3 {
			t.Fatalf("nats-server cluster not ready (a server or its routes), %d times", attempt)
		}
	}
}

// startClusterServers starts the servers of runClusterServers and waits for
// their routes, or leaves none running (nil) when one is not ready or the
// routes do not connect.
func startClusterServers(t *testing.T, n, plain int) ([]*server.Server, string) {
	t.Helper()
	ports := make([]int, n)
	routes := make([]string, n)
	for i := range n {
		ports[i] = routePort(t)
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", ports[i])
	}
	servers := make([]*server.Server, 0, n)
	stop := func() {
		for _, s := range servers {
			s.Shutdown()
			s.WaitForShutdown()
		}
	}
	urls := make([]string, n)
	for i := range n {
		s, err := server.NewServer(&server.Options{ServerName: fmt.Sprintf("nats-%d", i+1), Host: "127.0.0.1", Port: -1,
			NoSigs: true, NoLog: true, JetStream: i < n-plain, StoreDir: t.TempDir(),
			Cluster: server.ClusterOpts{Name: "dsyncd-queue-test", Host: "127.0.0.1", Port: ports[i]},
			Routes:  server.RoutesFromStr(strings.Join(routes, ","))})
		if err != nil {
			t.Fatalf("NewServer: %v", err)
		}
		s.Start()
		servers = append(servers, s)
		if !s.ReadyForConnections(10 * time.Second) {
			stop()
			return nil, ""
		}
		urls[i] = s.ClientURL()
	}
	// Routes connect in the background: a client of a server that has none
	// yet finds no JetStream at all ("no responders").
	for deadline := time.Now().Add(10 * time.Second); !allRouted(servers); time.Sleep(25 * time.Millisecond) {
		if time.Now().After(deadline) {
			stop()
			return nil, ""
		}
	}
	t.Cleanup(stop)
	return servers, strings.Join(urls, ",")
}

// allRouted says whether each server has a route to every other.
func allRouted(servers []*server.Server) bool {
	for _, s := range servers {
		if s.NumRemotes() < len(servers)-1 {
			return false
		}
	}
	return true
}

// routePort is a free port for a server's routes, picked below the
// kernel's ephemeral range: one it handed out for port 0 could be taken by
// an outgoing connection's source port before the server binds it.
func routePort(t *testing.T) int {
	t.Helper()
	for range 200 {
		p := 20000 + rand.IntN(12000)
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no free port between 20000 and 31999")
	return 0
}

// Three nodes of a brand-new cluster open their queue at the same moment,
// as systemd starts them: JetStream leaves their first requests to create
// the streams unanswered (no meta leader yet; the same stream created by
// three clients at once, nats-server issue 3677), and each asks again
// rather than failing its start. Every one opens, with its consumer and
// buckets, well within the time a single unanswered request used to take.
func TestNodesOfANewClusterStartedTogetherAllOpen(t *testing.T) {
	if testing.Short() {
		t.Skip("three NATS servers: not with -short")
	}
	url := runCluster(t, 3)
	start := time.Now()
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
			defer cancel()
			q := New(Options{URL: url, Replicas: 3}, testLogger(t))
			if errs[i] = q.Open(ctx); errs[i] != nil {
				return
			}
			t.Cleanup(func() { _ = q.Close() })
			if _, errs[i] = q.Consumer(ctx, fmt.Sprintf("node-%d", i+1), 0); errs[i] != nil {
				return
			}
			if _, errs[i] = q.Positions(ctx); errs[i] != nil {
				return
			}
			_, errs[i] = q.leases(ctx, time.Minute)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("node %d did not open: %v", i+1, err)
		}
	}
	t.Logf("all three open after %s", time.Since(start).Round(time.Millisecond))
}

// A rebuild reads the whole stream with Each. On a cluster, Each's reader
// is a consumer on one server; when that server stops mid-read, as a
// restarted server can also lose it silently, Each carries on with a new
// reader from where it was and still visits every message once, in order,
// instead of failing the rebuild ("consumer not found").
func TestEachCarriesOnWhenTheServerHoldingItsReaderStops(t *testing.T) {
	if testing.Short() {
		t.Skip("four NATS servers: not with -short")
	}
	servers, _ := runClusterServers(t, 3, 1)
	ctx := testCtx(t, 3*time.Minute)
	// The queue's connection is to the server without JetStream, so that
	// stopping the reader's server does not reconnect it (the client
	// would then replace its reader by itself).
	q := New(Options{URL: servers[3].ClientURL(), Replicas: 3}, testLogger(t))
	if err := q.Open(ctx); err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = q.Close() })

	// More than the reader buffers (500), so that most must come after
	// its server stopped.
	const n = 1500
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("evt_%04d", i)
		if _, err := q.Publish(ctx, "dir_1", "dsync.user.updated", id, []byte(id)); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	st, err := q.state()
	if err != nil {
		t.Fatal(err)
	}

	var seqs []uint64
	var stopped string
	err = q.Each(ctx, func(seq uint64, _ string, _ time.Time, data []byte) error {
		if want := fmt.Sprintf("evt_%04d", seq); string(data) != want {
			t.Errorf("seq %d holds %q, want %q", seq, data, want)
		}
		seqs = append(seqs, seq)
		if seq != 1 {
			return nil
		}
		// Stop the server that holds the reader.
		list := st.main.ListConsumers(ctx)
		for ci := range list.Info() {
			if ci.Config.Durable != "" || ci.Cluster == nil {
				continue
			}
			for _, s := range servers[:3] {
				if s.Name() == ci.Cluster.Leader {
					stopped = s.Name()
					s.Shutdown()
					s.WaitForShutdown()
				}
			}
		}
		if err := list.Err(); err != nil {
			return err
		}
		if stopped == "" {
			return fmt.Errorf("the reader's server not found")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Each after %s stopped, %d messages visited: %v", stopped, len(seqs), err)
	}
	if len(seqs) != n {
		t.Fatalf("Each visited %d messages, want %d", len(seqs), n)
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("Each visited seq %d at position %d", s, i)
		}
	}
	t.Logf("every message visited once in order; the reader's server %s stopped after the first", stopped)
}
