package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// StartNATSCluster starts n nats-server processes (bin) with JetStream,
// routed to each other as the cluster name, each storing under dir, and
// waits until each listens. It returns the servers started (also on error,
// so that the caller kills them) and their client URLs. extraJetStream is
// added to each server's jetstream block (e.g. "sync_interval: 1s").
func StartNATSCluster(ctx context.Context, bin, dir, name string, n int, extraJetStream string) ([]*Daemon, []string, error) {
	clientPorts, routePorts := make([]int, n), make([]int, n)
	for i := range n {
		var err error
		if clientPorts[i], err = FreePort(); err != nil {
			return nil, nil, err
		}
		if routePorts[i], err = FreePort(); err != nil {
			return nil, nil, err
		}
	}
	var routes, urls []string
	for i := range n {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", routePorts[i]))
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", clientPorts[i]))
	}
	var servers []*Daemon
	for i := range n {
		conf := filepath.Join(dir, fmt.Sprintf("nats-%d.conf", i+1))
		js := fmt.Sprintf("  store_dir: %q\n", filepath.Join(dir, fmt.Sprintf("nats-%d", i+1)))
		if extraJetStream != "" {
			js += "  " + extraJetStream + "\n"
		}
		body := fmt.Sprintf("server_name: nats-%d\nlisten: \"127.0.0.1:%d\"\njetstream {\n%s}\n"+
			"cluster {\n  name: %s\n  listen: \"127.0.0.1:%d\"\n  routes: [%s]\n}\n",
			i+1, clientPorts[i], js, name, routePorts[i], strings.Join(routes, ", "))
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			return servers, nil, err
		}
		ns := &Daemon{Bin: bin, Args: []string{"-c", conf}, Listen: fmt.Sprintf("127.0.0.1:%d", clientPorts[i]),
			LogPath: filepath.Join(dir, fmt.Sprintf("nats-%d.log", i+1))}
		if err := ns.Start(); err != nil {
			return servers, nil, err
		}
		servers = append(servers, ns)
	}
	for _, ns := range servers {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := ns.WaitListening(wctx, ns.Listen)
		cancel()
		if err != nil {
			return servers, nil, err
		}
	}
	return servers, urls, nil
}
