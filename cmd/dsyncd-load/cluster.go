package main

// -cluster: three nats-server processes in one JetStream cluster, three
// dsyncd nodes on it (stream replicas 3), webhooks posted across the nodes;
// reports ingest, the time until every node applied everything and their
// exports are byte-identical, and per process memory and CPU
// (make bench-cluster).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dsyncd/dsyncd/cmd/dsyncd-load/harness"
	"github.com/dsyncd/dsyncd/events/synth"
)

const clusterNodes = 3

const clusterToken = "dsyncd-load-cluster-token"

func runCluster(ctx context.Context, o options) error {
	if o.natsServer == "" {
		return errors.New("-cluster needs -nats-server (make bench-cluster builds bin/nats-server)")
	}
	stream := synth.Stream(synth.Options{Seed: o.seed, Users: o.users, Groups: o.groups, MembershipsPerUser: o.memberships, Changes: o.changes})
	fmt.Printf("generated %d events\n", len(stream))
	dir, err := os.MkdirTemp("", "dsyncd-cluster-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Println("data directory:", dir)
	} else {
		defer os.RemoveAll(dir)
	}

	// Three nats-servers routed to each other.
	var nodes []*harness.Daemon
	servers, urls, err := harness.StartNATSCluster(ctx, o.natsServer, dir, "dsyncd-load", clusterNodes, "sync_interval: 1s")
	defer func() {
		for _, p := range append(nodes, servers...) {
			if p.Running() {
				_ = p.Kill()
			}
		}
	}()
	if err != nil {
		return err
	}

	// Three dsyncd nodes; the first start waits for the cluster to elect
	// its JetStream leader (serve exits at once while it has none).
	ctl := harness.NewClient(4, 15*time.Second)
	for i := range clusterNodes {
		port, err := harness.FreePort()
		if err != nil {
			return err
		}
		listen := fmt.Sprintf("127.0.0.1:%d", port)
		cfg := filepath.Join(dir, fmt.Sprintf("dsyncd-%d.yaml", i+1))
		if err := harness.WriteConfig(cfg, harness.Config{DataDir: filepath.Join(dir, fmt.Sprintf("data-%d", i+1)), Listen: listen,
			Secret: o.secret, AdminRule: true, MaxBytes: o.maxBytes}); err != nil {
			return err
		}
		d := &harness.Daemon{Bin: o.bin, Config: cfg, Listen: listen, LogPath: filepath.Join(dir, fmt.Sprintf("dsyncd-%d.log", i+1)),
			Env: []string{"DSYNCD_NATS_URL=" + strings.Join(urls, ","), "DSYNCD_NATS_REPLICAS=3", fmt.Sprintf("DSYNCD_NODE_ID=n%d", i+1),
				"DSYNCD_API_TOKEN=" + clusterToken}}
		deadline := time.Now().Add(time.Minute)
		for {
			if err := d.Start(); err != nil {
				return err
			}
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := d.WaitReady(rctx, ctl)
			cancel()
			if err == nil {
				break
			}
			_ = d.Kill()
			if time.Now().After(deadline) {
				return fmt.Errorf("node %d not ready: %w\n%s", i+1, err, harness.Tail(d.LogPath, 10))
			}
			time.Sleep(time.Second) // the cluster elects its leader meanwhile
		}
		nodes = append(nodes, d)
	}

	before := make([]harness.Metrics, clusterNodes)
	for i, d := range nodes {
		if before[i], err = harness.Scrape(ctx, ctl, d.URL()); err != nil {
			return err
		}
	}
	cpu0 := clusterCPU(nodes, servers)
	retry := harness.Retry{First: 100 * time.Millisecond, Max: 2 * time.Second, MaxAttempts: 20}
	var next, acked, failed, refused atomic.Int64
	var mu sync.Mutex
	var lastAck time.Time
	start := time.Now()
	var wg sync.WaitGroup
	for k := range o.concurrency {
		wg.Go(func() {
			// Poster k posts to node k%3: the load is spread evenly.
			rc := &harness.RawConn{Addr: nodes[k%clusterNodes].Listen, Path: harness.WebhookPath, Secret: o.secret}
			defer rc.Close()
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(len(stream)) {
					return
				}
				dl := rc.Deliver(ctx, stream[i].Body, retry, func(a harness.Attempt) {
					if a.Err != nil || a.Status/100 != 2 {
						refused.Add(1)
					}
				})
				if !dl.Delivered() {
					failed.Add(1)
					continue
				}
				acked.Add(1)
				mu.Lock()
				lastAck = time.Now()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d events never got a 2xx", n)
	}
	ingest := lastAck.Sub(start)

	// Converged: every node applied every event and the exports are equal.
	finals := make([]harness.Metrics, clusterNodes)
	var export []byte
	for {
		done := true
		var exps [][]byte
		for i, d := range nodes {
			m, err := harness.Scrape(ctx, ctl, d.URL())
			if err != nil || m.Pending() > 0 || m.Processed() < before[i].Processed()+float64(len(stream)) {
				done = false
				break
			}
			finals[i] = m
			code, b, err := harness.GetWithToken(ctx, ctl, d.URL()+"/v1/export", clusterToken)
			if err != nil || code != 200 {
				done = false
				break
			}
			exps = append(exps, b)
		}
		if done && bytes.Equal(exps[0], exps[1]) && bytes.Equal(exps[0], exps[2]) {
			export = exps[0]
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("the nodes did not converge: %w", ctx.Err())
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
	converged := time.Since(start)
	cpu := clusterCPU(nodes, servers).minus(cpu0)

	n := float64(len(stream))
	fmt.Printf("\ndsyncd-load -cluster: %d events (%d users, %d groups), %d posters spread over %d nodes, %d nats-servers (replicas 3)\n\n",
		len(stream), o.users, o.groups, o.concurrency, clusterNodes, clusterNodes)
	t := harness.Table{Header: []string{"metric", "value"}}
	t.Add("ingest: events/s (2xx, all nodes)", fmt.Sprintf("%.0f (last 2xx after %s; %d attempts refused and retried)", n/ingest.Seconds(),
		ingest.Round(time.Millisecond), refused.Load()))
	t.Add("time until every node applied all and the exports are equal", fmt.Sprintf("%s (%s after the last 2xx); export %s", converged.Round(time.Millisecond),
		(converged-ingest).Round(time.Millisecond), harness.MiB(int64(len(export)))))
	var dsum, nsum time.Duration
	for i, d := range nodes {
		st, _ := d.Status()
		dsum += cpu.nodes[i]
		t.Add(fmt.Sprintf("node n%d: peak RSS / CPU", i+1), fmt.Sprintf("%s / %.1f s (%.0f µs an event); applied %.0f", harness.MiB(st.VmHWM),
			cpu.nodes[i].Seconds(), float64(cpu.nodes[i].Microseconds())/n, finals[i].Outcome("applied")-before[i].Outcome("applied")))
	}
	for i, s := range servers {
		st, _ := s.Status()
		nsum += cpu.servers[i]
		t.Add(fmt.Sprintf("nats-%d: peak RSS / CPU", i+1), fmt.Sprintf("%s / %.1f s", harness.MiB(st.VmHWM), cpu.servers[i].Seconds()))
	}
	t.Add("CPU an event: dsyncd nodes / nats-servers / load generator", fmt.Sprintf("%.0f / %.0f / %.0f µs (all processes share this machine's cores)",
		float64(dsum.Microseconds())/n, float64(nsum.Microseconds())/n, float64(cpu.self.Microseconds())/n))
	t.Print(os.Stdout)
	for _, d := range nodes {
		if err := d.Stop(time.Minute); err != nil {
			return err
		}
	}
	for _, s := range servers {
		if err := s.Stop(time.Minute); err != nil {
			return err
		}
	}
	return nil
}

type clusterSample struct {
	nodes, servers []time.Duration
	self           time.Duration
}

func clusterCPU(nodes, servers []*harness.Daemon) clusterSample {
	var c clusterSample
	for _, d := range nodes {
		v, _ := d.CPU()
		c.nodes = append(c.nodes, v)
	}
	for _, s := range servers {
		v, _ := s.CPU()
		c.servers = append(c.servers, v)
	}
	c.self = cpuTimes(nil, nil).self
	return c
}

func (c clusterSample) minus(o clusterSample) clusterSample {
	out := clusterSample{self: c.self - o.self}
	for i := range c.nodes {
		out.nodes = append(out.nodes, c.nodes[i]-o.nodes[i])
	}
	for i := range c.servers {
		out.servers = append(out.servers, c.servers[i]-o.servers[i])
	}
	return out
}
