// Command dsyncd-example-consumer is an example product: it keeps an
// in-memory mirror of dsyncd's users and their badges, bootstrapped from
// /v1/export and kept in step by one of the change feed's three ways out,
// and prints a line when a user loses access:
//
//	revoke sessions: ann@example.com (deprovisioned)
//	revoke sessions: bob@example.com (deleted)
//	revoke sessions: cy@example.com (lost badge admin)
//
// It checks that the records' seq has no gap (a gap is reported on
// standard error and ends it with status 2) and, on SIGTERM or SIGINT, or
// once it has applied -until-seq, writes its mirror as JSON
// ({"seq","users":[…]}, the users as /v1/export lists them) to -out.
//
//	dsyncd-example-consumer -mode longpoll  -server http://127.0.0.1:8080 -token-file data/api.token
//	dsyncd-example-consumer -mode jetstream -server http://127.0.0.1:8080 -token-file data/api.token -nats nats://127.0.0.1:4222
//	dsyncd-example-consumer -mode webhook   -server http://127.0.0.1:8080 -token-file data/api.token -listen 127.0.0.1:9090 -secret whsec_…
//
// It imports the client package as any Go product would; the JetStream way
// reads the stream with nats.go.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dsyncd/dsyncd/client"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

type options struct {
	mode, server, token, tokenFile string
	natsURL, stream, subjects      string
	listen, secret, secretFile     string
	out                            string
	until                          uint64
	verbose                        bool
}

// run is the program; its status is 0 (stopped by a signal or -until-seq,
// the mirror written), 1 (a failure) or 2 (a gap in seq, or bad flags).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	// The webhook handlers, the follower and run write concurrently.
	stdout, stderr = &lockedWriter{w: stdout}, &lockedWriter{w: stderr}
	var o options
	fs := flag.NewFlagSet("dsyncd-example-consumer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.mode, "mode", "longpoll", "the way out to follow: longpoll, jetstream or webhook")
	fs.StringVar(&o.server, "server", "http://127.0.0.1:8080", "dsyncd's base URL (the export, and the long-poll)")
	fs.StringVar(&o.token, "token", "", "the API token (api.token)")
	fs.StringVar(&o.tokenFile, "token-file", "", "a file holding the API token (<data_dir>/api.token)")
	fs.StringVar(&o.natsURL, "nats", nats.DefaultURL, "jetstream: the NATS URL (the embedded server's nats.listen)")
	fs.StringVar(&o.stream, "stream", "DSYNCD_CHANGES", "jetstream: the stream (changes.stream)")
	fs.StringVar(&o.subjects, "subjects", "dsyncd.changes.>", "jetstream: the subjects to read (changes.subject_prefix + \".>\")")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:9090", "webhook: the address to receive the webhooks out on (changes.webhook.url)")
	fs.StringVar(&o.secret, "secret", "", "webhook: the secret they are signed with (changes.webhook.secret)")
	fs.StringVar(&o.secretFile, "secret-file", "", "webhook: a file holding the secret")
	fs.StringVar(&o.out, "out", "-", "where to write the mirror at the end (- for standard output)")
	fs.Uint64Var(&o.until, "until-seq", 0, "stop once the mirror has applied this seq (0: run until SIGTERM)")
	fs.BoolVar(&o.verbose, "v", false, "print each record applied on standard error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var err error
	if o.token, err = secretFrom(o.token, o.tokenFile); err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if o.mode == "webhook" {
		if o.secret, err = secretFrom(o.secret, o.secretFile); err != nil || o.secret == "" {
			fmt.Fprintln(stderr, "webhook mode needs -secret or -secret-file", err)
			return 2
		}
	}
	follow := map[string]func(context.Context, *client.Client, *mirror, options) error{
		"longpoll": followLongPoll, "jetstream": followJetStream, "webhook": followWebhooks,
	}[o.mode]
	if follow == nil {
		fmt.Fprintf(stderr, "-mode %q: want longpoll, jetstream or webhook\n", o.mode)
		return 2
	}

	c := client.New(o.server, o.token, client.WithRetryHook(func(err error, d time.Duration) {
		fmt.Fprintf(stderr, "retrying in %s: %v\n", d.Round(time.Millisecond), err)
	}))
	m := newMirror(stdout, stderr, o.verbose, o.until)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- follow(ctx, c, m, o) }()
	select {
	case <-ctx.Done(): // SIGTERM
	case <-m.reached:
	case err = <-errc:
	}
	cancel()
	if err == nil {
		err = <-errc
	}
	switch {
	case errors.Is(err, errGap):
		fmt.Fprintf(stderr, "ERROR: %v: the mirror is wrong; a product resyncs from /v1/export\n", err)
		return 2
	case err != nil && !errors.Is(err, context.Canceled):
		fmt.Fprintf(stderr, "ERROR: %v\n", err)
		return 1
	}
	if err := writeMirror(m, o.out, stdout); err != nil {
		fmt.Fprintf(stderr, "ERROR: writing the mirror: %v\n", err)
		return 1
	}
	return 0
}

