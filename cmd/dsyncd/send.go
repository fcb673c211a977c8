package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/events"
)

func (a *app) sendCommand() *cobra.Command {
	var (
		server  string
		wait    bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "send --config FILE [--server URL] [--wait=false] [--timeout 30s] PATH...",
		Short: "Sign events as WorkOS does and post them to a running daemon's webhook",
		Long: `send posts WorkOS events to a running "dsyncd serve" the way WorkOS delivers them:
each body exactly as read, signed with the first of webhook.secrets in a
WorkOS-Signature header (t=<unix ms>, v1=<hex HMAC-SHA256 of "t.body">), to
http://<http.listen><webhook.path>, or to --server URL + webhook.path. It is for trying
dsyncd out and for testing a deployment's receiver end to end.

Each PATH is read as replay reads it: a file holding one JSON event, a JSON array or
NDJSON, a directory (its files in name order), or - for standard input.

Every answer that is not 2xx is reported with the event's file and line. Then, unless
--wait=false, send waits until the daemon has applied every event it accepted (GET
/v1/events/{id}, with api.token or the token serve created in <data_dir>/api.token),
for at most --timeout.

EXIT STATUS
  0  every event accepted (and applied, when waiting)
  1  an event refused, not applied in time, or the daemon unreachable
  2  usage error`,
		Example: `  dsyncd send --config config/example.yaml testdata/try/
  jq -c '.[]' events.json | dsyncd send --config config/example.yaml -
  dsyncd send --config /etc/dsyncd/dsyncd.yaml --server https://dsyncd.example.com --wait=false event.json`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			if len(cfg.Webhook.Secrets) == 0 || cfg.Webhook.Secrets[0] == "" {
				return fmt.Errorf("webhook.secrets is empty: send signs with its first secret (set %s)", config.EnvVar("webhook.secrets"))
			}
			if server == "" {
				if server = defaultServer(cfg.HTTP.Listen); server == "" {
					return fmt.Errorf("http.listen %q has no fixed port: pass --server URL", cfg.HTTP.Listen)
				}
			}
			raws, err := readEvents(a.stdin, args)
			if err != nil {
				return err
			}
			return a.send(cmd.Context(), cfg, strings.TrimRight(server, "/"), raws, wait, timeout)
		},
	}
	cmd.Flags().StringVar(&server, "server", "", "base URL of the running dsyncd serve (default: http://<http.listen>)")
	cmd.Flags().BoolVar(&wait, "wait", true, "wait until the daemon has applied the accepted events")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for the events to be applied")
	return cmd
}

// sent is an event send posted, and what the daemon answered.
type sent struct {
	raw    events.Raw
	id     string
	status string // enqueued, duplicate or ignored; "" when refused
}

func (a *app) send(ctx context.Context, cfg config.Config, server string, raws []events.Raw, wait bool, timeout time.Duration) error {
	hook := server + cfg.Webhook.Path
	client := &http.Client{Timeout: 30 * time.Second}
	var (
		accepted []sent
		refused  int
		counts   = map[string]int{}
	)
	for _, r := range raws {
		id := ""
		if ev, err := events.Peek(r.Data); err == nil {
			id = ev.ID
		}
		status, err := postSignedEvent(ctx, client, hook, cfg.Webhook.Secrets[0], r.Data)
		var refusal *sendRefusal
		switch {
		case errors.As(err, &refusal):
			refused++
			fmt.Fprintf(a.stderr, "refused: %s (event %q): %s\n", r.Source, id, refusal)
			continue
		case err != nil:
			return err
		}
		counts[status]++
		accepted = append(accepted, sent{raw: r, id: id, status: status})
	}
	fmt.Fprintf(a.stdout, "sent %d event(s) to %s: %d enqueued, %d duplicate, %d ignored (a type dsyncd does not apply), %d refused\n",
		len(raws), hook, counts["enqueued"], counts["duplicate"], counts["ignored"], refused)
	var waitErr error
	if wait {
		waitErr = a.waitApplied(ctx, cfg, server, accepted, timeout)
	}
	switch {
	case refused > 0:
		return &exitCodeError{code: exitError, err: errors.Join(fmt.Errorf("%d of %d event(s) refused", refused, len(raws)), waitErr)}
	case waitErr != nil:
		return &exitCodeError{code: exitError, err: waitErr}
	}
	return nil
}

// sendRefusal is a non-2xx answer of the webhook.
type sendRefusal struct {
	status int
	body   string
}

func (e *sendRefusal) Error() string {
	msg := fmt.Sprintf("HTTP %d %s", e.status, e.body)
	if e.status == http.StatusUnauthorized {
		msg += " (is the first of webhook.secrets one that serve has?)"
	}
	return msg
}

// postSignedEvent signs body with secret now, as WorkOS does, and posts it.
// It returns the daemon's status (enqueued, duplicate, ignored), a
// *sendRefusal for a non-2xx answer, or the error that kept it from asking.
func postSignedEvent(ctx context.Context, client *http.Client, hook, secret string, body []byte) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, hook, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(events.HeaderName, events.Sign(secret, time.Now(), body))
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return "", fmt.Errorf("POST %s: connection refused: is dsyncd serve running there (make run)?", hook)
		}
		return "", fmt.Errorf("POST %s: %w", hook, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return "", &sendRefusal{status: resp.StatusCode, body: strings.TrimSpace(string(b))}
	}
	var answer struct {
		Status string `json:"status"`
	}
	_ = json.Unmarshal(b, &answer)
	return answer.Status, nil
}

// waitApplied polls GET /v1/events/{id} until every accepted event that
// dsyncd applies has been processed (applied, or found stale), or timeout.
func (a *app) waitApplied(ctx context.Context, cfg config.Config, server string, accepted []sent, timeout time.Duration) error {
	var todo []sent
	for _, s := range accepted {
		if s.status != "ignored" && s.id != "" {
			todo = append(todo, s)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	c := newAPIClient(cfg, server)
	deadline := time.Now().Add(timeout)
	for done := 0; ; {
		// Events are applied in about the order they were sent: look again
		// from the first one not yet applied.
		for done < len(todo) {
			processed, err := c.processed(ctx, todo[done].id)
			if err != nil {
				return fmt.Errorf("waiting for the events to be applied (--wait=false skips it): %w", err)
			}
			if !processed {
				break
			}
			done++
		}
		if done == len(todo) {
			fmt.Fprintf(a.stdout, "applied: all %d event(s)\n", len(todo))
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d event(s) not applied after %s (first: %q from %s): the worker is behind (dsyncd_consumer_pending), "+
				"the organisation is paused (dsyncd holds), or the events were parked (dsyncd dlq list)",
				len(todo)-done, len(todo), timeout, todo[done].id, todo[done].raw.Source)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond): // polling interval
		}
	}
}
