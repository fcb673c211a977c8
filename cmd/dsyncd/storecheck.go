package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/storage"
)

// Start-up refusals of a store serve must not use: damaged (it cannot be
// opened or fails its check), or behind the stream (the worker's consumer
// acknowledged events the store does not have: truncated, deleted, an older
// backup or a rolled-back meta page swapped in). Each is one line naming
// the store and what to run; serve exits 1. Serve never rebuilds by itself:
// a rebuild replaces the store and re-opens holds an operator decided, which
// is the operator's call (dsyncd rebuild, with --from BACKUP when the stream
// no longer holds every event).

const rebuildHint = "stop dsyncd and run dsyncd rebuild (with --from BACKUP if the stream no longer holds every event)"

// storeHasData reports whether the store file exists and is not empty:
// a store Open creates (or finds truncated to 0 bytes) starts without the
// applied sequence, like a store written before it was recorded, and only
// the file tells them apart.
func storeHasData(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Size() > 0
}

// refuseDamaged is serve's error for a store that cannot be opened or
// fails its consistency check.
func refuseDamaged(path string, err error) error {
	cause := oneLineErr(err)
	cause = strings.TrimPrefix(cause, "storage: open "+path+": ")
	cause = strings.TrimPrefix(cause, storage.ErrDamaged.Error()+": ")
	return fmt.Errorf("store %s is damaged (%s): %s", path, cause, rebuildHint)
}

// checkStorePosition compares the store's applied sequence with the
// acknowledged position of the worker's consumer. hadData: the store file
// held data before serve opened it. A store without a recorded sequence that
// had data (written by an older dsyncd) is accepted and given the consumer's
// position.
func (d *daemon) checkStorePosition(ctx context.Context, hadData bool) error {
	path := d.st.Path()
	applied, known, err := d.st.AppliedSeq()
	if err != nil {
		return refuseDamaged(path, err)
	}
	acked, err := d.q.AckFloor(ctx, d.durable)
	if err != nil {
		return fmt.Errorf("%s: %w", natsKeys(d.cfg), err)
	}
	switch {
	case known && applied < acked:
		return fmt.Errorf("store %s is behind the stream (applied seq %d, consumer acknowledged %d): %s",
			path, applied, acked, rebuildHint)
	case !known && !hadData && acked > 0:
		return fmt.Errorf("store %s is new or was emptied, but the consumer acknowledged the stream up to seq %d: %s",
			path, acked, rebuildHint)
	case acked == 0 && d.cfg.Worker.Enabled:
		// A consumer yet to be created starts after the store's position:
		// the stream must still hold what follows it (a new node of a
		// cluster whose stream was purged behind a snapshot starts from
		// that snapshot).
		info, err := d.q.StreamInfo(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", natsKeys(d.cfg), err)
		}
		if info.State.Msgs > 0 && info.State.FirstSeq > applied+1 {
			return fmt.Errorf("store %s has applied the stream up to seq %d, but the stream now starts at seq %d (older events purged behind a snapshot or aged out): "+
				"run dsyncd rebuild, which starts from the newest snapshot, then start it", path, applied, info.State.FirstSeq)
		}
	case !known && acked > 0:
		d.log.Info("store predates its applied-sequence record; taking the consumer's position", zap.Uint64("seq", acked))
		if err := d.st.MarkApplied(acked); err != nil {
			return fmt.Errorf("%s: %w", storeKey(d.cfg), err)
		}
	}
	return nil
}

// oneLineErr is err's message on one line.
func oneLineErr(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// openStore opens the store for serve and checks it; a damaged store is
// refused. It reports whether the file held data before.
func (d *daemon) openStore(opts storage.Options) (hadData bool, err error) {
	hadData = storeHasData(opts.Path)
	d.st, err = storage.Open(opts)
	if errors.Is(err, storage.ErrDamaged) {
		return hadData, refuseDamaged(opts.Path, err)
	}
	if err != nil {
		return hadData, fmt.Errorf("%s: %w", storeKey(d.cfg), err)
	}
	if err := d.st.Check(); err != nil {
		return hadData, refuseDamaged(opts.Path, err)
	}
	return hadData, nil
}
