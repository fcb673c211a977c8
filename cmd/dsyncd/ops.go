package main

// Operator commands that read (and, for dead letters, act on) a dsyncd's
// state: holds, audit, why, dlq, backup; and check-config. Each works against
// a running "dsyncd serve" through its /v1 API, or offline on a stopped one by
// opening the store (and the embedded JetStream) directly. See target.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/queue"
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

// opsFlags are the flags shared by the operator commands.
type opsFlags struct {
	server  string
	offline bool
	format  string
}

func (a *app) addTargetFlags(cmd *cobra.Command, f *opsFlags, persistent bool) {
	fs := cmd.Flags()
	if persistent {
		fs = cmd.PersistentFlags()
	}
	fs.StringVar(&f.server, "server", "", "base URL of a running dsyncd serve (default: http://<http.listen>, falling back to offline)")
	fs.BoolVar(&f.offline, "offline", false, "do not use the API: open the store (and the embedded JetStream) directly; serve must be stopped")
	formatFlag(fs, &f.format)
	fs.StringVar(&a.dbPath, "db", "", "store file for offline use (default: store.path from the configuration)")
}

func (f *opsFlags) check() error {
	if f.offline && f.server != "" {
		return usagef("--offline and --server exclude each other")
	}
	return nil
}

// backend is what the operator commands need from a dsyncd, online or offline.
type backend interface {
	holds(ctx context.Context, all bool) ([]storage.Hold, error)
	audit(ctx context.Context, f storage.AuditFilter) ([]storage.AuditEntry, error)
	user(ctx context.Context, id string) (*storage.UserView, error)
	deadLetters(ctx context.Context) ([]queue.DeadLetter, error)
	deadLetter(ctx context.Context, seq uint64) (queue.DeadLetter, error)
	replay(ctx context.Context, seq uint64) error
	replayAll(ctx context.Context) ([]uint64, error)
	drop(ctx context.Context, seq uint64) error
	backup(ctx context.Context, w io.Writer) (int64, error)
	// export returns the canonical snapshot, as GET /v1/export.
	export(ctx context.Context) ([]byte, error)
	// online reports whether the operations go through a running daemon.
	online() bool
}

// withBackend runs fn against the daemon the flags and configuration name:
// the API at --server; or offline with --offline; or else the API at
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
	token, note := cliToken(cfg)
	c := &apiClient{base: strings.TrimRight(server, "/"), token: token, tokenNote: note}
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

// ---------------------------------------------------------------- online

// apiClient is a backend speaking to a running serve's /v1 API.
type apiClient struct {
	base, token string
	tokenNote   string // why token is empty (cliToken), for a 401's error
	refused     bool   // a request found nothing listening
	answered    bool   // a request got an HTTP answer
}

// apiError is an HTTP error answer of the API.
type apiError struct {
	method, path string
	status       int
	msg          string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s %s: %s (HTTP %d)", e.method, e.path, e.msg, e.status)
}

func (e *apiError) Is(target error) bool {
	return e.status == http.StatusNotFound && (target == storage.ErrNotFound || target == queue.ErrNotFound)
}

func (c *apiClient) online() bool { return true }

// send performs one request; the caller closes the body of a 2xx answer.
func (c *apiClient) send(ctx context.Context, method, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	setAPIHeaders(req, c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			c.refused = true
			return nil, fmt.Errorf("%s %s: connection refused", method, c.base+path)
		}
		return nil, err
	}
	c.answered = true
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e struct {
		Error string `json:"error"`
	}
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	return nil, &apiError{method: method, path: path, status: resp.StatusCode, msg: msg + unauthorizedNote(resp.StatusCode, c.tokenNote)}
}

