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
	"github.com/dsyncd/dsyncd/storage"
)

// Exit codes.
const (
	exitOK      = 0
	exitError   = 1
	exitNoAdmin = 2 // plan: the change would leave an organisation without an admin
)

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
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
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
	root.AddCommand(a.replayCommand(), a.exportCommand(), a.serveCommand(), a.versionCommand(),
		a.planCommand(), a.applyCommand(), a.resumeCommand(),
		a.holdsCommand(), a.auditCommand(), a.whyCommand(), a.dlqCommand(), a.backupCommand(), a.rebuildCommand(), a.checkConfigCommand(),
		a.reconcileCommand())
	return root
}

// loadConfig reads the configuration (file, environment, flags) and
// validates it. Commands that do not receive webhooks do not need secrets.
func (a *app) loadConfig(cmd *cobra.Command) (config.Config, error) {
	return loadConfig(a.configPath, cmd.Flags(), cmd.Name() == "serve" || cmd.Name() == "check-config")
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
