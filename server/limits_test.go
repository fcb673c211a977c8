package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/server"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not waiting for work
	}
}

// postBody posts body to url with the signature header sig ("" for none) on
// a fresh connection, and returns the status, the Retry-After header and the body.
func postBody(t *testing.T, url, sig string, body []byte) (int, string, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if sig != "" {
		req.Header.Set(events.HeaderName, sig)
	}
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), b
}

// holdRequest sends a webhook request's headers, declaring contentLength
// bytes of body, with a well-formed, fresh but forged signature, and no
// body: the handler waits for the body, holding its connection and its
// share of the in-flight budget until the read timeout.
func holdRequest(t *testing.T, addr string, contentLength int) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST /webhooks/workos HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n%s: t=%d, v1=%s\r\nContent-Length: %d\r\n\r\n",
		addr, events.HeaderName, time.Now().UnixMilli(), hmacHex, contentLength)
	return c
}

func TestAFloodOfSilentConnectionsStaysUnderTheLimitAndASignedWebhookGets200(t *testing.T) {
	const limit, flood = 16, 300
	r := newRigWith(t, zap.NewNop(), func(o *server.Options) { o.MaxConnections = limit })
	addr := r.srv.Addr()
	conns := make([]net.Conn, 0, flood)
	for range flood {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	refused := func() uint64 {
		m := r.srv.Stats().Refused()
		return m[server.ReasonConnectionEvicted] + m[server.ReasonTooManyConnections]
	}
	waitFor(t, "the listener to close the connections over the limit", 20*time.Second, func() bool { return refused() >= flood-limit })
	if n := r.srv.OpenConnections(); n > limit {
		t.Fatalf("%d connections open, limit %d", n, limit)
	}
	// A signed webhook gets through: the silent connection that waited
	// longest (past the grace) is closed to make room.
	// Retried as WorkOS retries: while every silent connection is younger
	// than the grace, a new one is refused on arrival.
	body := userEvent("through_the_flood", nil)
	waitFor(t, "a signed webhook to be accepted during the flood", 10*time.Second, func() bool {
		code, _, _ := postBodyNoFail(r.srv.URL()+"/webhooks/workos", sign(body), body)
		return code == http.StatusOK
	})
	if m := r.srv.Stats().Refused(); m[server.ReasonConnectionEvicted] < 1 {
		t.Errorf("evicted %d connections, want the oldest silent one (refused on arrival: %d)", m[server.ReasonConnectionEvicted], m[server.ReasonTooManyConnections])
	}
	_ = conns[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conns[0].Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Fatalf("the oldest silent connection is still open (read: %v)", err)
	}
	if n := r.srv.OpenConnections(); n > limit {
		t.Fatalf("%d connections open after the webhook, limit %d", n, limit)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestANewConnectionIsRefusedWhenEveryConnectionIsInAHandler(t *testing.T) {
	const limit = 8
	r := newRigWith(t, zap.NewNop(), func(o *server.Options) {
		o.MaxConnections = limit
		o.ReadTimeout = 3 * time.Second
	})
	addr := r.srv.Addr()
	for range limit {
		holdRequest(t, addr, 100)
	}
	waitFor(t, "the held requests to reach the handler", 10*time.Second, func() bool { return r.srv.Stats().Received.Load() == limit })
	before := r.srv.Stats().Refused()[server.ReasonTooManyConnections]
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	if got := readStatus(t, c, 5*time.Second); got != 0 {
		t.Fatalf("a connection over the limit got %d, want it closed unanswered", got)
	}
	waitFor(t, "the refusal to be counted", 5*time.Second, func() bool {
		return r.srv.Stats().Refused()[server.ReasonTooManyConnections] == before+1
	})
	// The held requests end at the read timeout; a webhook retried as
	// WorkOS retries then gets through.
	body := userEvent("after_the_hold", nil)
	waitFor(t, "a signed webhook to be accepted", 20*time.Second, func() bool {
		code, _, _ := postBodyNoFail(r.srv.URL()+"/webhooks/workos", sign(body), body)
		return code == http.StatusOK
	})
}

// postBodyNoFail is postBody for polling: a transport error is status 0.
func postBodyNoFail(url, sig string, body []byte) (int, string, []byte) {
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(events.HeaderName, sig)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), b
}

func TestBodiesInFlightOverTheBudgetGet503WhileASmallSignedWebhookGets200(t *testing.T) {
	const maxBody = 128 << 10
	r := newRigWith(t, zap.NewNop(), func(o *server.Options) {
		o.MaxBodyBytes = maxBody
		o.MaxInflightBytes = 4 * maxBody // large bodies may use 3 of them
		o.ReadTimeout = 10 * time.Second
	})
	url := r.srv.URL() + "/webhooks/workos"
	var held []net.Conn
	for range 3 {
		held = append(held, holdRequest(t, r.srv.Addr(), maxBody))
	}
	waitFor(t, "the held requests to reach the handler", 10*time.Second, func() bool { return r.srv.Stats().Received.Load() == 3 })

	big := userEvent("big", func(_, data map[string]any) { data["last_name"] = strings.Repeat("L", maxBody-2000) })
	code, retry, b := postBody(t, url, sign(big), big)
	if code != http.StatusServiceUnavailable || retry == "" || !strings.Contains(string(b), server.ReasonBusy) {
		t.Fatalf("a large body over the budget: %d (Retry-After %q) %s; want 503 %s with Retry-After", code, retry, b, server.ReasonBusy)
	}
	small := userEvent("small_while_busy", nil)
	if code, _, b := postBody(t, url, sign(small), small); code != http.StatusOK {
		t.Fatalf("a small signed webhook while large bodies hold the budget: %d %s", code, b)
	}
	// Once the held bodies are gone, the large one fits again.
	for _, c := range held {
		c.Close()
	}
	waitFor(t, "the large body to be accepted once the budget is free", 20*time.Second, func() bool {
		code, _, _ := postBodyNoFail(url, sign(big), big)
		return code == http.StatusOK
	})
	if n := r.srv.Stats().Refused()[server.ReasonBusy]; n < 1 {
		t.Errorf("%s counted %d times", server.ReasonBusy, n)
	}
}

// A sender refused for the budget is still writing its body when the
// refusal is decided; a body larger than the connection's socket buffers
// (16 MiB) cannot be written before the server reads it. The sender still
// reads the 503 and its Retry-After: the body is read away first. A
// connection closed with a body unread is reset, and the sender sees the
// reset, not the answer.
func TestASenderStillWritingItsBodyReadsItsBusyRefusal(t *testing.T) {
	const maxBody = 16 << 20
	r := newRigWith(t, zap.NewNop(), func(o *server.Options) {
		o.MaxBodyBytes = maxBody
		o.MaxInflightBytes = 4 * maxBody
		o.ReadTimeout = 20 * time.Second
	})
	for range 3 {
		holdRequest(t, r.srv.Addr(), maxBody)
	}
	waitFor(t, "the held requests to reach the handler", 10*time.Second, func() bool { return r.srv.Stats().Received.Load() == 3 })

	big := userEvent("big", func(_, data map[string]any) { data["last_name"] = strings.Repeat("L", maxBody-2000) })
	c, err := net.DialTimeout("tcp", r.srv.Addr(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "POST /webhooks/workos HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n%s: %s\r\nContent-Length: %d\r\n\r\n",
		r.srv.Addr(), events.HeaderName, sign(big), len(big))
	if _, err := c.Write(big); err != nil {
		t.Fatalf("the body: %v (the server closed the connection before reading it)", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), server.ReasonBusy) {
		t.Fatalf("answer %d (Retry-After %q) %s; want 503 %s with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), b, server.ReasonBusy)
	}
}

func TestTenThousandBadRequestsLogABoundedNumberOfLinesAndCountEveryOne(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	r := newRigWith(t, zap.New(core), nil)
	url := r.srv.URL() + "/webhooks/workos"
	const total, workers = 10000, 4
	body := userEvent("unsigned", nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	var failed atomic.Int64
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Keep-alive: the client would reuse its connection; the
			// server closes it after each refusal.
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
			for next.Add(1) <= total {
				resp, err := client.Post(url, "application/json", bytes.NewReader(body))
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d unsigned requests did not get 401", n, total)
	}
	if err := r.srv.Close(); err != nil { // logs what is still suppressed
		t.Fatal(err)
	}
	if got := r.srv.Stats().Refused()[server.ReasonNotSigned]; got != total {
		t.Fatalf("%s counted %d, want %d", server.ReasonNotSigned, got, total)
	}
	lines := logs.FilterMessage("webhook refused").Len()
	summaries := logs.FilterMessage("webhook refusals not logged").All()
	windows := int(math.Ceil(elapsed.Seconds())) + 1
	if max := windows * (5 + 1); lines+len(summaries) > max { // the default burst, and one summary a window
		t.Fatalf("%d refusal lines and %d summaries in %s, want at most %d", lines, len(summaries), elapsed, max)
	}
	suppressed := 0
	for _, e := range summaries {
		suppressed += int(e.ContextMap()["suppressed"].(int64))
	}
	if lines+suppressed != total {
		t.Fatalf("logged %d + suppressed %d = %d, want %d: the summaries must account for every refusal", lines, suppressed, lines+suppressed, total)
	}
	t.Logf("%d requests in %s: %d lines logged, %d summaries", total, elapsed.Round(time.Millisecond), lines, len(summaries))
}

// TestPermanentBadInputGets400WithAReason: whatever the worker would park
// for the event's own content is refused with 400, a reason in the answer
// and in the log, and nothing stored; 503 is for the queue's trouble only.
func TestPermanentBadInputGets400WithAReason(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	r := newRigWith(t, zap.New(core), func(o *server.Options) {
		o.MaxBodyBytes = 1 << 20
		o.RefusalLogBurst = 100 // one line per case
	})
	url := r.srv.URL() + "/webhooks/workos"
	set := func(k string, v any) func(env, data map[string]any) {
		return func(_, data map[string]any) { data[k] = v }
	}
	cases := []struct {
		name   string
		body   []byte
		want   int
		reason string
		detail string // in the answer and the log line
	}{
		{"a 100 KB event id -> 400 invalid_event", userEvent("x", func(env, _ map[string]any) { env["id"] = strings.Repeat("e", 100<<10) }),
			400, server.ReasonInvalidEvent, "id is longer than 1024 bytes"},
		{"an event id just over the limit -> 400 invalid_event", userEvent("x", func(env, _ map[string]any) { env["id"] = strings.Repeat("e", events.MaxIDBytes+1) }),
			400, server.ReasonInvalidEvent, "id is longer than 1024 bytes"},
		{"a user id over 32 KB -> 400 invalid_event", userEvent("x", set("id", strings.Repeat("u", 33<<10))),
			400, server.ReasonInvalidEvent, "data.id is longer than 1024 bytes"},
		{"a directory id over 32 KB -> 400 invalid_event", userEvent("x", set("directory_id", strings.Repeat("d", 33<<10))),
			400, server.ReasonInvalidEvent, "data.directory_id is longer than 1024 bytes"},
		{"first_name 123 -> 400 not_an_event", userEvent("fn", set("first_name", 123)),
			400, server.ReasonNotEvent, "data.first_name: a JSON number where a string belongs"},
		{"email an object -> 400 not_an_event", userEvent("em", set("email", map[string]any{"value": "x"})),
			400, server.ReasonNotEvent, "data.email: a JSON object where a string belongs"},
		{"roles a string -> 400 not_an_event", userEvent("rs", set("roles", "admin")),
			400, server.ReasonNotEvent, "data.roles: a JSON string where an array belongs"},
		{"role a string -> 400 not_an_event", userEvent("ro", set("role", "admin")),
			400, server.ReasonNotEvent, "data.role: a JSON string where an object belongs"},
		{"state a boolean -> 400 not_an_event", userEvent("st", set("state", false)),
			400, server.ReasonNotEvent, "data.state: a JSON bool where a string belongs"},
		{"membership user a string -> 400 not_an_event", userEvent("mu", func(env, data map[string]any) {
			env["event"] = "dsync.group.user_added"
			env["data"] = map[string]any{"directory_id": "directory_hostile", "user": "u", "group": map[string]any{"id": "g"}}
		}), 400, server.ReasonNotEvent, "data.user: a JSON string where an object belongs"},
		{"missing directory_id -> 400 invalid_event", userEvent("nd", func(_, data map[string]any) { delete(data, "directory_id") }),
			400, server.ReasonInvalidEvent, "missing data.directory_id"},
		{"a good event -> 200", userEvent("good", nil), 200, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := events.Decode(c.body); (err != nil) != (c.want == 400) {
				t.Fatalf("the worker's Decode says %v: the case does not test what it claims", err)
			}
			logs.TakeAll()
			code, _, b := postBody(t, url, sign(c.body), c.body)
			if code != c.want {
				t.Fatalf("status %d (%s), want %d", code, b, c.want)
			}
			if c.want != 400 {
				return
			}
			var ans server.ErrorBody
			if err := json.Unmarshal(b, &ans); err != nil || ans.Error.Code != c.reason || !strings.Contains(ans.Error.Message, c.detail) {
				t.Fatalf("answer %s, want error %q and a detail with %q", b, c.reason, c.detail)
			}
			if len(b) > 512 {
				t.Errorf("the answer is %d bytes: it must not echo the body", len(b))
			}
			entries := logs.FilterMessage("webhook refused").All()
			if len(entries) != 1 {
				t.Fatalf("%d log lines, want 1", len(entries))
			}
			f := entries[0].ContextMap()
			if f["reason"] != c.reason || !strings.Contains(fmt.Sprint(f["detail"]), c.detail) || len(fmt.Sprint(f["detail"])) > 256 {
				t.Fatalf("log line %v, want reason %q and a short detail with %q", f, c.reason, c.detail)
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if n := streamMsgs(t, ctx, r.q); n != 1 {
		t.Fatalf("the stream holds %d messages, want only the good event", n)
	}

	// The queue's trouble is transient: 503 with Retry-After.
	if err := r.q.Close(); err != nil {
		t.Fatal(err)
	}
	body := userEvent("during_the_outage", nil)
	code, retry, b := postBody(t, url, sign(body), body)
	if code != http.StatusServiceUnavailable || retry == "" || !strings.Contains(string(b), server.ReasonQueue) {
		t.Fatalf("a good event while NATS is down: %d (Retry-After %q) %s, want 503 %s", code, retry, b, server.ReasonQueue)
	}
}

// TestAnUnsignedRequestGets401BeforeItsBodyIsSent: the 401 is decided from
// the headers alone; an unsigned flood costs no body memory.
func TestAnUnsignedRequestGets401BeforeItsBodyIsSent(t *testing.T) {
	r := newRigWith(t, zap.NewNop(), func(o *server.Options) { o.MaxBodyBytes = 1 << 20 })
	for i, sig := range []string{"", "t=1, v1=" + hmacHex, "garbage"} {
		c, err := net.DialTimeout("tcp", r.srv.Addr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		hdr := ""
		if sig != "" {
			hdr = events.HeaderName + ": " + sig + "\r\n"
		}
		// 900 KB announced, none sent.
		fmt.Fprintf(c, "POST /webhooks/workos HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n", hdr, 900<<10)
		got := readStatus(t, c, 5*time.Second)
		c.Close()
		if got != http.StatusUnauthorized {
			t.Fatalf("request %d (signature %q): %d, want 401 before the body", i, sig, got)
		}
	}
	m := r.srv.Stats().Refused()
	if m[server.ReasonNotSigned] != 1 || m[server.ReasonStale] != 1 || m[server.ReasonMalformedSig] != 1 {
		t.Fatalf("refusals %v, want one each of not_signed, stale_signature, malformed_signature", m)
	}
}
