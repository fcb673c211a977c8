package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/storage"
)

func (a *app) planCommand() *cobra.Command {
	var org, onUnmap string
	var f opsFlags
	cmd := &cobra.Command{
		Use:   "plan --config NEW.yaml [--on-unmap keep|remove] | plan --org ORG",
		Short: "Preview a mapping change, or what resuming a paused organisation would do",
		Long: `plan shows, per organisation, who would gain and who would lose each badge, the number of
admins before and after, and the holds the change would open — without changing anything.

With --config NEW.yaml it previews applying NEW.yaml's mapping to the store. A group rule
that NEW.yaml no longer has needs a choice, --on-unmap keep (its badges stay, retained) or
remove (they are revoked, under the last-admin safeguard), or on_unmap set on the rule
before it was removed; without one, plan lists the rules and how many users they concern
and exits 1.

With --org ORG it previews "dsyncd resume ORG": the events deferred while the
mass-deprovisioning breaker paused ORG. It asks the running daemon, or reads the
store of a stopped one, as the operator commands do (WHERE IT READS below).

A mapping change is previewed on the store (serve stopped, or --db FILE); with --server
URL, or on a node of a cluster (node.id set) the running node at http.listen when one
answers, through the daemon (POST /v1/mapping?dry_run=true), which changes nothing.` + targetHelp + `

Exit status: 0, 1 on error, 2 on a usage error, 3 if the change would leave an organisation without an admin
(the safeguard would hold those revocations).`,
		Example: `  dsyncd plan --config /etc/dsyncd/new.yaml
  dsyncd plan --config new.yaml --on-unmap keep --format json
  dsyncd plan --org org_01EZTR6WYX1A0DSE2CYMGXQ24Y`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			var plan *storage.Plan
			if org != "" {
				err = a.withBackend(cmd.Context(), cfg, &f, func(b backend) error {
					plan, err = b.resume(cmd.Context(), org, true)
					return err
				})
			} else {
				if err := cfg.CheckAdminRule(); err != nil {
					return err
				}
				if plan, err = a.planOnline(cmd.Context(), cfg, &f, onUnmap); errors.Is(err, errNotOnline) {
					err = a.withStore(cfg, func(st *storage.Store) error {
						plan, err = st.ApplyMapping(cfg.Mapping, onUnmap, true)
						return err
					})
				}
			}
			if plan != nil {
				if perr := printPlan(a.stdout, plan, f.format); perr != nil {
					return perr
				}
			}
			if err != nil {
				return err
			}
			if plan.LeavesNoAdmin() {
				return &exitCodeError{code: exitNoAdmin, err: errors.New("the change would leave an organisation without an admin")}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&org, "org", "", "preview resuming this paused organisation")
	cmd.Flags().StringVar(&onUnmap, "on-unmap", "", "keep|remove: what happens to the badges of removed group rules")
	a.addTargetFlags(cmd, &f, false)
	return cmd
}

func (a *app) applyCommand() *cobra.Command {
	var onUnmap string
	var f opsFlags
	cmd := &cobra.Command{
		Use:   "apply --config NEW.yaml [--on-unmap keep|remove] [--server URL]",
		Short: "Apply a mapping change, through the safeguards",
		Long: `apply makes NEW.yaml's mapping the one in force and recomputes every user's badges through
the safeguards (last admin, break-glass), recording every change in the audit trail. It
prints what it did in the format of "plan". Removed group rules need --on-unmap keep|remove
(or on_unmap on the rule), as for plan.

On a node of a cluster (node.id set in NEW.yaml) it sends the mapping to the running
"dsyncd serve" at --server (default http://<http.listen>, with api.token or the token file as
bearer token: POST /v1/mapping), which publishes it to the stream: every node adopts it at
the same place, and apply prints the plan once that node applied it. Roll the file out to
every node first: a node whose file differs says so in its log and /readyz (a node never
publishes its file's mapping when it starts). --offline and --db are refused there: one
node's store changed alone would leave the others.

Without node.id, apply works on the stopped store (serve must be stopped), or with --server
on the running daemon at URL. A running single "dsyncd serve" also takes an edited file on
SIGHUP (systemctl reload dsyncd) or at its next start.`,
		Example: `  dsyncd plan --config new.yaml && dsyncd apply --config new.yaml
  dsyncd apply --config /etc/dsyncd/dsyncd.yaml --on-unmap keep --server http://10.0.0.2:8080`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			if err := cfg.CheckAdminRule(); err != nil {
				return err
			}
			if err := f.check(); err != nil {
				return err
			}
			if cfg.Node.ID != "" || f.server != "" {
				return a.applyOnline(cmd.Context(), cfg, &f, onUnmap)
			}
			return a.withStore(cfg, func(st *storage.Store) error {
				plan, err := st.ApplyMapping(cfg.Mapping, onUnmap, false)
				if plan != nil {
					if perr := printPlan(a.stdout, plan, f.format); perr != nil {
						return perr
					}
				}
				return err
			})
		},
	}
	cmd.Flags().StringVar(&onUnmap, "on-unmap", "", "keep|remove: what happens to the badges of removed group rules")
	a.addTargetFlags(cmd, &f, false)
	return cmd
}

