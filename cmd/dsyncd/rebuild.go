package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/storage"
	"github.com/dsyncd/dsyncd/worker"
)

// Audit action of the entry a rebuild leaves in the new store.
const actionRebuild = "rebuild"

// dropReasonPrefix starts the reason of dropAudit's entries.
const dropReasonPrefix = "dead letter dropped"

// rebuildReport is what "dsyncd rebuild" did.
type rebuildReport struct {
	Store    string `json:"store"`
	Stream   string `json:"stream"`
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	Messages uint64 `json:"messages"`
	// Outcomes of the applied events; Invalid counts undecodable messages.
	Outcomes worker.Counts `json:"outcomes"`
	// SkippedParked: messages parked in the dead-letter stream (live never applied them).
	SkippedParked int `json:"skipped_parked"`
	// SkippedDropped: events an operator dropped from the dead-letter stream.
	SkippedDropped int              `json:"skipped_dropped"`
	Failed         []rebuildFailure `json:"failed"`
	// Decisions: control messages (operators' decisions, mapping changes)
	// applied where the live nodes applied them; drops are carried over
	// from the previous store instead, and counted here too.
	Decisions int `json:"decisions"`
	// From is the backup the rebuild started from, if any.
	From string `json:"from,omitempty"`
	// Snapshot is the snapshot it started from, if any, and SnapshotSeq the
	// stream sequence that snapshot covers: only later events were applied.
	Snapshot    string `json:"snapshot,omitempty"`
	SnapshotSeq uint64 `json:"snapshot_seq,omitempty"`
	// Compared: the previous store could be read and was compared with the new one.
	Compared    bool     `json:"compared"`
	Identical   bool     `json:"identical"`
	Differences []string `json:"differences"`
	PreRebuild  string   `json:"pre_rebuild,omitempty"`
	DryRun      bool     `json:"dry_run"`
	Warnings    []string `json:"warnings"`
}

type rebuildFailure struct {
	Seq     uint64 `json:"seq"`
	EventID string `json:"event_id"`
	Error   string `json:"error"`
}

func (a *app) rebuildCommand() *cobra.Command {
	var o rebuildOptions
	var format string
	cmd := &cobra.Command{
		Use:   "rebuild --config FILE [--dry-run] [--allow-partial] [--from BACKUP | --from-scratch] [--format text|json]",
		Short: "Rebuild the store from its newest snapshot and the events the stream retains after it",
		Long: `rebuild makes a fresh store from every event still retained in the events stream and
swaps it in for the current one. Use it when the store is lost or damaged, or to
recompute it after a fix in how events are applied.

It needs serve stopped: it takes the store's lock and opens the embedded NATS server's
data directory itself. With serve running it refuses.

  1. The newest usable snapshot in nats.snapshot_bucket (dsyncd snapshot) is fetched to
     a new store file beside the store (<store>.rebuild), its digest and consistency
     checked (a damaged one is skipped for the next older); with --from BACKUP, a copy
     of that backup is used instead; with --from-scratch, or when there is no snapshot,
     an empty store. The configured mapping is applied to it (on a node of a cluster, the
     snapshot's, else the first the stream carries: the one the other nodes had there).
  2. Every message of the stream after the snapshot's sequence (every message, without
     a snapshot) is decoded and applied in order, in batches, through
     the same code the worker uses. Messages parked in the dead-letter stream, and
     events an operator dropped from it (per the previous store's audit trail), are
     left out, as the live worker left them out. Undecodable messages are counted and
     skipped; an event that fails to apply is reported and skipped.
  3. The new store is checked and compared with the previous one (users, groups,
     directories, open holds); the differences are printed.
  4. Unless --dry-run, the previous store is kept as <store>.pre-rebuild (an older
     .pre-rebuild is renamed with a timestamp) and the new one is renamed over the
     store file, atomically.

What the stream cannot give back: events older than nats.max_age (or removed by
nats.max_bytes) are gone; rebuild refuses when the stream no longer starts at its first
message unless --allow-partial, or --from names a backup that covers them: a backup
plus every event retained since is a complete recovery, as events the backup already
has come back as duplicate or stale and change nothing.

Operator decisions are not events: holds an operator approved or rejected are open
again in the new store (decide them again), and badges retained by a removed rule
(on_unmap: keep) are recomputed from the current mapping. The audit trail starts afresh
(or from the backup's; the previous one stays in <store>.pre-rebuild), except for
dead-letter drops, which are carried over.

EXIT STATUS
  0  the store was rebuilt (or, with --dry-run, could be)
  1  error, refusal (serve running, partial stream): the store is untouched`,
		Example: `  sudo systemctl stop dsyncd
  sudo -u dsyncd dsyncd rebuild --config /etc/dsyncd/dsyncd.yaml --dry-run
  sudo -u dsyncd dsyncd rebuild --config /etc/dsyncd/dsyncd.yaml
  sudo systemctl start dsyncd`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			if err := cfg.CheckAdminRule(); err != nil {
				return err
			}
			rep, err := a.rebuild(cmd.Context(), cfg, o)
			if err != nil {
				return err
			}
			if format == "json" {
				return writeJSONTo(a.stdout, rep)
			}
			printRebuild(a, rep)
			return nil
		},
	}
	cmd.Flags().BoolVar(&o.dryRun, "dry-run", false, "build and compare the new store, but keep the current one")
	cmd.Flags().BoolVar(&o.allowPartial, "allow-partial", false, "rebuild even though the stream lost its oldest events (max_age, max_bytes)")
	cmd.Flags().StringVar(&o.from, "from", "", "start from this backup (dsyncd backup) instead of the newest snapshot")
	cmd.Flags().BoolVar(&o.fromScratch, "from-scratch", false, "start from an empty store and apply every event of the stream, ignoring the snapshots")
	formatFlag(cmd.Flags(), &format)
	return cmd
}

