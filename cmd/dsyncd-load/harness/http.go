package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/dsyncd/dsyncd/events"
)

// NewClient returns a keep-alive client for conns concurrent posters to one
// host, with a per-request timeout.
func NewClient(conns int, timeout time.Duration) *http.Client {
	tr := &http.Transport{
		Proxy:               nil, // loopback only, never through a proxy
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns * 2,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     0,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// Get fetches url and returns the status and body (at most 64 MiB).
func Get(ctx context.Context, c *http.Client, url string) (int, []byte, error) {
	return GetWithToken(ctx, c, url, "")
}

// GetWithToken is Get with a bearer token (the /v1 API requires one: the
// daemon's api.token, or the <data_dir>/api.token serve created).
func GetWithToken(ctx context.Context, c *http.Client, url, token string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return resp.StatusCode, b, err
}

// Poster posts signed webhooks.
type Poster struct {
	Client *http.Client
	URL    string // the webhook URL
	Secret string
}

// Post signs body at the current time (as WorkOS does on every attempt) and
// posts it once. It returns the status, or an error for a transport failure.
func (p *Poster) Post(ctx context.Context, body []byte) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.URL, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(events.HeaderName, events.Sign(p.Secret, time.Now(), body))
	resp, err := p.Client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return resp.StatusCode, nil
}

// Attempt is one delivery attempt.
type Attempt struct {
	Start, End time.Time
	Status     int // 0 on a transport error
	Err        error
}

// Retry is how Deliver retries a non-2xx answer: exponential backoff from
// First, doubling up to Max, until ctx ends (MaxAttempts 0 = no limit).
type Retry struct {
	First, Max  time.Duration
	MaxAttempts int
}

// Delivery is what Deliver did for one event.
type Delivery struct {
	Attempts int
	Status   int           // the last status (2xx when delivered)
	Took     time.Duration // first attempt's start to the 2xx
	Err      error         // the last transport error, if the last attempt had one
}

// Delivered reports whether the event got a 2xx.
func (d Delivery) Delivered() bool { return d.Status/100 == 2 }

// Deliver posts body until it gets a 2xx, retrying every other answer and
// transport error like WorkOS does (with a fresh signature each time). observe,
// if set, sees every attempt. It returns when delivered, when the attempts
// are used up, or when ctx ends.
func (p *Poster) Deliver(ctx context.Context, body []byte, r Retry, observe func(Attempt)) Delivery {
	return deliver(ctx, p.Post, body, r, observe)
}

func deliver(ctx context.Context, post func(context.Context, []byte) (int, error), body []byte, r Retry, observe func(Attempt)) Delivery {
	var d Delivery
	start := time.Now()
	wait := r.First
	for {
		a := Attempt{Start: time.Now()}
		a.Status, a.Err = post(ctx, body)
		a.End = time.Now()
		d.Attempts++
		d.Status, d.Err = a.Status, a.Err
		if observe != nil && ctx.Err() == nil {
			observe(a)
		}
		if a.Status/100 == 2 {
			d.Took = a.End.Sub(start)
			return d
		}
		if ctx.Err() != nil || (r.MaxAttempts > 0 && d.Attempts >= r.MaxAttempts) {
			return d
		}
		select {
		case <-ctx.Done():
			return d
		case <-time.After(wait):
		}
		wait = min(wait*2, r.Max)
	}
}

// Metrics is a Prometheus text exposition, keyed by the series as written
// (`name` or `name{label="value"}`).
type Metrics map[string]float64

// Scrape reads base+"/metrics".
func Scrape(ctx context.Context, c *http.Client, base string) (Metrics, error) {
	code, body, err := Get(ctx, c, base+"/metrics")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %d", code)
	}
	return ParseMetrics(body), nil
}

// ParseMetrics parses the Prometheus text format (samples only).
func ParseMetrics(b []byte) Metrics {
	m := Metrics{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m
}

// Outcome is dsyncd_events_total{outcome=o}.
func (m Metrics) Outcome(o string) float64 { return m[`dsyncd_events_total{outcome="`+o+`"}`] }

// Processed is the events the worker took off the stream and committed a
// decision for, duplicates excluded: applied + stale + ignored + deferred.
func (m Metrics) Processed() float64 {
	return m.Outcome("applied") + m.Outcome("stale") + m.Outcome("ignored") + m.Outcome("deferred")
}

// Pending is dsyncd_consumer_pending (-1 when missing).
func (m Metrics) Pending() float64 {
	if v, ok := m["dsyncd_consumer_pending"]; ok {
		return v
	}
	return -1
}

// Refused sums dsyncd_webhooks_refused_total by reason.
func (m Metrics) Refused() map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if r, ok := strings.CutPrefix(k, `dsyncd_webhooks_refused_total{reason="`); ok {
			out[strings.TrimSuffix(r, `"}`)] = v
		}
	}
	return out
}