// call performs a request with a 30s limit and decodes the JSON answer into out.
func (c *apiClient) call(ctx context.Context, method, path string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := c.send(ctx, method, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func (c *apiClient) holds(ctx context.Context, all bool) ([]storage.Hold, error) {
	var out struct {
		Holds []storage.Hold `json:"holds"`
	}
	path := "/v1/holds"
	if all {
		path += "?all=true"
	}
	return out.Holds, c.call(ctx, http.MethodGet, path, &out)
}

func (c *apiClient) audit(ctx context.Context, f storage.AuditFilter) ([]storage.AuditEntry, error) {
	q := url.Values{}
	for k, v := range map[string]string{"user": f.UserID, "org": f.OrganizationID, "badge": f.Badge} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.UTC().Format(time.RFC3339))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	if f.After > 0 {
		q.Set("after", strconv.FormatUint(f.After, 10))
	}
	path := "/v1/audit"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out struct {
		Entries []storage.AuditEntry `json:"entries"`
	}
	if err := c.call(ctx, http.MethodGet, path, &out); err != nil {
		return nil, err
	}
	if f.Limit > 0 && len(out.Entries) > f.Limit { // a daemon older than limit= sent them all
		if f.After > 0 {
			out.Entries = out.Entries[:f.Limit]
		} else {
			out.Entries = out.Entries[len(out.Entries)-f.Limit:]
		}
	}
	return out.Entries, nil
}

func (c *apiClient) user(ctx context.Context, id string) (*storage.UserView, error) {
	var u storage.UserView
	if err := c.call(ctx, http.MethodGet, "/v1/users/"+url.PathEscape(id), &u); err != nil {
		return nil, err
	}
	return &u, nil
}

func (c *apiClient) deadLetters(ctx context.Context) ([]queue.DeadLetter, error) {
	var out struct {
		DeadLetters []queue.DeadLetter `json:"dead_letters"`
	}
	return out.DeadLetters, c.call(ctx, http.MethodGet, "/v1/dlq", &out)
}

func (c *apiClient) deadLetter(ctx context.Context, seq uint64) (queue.DeadLetter, error) {
	var dl queue.DeadLetter
	return dl, c.call(ctx, http.MethodGet, "/v1/dlq/"+strconv.FormatUint(seq, 10), &dl)
}

func (c *apiClient) replay(ctx context.Context, seq uint64) error {
	return c.call(ctx, http.MethodPost, "/v1/dlq/"+strconv.FormatUint(seq, 10)+"/replay", nil)
}

func (c *apiClient) replayAll(ctx context.Context) ([]uint64, error) {
	var out struct {
		Replayed []uint64 `json:"replayed"`
	}
	return out.Replayed, c.call(ctx, http.MethodPost, "/v1/dlq/replay", &out)
}

func (c *apiClient) drop(ctx context.Context, seq uint64) error {
	return c.call(ctx, http.MethodDelete, "/v1/dlq/"+strconv.FormatUint(seq, 10), nil)
}

// backup streams GET /v1/backup to w (no overall time limit: stores can be large).
func (c *apiClient) backup(ctx context.Context, w io.Writer) (int64, error) {
	resp, err := c.send(ctx, http.MethodGet, "/v1/backup")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("GET /v1/backup: %w", err)
	}
	return n, nil
}

func (c *apiClient) export(ctx context.Context) ([]byte, error) {
	resp, err := c.send(ctx, http.MethodGet, "/v1/export")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET /v1/export: %w", err)
	}
	return b, nil
}

// ---------------------------------------------------------------- offline

