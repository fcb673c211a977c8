package main

import (
	"fmt"
	"io"
	"os"
	"strings"

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
event per line), a directory, meaning its files in name order (not its subdirectories),
or - for standard input. A PATH that holds no event is an error.

It prints the counts — applied, duplicate, stale, ignored, invalid — and one line per
invalid event with its file, line and reason. It exits 1 if any event was invalid,
after applying the valid ones. An event the store cannot take stops the replay there,
every earlier event applied, with an error naming its file and line.

The store is the configured one (store.path, default <data_dir>/dsyncd.db) unless --db
names another; a store held by a running "dsyncd serve" cannot be replayed into.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			if err := cfg.CheckAdminRule(); err != nil {
				return err
			}
			raws, err := readEvents(a.stdin, args)
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

// readEvents reads the events of replay's and send's PATH arguments: files,
// directories (their files in name order) and - (standard input). A PATH
// that yields no event is an error, so that a wrong folder is not taken for
// an empty change.
func readEvents(stdin io.Reader, args []string) ([]events.Raw, error) {
	var out []events.Raw
	for _, p := range args {
		var raws []events.Raw
		var err error
		if p == "-" {
			var data []byte
			if data, err = io.ReadAll(stdin); err != nil {
				return nil, fmt.Errorf("standard input: %w", err)
			}
			raws, err = events.ParseFixture("-", data)
		} else {
			raws, err = events.ReadFixtures(p)
		}
		if err != nil {
			return nil, err
		}
		if len(raws) == 0 {
			return nil, noEvents(p)
		}
		out = append(out, raws...)
	}
	return out, nil
}

// noEvents says why PATH held no event.
func noEvents(p string) error {
	if p == "-" {
		return fmt.Errorf("standard input: no events found")
	}
	fi, err := os.Stat(p)
	if err != nil || !fi.IsDir() {
		return fmt.Errorf("%s: no events found (the file is empty)", p)
	}
	entries, _ := os.ReadDir(p)
	var dirs []string
	files := 0
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		} else if !strings.HasPrefix(e.Name(), ".") {
			files++
		}
	}
	switch {
	case files > 0:
		return fmt.Errorf("%s: no events found: its files are empty", p)
	case len(dirs) > 0:
		return fmt.Errorf("%s: no events found: it holds only folders (%s), whose files are not read; name them", p, strings.Join(dirs, ", "))
	}
	return fmt.Errorf("%s: no events found: the folder is empty", p)
}
