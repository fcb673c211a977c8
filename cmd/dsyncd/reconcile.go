package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/reconcile"
	"github.com/dsyncd/dsyncd/storage"
)

func (a *app) reconcileCommand() *cobra.Command {
	var dir, org, format string
	var dryRun, resetCursor bool
	cmd := &cobra.Command{
		Use:   "reconcile [--directory ID | --org ORG] [--dry-run] [--format text|json]",
		Short: "Compare the store with WorkOS's Directory Sync API and repair the differences",
		Long: `reconcile lists each directory's users, groups and group members through the WorkOS
Directory Sync API, compares them with the store, and turns each difference into a
corrective dsync event applied through the same path and safeguards as WorkOS's own
events: a user or group missing locally is created, one WorkOS no longer has is
deleted (break-glass accounts are kept, the mass-deprovisioning breaker may pause the
organisation), memberships are added or removed, changed users and groups updated.
A directory dsync.deleted removed locally, or one WorkOS does not list, is only reported.

Without --directory or --org it reconciles every directory the API key sees.

With --dry-run it changes nothing and prints the differences and, in the format of
"dsyncd plan", who would gain and lose each badge per organisation.

It reads workos.api_key (prefer DSYNCD_WORKOS_API_KEY) and workos.endpoint, and
respects WorkOS's limit of 4 requests per second per directory on /directory_users.
It works on the store file: stop "dsyncd serve" first (or let serve do it with
reconcile.interval).

With --reset-events-cursor, once every directory is reconciled, it forgets the Events API
poller's cursor, in the store and in NATS (where the nodes of a cluster share it), so
that the next "dsyncd serve" polls from events.start (set it to now):
for when dsyncd was stopped longer than the Events API keeps events (30 days) and the
API refuses the stored cursor.

Exit status: 0; 1 on error, or when a directory could not be listed (the others are
reconciled); 2 on a usage error; 3 when a dry run would leave an organisation without an admin.`,
		Example: `  dsyncd reconcile --dry-run
  dsyncd reconcile --directory directory_01ECAZ4NV9QMV47GW873HDCX74
  dsyncd reconcile --org org_01EZTR6WYX1A0DSE2CYMGXQ24Y --dry-run --format json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			if cfg.WorkOS.APIKey == "" {
				return fmt.Errorf("workos.api_key is required (set %s)", config.EnvVar("workos.api_key"))
			}
			log, err := newLogger(cfg, a.stderr)
			if err != nil {
				return err
			}
			defer log.Sync() //nolint:errcheck // stderr
			st, err := storage.Open(storeOptions(cfg, a.dbPath))
			if errors.Is(err, storage.ErrInUse) {
				return fmt.Errorf("%w: stop dsyncd serve first, or let it reconcile (reconcile.interval)", err)
			}
			if err != nil {
				return err
			}
			defer st.Close()
			if err := adoptMapping(st, cfg, dryRun); err != nil {
				return err
			}
			r := reconcile.NewReconciler(reconcile.ReconcilerOptions{ClientOptions: clientOptions(cfg)}, st, log)
			res, rerr := r.Reconcile(cmd.Context(), reconcile.Scope{Directory: dir, Organization: org}, dryRun)
			if res != nil {
				if err := printReconcile(a.stdout, res, format); err != nil {
					return err
				}
			}
			if rerr != nil {
				return rerr
			}
			if resetCursor && !dryRun {
				for _, name := range []string{reconcile.CursorEvents, reconcile.CursorEventsStart} {
					if err := st.SetCursor(name, ""); err != nil {
						return err
					}
				}
				if err := resetSharedEventsCursor(cmd.Context(), cfg, a.stderr); err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, "events cursor reset: the next serve polls from events.start")
			}
			if res.Plan != nil && res.Plan.LeavesNoAdmin() {
				return &exitCodeError{code: exitNoAdmin, err: errors.New("applying these corrections would leave an organisation without an admin (the last-admin safeguard would hold them)")}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "directory", "", "reconcile only this directory")
	cmd.Flags().StringVar(&org, "org", "", "reconcile only the directories of this organisation")
	cmd.MarkFlagsMutuallyExclusive("directory", "org")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "change nothing: print the differences and the plan")
	formatFlag(cmd.Flags(), &format)
	cmd.Flags().BoolVar(&resetCursor, "reset-events-cursor", false, "then forget the Events API cursor (after an outage longer than its retention)")
	cmd.MarkFlagsMutuallyExclusive("dry-run", "reset-events-cursor")
	cmd.Flags().StringVar(&a.dbPath, "db", "", "store file (default: store.path from the configuration)")
	return cmd
}

// printReconcile renders a reconciliation for people (text) or machines
// (json: the reconcile.Result, plan included).
func printReconcile(w io.Writer, res *reconcile.Result, format string) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	var b strings.Builder
	for _, d := range res.Directories {
		fmt.Fprintf(&b, "directory %s (%s, %q): ", d.ID, d.OrganizationID, d.Name)
		switch {
		case d.Error != "":
			fmt.Fprintf(&b, "NOT RECONCILED: %s\n", d.Error)
		case d.Skipped != "" && d.Users == 0 && d.Groups == 0:
			fmt.Fprintf(&b, "skipped: %s\n", d.Skipped)
		default:
			fmt.Fprintf(&b, "%d users, %d groups, %d memberships in WorkOS; %d differences", d.Users, d.Groups, d.Memberships, d.Differences)
			if d.Skipped != "" {
				fmt.Fprintf(&b, " (%s)", d.Skipped)
			}
			b.WriteString("\n")
		}
	}
	if len(res.Differences) == 0 {
		b.WriteString("no differences\n")
	} else {
		b.WriteString("differences:\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for _, d := range res.Differences {
			subject := strings.Trim(d.GroupID+" "+d.UserID, " ")
			if subject == "" {
				subject = d.Directory
			}
			if len(d.Fields) > 0 {
				subject += " (" + strings.Join(d.Fields, ", ") + ")"
			}
			event := d.Event
			if event == "" {
				event = "reported only"
			}
			if d.Outcome != "" {
				event += "\t" + string(d.Outcome)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", d.Kind, subject, event)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if res.Plan != nil {
		b.WriteString("plan (dry run, nothing changed):\n")
	} else if len(res.Outcomes) > 0 {
		keys := make([]string, 0, len(res.Outcomes))
		for k := range res.Outcomes {
			keys = append(keys, string(k))
		}
		slices.Sort(keys)
		parts := make([]string, 0, len(keys))
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %d", k, res.Outcomes[storage.Outcome(k)]))
		}
		fmt.Fprintf(&b, "corrective events: %s\n", strings.Join(parts, ", "))
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	if res.Plan != nil {
		return printPlan(w, res.Plan, "text")
	}
	return nil
}
