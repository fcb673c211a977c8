package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/storage"
	"github.com/dsyncd/dsyncd/worker"
)

func (a *app) replayCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replay [--config FILE] [--db FILE] PATH...",
		Short: "Apply events from files to the store, through the worker's apply path",
		Long: `replay applies WorkOS events read from files, in order, through exactly the code the
live worker uses, and prints what happened to them.

Each PATH is a file holding one JSON event, a JSON array of events, or NDJSON (one
event per line), or a directory, meaning its files in name order.

It prints the counts — applied, duplicate, stale, ignored, invalid — and one line per
invalid event with its file, line and reason. It exits 1 if any event was invalid,
after applying the valid ones.

The store is the configured one (store.path, default <data_dir>/dsyncd.db) unless --db
names another; a store held by a running "dsyncd serve" cannot be replayed into.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			if err := checkAdminRule(cfg); err != nil {
				return err
			}
			raws, err := events.ReadFixtures(args...)
			if err != nil {
				return err
			}
			st, err := storage.Open(storeOptions(cfg, a.dbPath))
			if err != nil {
				return err
			}
			defer st.Close()
			if _, err := st.ApplyMapping(cfg.Mapping, "", false); err != nil {
				return fmt.Errorf("mapping: %w", err)
			}
			counts, bad, err := worker.Replay(st, raws)
			if err != nil {
				return err
			}
			for _, b := range bad {
				fmt.Fprintln(a.stderr, "invalid:", b)
			}
			fmt.Fprintln(a.stdout, counts)
			if counts.Invalid > 0 {
				return &exitCodeError{code: exitError, err: fmt.Errorf("%d invalid event(s)", counts.Invalid)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&a.dbPath, "db", "", "store file (default: store.path from the configuration)")
	return cmd
}
