package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/storage"
)

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
