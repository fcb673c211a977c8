package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/storage"
)

func (a *app) exportCommand() *cobra.Command {
	var server string
	cmd := &cobra.Command{
		Use:   "export [--config FILE] [--db FILE | --server URL]",
		Short: "Print the canonical snapshot of the store as JSON",
		Long: `export prints the store's canonical snapshot: directories, users (with their groups and
badges), groups (with their members) and open holds, each list sorted by id, byte-stable.
Deleted users and groups are not listed; a directory's state is "active" or "deleted".

Offline it reads the store file (--db, default store.path); with --server it asks a
running "dsyncd serve" (GET /v1/export), sending api.token as a bearer token if set.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			if server != "" {
				body, err := apiGet(cmd.Context(), server, "/v1/export", cfg.API.Token)
				if err != nil {
					return err
				}
				_, err = a.stdout.Write(body)
				return err
			}
			st, err := storage.Open(storeOptions(cfg, a.dbPath))
			if err != nil {
				return err
			}
			defer st.Close()
			snap, err := st.Export()
			if err != nil {
				return err
			}
			b, err := storage.MarshalSnapshot(snap)
			if err != nil {
				return err
			}
			_, err = a.stdout.Write(b)
			return err
		},
	}
	cmd.Flags().StringVar(&a.dbPath, "db", "", "store file (default: store.path from the configuration)")
	cmd.Flags().StringVar(&server, "server", "", "base URL of a running dsyncd serve, e.g. http://127.0.0.1:8080")
	return cmd
}

// checkAdminRule refuses a mapping in which no rule grants the admin badge,
// unless safeguards.allow_no_admin_rule says so.
func checkAdminRule(cfg config.Config) error {
	if cfg.Safeguards.AllowNoAdminRule || cfg.Mapping.GrantsAdmin() {
		return nil
	}
	return fmt.Errorf("mapping: no group or role rule grants admin_badge %q, so sync could leave an organisation without an admin; "+
		"add a rule that grants it, or set safeguards.allow_no_admin_rule: true", cfg.Mapping.AdminBadge)
}
