package main

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"
)

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, revision and Go version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			v, rev := buildInfo()
			_, err := fmt.Fprintf(a.stdout, "dsyncd %s (revision %s, %s)\n", v, rev, runtime.Version())
			return err
		},
	}
}
