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
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
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
	var d Delivery
	start := time.Now()
	wait := r.First
	for {
		a := Attempt{Start: time.Now()}
		a.Status, a.Err = p.Post(ctx, body)
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