// WaitDrained polls /metrics until the consumer has nothing pending and the
// worker has processed at least want events (Processed), or ctx ends. It
// returns the last scrape.
func WaitDrained(ctx context.Context, c *http.Client, base string, want float64) (Metrics, error) {
	var last Metrics
	var lastErr error
	for {
		m, err := Scrape(ctx, c, base)
		if err == nil {
			last = m
			if m.Pending() == 0 && m.Processed() >= want {
				return m, nil
			}
		} else {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if last == nil {
				return nil, errors.Join(ctx.Err(), lastErr)
			}
			return last, fmt.Errorf("not drained: pending %v, processed %v of %v: %w", last.Pending(), last.Processed(), want, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// RawConn posts signed webhooks over one keep-alive HTTP/1.1 connection with
// a minimal client: each request is written in one piece and the response's
// status line and headers are parsed by hand. It costs a fraction of
// net/http's CPU per request (no goroutines per connection, no header maps),
// which on a machine the load generator shares with the daemon leaves more of
// it to the daemon under test. It speaks only what dsyncd answers (a
// Content-Length body, no chunking). Not safe for concurrent use.
type RawConn struct {
	Addr    string // host:port
	Path    string // the webhook path
	Secret  string
	Timeout time.Duration // per request; zero means 30s

	conn net.Conn
	br   *bufio.Reader
	buf  []byte
}

// Post signs body at the current time and posts it once, dialling first if
// the connection is not open. It returns the status, or an error for a
// transport failure (after which the next Post dials again).
func (c *RawConn) Post(ctx context.Context, body []byte) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if c.conn == nil {
		conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", c.Addr)
		if err != nil {
			return 0, err
		}
		c.conn, c.br = conn, bufio.NewReaderSize(conn, 4096)
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	deadline := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = c.conn.SetDeadline(deadline)
	b := append(c.buf[:0], "POST "...)
	b = append(b, c.Path...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, c.Addr...)
	b = append(b, "\r\nUser-Agent: dsyncd-load\r\nContent-Type: application/json\r\n"...)
	b = append(b, events.HeaderName...)
	b = append(b, ": "...)
	b = append(b, events.Sign(c.Secret, time.Now(), body)...)
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n\r\n"...)
	b = append(b, body...)
	c.buf = b
	if _, err := c.conn.Write(b); err != nil {
		c.Close()
		return 0, err
	}
	status, keep, err := c.readResponse()
	if err != nil || !keep {
		c.Close()
	}
	return status, err
}

// readResponse reads one response and discards its body; keep is false when
// the server closes the connection after it.
func (c *RawConn) readResponse() (status int, keep bool, err error) {
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return 0, false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, false, fmt.Errorf("bad status line %q", line)
	}
	if status, err = strconv.Atoi(string(line[9:12])); err != nil {
		return 0, false, fmt.Errorf("bad status line %q", line)
	}
	length, keep := -1, true
	for {
		h, err := c.br.ReadSlice('\n')
		if err != nil {
			return 0, false, err
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		k, v, _ := bytes.Cut(h, []byte(":"))
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(v)); err != nil {
				return 0, false, fmt.Errorf("bad Content-Length %q", v)
			}
		case bytes.EqualFold(k, []byte("Connection")) && bytes.EqualFold(v, []byte("close")):
			keep = false
		case bytes.EqualFold(k, []byte("Transfer-Encoding")):
			return 0, false, fmt.Errorf("Transfer-Encoding %q not supported", v)
		}
	}
	if length < 0 {
		return 0, false, errors.New("response without Content-Length")
	}
	if _, err := c.br.Discard(length); err != nil {
		return 0, false, err
	}
	return status, keep, nil
}

// Close closes the connection; the next Post dials again.
func (c *RawConn) Close() {
	if c.conn != nil {
		_ = c.conn.Close()
		c.conn, c.br = nil, nil
	}
}

// Deliver posts body through c like Poster.Deliver.
func (c *RawConn) Deliver(ctx context.Context, body []byte, r Retry, observe func(Attempt)) Delivery {
	return deliver(ctx, c.Post, body, r, observe)
}
