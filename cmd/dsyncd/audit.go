package main

import (
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/dsyncd/dsyncd/storage"
)

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
					rows = append(rows, []string{strconv.FormatUint(e.Seq, 10), fmtTime(e.Time), string(e.Action), e.UserID, string(e.Badge), e.OrganizationID, e.EventID, e.Reason})
				}
				return table(a.stdout, []string{"SEQ", "TIME", "ACTION", "USER", "BADGE", "ORGANIZATION", "EVENT", "REASON"}, rows)
			})
		},
	}
	cmd.Flags().StringVar(&filter.UserID, "user", "", "only entries of this directory user id")
	cmd.Flags().StringVar(&filter.OrganizationID, "org", "", "only entries of this WorkOS organization id")
	cmd.Flags().StringVar((*string)(&filter.Badge), "badge", "", "only entries of this badge")
	cmd.Flags().StringVar(&since, "since", "", "only entries since this RFC 3339 time, date or duration ago (24h)")
	cmd.Flags().IntVar(&filter.Limit, "limit", 0, "only the newest N matching entries, or with --after the first N after it (0: all)")
	cmd.Flags().Uint64Var(&filter.After, "after", 0, "only entries after this SEQ (the last one a previous call printed): tail the trail")
	a.addTargetFlags(cmd, &f, false)
	return cmd
}
