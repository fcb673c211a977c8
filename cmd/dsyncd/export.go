package main

import (
	"github.com/spf13/cobra"
)

func (a *app) exportCommand() *cobra.Command {
	var f opsFlags
	cmd := &cobra.Command{
		Use:   "export [--config FILE] [--db FILE | --server URL | --offline]",
		Short: "Print the canonical snapshot of the store as JSON",
		Long: `export prints the store's canonical snapshot: directories, users (with their groups and
badges), groups (with their members) and open holds, each list sorted by id, byte-stable.
Deleted users and groups are not listed; a directory's state is "active" or "deleted".

With --db FILE it reads that store file. Otherwise it asks the running "dsyncd serve"
(GET /v1/export) at --server URL, or by default at http://<http.listen>, sending
api.token (else <data_dir>/api.token) as a bearer token; when nothing listens there (serve is stopped) it
reads the store file (store.path). --offline reads the file without trying the API.`,
		Example: `  dsyncd export --config /etc/dsyncd/dsyncd.yaml > snapshot.json
  dsyncd export --server http://127.0.0.1:8080
  dsyncd export --config config/example.yaml --db /tmp/try.db`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			return a.withBackend(cmd.Context(), cfg, &f, func(b backend) error {
				return b.export(cmd.Context(), a.stdout)
			})
		},
	}
	a.addTargetFlagSet(cmd.Flags(), &f) // no --format: the snapshot is JSON
	return cmd
}
