package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/reconcile"
	"github.com/dsyncd/dsyncd/storage"
)

// Exit codes.
const (
	exitOK      = 0
	exitError   = 1 // a runtime error
	exitUsage   = 2 // an unknown command or flag, a missing or extra argument, a bad flag value
	exitNoAdmin = 3 // plan, reconcile --dry-run: the change would leave an organisation without an admin
)

// usageError is a command line the command cannot run: run prints the
// command's usage line with it and exits exitUsage.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// formatValue is every command's --format: text (for humans) or json (for
// machines). "table", the name some commands used for text, is accepted.
type formatValue struct{ p *string }

// formatFlag registers --format on fs, storing "text" or "json" in p.
func formatFlag(fs *pflag.FlagSet, p *string) {
	*p = "text"
	fs.Var(formatValue{p}, "format", "output format: text (for humans) or json (for machines)")
}

func (f formatValue) String() string { return *f.p }
func (f formatValue) Type() string   { return "text|json" }
func (f formatValue) Set(s string) error {
	switch s {
	case "text", "table":
		*f.p = "text"
	case "json":
		*f.p = "json"
	default:
		return fmt.Errorf("%q is not text or json", s)
	}
	return nil
}

// usagef returns a usageError.
func usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// exitError carries a specific exit code out of a command.
type exitCodeError struct {
	code int
	err  error
}

func (e *exitCodeError) Error() string { return e.err.Error() }
func (e *exitCodeError) Unwrap() error { return e.err }

// app is what every command shares: where it writes and how it reads its configuration.
type app struct {
	ctx        context.Context
	stdin      io.Reader
	stdout     io.Writer
	stderr     io.Writer
	configPath string
	dbPath     string
}

// run is the whole program: main only builds the signal context.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command ") {
		if cmd == nil {
			cmd = root
		}
		fmt.Fprintln(stderr, "dsyncd:", err)
		fmt.Fprintf(stderr, "Usage: %s\nRun '%s --help' for more.\n", cmd.UseLine(), cmd.CommandPath())
		return exitUsage
	}
	var ce *exitCodeError
	if errors.As(err, &ce) {
		if ce.err != nil && ce.err.Error() != "" {
			fmt.Fprintln(stderr, "dsyncd:", ce.err)
		}
		return ce.code
	}
	fmt.Fprintln(stderr, "dsyncd:", err)
	return exitError
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "dsyncd",
		Short: "WorkOS Directory Sync daemon: webhooks → JetStream → users, groups and badges",
		Long: `dsyncd keeps a product's users, groups and badges (roles) in step with its customers'
identity providers through WorkOS Directory Sync.

It receives WorkOS's signed webhooks, stores each event durably on NATS JetStream before
answering, and applies the events to a local bbolt store in the same final state whatever
order or how many times they arrive. A configured mapping turns IdP groups and WorkOS role
slugs into badges, under safeguards that never lock an organisation out.

Configuration comes from a YAML file (--config), then DSYNCD_* environment variables
(DSYNCD_HTTP_LISTEN, DSYNCD_WEBHOOK_SECRETS=a,b, ...), then flags.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVarP(&a.configPath, "config", "c", "", "configuration file (YAML)")
	root.AddCommand(a.replayCommand(), a.sendCommand(), a.exportCommand(), a.serveCommand(), a.versionCommand(),
		a.planCommand(), a.applyCommand(), a.resumeCommand(),
		a.holdsCommand(), a.auditCommand(), a.whyCommand(), a.dlqCommand(), a.backupCommand(), a.rebuildCommand(), a.checkConfigCommand(),
		a.reconcileCommand(), a.snapshotCommand())
	markUsageErrors(root)
	return root
}

// markUsageErrors makes the flag and argument errors of cmd and its
// subcommands usage errors.
func markUsageErrors(cmd *cobra.Command) {
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err: err} })
	if args := cmd.Args; args != nil {
		cmd.Args = func(c *cobra.Command, a []string) error {
			if err := args(c, a); err != nil {
				return &usageError{err: err}
			}
			return nil
		}
	}
	for _, c := range cmd.Commands() {
		markUsageErrors(c)
	}
}

// loadConfig reads the configuration (file, environment, flags) and
// validates it. Commands that do not receive webhooks do not need secrets.
func (a *app) loadConfig(cmd *cobra.Command) (config.Config, error) {
	return loadConfig(a.configPath, cmd.Flags(), cmd.Name() == "serve" || cmd.Name() == "check-config" || cmd.Name() == "send")
}

func loadConfig(path string, flags *pflag.FlagSet, needSecrets bool) (config.Config, error) {
	cfg, all, _, err := config.Check(path, flags)
	if err != nil {
		return cfg, err
	}
	var problems []string
	for _, p := range all {
		if !needSecrets && strings.HasPrefix(p, "webhook.secrets") {
			continue
		}
		problems = append(problems, p)
	}
	if len(problems) > 0 {
		return cfg, fmt.Errorf("invalid configuration:\n  %s", strings.Join(problems, "\n  "))
	}
	return cfg, nil
}

// clientOptions builds the WorkOS API client's options from the configuration.
func clientOptions(cfg config.Config) reconcile.ClientOptions {
	return reconcile.ClientOptions{APIKey: cfg.WorkOS.APIKey, Endpoint: cfg.WorkOS.Endpoint}
}

// backgroundOptions builds what serve runs besides the receiver (the Events
// API poller, the periodic reconciliation) from the configuration.
func backgroundOptions(cfg config.Config) reconcile.BackgroundOptions {
	return reconcile.BackgroundOptions{Client: clientOptions(cfg), PollInterval: cfg.Events.PollInterval, Start: cfg.Events.Start,
		OnStaleCursor: cfg.Events.OnStaleCursor, ReconcileInterval: cfg.Reconcile.Interval}
}

// storeOptions builds the store's options from the configuration.
func storeOptions(cfg config.Config, path string) storage.Options {
	if path == "" {
		path = cfg.StorePath()
	}
	return storage.Options{
		Path:               path,
		OpenTimeout:        cfg.Store.OpenTimeout,
		ProcessedRetention: cfg.Store.ProcessedRetention,
		AuditRetention:     cfg.Store.AuditRetention,
		Mapping:            cfg.Mapping,
		MaxFuture:          cfg.Webhook.Tolerance,
		Changes:            storage.ChangesOptions{Off: !cfg.Changes.Enabled, Retention: cfg.Changes.Retention},
		Safeguards: storage.Safeguards{
			OnDirectoryDeleted: cfg.Safeguards.OnDirectoryDeleted,
			BreakGlass:         cfg.Safeguards.BreakGlass,
			MaxDeprovisions: storage.Breaker{
				Count:   cfg.Safeguards.MaxDeprovisions.Count,
				Percent: cfg.Safeguards.MaxDeprovisions.Percent,
				Floor:   cfg.Safeguards.MaxDeprovisions.Floor,
				Window:  cfg.Safeguards.MaxDeprovisions.Window,
			},
		},
	}
}

// newLogger builds the zap logger the configuration asks for, writing to w.
func newLogger(cfg config.Config, w io.Writer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(cfg.Log.Level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.TimeKey = "ts"
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if cfg.Log.Format == "console" {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), level)), nil
}