func printRebuild(a *app, r *rebuildReport) {
	w := a.stdout
	verb := "rebuilt"
	if r.DryRun {
		verb = "dry run: would rebuild"
	}
	fmt.Fprintf(w, "%s %s from %s%sstream %s (sequences %d-%d, %d messages)\n", verb, r.Store, fromBackup(r.From), fromSnapshot(r), r.Stream, r.FirstSeq, r.LastSeq, r.Messages)
	c := r.Outcomes
	fmt.Fprintf(w, "  applied %d, duplicate %d, stale %d, ignored %d, deferred %d; %d decisions\n", c.Applied, c.Duplicate, c.Stale, c.Ignored, c.Deferred,
		r.Decisions)
	fmt.Fprintf(w, "  skipped: %d parked in the dead-letter stream, %d dropped by an operator, %d undecodable, %d failed to apply\n",
		r.SkippedParked, r.SkippedDropped, c.Invalid, len(r.Failed))
	for _, f := range r.Failed {
		fmt.Fprintf(w, "    seq %d, event %s: %s\n", f.Seq, f.EventID, f.Error)
	}
	switch {
	case !r.Compared:
		fmt.Fprintln(w, "  no previous store to compare with")
	case r.Identical:
		fmt.Fprintln(w, "  identical to the previous store (users, groups, directories, open holds)")
	default:
		fmt.Fprintln(w, "  differs from the previous store:")
		for _, d := range r.Differences {
			fmt.Fprintf(w, "    %s\n", d)
		}
	}
	if r.PreRebuild != "" {
		fmt.Fprintf(w, "  previous store kept as %s\n", r.PreRebuild)
	}
	if r.DryRun {
		fmt.Fprintln(w, "  the store was not replaced (--dry-run)")
	}
	for _, warn := range r.Warnings {
		fmt.Fprintf(a.stderr, "warning: %s\n", warn)
	}
}

// rebuild does the work of "dsyncd rebuild"; see its help.
// rebuildOptions are rebuild's flags.
type rebuildOptions struct {
	dryRun, allowPartial bool
	from                 string // a backup to start from
	fromScratch          bool   // ignore the snapshots
}

