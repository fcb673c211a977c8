package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dsyncd/dsyncd/storage"
)

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
				ans, err := b.why(cmd.Context(), userID, badge)
				if errors.Is(err, storage.ErrNotFound) {
					return fmt.Errorf("no such user %q", userID)
				}
				if err != nil {
					return err
				}
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