// lockedWriter serialises the writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// secretFrom is value, or the trimmed content of file.
func secretFrom(value, file string) (string, error) {
	if file == "" {
		return value, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func writeMirror(m *mirror, out string, stdout io.Writer) error {
	if out == "-" {
		return m.write(stdout)
	}
	f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := m.write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// bootstrap loads the mirror from an export, retrying while dsyncd is not
// answering.
func bootstrap(ctx context.Context, c *client.Client, m *mirror) error {
	for wait := 200 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		ex, err := c.Export(ctx)
		if err == nil {
			m.load(ex)
			return nil
		}
		var apiErr *client.Error
		if errors.As(err, &apiErr) && !apiErr.Temporary() {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// followLongPoll: the export, then Follow from its change_seq; a 410
// (the position no longer kept) resyncs from a new export.
func followLongPoll(ctx context.Context, c *client.Client, m *mirror, _ options) error {
	if err := bootstrap(ctx, c, m); err != nil {
		return err
	}
	for {
		m.mu.Lock()
		after := m.seq
		m.mu.Unlock()
		err := c.Follow(ctx, after, m.apply)
		if errors.Is(err, client.ErrGap) {
			return fmt.Errorf("%w (%v)", errGap, err)
		}
		if !errors.Is(err, client.ErrGone) {
			return err
		}
		fmt.Fprintln(m.log, "the feed no longer keeps seq", after, "- resyncing from /v1/export")
		if err := bootstrap(ctx, c, m); err != nil {
			return err
		}
	}
}

// followJetStream: the export, then an ordered consumer of the change
// stream, skipping the records the export already reflects. (A product
// that runs for long keeps a durable consumer instead, which resumes
// where it stopped.)
func followJetStream(ctx context.Context, c *client.Client, m *mirror, o options) error {
	if err := bootstrap(ctx, c, m); err != nil {
		return err
	}
	nc, err := nats.Connect(o.natsURL, nats.Name("dsyncd-example-consumer"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("nats %s: %w", o.natsURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cons, err := js.OrderedConsumer(ctx, o.stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{o.subjects}, DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return fmt.Errorf("consumer of stream %s: %w", o.stream, err)
	}
	msgs, err := cons.Messages()
	if err != nil {
		return err
	}
	defer msgs.Stop()
	go func() { <-ctx.Done(); msgs.Stop() }()
	for {
		msg, err := msgs.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("stream %s: %w", o.stream, err)
		}
		var ch client.Change
		if err := decodeChange(msg.Data(), &ch); err != nil {
			return fmt.Errorf("stream %s, subject %s: %w", o.stream, msg.Subject(), err)
		}
		if err := m.apply(ch); err != nil {
			return err
		}
	}
}

// followWebhooks: listen at once (dsyncd retries what it cannot deliver),
// answer each POST once the export is loaded, after checking its
// signature; a record already applied is answered 2xx and skipped.
func followWebhooks(ctx context.Context, c *client.Client, m *mirror, o options) error {
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	loaded := make(chan struct{})
	fatal := make(chan error, 1)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<20))
		if err != nil {
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
			return
		}
		if err := client.VerifyWebhook(o.secret, r.Header.Get(client.HeaderSignature), body, time.Now(), 5*time.Minute); err != nil {
			fmt.Fprintf(m.log, "refused a webhook from %s: %v\n", r.RemoteAddr, err)
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		changes, err := client.DecodeWebhook(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		select {
		case <-loaded:
		case <-r.Context().Done():
			return
		}
		for _, ch := range changes {
			if err := m.apply(ch); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				select {
				case fatal <- err:
				default:
				}
				return
			}
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := bootstrap(ctx, c, m); err != nil {
		return err
	}
	close(loaded)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case err := <-fatal:
		return err
	case err := <-served:
		return err
	}
}