func (a *app) rebuild(ctx context.Context, cfg config.Config, o rebuildOptions) (*rebuildReport, error) {
	storePath := cfg.StorePath()
	dryRun, allowPartial := o.dryRun, o.allowPartial
	rep := &rebuildReport{Store: storePath, Stream: cfg.NATS.Stream, DryRun: dryRun, From: o.from, Failed: []rebuildFailure{}, Differences: []string{}, Warnings: []string{}}
	refuse := fmt.Sprintf("stop it first (systemctl stop dsyncd), rebuild, then start it again; the store %s is untouched", storePath)

	if err := checkNotRootOnServiceDir(filepath.Dir(storePath)); err != nil {
		return nil, err
	}

	// 1. Serve must be stopped: its API must not answer, and the store's lock
	// (held until the swap is done) must be free.
	if server := defaultServer(cfg.HTTP.Listen); server != "" && apiAnswers(ctx, server) {
		return nil, fmt.Errorf("dsyncd serve is running (its API answers at %s): %s", server, refuse)
	}
	var old *storage.Store
	var oldSnap *storage.Snapshot
	dropped := map[string]bool{}
	var carried []storage.AuditEntry
	_, statErr := os.Stat(storePath)
	oldExists := statErr == nil
	if oldExists {
		st, err := storage.Open(storeOptions(cfg, storePath))
		switch {
		case errors.Is(err, storage.ErrInUse):
			return nil, fmt.Errorf("dsyncd serve is running (it holds the store's lock): %s", refuse)
		case err != nil:
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("the current store cannot be opened (%v): rebuilding without comparing, and without its record of dropped dead letters", err))
		default:
			old = st
			defer old.Close()
			if oldSnap, err = old.Export(); err != nil {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("the current store cannot be read (%v): rebuilding without comparing", err))
			}
			if err := a.readOperatorRecord(old, dropped, &carried, rep); err != nil {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("the current store's audit trail cannot be read (%v): dropped dead letters will be applied", err))
			}
		}
	}

	// 2. The stream, and what the live worker left out of it.
	q, err := openQueueOffline(ctx, cfg, a.stderr)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	info, err := q.StreamInfo(ctx)
	if err != nil {
		return nil, err
	}
	s := info.State
	rep.FirstSeq, rep.LastSeq, rep.Messages = s.FirstSeq, s.LastSeq, s.Msgs
	if o.from != "" && o.fromScratch {
		return nil, usagef("--from and --from-scratch exclude each other")
	}
	newPath := storePath + ".rebuild"
	fromSnap := false
	if o.from == "" && !o.fromScratch {
		sn, ok, warns, err := restoreSnapshot(ctx, cfg, q, newPath)
		rep.Warnings = append(rep.Warnings, warns...)
		if err != nil {
			return nil, fmt.Errorf("%w; pass --from-scratch to rebuild from the stream alone, or --from BACKUP", err)
		}
		if ok {
			fromSnap, rep.Snapshot, rep.SnapshotSeq = true, sn.Name, sn.Seq
			defer os.Remove(newPath) // a no-op once renamed over the store
		}
	}
	switch lost := s.FirstSeq > rep.SnapshotSeq+1 || (!fromSnap && s.NumDeleted > 0); {
	case lost && fromSnap && !allowPartial:
		return nil, fmt.Errorf("the stream %s no longer holds the events after snapshot %s (it covers sequence %d, the stream starts at %d): "+
			"pass --allow-partial to rebuild from the snapshot anyway; the store %s is untouched", cfg.NATS.Stream, rep.Snapshot, rep.SnapshotSeq, s.FirstSeq, storePath)
	case lost && o.from != "":
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("the stream's oldest event is from %s (sequence %d): what happened between the backup and then is not in the new store, unless the backup is newer",
			s.FirstTime.UTC().Format(time.RFC3339), s.FirstSeq))
	case lost && !allowPartial:
		return nil, fmt.Errorf("the stream %s no longer holds every event (it starts at sequence %d of %d; %d removed): "+
			"a rebuild would lose what the missing events did (nats.max_age %s, nats.max_bytes %d); "+
			"restore a backup instead, or pass --allow-partial; the store %s is untouched",
			cfg.NATS.Stream, s.FirstSeq, s.LastSeq, s.NumDeleted, cfg.NATS.MaxAge, cfg.NATS.MaxBytes, storePath)
	case lost:
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("the stream starts at sequence %d (%d removed): what the missing events did is not in the new store", s.FirstSeq, s.NumDeleted))
	}
	if s.Msgs == 0 && o.from == "" && !fromSnap && oldSnap != nil && len(oldSnap.Users)+len(oldSnap.Groups) > 0 && !allowPartial {
		return nil, fmt.Errorf("the stream %s is empty but the store is not: a rebuild would empty it; pass --allow-partial to do so anyway; the store %s is untouched", cfg.NATS.Stream, storePath)
	}
	dls, err := q.DeadLetters(ctx)
	if err != nil {
		return nil, err
	}
	parkedSeq, parkedID := map[uint64]bool{}, map[string]bool{}
	for _, dl := range dls {
		parkedSeq[dl.StreamSeq] = true
		if dl.MsgID != "" {
			parkedID[eventIDOf(dl.MsgID)] = true
		}
	}

	// 3. A new store beside the old one (empty, or a copy of the backup),
	// the mapping, then every event.
	if !fromSnap { // else newPath holds the snapshot
		if err := os.Remove(newPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	if o.from != "" {
		if err := copyFile(o.from, newPath); err != nil {
			return nil, fmt.Errorf("--from: %w", err)
		}
	}
	opts := storeOptions(cfg, newPath)
	opts.NoSync = true // one fsync at the end instead of one per batch
	st, err := storage.Open(opts)
	if err != nil {
		return nil, err
	}
	keep := false
	defer func() {
		_ = st.Close()
		if !keep {
			_ = os.Remove(newPath)
		}
	}()
	m := cfg.Mapping
	if cfg.Node.ID != "" && o.from == "" {
		// A node of a cluster starts where the others stand, not from its
		// file (rebuildMapping).
		var what string
		if m, what, err = rebuildMapping(ctx, q, st, fromSnap, cfg.Mapping); err != nil {
			return nil, fmt.Errorf("%s: the cluster's mapping: %w", natsKeys(cfg), err)
		}
		if normalMapping(m) != normalMapping(cfg.Mapping) {
			rep.Warnings = append(rep.Warnings, "this node's file's mapping differs from the cluster's: the store starts from "+what+
				" and the stream's mapping changes; dsyncd apply --config FILE against a running node publishes a file's mapping to every node")
		}
	}
	if _, err := st.ApplyMapping(m, "", false); err != nil {
		return nil, fmt.Errorf("mapping: %w", err)
	}
	if err := applyStream(ctx, q, st, rep.SnapshotSeq, parkedSeq, parkedID, dropped, rep); err != nil {
		return nil, err
	}
	// The new store stands for every message of the stream: serve checks
	// it against the consumer's acknowledged position at start.
	if err := st.MarkApplied(rep.LastSeq); err != nil {
		return nil, err
	}
	// Carry the drops over (those a --from backup does not have already).
	have := map[string]bool{}
	if o.from != "" {
		es, err := st.Audit(storage.AuditFilter{})
		if err != nil {
			return nil, err
		}
		for _, e := range es {
			have[dropKey(e)] = true
		}
	}
	for _, e := range carried {
		if have[dropKey(e)] {
			continue
		}
		if err := st.RecordAudit(e); err != nil {
			return nil, err
		}
	}
	prev := "none"
	if oldExists {
		prev = storePath + ".pre-rebuild"
	}
	c := rep.Outcomes
	if err := st.RecordAudit(storage.AuditEntry{Action: actionRebuild, Reason: fmt.Sprintf(
		"store rebuilt from %sstream %s sequences %d-%d: applied %d, duplicate %d, stale %d, deferred %d; skipped %d parked, %d dropped, %d undecodable, %d failed; previous store: %s",
		fromBackup(o.from)+fromSnapshot(rep), rep.Stream, rep.FirstSeq, rep.LastSeq, c.Applied, c.Duplicate, c.Stale, c.Deferred, rep.SkippedParked, rep.SkippedDropped, c.Invalid, len(rep.Failed), prev)}); err != nil {
		return nil, err
	}

	// 4. Check, compare.
	if err := st.Check(); err != nil {
		return nil, fmt.Errorf("the rebuilt store fails its consistency check: %w", err)
	}
	newSnap, err := st.Export()
	if err != nil {
		return nil, err
	}
	if oldSnap != nil {
		rep.Compared = true
		rep.Differences = append(rep.Differences, diffSnapshots(oldSnap, newSnap)...)
		rep.Identical = len(rep.Differences) == 0
	}
	if dryRun {
		return rep, nil
	}

	// 5. Swap: fsync the new file, keep the old one, rename the new one over
	// it. The old store's lock is held until then, so serve cannot start on it.
	if err := st.Close(); err != nil {
		return nil, err
	}
	if err := fsyncFile(newPath); err != nil {
		return nil, err
	}
	if oldExists {
		pre := storePath + ".pre-rebuild"
		if _, err := os.Stat(pre); err == nil {
			older := pre + "." + time.Now().UTC().Format("20060102T150405Z")
			if err := os.Rename(pre, older); err != nil {
				return nil, err
			}
			rep.Warnings = append(rep.Warnings, "an older "+filepath.Base(pre)+" was kept as "+older)
		}
		// A hard link keeps the store file in place until the rename below
		// replaces it atomically; without links, move it aside first.
		if err := os.Link(storePath, pre); err != nil {
			if err := os.Rename(storePath, pre); err != nil {
				return nil, err
			}
		}
		rep.PreRebuild = pre
	}
	if err := os.Rename(newPath, storePath); err != nil {
		return nil, fmt.Errorf("swap in the rebuilt store: %w (it is %s; the previous one is %s)", err, newPath, rep.PreRebuild)
	}
	keep = true
	if err := syncDir(filepath.Dir(storePath)); err != nil {
		return nil, err
	}
	return rep, nil
}

// readOperatorRecord reads from the previous store what an operator did that
// the stream does not hold: dropped dead letters (left out, and carried over)
// and decided holds (warned about).
func (a *app) readOperatorRecord(old *storage.Store, dropped map[string]bool, carried *[]storage.AuditEntry, rep *rebuildReport) error {
	entries, err := old.Drops() // with those the audit retention set aside
	if err != nil {
		return err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Reason, dropReasonPrefix) {
			if e.EventID != "" {
				dropped[eventIDOf(e.EventID)] = true
			}
			*carried = append(*carried, e)
		}
	}
	hs, err := old.Holds(false)
	if err != nil {
		return err
	}
	var decided []string
	for _, h := range hs {
		if h.Resolution == storage.ResolutionApproved || h.Resolution == storage.ResolutionRejected {
			decided = append(decided, fmt.Sprintf("%d (%s, %s)", h.ID, h.Kind, h.Resolution))
		}
	}
	if len(decided) > 0 {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("holds an operator decided are open again in the rebuilt store; decide them again: %s",
			strings.Join(decided, ", ")))
	}
	return nil
}