// errNotOnline: planOnline found no daemon to ask; preview on the store.
var errNotOnline = errors.New("no daemon to ask")

// planOnline previews the configuration's mapping on the running daemon
// (POST /v1/mapping?dry_run=true) named by --server or, on a node of a
// cluster, at http.listen; errNotOnline when neither applies or, without
// --server, nothing listens there.
func (a *app) planOnline(ctx context.Context, cfg config.Config, f *opsFlags, onUnmap string) (*storage.Plan, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	target := f.server
	if target == "" {
		if cfg.Node.ID == "" || f.offline || a.dbPath != "" {
			return nil, errNotOnline
		}
		if target = defaultServer(cfg.HTTP.Listen); target == "" {
			return nil, errNotOnline
		}
	} else if a.dbPath != "" {
		return nil, usagef("--db and --server exclude each other")
	}
	c := newAPIClient(cfg, target)
	plan, err := c.applyMapping(ctx, cfg.Mapping, onUnmap, true)
	if err != nil && c.refused && f.server == "" {
		return nil, errNotOnline
	}
	return plan, err
}

// applyOnline sends the configuration's mapping to the running daemon
// (POST /v1/mapping), which publishes it to every node: never to a store
// offline, where a node of a cluster would change alone.
func (a *app) applyOnline(ctx context.Context, cfg config.Config, f *opsFlags, onUnmap string) error {
	cluster := ""
	if cfg.Node.ID != "" {
		cluster = fmt.Sprintf("node.id %s: a node of a cluster takes a new mapping through a running node, which publishes it to every node", cfg.Node.ID)
		if f.offline || a.dbPath != "" {
			return fmt.Errorf("%s; --offline and --db would change this store alone: start the node, then run apply against it (--server URL, default http://<http.listen>)", cluster)
		}
	} else if a.dbPath != "" {
		return usagef("--db and --server exclude each other")
	}
	target := f.server
	if target == "" {
		if target = defaultServer(cfg.HTTP.Listen); target == "" {
			return fmt.Errorf("%s: http.listen %s has no fixed port: name the node with --server URL", cluster, cfg.HTTP.Listen)
		}
	}
	c := newAPIClient(cfg, target)
	plan, err := c.applyMapping(ctx, cfg.Mapping, onUnmap, false)
	if err != nil && !c.answered {
		// Nothing reached a daemon: say where the mapping goes.
		if c.refused {
			err = fmt.Errorf("%w (is dsyncd serve running there? name a running node with --server URL)", err)
		}
		if cluster != "" {
			err = fmt.Errorf("%s: %w", cluster, err)
		}
	}
	if err != nil {
		return err
	}
	return printPlan(a.stdout, plan, f.format)
}

