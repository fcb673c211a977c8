package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/config"
)

func (a *app) serveCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve --config FILE",
		Short: "Run the daemon: webhook receiver, JetStream queue, worker and read API",
		Long: `serve runs dsyncd: the WorkOS webhook receiver, the JetStream queue (an embedded
nats-server storing under data_dir, or the cluster at nats.url), the worker that applies
events to the store, and the read API, all on http.listen.

It answers a webhook with 200 only once JetStream has stored the event. On SIGTERM or
SIGINT it stops accepting requests, finishes those in flight and the batch being applied,
drains and closes the store; a second signal forces exit. SIGHUP reloads the mapping
from the configuration file, through the safeguards; an invalid configuration keeps the
old mapping and logs why.

Under systemd (Type=notify) it sends READY=1 once the store, JetStream and the listener
are up, WATCHDOG=1 every WatchdogSec/2, and STOPPING=1 on shutdown.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			log, err := newLogger(cfg, a.stderr)
			if err != nil {
				return err
			}
			defer log.Sync() //nolint:errcheck // stderr
			for _, w := range append(envProblems(), devSecretWarning(cfg)...) {
				log.Warn("configuration warning", zap.String("warning", w))
			}
			return a.serve(cmd.Context(), cmd, cfg, log)
		},
	}
	config.BindFlags(cmd.Flags())
	return cmd
}

// statusInterval is the longest time between two STATUS updates to systemd
// (degraded: ..., serving).
const statusInterval = 5 * time.Second

func (a *app) serve(ctx context.Context, cmd *cobra.Command, cfg config.Config, log *zap.Logger) error {
	// A soft memory limit keeps the heap near its live size under load
	// (memlimit.go). GOMEMLIMIT overrides it.
	followLiveHeap(ctx)
	d := newDaemon(cfg, log)
	d.readConfig = func() (config.Config, error) { return loadConfig(a.configPath, cmd.Flags(), true) }
	start := time.Now()
	if err := d.Open(ctx); err != nil {
		return err
	}
	n := newNotifier()
	if _, err := n.Notify("READY=1\nSTATUS=serving"); err != nil {
		log.Warn("systemd notify failed", zap.Error(err))
	}
	v, rev := buildInfo()
	log.Info("dsyncd ready", zap.String("version", v), zap.String("commit", rev), zap.String("http", d.Addr()), zap.String("nats", d.q.ClientURL()),
		zap.String("store", cfg.StorePath()), zap.Duration("startup", time.Since(start)))

	// The status goes to systemd with each watchdog ping, or every
	// statusInterval without a watchdog.
	var watchdog <-chan time.Time
	ping := n.WatchdogInterval() > 0
	if iv := n.WatchdogInterval(); iv > 0 || n.addr != "" {
		if !ping || iv > statusInterval {
			iv = statusInterval
		}
		t := time.NewTicker(iv)
		defer t.Stop()
		watchdog = t.C
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-watchdog:
			// The main loop is alive: ping. Readiness goes into STATUS so
			// that an outage of NATS or the disk is visible without systemd
			// restarting a daemon that is waiting for them to come back.
			status := "STATUS=serving"
			if err := d.ready(ctx); err != nil {
				status = "STATUS=degraded: " + err.Error()
			} else if d.cfg.Worker.Enabled && !d.w.Consuming() {
				status = "STATUS=degraded: the store cannot be written; events wait in JetStream"
			} else if why := d.degraded(); len(why) > 0 {
				status = "STATUS=degraded: " + strings.Join(why, "; ")
			}
			if ping {
				status = "WATCHDOG=1\n" + status
			}
			_, _ = n.Notify(status)
		case <-hup:
			next, err := loadConfig(a.configPath, cmd.Flags(), true)
			if err == nil {
				err = d.Reload(next)
			}
			if err != nil {
				log.Error("reload refused, keeping the current mapping", zap.Error(err))
			}
		}
	}
	log.Info("shutting down")
	_, _ = n.Notify("STOPPING=1")
	// A second signal forces exit.
	force := make(chan os.Signal, 1)
	signal.Notify(force, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(force)
	closed := make(chan error, 1)
	go func() { closed <- d.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			log.Error("shutdown", zap.Error(err))
			return err
		}
		log.Info("stopped cleanly")
		return nil
	case <-force:
		log.Error("second signal: forcing exit")
		return &exitCodeError{code: exitError, err: errors.New("forced exit on second signal")}
	}
}
