package main

import (
	"fmt"
	"slices"

	"github.com/spf13/cobra"

	"github.com/dsyncd/dsyncd/config"
)

func (a *app) checkConfigCommand() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "check-config --config FILE [--format text|json]",
		Short: "Check a configuration and list every problem at once",
		Long: `check-config loads the configuration the way serve does (the file, then DSYNCD_*
environment variables, then flags) and prints every problem at once, one per line,
each "key: problem": unknown keys, values of the wrong type, invalid values, missing
secrets, a mapping in which no rule grants mapping.admin_badge (unless
safeguards.allow_no_admin_rule is true), which serve refuses, and DSYNCD_* environment
variables that set no key (a misspelt one is otherwise ignored).

It then prints the warnings: settings that are valid but probably unintended.
It does not start anything or open the store.

Use it before restarting or reloading serve after editing the configuration; the
systemd unit runs it as ExecStartPre.

EXIT STATUS
  0  no problems (there may be warnings)
  1  at least one problem; serve would refuse to start with this configuration`,
		Example: `  dsyncd check-config --config /etc/dsyncd/dsyncd.yaml

  # With the secrets of the systemd environment file
  sudo sh -c 'set -a; . /etc/dsyncd/dsyncd.env; dsyncd check-config --config /etc/dsyncd/dsyncd.yaml'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			problems, warnings, err := checkConfig(a.configPath, cmd)
			if err != nil {
				return err
			}
			name := a.configPath
			if name == "" {
				name = "(no file: defaults and environment)"
			}
			if format == "json" {
				if err := writeJSONTo(a.stdout, map[string]any{"file": a.configPath, "problems": nonNil(problems), "warnings": nonNil(warnings)}); err != nil {
					return err
				}
			} else {
				if len(problems) == 0 {
					fmt.Fprintf(a.stdout, "%s: OK\n", name)
				} else {
					fmt.Fprintf(a.stdout, "%s: %d problem(s):\n", name, len(problems))
					for _, p := range problems {
						fmt.Fprintf(a.stdout, "  %s\n", p)
					}
				}
				for _, w := range warnings {
					fmt.Fprintf(a.stdout, "warning: %s\n", w)
				}
			}
			if len(problems) > 0 {
				return &exitCodeError{code: exitError, err: fmt.Errorf("%s: %d problem(s) in the configuration", name, len(problems))}
			}
			return nil
		},
	}
	formatFlag(cmd.Flags(), &format)
	config.BindFlags(cmd.Flags())
	return cmd
}

// checkConfig returns every problem and warning of the configuration at
// path (with the environment and the flags). err is for a file that cannot be read.
func checkConfig(path string, cmd *cobra.Command) (problems, warnings []string, err error) {
	cfg, problems, undecoded, err := config.Check(path, cmd.Flags())
	if err != nil {
		return nil, nil, err
	}
	// The admin rule is judged on a mapping that decoded.
	mappingDecoded := !slices.ContainsFunc([]string{"mapping", "safeguards.allow_no_admin_rule"}, func(k string) bool { return config.Related(k, undecoded) })
	if err := cfg.CheckAdminRule(); mappingDecoded && err != nil {
		problems = append(problems, err.Error())
	}
	problems = append(problems, envProblems()...)
	warnings = append(warnings, devSecretWarning(cfg)...)
	warnings = append(warnings, cfg.Warnings()...)
	return problems, warnings, nil
}
