package main

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"
)

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
						state = string(h.Resolution)
					}
					reason := h.Reason
					if h.Deferred > 0 {
						reason += fmt.Sprintf(" (%d events waiting)", h.Deferred)
					}
					rows = append(rows, []string{strconv.FormatUint(h.ID, 10), string(h.Kind), state, h.OrganizationID, h.UserID, string(h.Badge), fmtTime(h.CreatedAt), reason})
				}
				return table(a.stdout, []string{"ID", "KIND", "STATE", "ORGANIZATION", "USER", "BADGE", "CREATED", "REASON"}, rows)
			})
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "list closed holds too")
	a.addTargetFlags(cmd, &f, false)
	return cmd
}
