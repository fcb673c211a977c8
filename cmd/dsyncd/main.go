// Command dsyncd receives WorkOS Directory Sync webhooks, queues them on NATS
// JetStream and applies them to a local store of users, groups and badges.
// Run `dsyncd --help` for the commands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
