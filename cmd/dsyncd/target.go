package main

// How an operator command reaches a dsyncd: through a running "dsyncd
// serve"'s /v1 API (apiClient, client.go), or offline on a stopped one by
// opening the store and the embedded JetStream (offlineBackend, offline.go).
// The commands are in one file each (holds.go, audit.go, why.go, dlq.go,
// backup.go, safeguards_cmd.go, export.go) and only parse flags and print.

import (
	"context"
	"fmt"
	"io"
	"net"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/server"
	"github.com/dsyncd/dsyncd/storage"
)

// targetHelp is the part of every operator command's help that says how it
// finds the daemon.
const targetHelp = `

WHERE IT READS
  With --server URL it asks the running "dsyncd serve" at URL through its /v1 API,
  sending api.token as a bearer token, or when it is unset the token serve created
  in <data_dir>/api.token. Without --server it
  first tries the API at http://<http.listen> from the configuration and, if the
  connection is refused (serve is not running), opens the store under data_dir
  directly (and, for dead letters, the embedded JetStream). --offline skips the API;
  so does --db FILE, which reads that store file. A store held by a running serve
  cannot be opened offline.`

const exitStatusHelp = `

EXIT STATUS
  0  success
  1  error: bad arguments or configuration, daemon unreachable, not found, ...`

// opsFlags are the target flags shared by the operator commands, and their
// --format.
type opsFlags struct {
	server  string
	offline bool
	format  string
}

// addTargetFlags registers the target flags (--server, --offline, --db)
// and --format on cmd, or on its subcommands too with persistent.
func (a *app) addTargetFlags(cmd *cobra.Command, f *opsFlags, persistent bool) {
	fs := cmd.Flags()
	if persistent {
		fs = cmd.PersistentFlags()
	}
	a.addTargetFlagSet(fs, f)
	formatFlag(fs, &f.format)
}

// addTargetFlagSet registers --server, --offline and --db: the one
// spelling of each, for every command that reads a dsyncd.
func (a *app) addTargetFlagSet(fs *pflag.FlagSet, f *opsFlags) {
	fs.StringVar(&f.server, "server", "", "base URL of a running dsyncd serve (default: http://<http.listen>, falling back to offline)")
	fs.BoolVar(&f.offline, "offline", false, "do not use the API: open the store (and the embedded JetStream) directly; serve must be stopped")
	dbFlag(fs, &a.dbPath)
}

// dbFlag registers --db, the store file a command opens instead of store.path.
func dbFlag(fs *pflag.FlagSet, p *string) {
	fs.StringVar(p, "db", "", "store file (default: store.path from the configuration)")
}

func (f *opsFlags) check() error {
	if f.offline && f.server != "" {
		return usagef("--offline and --server exclude each other")
	}
	return nil
}

// backend is what the operator commands need from a dsyncd, online (the
// API) or offline (the files): the store's reads and operations, and the
// dead letters (server.DeadLetters).
type backend interface {
	holds(ctx context.Context, all bool) ([]storage.Hold, error)
	audit(ctx context.Context, f storage.AuditFilter) ([]storage.AuditEntry, error)
	// why explains whether a user has a badge (storage.Store.Why).
	why(ctx context.Context, user, badge string) (*storage.Why, error)
	// resume resumes a paused organisation, or with dryRun previews it.
	resume(ctx context.Context, org string, dryRun bool) (*storage.Plan, error)
	backup(ctx context.Context, w io.Writer) (int64, error)
	// export writes the canonical snapshot to w as it reads it, as GET
	// /v1/export; only a nil error means w has all of it.
	export(ctx context.Context, w io.Writer) error
	server.DeadLetters
	// online reports whether the operations go through a running daemon.
	online() bool
}

// withBackend runs fn against the daemon the flags and configuration name:
// the API at --server; or offline with --offline or --db; or else the API at
// http.listen, falling back to offline when nothing listens there.
func (a *app) withBackend(ctx context.Context, cfg config.Config, f *opsFlags, fn func(b backend) error) error {
	if err := f.check(); err != nil {
		return err
	}
	offline := func(apiTried string) error {
		o := &offlineBackend{cfg: cfg, dbPath: a.dbPath, explicit: f.offline, apiTried: apiTried, stderr: a.stderr}
		defer o.close()
		return fn(o)
	}
	if f.offline {
		return offline("")
	}
	if a.dbPath != "" {
		// --db names a store file: read it, not whatever serve runs.
		if f.server != "" {
			return usagef("--db and --server exclude each other")
		}
		return offline("")
	}
	server := f.server
	if server == "" {
		server = defaultServer(cfg.HTTP.Listen)
		if server == "" {
			return offline("")
		}
	}
	c := newAPIClient(cfg, server)
	err := fn(c)
	switch {
	case err == nil || !c.refused:
		return err
	case f.server != "":
		return fmt.Errorf("%w (is dsyncd serve running there? --offline reads a stopped one's store)", err)
	case c.answered:
		// It answered, then went away: part of the work may be done.
		return err
	}
	// Nothing listens at http.listen and nothing was done: serve is stopped;
	// read its store.
	return offline(server)
}

// withStore runs fn on the store files only, for the commands the API does
// not offer (plan --config, apply); unlike withBackend it creates the store
// where there is none.
func (a *app) withStore(cfg config.Config, fn func(st *storage.Store) error) error {
	o := &offlineBackend{cfg: cfg, dbPath: a.dbPath, create: true, stderr: a.stderr}
	defer o.close()
	st, err := o.store()
	if err != nil {
		return err
	}
	return fn(st)
}

// defaultServer is the URL of the API at listen (http.listen): a wildcard
// host is reached on loopback. "" when the port is 0 (chosen at random).
func defaultServer(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || port == "0" || port == "" {
		return ""
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port)
}