// eventIDOf is the WorkOS event id of a message id: a replayed dead letter's
// message id is "<id>:replay:<dlq seq>" (possibly more than once).
func eventIDOf(msgID string) string {
	id, _, _ := strings.Cut(msgID, ":replay:")
	return id
}

// applyStream applies the stream's messages to st in batches, through the
// worker's apply path, leaving out what the live worker left out, and counts
// everything into rep. An event that fails to apply is reported and
// skipped; a store that cannot be written stops the rebuild.
func applyStream(ctx context.Context, q *queue.Queue, st *storage.Store, after uint64, parkedSeq map[uint64]bool, parkedID, dropped map[string]bool, rep *rebuildReport) error {
	var batch []*events.Event
	var seqs []uint64
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		defer func() { batch, seqs = batch[:0], seqs[:0] }()
		res := worker.Apply(st, batch, nil, worker.Hooks{Failed: func(i int, err error) {
			rep.Failed = append(rep.Failed, rebuildFailure{Seq: seqs[i], EventID: batch[i].ID, Error: err.Error()})
		}})
		for _, o := range res.Outcomes {
			if o != "" {
				rep.Outcomes.Add(o)
			}
		}
		return res.Err
	}
	controls := map[string]storage.ControlKind{}
	for _, k := range storage.ControlKinds {
		controls[q.ControlSubject(string(k))] = k
	}
	err := q.Each(ctx, func(seq uint64, subject string, stored time.Time, data []byte) error {
		if seq <= after { // in the snapshot the rebuild started from
			return nil
		}
		if parkedSeq[seq] {
			rep.SkippedParked++
			return nil
		}
		if kind, ok := controls[subject]; ok {
			// A decision, applied where the live nodes applied it. The
			// drops are carried over from the previous store instead.
			rep.Decisions++
			if kind == storage.ControlDrop {
				return nil
			}
			if err := flush(); err != nil {
				return err
			}
			c, err := storage.DecodeControl(data)
			if err == nil {
				c.At = stored
				_, err = st.ApplyControl(c)
			}
			if err != nil && worker.Classify(err) == worker.RetryLater {
				return err
			}
			// As a live node records it: delivered again later, it is refused.
			return st.MarkControlApplied(c.ID, seq, stored)
		}
		ev, err := events.Decode(bytes.Clone(data))
		if err != nil {
			rep.Outcomes.Invalid++
			return nil
		}
		ev.Stored = stored
		switch {
		case parkedID[ev.ID]:
			rep.SkippedParked++
			return nil
		case dropped[ev.ID]:
			rep.SkippedDropped++
			return nil
		}
		batch = append(batch, ev)
		seqs = append(seqs, seq)
		if len(batch) >= worker.ReplayBatch {
			return flush()
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read stream: %w", err)
	}
	return flush()
}

// apiAnswers reports whether anything answers HTTP at server.
func apiAnswers(ctx context.Context, server string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, server+"/healthz", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}

// copyFile copies src to a new file dst (mode 0600).
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}

func fsyncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// diffSnapshots describes how two snapshots differ, one line per kind of
// record; nil when they are equal.
func diffSnapshots(old, cur *storage.Snapshot) []string {
	var out []string
	add := func(line string) {
		if line != "" {
			out = append(out, line)
		}
	}
	add(diffByID("directories", old.Directories, cur.Directories, func(d storage.ExportDirectory) string { return d.ID }))
	add(diffByID("users", old.Users, cur.Users, func(u storage.ExportUser) string { return u.ID }))
	add(diffByID("groups", old.Groups, cur.Groups, func(g storage.ExportGroup) string { return g.ID }))
	add(diffByID("open holds", old.Holds, cur.Holds, func(h storage.ExportHold) string { return strconv.FormatUint(h.ID, 10) }))
	return out
}

// diffByID compares two lists of records by id and JSON value.
func diffByID[T any](what string, old, cur []T, id func(T) string) string {
	enc := func(v T) string { b, _ := json.Marshal(v); return string(b) }
	before := make(map[string]string, len(old))
	for _, v := range old {
		before[id(v)] = enc(v)
	}
	var gone, added, changed []string
	seen := map[string]bool{}
	for _, v := range cur {
		k := id(v)
		seen[k] = true
		switch b, ok := before[k]; {
		case !ok:
			added = append(added, k)
		case b != enc(v):
			changed = append(changed, k)
		}
	}
	for _, v := range old {
		if !seen[id(v)] {
			gone = append(gone, id(v))
		}
	}
	if len(gone)+len(added)+len(changed) == 0 {
		return ""
	}
	var parts []string
	for _, p := range []struct {
		label string
		ids   []string
	}{{"only in the previous store", gone}, {"only in the rebuilt one", added}, {"changed", changed}} {
		if len(p.ids) > 0 {
			parts = append(parts, fmt.Sprintf("%d %s (%s)", len(p.ids), p.label, abbreviate(p.ids, 5)))
		}
	}
	return what + ": " + strings.Join(parts, ", ")
}

func abbreviate(ids []string, n int) string {
	if len(ids) <= n {
		return strings.Join(ids, ", ")
	}
	return strings.Join(ids[:n], ", ") + fmt.Sprintf(", and %d more", len(ids)-n)
}

func fromBackup(path string) string {
	if path == "" {
		return ""
	}
	return "backup " + path + " and "
}

func fromSnapshot(r *rebuildReport) string {
	if r.Snapshot == "" {
		return ""
	}
	return fmt.Sprintf("snapshot %s and the ", r.Snapshot)
}

func dropKey(e storage.AuditEntry) string {
	return e.Time.UTC().Format(time.RFC3339Nano) + "\x00" + e.EventID + "\x00" + e.Reason
}
