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
	ports := make([]int, n)
	routes := make([]string, n)
	for i := range n {
		ports[i] = routePort(t)
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", ports[i])
	}
	urls := make([]string, n)
	for i := range n {
		s, err := server.NewServer(&server.Options{ServerName: fmt.Sprintf("nats-%d", i+1), Host: "127.0.0.1", Port: -1,
			NoSigs: true, NoLog: true, JetStream: true, StoreDir: t.TempDir(),
			Cluster: server.ClusterOpts{Name: "dsyncd-queue-test", Host: "127.0.0.1", Port: ports[i]},
			Routes:  server.RoutesFromStr(strings.Join(routes, ","))})
		if err != nil {
			t.Fatalf("NewServer: %v", err)
		}
		s.Start()
		t.Cleanup(func() {
			s.Shutdown()
			s.WaitForShutdown()
		})
		if !s.ReadyForConnections(20 * time.Second) {
			t.Fatal("nats-server not ready")
		}
		urls[i] = s.ClientURL()
	}
	return strings.Join(urls, ",")
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
