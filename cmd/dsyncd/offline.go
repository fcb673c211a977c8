package main

// offlineBackend: the operator commands on a stopped serve's files.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/server"
	"github.com/dsyncd/dsyncd/storage"
)

// offlineBackend opens the store, and the queue when needed, of a stopped serve.
type offlineBackend struct {
	cfg      config.Config
	dbPath   string
	explicit bool   // --offline was given
	apiTried string // the API URL that refused the connection, if any
	create   bool   // create the store where there is none (withStore)
	stderr   io.Writer

	st *storage.Store
	q  *queue.Queue
}

func (o *offlineBackend) online() bool { return false }

func (o *offlineBackend) close() {
	if o.q != nil {
		_ = o.q.Close()
	}
	if o.st != nil {
		_ = o.st.Close()
	}
}

// store opens the store, refusing to create one where none is unless create.
func (o *offlineBackend) store() (*storage.Store, error) {
	if o.st != nil {
		return o.st, nil
	}
	opts := storeOptions(o.cfg, o.dbPath)
	if _, err := os.Stat(opts.Path); errors.Is(err, os.ErrNotExist) && !o.create {
		return nil, fmt.Errorf("no store at %s: check --config (data_dir, store.path) or --db", opts.Path)
	}
	st, err := storage.Open(opts)
	if errors.Is(err, storage.ErrInUse) {
		switch {
		case o.create:
			return nil, fmt.Errorf("%w: a running dsyncd serve holds it; use --server, or stop it first", err)
		case o.explicit:
			return nil, fmt.Errorf("%w: a running dsyncd serve holds it; drop --offline to go through its API", err)
		case o.apiTried != "":
			return nil, fmt.Errorf("%w, yet nothing answers at %s: pass --server with the running daemon's address", err, o.apiTried)
		}
		return nil, fmt.Errorf("%w: pass --server with the running daemon's address", err)
	}
	if err != nil {
		return nil, err
	}
	o.st = st
	return st, nil
}

// queue opens the JetStream queue: the embedded server on data_dir, or the
// external one. The store is opened first: its lock proves that no serve
// is running on the same embedded JetStream directory.
func (o *offlineBackend) queue(ctx context.Context) (*queue.Queue, error) {
	if o.q != nil {
		return o.q, nil
	}
	if _, err := o.store(); err != nil {
		return nil, err
	}
	q, err := openQueueOffline(ctx, o.cfg, o.stderr)
	if err != nil {
		return nil, err
	}
	o.q = q
	return q, nil
}

// openQueueOffline opens the configured queue for a command, logging only
// warnings and errors (to w).
func openQueueOffline(ctx context.Context, cfg config.Config, w io.Writer) (*queue.Queue, error) {
	opts := queueOptions(cfg)
	if opts.URL == "" {
		if _, err := os.Stat(opts.StoreDir); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no JetStream data at %s: check --config (data_dir)", opts.StoreDir)
		}
		if err := checkNotRootOnServiceDir(opts.StoreDir); err != nil {
			return nil, err
		}
	}
	lc := cfg
	lc.Log.Level, lc.Log.Format = "warn", "console"
	log, err := newLogger(lc, w)
	if err != nil {
		log = zap.NewNop()
	}
	q := queue.New(opts, log)
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := q.Open(ctx); err != nil {
		return nil, err
	}
	return q, nil
}

// checkNotRootOnServiceDir refuses to let root create files in a directory
// the service user owns: serve, running as that user, could not open them.
func checkNotRootOnServiceDir(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil
	}
	if uid, ok := fileOwner(fi); ok && uid != 0 {
		return fmt.Errorf("%s belongs to uid %d (the service user) but this runs as root: files it creates would be unusable by serve; "+
			"run it as that user (sudo -u dsyncd dsyncd ...)", dir, uid)
	}
	return nil
}

// fileOwner is the owner's uid of fi, where the platform has one.
func fileOwner(fi os.FileInfo) (int, bool) {
	v := reflect.ValueOf(fi.Sys())
	if v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return 0, false
	}
	f := v.FieldByName("Uid")
	if !f.IsValid() || !f.CanUint() {
		return 0, false
	}
	return int(f.Uint()), true
}

func (o *offlineBackend) holds(_ context.Context, all bool) ([]storage.Hold, error) {
	st, err := o.store()
	if err != nil {
		return nil, err
	}
	return st.Holds(!all)
}

func (o *offlineBackend) audit(_ context.Context, f storage.AuditFilter) ([]storage.AuditEntry, error) {
	st, err := o.store()
	if err != nil {
		return nil, err
	}
	return st.Audit(f)
}

func (o *offlineBackend) why(_ context.Context, user, badge string) (*storage.Why, error) {
	st, err := o.store()
	if err != nil {
		return nil, err
	}
	return st.Why(user, mapping.Badge(badge))
}

// resume makes the configuration's mapping the one in force (adoptMapping),
// then resumes org: the events deferred under it apply with that mapping.
func (o *offlineBackend) resume(_ context.Context, org string, dryRun bool) (*storage.Plan, error) {
	st, err := o.store()
	if err != nil {
		return nil, err
	}
	if err := adoptMapping(st, o.cfg, dryRun); err != nil {
		return nil, err
	}
	return st.Resume(org, dryRun)
}

// dlq is the dead letters of the queue, opened on first use.
func (o *offlineBackend) dlq(ctx context.Context) (dlqStore, error) {
	q, err := o.queue(ctx)
	if err != nil {
		return dlqStore{}, err
	}
	return dlqStore{q: q, st: o.st}, nil
}

func (o *offlineBackend) List(ctx context.Context) ([]server.DeadLetter, error) {
	d, err := o.dlq(ctx)
	if err != nil {
		return nil, err
	}
	return d.List(ctx)
}

func (o *offlineBackend) Get(ctx context.Context, seq uint64) (server.DeadLetter, error) {
	d, err := o.dlq(ctx)
	if err != nil {
		return server.DeadLetter{}, err
	}
	return d.Get(ctx, seq)
}

func (o *offlineBackend) Replay(ctx context.Context, seq uint64) error {
	d, err := o.dlq(ctx)
	if err != nil {
		return err
	}
	return d.Replay(ctx, seq)
}

func (o *offlineBackend) ReplayAll(ctx context.Context) ([]uint64, error) {
	d, err := o.dlq(ctx)
	if err != nil {
		return nil, err
	}
	return d.ReplayAll(ctx)
}

func (o *offlineBackend) Drop(ctx context.Context, seq uint64) error {
	d, err := o.dlq(ctx)
	if err != nil {
		return err
	}
	return d.Drop(ctx, seq)
}

func (o *offlineBackend) backup(_ context.Context, w io.Writer) (int64, error) {
	st, err := o.store()
	if err != nil {
		return 0, err
	}
	return st.BackupTo(w)
}

func (o *offlineBackend) export(_ context.Context, w io.Writer) error {
	st, err := o.store()
	if err != nil {
		return err
	}
	return st.ExportTo(w)
}