// offlineBackend opens the store, and the queue when needed, of a stopped serve.
type offlineBackend struct {
	cfg      config.Config
	dbPath   string
	explicit bool   // --offline was given
	apiTried string // the API URL that refused the connection, if any
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

// store opens the store, refusing to create one where none is.
func (o *offlineBackend) store() (*storage.Store, error) {
	if o.st != nil {
		return o.st, nil
	}
	opts := storeOptions(o.cfg, o.dbPath)
	if _, err := os.Stat(opts.Path); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no store at %s: check --config (data_dir, store.path) or --db", opts.Path)
	}
	st, err := storage.Open(opts)
	if errors.Is(err, storage.ErrInUse) {
		switch {
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

func (o *offlineBackend) user(_ context.Context, id string) (*storage.UserView, error) {
	st, err := o.store()
	if err != nil {
		return nil, err
	}
	return st.User(id)
}

func (o *offlineBackend) deadLetters(ctx context.Context) ([]queue.DeadLetter, error) {
	q, err := o.queue(ctx)
	if err != nil {
		return nil, err
	}
	return q.DeadLetters(ctx)
}

func (o *offlineBackend) deadLetter(ctx context.Context, seq uint64) (queue.DeadLetter, error) {
	q, err := o.queue(ctx)
	if err != nil {
		return queue.DeadLetter{}, err
	}
	return q.DeadLetter(ctx, seq)
}

func (o *offlineBackend) replay(ctx context.Context, seq uint64) error {
	q, err := o.queue(ctx)
	if err != nil {
		return err
	}
	return q.ReplayDeadLetter(ctx, seq)
}

func (o *offlineBackend) replayAll(ctx context.Context) ([]uint64, error) {
	q, err := o.queue(ctx)
	if err != nil {
		return nil, err
	}
	dl, err := q.DeadLetters(ctx)
	if err != nil {
		return nil, err
	}
	done := []uint64{}
	for _, l := range dl {
		if err := q.ReplayDeadLetter(ctx, l.Seq); err != nil {
			return done, err
		}
		done = append(done, l.Seq)
	}
	return done, nil
}

// drop deletes a dead letter and audits it, as DELETE /v1/dlq/{seq} does.
func (o *offlineBackend) drop(ctx context.Context, seq uint64) error {
	q, err := o.queue(ctx)
	if err != nil {
		return err
	}
	dl, err := q.DeadLetter(ctx, seq)
	if err != nil {
		return err
	}
	if err := q.DropDeadLetter(ctx, seq); err != nil {
		return err
	}
	return o.st.RecordAudit(dropAudit(dl.MsgID, dl.Subject, dl.Reason))
}

func (o *offlineBackend) backup(_ context.Context, w io.Writer) (int64, error) {
	st, err := o.store()
	if err != nil {
		return 0, err
	}
	return st.BackupTo(w)
}

func (o *offlineBackend) export(context.Context) ([]byte, error) {
	st, err := o.store()
	if err != nil {
		return nil, err
	}
	snap, err := st.Export()
	if err != nil {
		return nil, err
	}
	return storage.MarshalSnapshot(snap)
}

// ---------------------------------------------------------------- output

func writeJSONTo(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes aligned columns; "-" stands for an empty cell.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			c = strings.NewReplacer("\t", " ", "\n", " ").Replace(c)
			if c == "" {
				c = "-"
			}
			cells[i] = c
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// parseSince reads an RFC 3339 time, a date (2006-01-02, UTC), or a duration
// meaning that long ago (24h, 90m).
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, usagef("--since: %q is not an RFC 3339 time (2024-05-01T12:00:00Z), a date (2024-05-01) or a duration (24h)", s)
}

// ---------------------------------------------------------------- holds

func (a *app) holdsCommand() *cobra.Command {
	var f opsFlags
	var all bool
	cmd := &cobra.Command{
		Use:   "holds [--all] [--config FILE] [--server URL | --offline] [--format text|json]",
		Short: "List the holds: changes the safeguards did not make on their own",
		Long: `holds lists the holds the safeguards opened, oldest first: open ones only, or every
hold ever opened with --all.

A last_admin hold keeps a badge whose revocation would have left an organisation
without an admin; it closes by itself once another admin exists or the mapping grants
the badge again. A mass_deprovision hold pauses an organisation's sync because too many
of its users would have lost every badge at once; the organisation's events wait,
in order, until an operator resumes it ("dsyncd resume ORG") or rejects the hold.
Holds are approved or rejected with POST /v1/holds/{id}/approve or /reject on the API.

Columns: ID, KIND, STATE (open, or the resolution: released, approved, rejected),
ORGANIZATION, USER, BADGE, CREATED, REASON.` + targetHelp + exitStatusHelp,
		Example: `  # Open holds of the daemon configured in /etc/dsyncd/dsyncd.yaml
  dsyncd holds --config /etc/dsyncd/dsyncd.yaml

  # Every hold, as JSON, from a stopped daemon's store
  dsyncd holds --all --offline --format json --config /etc/dsyncd/dsyncd.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			return a.withBackend(cmd.Context(), cfg, &f, func(b backend) error {
				hs, err := b.holds(cmd.Context(), all)
				if err != nil {
					return err
				}
				if f.format == "json" {
					return writeJSONTo(a.stdout, map[string]any{"holds": nonNil(hs)})
				}
				rows := make([][]string, 0, len(hs))
				for _, h := range hs {
					state := "open"
					if !h.Open() {
						state = h.Resolution
					}
					reason := h.Reason
					if h.Deferred > 0 {
						reason += fmt.Sprintf(" (%d events waiting)", h.Deferred)
					}
					rows = append(rows, []string{strconv.FormatUint(h.ID, 10), h.Kind, state, h.OrganizationID, h.UserID, h.Badge, fmtTime(h.CreatedAt), reason})
				}
				return table(a.stdout, []string{"ID", "KIND", "STATE", "ORGANIZATION", "USER", "BADGE", "CREATED", "REASON"}, rows)
			})
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "list closed holds too")
	a.addTargetFlags(cmd, &f, false)
	return cmd
}

// ---------------------------------------------------------------- audit

func (a *app) auditCommand() *cobra.Command {
	var f opsFlags
	var filter storage.AuditFilter
	var since string
	cmd := &cobra.Command{
		Use:   "audit [--user ID] [--org ORG] [--badge BADGE] [--since T] [--after SEQ] [--limit N] [--config FILE] [--server URL | --offline]",
		Short: "Print the audit trail: every badge granted, revoked, held or kept, and why",
		Long: `audit prints the audit trail, oldest first: one entry per badge granted, revoked, held,
released or kept (a change sync was not allowed to make), per dead letter an operator
dropped, with the event that caused it and the reason.

The filters combine: --user (a directory user id), --org (a WorkOS organization id),
--badge, --since (an RFC 3339 time, a date, or a duration meaning that long ago: 24h),
and --limit N (the newest N matching entries). --after SEQ starts after the
entry with that sequence number (the JSON's "seq"), oldest first, so that a job
that remembers the last seq it shipped tails the trail.

With store.audit_retention set, entries older than it are gone (the badges stay).

Columns: SEQ (the entry's sequence number, for --after), TIME (when dsyncd applied it, UTC), ACTION, USER, BADGE, ORGANIZATION,
EVENT (the WorkOS event id; config:mapping for a mapping change; operator:hold:ID for an
operator's decision on hold ID), REASON.` + targetHelp + exitStatusHelp,
		Example: `  # What happened to one user
  dsyncd audit --user directory_user_01E1X1B89NH8Z3SDFJR4H7RGX7

  # Admin changes in one organisation over the last day, as JSON
  dsyncd audit --org org_01EZTR6WYX1A0DSE2CYMGXQ24Y --badge admin --since 24h --format json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			if since != "" {
				if filter.Since, err = parseSince(since, time.Now()); err != nil {
					return err
				}
			}
			if filter.Limit < 0 {
				return usagef("--limit must be >= 0")
			}
			return a.withBackend(cmd.Context(), cfg, &f, func(b backend) error {
				es, err := b.audit(cmd.Context(), filter)
				if err != nil {
					return err
				}
				if f.format == "json" {
					return writeJSONTo(a.stdout, map[string]any{"entries": nonNil(es)})
				}
				rows := make([][]string, 0, len(es))
				for _, e := range es {
					rows = append(rows, []string{strconv.FormatUint(e.Seq, 10), fmtTime(e.Time), e.Action, e.UserID, e.Badge, e.OrganizationID, e.EventID, e.Reason})
				}
				return table(a.stdout, []string{"SEQ", "TIME", "ACTION", "USER", "BADGE", "ORGANIZATION", "EVENT", "REASON"}, rows)
			})
		},
	}
	cmd.Flags().StringVar(&filter.UserID, "user", "", "only entries of this directory user id")
	cmd.Flags().StringVar(&filter.OrganizationID, "org", "", "only entries of this WorkOS organization id")
	cmd.Flags().StringVar(&filter.Badge, "badge", "", "only entries of this badge")
	cmd.Flags().StringVar(&since, "since", "", "only entries since this RFC 3339 time, date or duration ago (24h)")
	cmd.Flags().IntVar(&filter.Limit, "limit", 0, "only the newest N matching entries, or with --after the first N after it (0: all)")
	cmd.Flags().Uint64Var(&filter.After, "after", 0, "only entries after this SEQ (the last one a previous call printed): tail the trail")
	a.addTargetFlags(cmd, &f, false)
	return cmd
}

// ---------------------------------------------------------------- why

// whyAnswer is the answer of "dsyncd why".
type whyAnswer struct {
	User        string              `json:"user"`
	Badge       string              `json:"badge"`
	Has         bool                `json:"has"`
	Explanation string              `json:"explanation"`
	Grants      []whyGrant          `json:"grants"`
	LastChange  *storage.AuditEntry `json:"last_change,omitempty"`
	Holds       []storage.Hold      `json:"holds,omitempty"`
}

type whyGrant struct {
	Rule   string `json:"rule"`
	Source string `json:"source"`
	Group  string `json:"group,omitempty"`
	Role   string `json:"role,omitempty"`
	Reason string `json:"reason"`
}

// explain answers whether u has badge and why, from its grants, the audit
// entries of (u, badge) oldest first, and the open holds.
// auditRetention is store.audit_retention: with it set, an empty trail no
// longer proves a badge was never granted.
func explain(u *storage.UserView, badge string, entries []storage.AuditEntry, open []storage.Hold, auditRetention time.Duration) whyAnswer {
	ans := whyAnswer{User: u.ID, Badge: badge, Has: slices.Contains(u.Badges, badge), Grants: []whyGrant{}}
	for _, h := range open {
		if h.UserID == u.ID && h.Badge == badge && h.Open() {
			ans.Holds = append(ans.Holds, h)
		}
	}
	var reasons []string
	for _, g := range u.Grants {
		if g.Badge != badge {
			continue
		}
		r := grantExplanation(g, u.GroupNames, ans.Holds)
		ans.Grants = append(ans.Grants, whyGrant{Rule: g.Rule, Source: g.Source, Group: g.Group, Role: g.Role, Reason: r})
		reasons = append(reasons, r)
	}
	if len(entries) > 0 {
		last := entries[len(entries)-1]
		ans.LastChange = &last
	}
	if ans.Has {
		s := fmt.Sprintf("%s has %s: %s", u.ID, badge, strings.Join(reasons, "; and "))
		for i := len(entries) - 1; i >= 0; i-- {
			if e := entries[i]; e.Action == storage.ActionGrant {
				s += fmt.Sprintf(" (granted %s at %s)", byEvent(e.EventID), fmtTime(e.Time))
				break
			}
		}
		ans.Explanation = s
		return ans
	}
	s := fmt.Sprintf("%s does not have %s: ", u.ID, badge)
	switch e := ans.LastChange; {
	case e != nil && e.Action == storage.ActionRevoke:
		s += fmt.Sprintf("revoked at %s because %s (%s)", fmtTime(e.Time), e.Reason, byEvent(e.EventID))
	case e != nil && e.Action == storage.ActionGrant:
		s += fmt.Sprintf("granted at %s (%s), but no longer held", fmtTime(e.Time), byEvent(e.EventID))
	case e != nil:
		s += fmt.Sprintf("last change at %s: %s: %s (%s)", fmtTime(e.Time), e.Action, e.Reason, byEvent(e.EventID))
	case auditRetention > 0:
		s += fmt.Sprintf("no rule of the mapping grants it to this user, and the audit trail (kept for %s) records no change of it", shortDuration(auditRetention))
	default:
		s += "never granted: no rule of the mapping grants it to this user"
	}
	switch {
	case u.Deleted:
		s += "; the user is deleted"
	case u.State != "" && u.State != "active":
		s += "; the user is " + u.State
	}
	ans.Explanation = s
	return ans
}

func byEvent(id string) string {
	switch id {
	case "":
		return "by an operator"
	case storage.EventMappingChange:
		return "by a mapping change"
	}
	return "by event " + id
}

func grantExplanation(g mapping.Grant, names map[string]string, holds []storage.Hold) string {
	switch g.Source {
	case "group":
		s := "member of group " + g.Group
		if n := names[g.Group]; n != "" {
			s += " " + strconv.Quote(n)
		}
		return s + " matched by rule " + g.Rule
	case "role":
		return "has WorkOS role " + g.Role + " matched by rule " + g.Rule
	case "default":
		return "default badge of every active user"
	case storage.SourceHeld:
		s := "kept by an open last-admin hold"
		if len(holds) > 0 {
			s += fmt.Sprintf(" (hold %d: %s)", holds[0].ID, holds[0].Reason)
		}
		return s
	case storage.SourceRetained:
		return "retained after its rule " + g.Rule + " was removed from the mapping (on_unmap: keep)"
	case storage.SourceBreakGlass:
		return "break-glass account: sync never revokes its badges (granted by rule " + g.Rule + ")"
	}
	return "granted by rule " + g.Rule + " (" + g.Source + ")"
}

func (a *app) whyCommand() *cobra.Command {
	var f opsFlags
	cmd := &cobra.Command{
		Use:   "why USER BADGE [--config FILE] [--server URL | --offline] [--format text|json]",
		Short: "Explain in one line why a user has, or does not have, a badge",
		Long: `why answers in one line whether the directory user USER holds BADGE, and why: the
group (and the mapping rule matching it), WorkOS role or default that grants it, and
the event that granted it; or when and why it was revoked, held or never granted.

  u1 has admin: member of group g1 "App Admins" matched by rule group:name=App Admins (granted by event e1 at 2024-06-01T10:00:00Z)
  u2 does not have admin: revoked at 2024-06-02T08:00:00Z because no rule grants it any more (by event e7)

It reads the user's grants and the audit trail of (USER, BADGE). --format json gives
the answer with every grant and the last audit entry.` + targetHelp + `

EXIT STATUS
  0  the answer was printed, whether the user has the badge or not ("has" in JSON)
  1  error: no such user, daemon unreachable, ...`,
		Example: `  dsyncd why directory_user_01E1X1B89NH8Z3SDFJR4H7RGX7 admin
  dsyncd why directory_user_01E1X1B89NH8Z3SDFJR4H7RGX7 billing --format json | jq .has`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			userID, badge := args[0], args[1]
			return a.withBackend(cmd.Context(), cfg, &f, func(b backend) error {
				ctx := cmd.Context()
				u, err := b.user(ctx, userID)
				if errors.Is(err, storage.ErrNotFound) {
					return fmt.Errorf("no such user %q", userID)
				}
				if err != nil {
					return err
				}
				entries, err := b.audit(ctx, storage.AuditFilter{UserID: userID, Badge: badge})
				if err != nil {
					return err
				}
				holds, err := b.holds(ctx, false)
				if err != nil {
					return err
				}
				ans := explain(u, badge, entries, holds, cfg.Store.AuditRetention)
				if f.format == "json" {
					return writeJSONTo(a.stdout, ans)
				}
				_, err = fmt.Fprintln(a.stdout, ans.Explanation)
				return err
			})
		},
	}
	a.addTargetFlags(cmd, &f, false)
	return cmd
}

// ---------------------------------------------------------------- dlq

// dlqView is a dead letter as the dlq commands print it.
type dlqView struct {
	Seq          uint64    `json:"id"`
	Subject      string    `json:"subject"`
	StreamSeq    uint64    `json:"stream_seq"`
	EventID      string    `json:"event_id,omitempty"`
	Reason       string    `json:"reason"`
	Attempts     int       `json:"attempts"`
	ParkedAt     time.Time `json:"parked_at"`
	Data         string    `json:"data"`
	DataEncoding string    `json:"data_encoding"` // text or base64
	// StoredEncoding is the stream encoding (s2) of data dsyncd could not
	// decode: Data is then the bytes as stored. Empty for an event's JSON.
	StoredEncoding string `json:"stored_encoding,omitempty"`
	Bytes          int    `json:"bytes"`
}

func newDLQView(dl queue.DeadLetter) dlqView {
	v := dlqView{Seq: dl.Seq, Subject: dl.Subject, StreamSeq: dl.StreamSeq, EventID: dl.MsgID, Reason: dl.Reason,
		Attempts: dl.Attempts, ParkedAt: dl.ParkedAt.UTC(), Bytes: len(dl.Data), Data: string(dl.Data), DataEncoding: "text",
		StoredEncoding: dl.Encoding}
	if !utf8.Valid(dl.Data) {
		v.Data, v.DataEncoding = base64.StdEncoding.EncodeToString(dl.Data), "base64"
	}
	return v
}

func parseSeqs(args []string) ([]uint64, error) {
	out := make([]uint64, 0, len(args))
	for _, s := range args {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n == 0 {
			return nil, usagef("dead letter id %q: want a positive number, as \"dsyncd dlq list\" shows", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func (a *app) dlqCommand() *cobra.Command {
	var f opsFlags
	cmd := &cobra.Command{
		Use:   "dlq (list | show ID | replay ID...|--all | drop ID...)",
		Short: "Inspect, replay or drop the events parked in the dead-letter stream",
		Long: `dlq deals with dead letters: events the worker parked in the dead-letter stream
(nats.dlq_stream) because they could not be decoded, or failed to apply
worker.max_attempts times. Parked events are not lost and do not block the others;
each waits for an operator to replay it (after fixing the cause) or drop it.

Every dead letter has an ID (its sequence in the dead-letter stream), the subject and
sequence of the original message, the WorkOS event id when known, the reason, the
number of attempts, and the original body.

  list         list the dead letters, oldest first
  show ID      print one with its body
  replay ID... republish to the events stream, through the normal apply path: the
               worker applies it like any event (a running serve at once, a stopped
               one when it starts); --all replays every dead letter
  drop ID...   delete for good, recording the drop in the audit trail` + targetHelp + exitStatusHelp,
		Example: `  dsyncd dlq list --config /etc/dsyncd/dsyncd.yaml
  dsyncd dlq show 12
  dsyncd dlq replay 12 13
  dsyncd dlq replay --all
  dsyncd dlq drop 14
  dsyncd dlq list --offline --format json   # serve stopped`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	a.addTargetFlags(cmd, &f, true)

	withDLQ := func(fn func(cmd *cobra.Command, b backend, args []string) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			return a.withBackend(cmd.Context(), cfg, &f, func(b backend) error { return fn(cmd, b, args) })
		}
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the dead letters, oldest first",
		Long: `list prints the dead letters, oldest first: ID, PARKED (time, UTC), SUBJECT, EVENT
(WorkOS event id), ATTEMPTS, BYTES, REASON.` + targetHelp + exitStatusHelp,
		Example: `  dsyncd dlq list
  dsyncd dlq list --format json | jq '.dead_letters[].reason'`,
		Args: cobra.NoArgs,
		RunE: withDLQ(func(cmd *cobra.Command, b backend, _ []string) error {
			dls, err := b.deadLetters(cmd.Context())
			if err != nil {
				return err
			}
			views := make([]dlqView, 0, len(dls))
			for _, dl := range dls {
				views = append(views, newDLQView(dl))
			}
			if f.format == "json" {
				return writeJSONTo(a.stdout, map[string]any{"dead_letters": views})
			}
			rows := make([][]string, 0, len(views))
			for _, v := range views {
				rows = append(rows, []string{strconv.FormatUint(v.Seq, 10), fmtTime(v.ParkedAt), v.Subject, v.EventID,
					strconv.Itoa(v.Attempts), strconv.Itoa(v.Bytes), v.Reason})
			}
			return table(a.stdout, []string{"ID", "PARKED", "SUBJECT", "EVENT", "ATTEMPTS", "BYTES", "REASON"}, rows)
		}),
	}
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Print one dead letter with its body",
		Long:  `show prints the dead letter ID: where it came from, why it was parked, and its body.` + targetHelp + exitStatusHelp,
		Example: `  dsyncd dlq show 12
  dsyncd dlq show 12 --format json | jq -r .data | jq .`,
		Args: cobra.ExactArgs(1),
		RunE: withDLQ(func(cmd *cobra.Command, b backend, args []string) error {
			seqs, err := parseSeqs(args)
			if err != nil {
				return err
			}
			dl, err := b.deadLetter(cmd.Context(), seqs[0])
			if err != nil {
				return err
			}
			v := newDLQView(dl)
			if f.format == "json" {
				return writeJSONTo(a.stdout, v)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 0, 1, ' ', 0)
			rows := [][2]string{{"id", strconv.FormatUint(v.Seq, 10)}, {"parked at", fmtTime(v.ParkedAt)},
				{"subject", v.Subject}, {"stream seq", strconv.FormatUint(v.StreamSeq, 10)}, {"event id", v.EventID},
				{"attempts", strconv.Itoa(v.Attempts)}, {"reason", v.Reason}, {"bytes", strconv.Itoa(v.Bytes)}}
			if v.StoredEncoding != "" {
				rows = append(rows, [2]string{"stored encoding", v.StoredEncoding})
			}
			for _, kv := range rows {
				fmt.Fprintf(w, "%s:\t%s\n", kv[0], kv[1])
			}
			if err := w.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "data (%s):\n%s\n", v.DataEncoding, v.Data)
			return nil
		}),
	}
	var all bool
	replay := &cobra.Command{
		Use:   "replay (ID... | --all)",
		Short: "Republish dead letters to the events stream for the worker to apply",
		Long: `replay republishes each dead letter to the events stream under its original subject,
then deletes it from the dead-letter stream. The worker applies it through the normal
path, in stream order after what is already queued: a running serve at once, a stopped
one when it starts. If it fails again it is parked again, under a new ID.` + targetHelp + exitStatusHelp,
		Example: `  dsyncd dlq replay 12
  dsyncd dlq replay --all`,
		RunE: withDLQ(func(cmd *cobra.Command, b backend, args []string) error {
			if all == (len(args) > 0) {
				return errors.New("give dead letter IDs or --all, not both or neither")
			}
			var done []uint64
			if all {
				var err error
				if done, err = b.replayAll(cmd.Context()); err != nil {
					return err
				}
			} else {
				seqs, err := parseSeqs(args)
				if err != nil {
					return err
				}
				for _, s := range seqs {
					if err := b.replay(cmd.Context(), s); err != nil {
						if len(done) > 0 {
							fmt.Fprintf(a.stderr, "replayed before the error: %v\n", done)
						}
						return err
					}
					done = append(done, s)
				}
			}
			if f.format == "json" {
				return writeJSONTo(a.stdout, map[string]any{"replayed": nonNil(done)})
			}
			if len(done) == 0 {
				_, err := fmt.Fprintln(a.stdout, "no dead letters to replay")
				return err
			}
			when := "the worker applies them now"
			if !b.online() {
				when = "dsyncd serve applies them when it starts"
			}
			_, err := fmt.Fprintf(a.stdout, "replayed %d dead letter(s) (%s) to the events stream; %s\n", len(done), joinSeqs(done), when)
			return err
		}),
	}
	replay.Flags().BoolVar(&all, "all", false, "replay every dead letter")
	drop := &cobra.Command{
		Use:   "drop ID...",
		Short: "Delete dead letters for good, with an audit entry",
		Long: `drop deletes each dead letter from the dead-letter stream for good and appends an entry
(action drop, with the event id, subject and the reason it was parked) to the audit
trail. The event is never applied. dsyncd rebuild leaves dropped events out too.` + targetHelp + exitStatusHelp,
		Example: `  dsyncd dlq drop 14
  dsyncd dlq drop 14 15 16`,
		Args: cobra.MinimumNArgs(1),
		RunE: withDLQ(func(cmd *cobra.Command, b backend, args []string) error {
			seqs, err := parseSeqs(args)
			if err != nil {
				return err
			}
			var done []uint64
			for _, s := range seqs {
				if err := b.drop(cmd.Context(), s); err != nil {
					if len(done) > 0 {
						fmt.Fprintf(a.stderr, "dropped before the error: %v\n", done)
					}
					return err
				}
				done = append(done, s)
			}
			if f.format == "json" {
				return writeJSONTo(a.stdout, map[string]any{"dropped": done})
			}
			_, err = fmt.Fprintf(a.stdout, "dropped %d dead letter(s) (%s); recorded in the audit trail\n", len(done), joinSeqs(done))
			return err
		}),
	}
	cmd.AddCommand(list, show, replay, drop)
	return cmd
}

func joinSeqs(s []uint64) string {
	parts := make([]string, len(s))
	for i, n := range s {
		parts[i] = strconv.FormatUint(n, 10)
	}
	return strings.Join(parts, ", ")
}

// ---------------------------------------------------------------- backup

// backupResult describes a verified backup.
type backupResult struct {
	File        string `json:"file"`
	Bytes       int64  `json:"bytes"`
	Online      bool   `json:"online"`
	Directories int    `json:"directories"`
	Users       int    `json:"users"`
	Groups      int    `json:"groups"`
	OpenHolds   int    `json:"open_holds"`
}

func (a *app) backupCommand() *cobra.Command {
	var f opsFlags
	var force bool
	cmd := &cobra.Command{
		Use:   "backup FILE [--config FILE] [--server URL | --offline] [--force]",
		Short: "Write a consistent copy of the store to FILE, while serving or not",
		Long: `backup writes a consistent copy of the store (a bbolt file, as of one instant) to FILE.

While serve runs it streams the copy from GET /v1/backup without stopping anything:
webhooks keep being received and applied meanwhile. On a stopped daemon it copies the
store file directly.

The copy is written to FILE.tmp beside FILE, flushed to disk, checked (bbolt's
consistency check, and a full read of the snapshot), then renamed to FILE, so FILE is
either a complete, verified backup or untouched. It refuses to overwrite an existing
FILE unless --force. FILE "-" writes the copy to standard output (unchecked).

To restore: stop serve, then "dsyncd rebuild --from FILE" starts from the backup and
applies every event the stream retained since (those the backup has change nothing).
Or copy the backup over the store file (store.path, default <data_dir>/dsyncd.db; mode
0600, owned by the service user): events applied after the backup are then missing,
as the worker already acknowledged them. Start serve.` + targetHelp + exitStatusHelp,
		Example: `  # Hot backup of the running daemon
  dsyncd backup /var/backups/dsyncd/dsyncd-$(date +%F).db --config /etc/dsyncd/dsyncd.yaml

  # Compressed, to standard output
  dsyncd backup - | gzip > dsyncd.db.gz`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			dest := args[0]
			if dest == "-" {
				return a.withBackend(cmd.Context(), cfg, &f, func(b backend) error {
					_, err := b.backup(cmd.Context(), a.stdout)
					return err
				})
			}
			if _, err := os.Stat(dest); err == nil && !force {
				return fmt.Errorf("%s exists; pass --force to overwrite it", dest)
			}
			var res *backupResult
			err = a.withBackend(cmd.Context(), cfg, &f, func(b backend) error {
				var err error
				res, err = writeBackup(cmd.Context(), cfg, b, dest)
				return err
			})
			if err != nil {
				return err
			}
			if f.format == "json" {
				return writeJSONTo(a.stdout, res)
			}
			how := "offline"
			if res.Online {
				how = "from the running daemon"
			}
			_, err = fmt.Fprintf(a.stdout, "backup written to %s (%s): %d bytes, %d directories, %d users, %d groups, %d open holds; consistency checked\n",
				res.File, how, res.Bytes, res.Directories, res.Users, res.Groups, res.OpenHolds)
			return err
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "overwrite FILE if it exists")
	a.addTargetFlags(cmd, &f, false)
	return cmd
}

// writeBackup copies the store through b to dest.tmp, checks it, and renames it to dest.
func writeBackup(ctx context.Context, cfg config.Config, b backend, dest string) (res *backupResult, err error) {
	tmp := dest + ".tmp"
	fh, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	n, err := b.backup(ctx, fh)
	if err == nil {
		err = fh.Sync()
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	res = &backupResult{File: dest, Bytes: n, Online: b.online()}
	if err := verifyStoreFile(cfg, tmp, res); err != nil {
		return nil, fmt.Errorf("backup: the copy does not check out: %w", err)
	}
	if err := os.Rename(tmp, dest); err != nil {
		return nil, err
	}
	return res, syncDir(filepath.Dir(dest))
}

// verifyStoreFile opens a store file, runs the consistency check and reads
// the whole snapshot, counting what it holds into res.
func verifyStoreFile(cfg config.Config, path string, res *backupResult) error {
	opts := storeOptions(cfg, path)
	opts.OnHold = nil
	st, err := storage.Open(opts)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := st.Check(); err != nil {
		return err
	}
	snap, err := st.Export()
	if err != nil {
		return err
	}
	res.Directories, res.Users, res.Groups, res.OpenHolds = len(snap.Directories), len(snap.Users), len(snap.Groups), len(snap.Holds)
	return st.Close()
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}

// ---------------------------------------------------------------- check-config

func (a *app) checkConfigCommand() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "check-config --config FILE [--format text|json]",
		Short: "Check a configuration and list every problem at once",
		Long: `check-config loads the configuration the way serve does (the file, then DSYNCD_*
environment variables, then flags) and prints every problem at once, one per line,
each "key: problem": unknown keys, values of the wrong type, invalid values, missing
secrets, a mapping in which no rule grants mapping.admin_badge (unless
safeguards.allow_no_admin_rule is true), which serve refuses, and DSYNCD_* environment
variables that set no key (a misspelt one is otherwise ignored).

It then prints the warnings: settings that are valid but probably unintended.
It does not start anything or open the store.

Use it before restarting or reloading serve after editing the configuration; the
systemd unit runs it as ExecStartPre.

EXIT STATUS
  0  no problems (there may be warnings)
  1  at least one problem; serve would refuse to start with this configuration`,
		Example: `  dsyncd check-config --config /etc/dsyncd/dsyncd.yaml

  # With the secrets of the systemd environment file
  sudo sh -c 'set -a; . /etc/dsyncd/dsyncd.env; dsyncd check-config --config /etc/dsyncd/dsyncd.yaml'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			problems, warnings, err := checkConfig(a.configPath, cmd)
			if err != nil {
				return err
			}
			name := a.configPath
			if name == "" {
				name = "(no file: defaults and environment)"
			}
			if format == "json" {
				if err := writeJSONTo(a.stdout, map[string]any{"file": a.configPath, "problems": nonNil(problems), "warnings": nonNil(warnings)}); err != nil {
					return err
				}
			} else {
				if len(problems) == 0 {
					fmt.Fprintf(a.stdout, "%s: OK\n", name)
				} else {
					fmt.Fprintf(a.stdout, "%s: %d problem(s):\n", name, len(problems))
					for _, p := range problems {
						fmt.Fprintf(a.stdout, "  %s\n", p)
					}
				}
				for _, w := range warnings {
					fmt.Fprintf(a.stdout, "warning: %s\n", w)
				}
			}
			if len(problems) > 0 {
				return &exitCodeError{code: exitError, err: fmt.Errorf("%s: %d problem(s) in the configuration", name, len(problems))}
			}
			return nil
		},
	}
	formatFlag(cmd.Flags(), &format)
	config.BindFlags(cmd.Flags())
	return cmd
}

// checkConfig returns every problem and warning of the configuration at
// path (with the environment and the flags). err is for a file that cannot be read.
func checkConfig(path string, cmd *cobra.Command) (problems, warnings []string, err error) {
	cfg, problems, undecoded, err := config.Check(path, cmd.Flags())
	if err != nil {
		return nil, nil, err
	}
	var adminErr error
	// The admin rule is judged on a mapping that decoded.
	mappingDecoded := !slices.ContainsFunc([]string{"mapping", "safeguards.allow_no_admin_rule"}, func(k string) bool { return config.Related(k, undecoded) })
	if mappingDecoded {
		adminErr = checkAdminRule(cfg)
	}
	if adminErr != nil {
		problems = append(problems, adminErr.Error())
	}
	problems = append(problems, envProblems()...)
	warnings = append(warnings, devSecretWarning(cfg)...)
	for _, w := range cfg.Warnings() {
		// The admin rule warning is the problem above when serve refuses it.
		if (adminErr != nil || !mappingDecoded) && strings.HasPrefix(w, "mapping:") && strings.Contains(w, "admin") {
			continue
		}
		warnings = append(warnings, w)
	}
	return problems, warnings, nil
}

// shortDuration writes d as a configuration would: 720h, 1h30m, not 720h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