func (a *app) resumeCommand() *cobra.Command {
	var f opsFlags
	cmd := &cobra.Command{
		Use:   "resume ORG [--config FILE] [--server URL | --offline] [--format text|json]",
		Short: "Resume an organisation paused by the mass-deprovisioning breaker",
		Long: `resume applies, in order, the events deferred while the mass-deprovisioning breaker paused
ORG — through the other safeguards — closes its hold and lets its sync carry on. Preview it
first with "dsyncd plan --org ORG". To drop the deferred events instead, reject the hold
(POST /v1/holds/{id}/reject).

It asks the running daemon, whose mapping is in force; on a stopped one it first makes
the configuration's mapping the one in force (refusing one serve would refuse), then
applies the deferred events with it.` + targetHelp + exitStatusHelp,
		Example: `  dsyncd plan --org org_01XYZ
  dsyncd resume org_01XYZ --server http://127.0.0.1:8080`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			return a.withBackend(cmd.Context(), cfg, &f, func(b backend) error {
				plan, err := b.resume(cmd.Context(), args[0], false)
				if err != nil {
					return err
				}
				return printPlan(a.stdout, plan, f.format)
			})
		},
	}
	a.addTargetFlags(cmd, &f, false)
	return cmd
}

// adoptMapping makes the configuration's mapping the one in force before an
// offline command applies events with it, through the checks serve makes at
// start: a mapping granting no admin, or one that drops a group rule without
// an on_unmap choice, is refused and nothing is applied. With dryRun it only
// checks (plan --org previews the deferred events under the new mapping).
func adoptMapping(st *storage.Store, cfg config.Config, dryRun bool) error {
	if err := cfg.CheckAdminRule(); err != nil {
		return err
	}
	if _, err := st.ApplyMapping(cfg.Mapping, "", dryRun); err != nil {
		return fmt.Errorf("the configuration's mapping: %w (preview it with dsyncd plan --config, apply it with dsyncd apply --config)", err)
	}
	return nil
}

// printPlan renders a plan for people (text) or machines (json).
func printPlan(w io.Writer, p *storage.Plan, format string) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(p)
	}
	var b strings.Builder
	if len(p.Organizations) == 0 {
		b.WriteString("no badge changes\n")
	}
	for _, o := range p.Organizations {
		name := o.Organization
		if name == "" {
			name = "(no organisation)"
		}
		fmt.Fprintf(&b, "organisation %s: admins %d -> %d\n", name, o.AdminsBefore, o.AdminsAfter)
		for _, side := range []struct {
			sign string
			m    map[mapping.Badge][]string
		}{{"+", o.Gains}, {"-", o.Losses}} {
			badges := make([]mapping.Badge, 0, len(side.m))
			for badge := range side.m {
				badges = append(badges, badge)
			}
			slices.Sort(badges)
			for _, badge := range badges {
				fmt.Fprintf(&b, "  %s %s (%d): %s\n", side.sign, badge, len(side.m[badge]), strings.Join(side.m[badge], ", "))
			}
		}
		for _, k := range o.Kept {
			fmt.Fprintf(&b, "  = %s kept for %s: %s\n", k.Badge, k.UserID, k.Reason)
		}
		for _, h := range o.Holds {
			fmt.Fprintf(&b, "  hold (%s): %s\n", h.Kind, h.Reason)
		}
	}
	for _, u := range p.Unmapped {
		choice := u.Choice
		if choice == "" {
			choice = "NOT GIVEN (use --on-unmap keep|remove)"
		}
		fmt.Fprintf(&b, "removed rule %s: %d users hold badges through it; on_unmap: %s\n", u.Rule, u.Users, choice)
	}
	var counted []storage.Outcome
	if p.Applied != nil {
		counted = p.Applied.Counted()
	}
	if len(counted) > 0 {
		slices.Sort(counted)
		parts := make([]string, 0, len(counted))
		for _, o := range counted {
			parts = append(parts, fmt.Sprintf("%s %d", o, p.Applied.Of(o)))
		}
		fmt.Fprintf(&b, "events: %s\n", strings.Join(parts, ", "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}
