package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dsyncd/dsyncd/cmd/dsyncd-load/harness"
	"github.com/dsyncd/dsyncd/events"
)

// The hostile phase's daemon reads requests under this timeout, so the
// slow-loris cases stay short.
const hostileReadTimeout = time.Second

// badRequest is one hostile request and the status the daemon must answer.
// The table mirrors server/hostile_test.go, which runs it in process.
type badRequest struct {
	name    string
	method  string                   // default POST
	ctype   string                   // default application/json; "-" sends none
	sig     func(body []byte) string // WorkOS-Signature; nil sends none
	sig2    bool                     // add a second, valid signature header after sig
	extra   http.Header
	body    []byte
	chunked bool
	raw     func(addr string) (int, error) // performs the request itself
	want    int
}

func signNow(b []byte) string { return events.Sign(secret, time.Now(), b) }

func fixedSig(h string) func([]byte) string { return func([]byte) string { return h } }

func nowMs() string { return strconv.FormatInt(time.Now().UnixMilli(), 10) }

// soakUserEvent is a dsync.user.created envelope that edit may change.
func soakUserEvent(id string, edit func(env, data map[string]any)) []byte {
	data := map[string]any{"object": "directory_user", "id": "directory_user_" + id, "directory_id": "directory_hostile",
		"organization_id": "org_hostile", "idp_id": "idp_" + id, "email": id + "@example.com", "first_name": "F", "last_name": "L",
		"state": "active", "custom_attributes": map[string]any{}, "created_at": "2024-01-01T00:00:00.000Z", "updated_at": "2024-01-01T00:00:00.000Z"}
	env := map[string]any{"object": "event", "id": "event_" + id, "event": "dsync.user.created", "data": data, "created_at": "2024-01-01T00:00:00.000Z"}
	if edit != nil {
		edit(env, data)
	}
	b, err := json.Marshal(env)
	if err != nil {
		panic(err)
	}
	return b
}

// hostileRequests is the table of bad requests for a daemon whose
// webhook.max_body_bytes is limit and whose http.read_timeout is short.
func hostileRequests(limit int) []badRequest {
	valid := soakUserEvent("shape", nil)
	hex := strings.Repeat("ab", 32)
	huge := func(n int) []byte { // an event without id, padded to n bytes
		b := soakUserEvent("huge", func(env, data map[string]any) { delete(env, "id"); data["first_name"] = "" })
		return bytes.Replace(b, []byte(`"first_name":""`), []byte(`"first_name":"`+strings.Repeat("x", n-len(b))+`"`), 1)
	}
	deep := func(open, close string, depth int) []byte {
		return []byte(`{"id":"event_deep","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":` +
			strings.Repeat(open, depth) + strings.Repeat(close, depth) + `}`)
	}
	edit := func(id string, f func(env, data map[string]any)) []byte { return soakUserEvent(id, f) }
	return []badRequest{
		{name: "no signature", body: valid, want: 401},
		{name: "empty signature", sig: fixedSig(""), body: valid, want: 401},
		{name: "t,v1=abc", sig: fixedSig("t,v1=abc"), body: valid, want: 401},
		{name: "t only", sig: func([]byte) string { return "t=" + nowMs() }, body: valid, want: 401},
		{name: "v1 only", sig: fixedSig("v1=" + hex), body: valid, want: 401},
		{name: "non-numeric t", sig: fixedSig("t=now, v1=" + hex), body: valid, want: 401},
		{name: "negative t", sig: fixedSig("t=-5, v1=" + hex), body: valid, want: 401},
		{name: "t overflows int64", sig: fixedSig("t=99999999999999999999, v1=" + hex), body: valid, want: 401},
		{name: "v1 not hex", sig: func([]byte) string { return "t=" + nowMs() + ", v1=" + strings.Repeat("zz", 32) }, body: valid, want: 401},
		{name: "v1 short", sig: func([]byte) string { return "t=" + nowMs() + ", v1=abc" }, body: valid, want: 401},
		{name: "empty part", sig: func(b []byte) string { return strings.Replace(signNow(b), ", ", ",, ", 1) }, body: valid, want: 401},
		{name: "repeated t", sig: func(b []byte) string { return "t=" + nowMs() + ", " + signNow(b) }, body: valid, want: 401},
		{name: "part without key", sig: func(b []byte) string { return "=x, " + signNow(b) }, body: valid, want: 401},
		{name: "garbage first of two headers", sig: fixedSig("garbage"), sig2: true, body: valid, want: 401},
		{name: "wrong secret", sig: func(b []byte) string { return events.Sign("whsec_wrong", time.Now(), b) }, body: valid, want: 401},
		{name: "replayed signature, other body", sig: func([]byte) string { return signNow(soakUserEvent("other", nil)) }, body: valid, want: 401},
		{name: "many v1, none matching", sig: func([]byte) string { return "t=" + nowMs() + strings.Repeat(", v1="+hex, 200) }, body: valid, want: 401},
		{name: "stale timestamp", sig: func(b []byte) string { return events.Sign(secret, time.Now().Add(-10*time.Minute), b) }, body: valid, want: 401},
		{name: "future timestamp", sig: func(b []byte) string { return events.Sign(secret, time.Now().Add(10*time.Minute), b) }, body: valid, want: 401},
		{name: "timestamp in seconds", sig: func(b []byte) string { return events.Sign(secret, time.UnixMilli(time.Now().Unix()), b) }, body: valid, want: 401},
		{name: "oversized body", sig: signNow, body: huge(limit + 1), want: 413},
		{name: "oversized body, chunked", sig: signNow, body: huge(limit * 2), chunked: true, want: 413},
		{name: "huge string just under the limit", sig: signNow, body: huge(limit), want: 400},
		{name: "huge string just over the limit", sig: signNow, body: huge(limit + 2), want: 413},
		{name: "empty body", sig: signNow, body: []byte{}, want: 400},
		{name: "non-JSON", sig: signNow, body: []byte("hello=world"), want: 400},
		{name: "truncated JSON", sig: signNow, body: valid[:len(valid)/2], want: 400},
		{name: "JSON array", sig: signNow, body: []byte("[" + string(valid) + "]"), want: 400},
		{name: "JSON null", sig: signNow, body: []byte("null"), want: 400},
		{name: "JSON not an event", sig: signNow, body: []byte(`{"hello":"world"}`), want: 400},
		{name: "deep array nesting", sig: signNow, body: deep("[", "]", 30000), want: 400},
		{name: "deep object nesting", sig: signNow, body: deep(`{"a":`, "}", 20000), want: 400},
		{name: "dsync event without id", sig: signNow, body: edit("noid", func(env, _ map[string]any) { delete(env, "id") }), want: 400},
		{name: "dsync event without created_at", sig: signNow, body: edit("nocreated", func(env, _ map[string]any) { delete(env, "created_at") }), want: 400},
		{name: "dsync event, bad created_at", sig: signNow, body: edit("badtime", func(env, _ map[string]any) { env["created_at"] = "soon" }), want: 400},
		{name: "dsync event, data null", sig: signNow, body: edit("nulldata", func(env, _ map[string]any) { env["data"] = nil }), want: 400},
		{name: "user without data.id", sig: signNow, body: edit("nouser", func(_, data map[string]any) { delete(data, "id") }), want: 400},
		{name: "user without directory_id", sig: signNow, body: edit("nodir", func(_, data map[string]any) { delete(data, "directory_id") }), want: 400},
		{name: "membership without group", sig: signNow, body: edit("nogroup", func(env, data map[string]any) {
			env["event"] = "dsync.group.user_added"
			env["data"] = map[string]any{"directory_id": "directory_hostile", "user": data}
		}), want: 400},
		// What the worker would park for the event's content: 400, never a 2xx or a 503.
		{name: "100 KB event id", sig: signNow, body: edit("longid", func(env, _ map[string]any) { env["id"] = strings.Repeat("e", 100<<10) }), want: 400},
		{name: "user id over 32 KB", sig: signNow, body: edit("longuser", func(_, data map[string]any) { data["id"] = strings.Repeat("u", 33<<10) }), want: 400},
		{name: "first_name a number", sig: signNow, body: edit("fnnum", func(_, data map[string]any) { data["first_name"] = 123 }), want: 400},
		{name: "roles a string", sig: signNow, body: edit("rolesstr", func(_, data map[string]any) { data["roles"] = "admin" }), want: 400},
		{name: "Content-Type text/plain", ctype: "text/plain", sig: signNow, body: valid, want: 415},
		{name: "Content-Type form", ctype: "application/x-www-form-urlencoded", sig: signNow, body: valid, want: 415},
		{name: "Content-Type unparsable", ctype: "application/json; charset", sig: signNow, body: valid, want: 415},
		{name: "GET", method: http.MethodGet, sig: signNow, want: 405},
		{name: "PUT", method: http.MethodPut, sig: signNow, body: valid, want: 405},
		{name: "DELETE", method: http.MethodDelete, sig: signNow, want: 405},
		{name: "header block over 64 KiB", sig: signNow, extra: http.Header{"X-Padding": {strings.Repeat("p", 80<<10)}}, body: valid, want: 431},
		{name: "slow-loris body", raw: slowLorisBody, want: 400},
		{name: "slow-loris headers", raw: slowLorisHeaders, want: 400},
	}
}

func (c badRequest) do(client *http.Client, url string) (int, error) {
	if c.raw != nil {
		return c.raw(strings.TrimPrefix(strings.TrimSuffix(url, "/webhooks/workos"), "http://"))
	}
	method := c.method
	if method == "" {
		method = http.MethodPost
	}
	var body io.Reader
	if c.body != nil {
		body = bytes.NewReader(c.body)
		if c.chunked {
			body = io.MultiReader(body)
		}
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		return 0, err
	}
	switch c.ctype {
	case "":
		req.Header.Set("Content-Type", "application/json")
	case "-":
	default:
		req.Header.Set("Content-Type", c.ctype)
	}
	if c.sig != nil {
		req.Header.Set(events.HeaderName, c.sig(c.body))
	}
	if c.sig2 {
		req.Header.Add(events.HeaderName, signNow(c.body))
	}
	for k, vs := range c.extra {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// trickle writes b one byte every gap until done or the write fails, and
// reads the answer meanwhile.
func trickle(addr string, head, b []byte, gap time.Duration) (int, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if _, err := conn.Write(head); err != nil {
		return 0, err
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := range b {
			select {
			case <-stop:
				return
			case <-time.After(gap): // pacing the attack
			}
			if _, err := conn.Write(b[i : i+1]); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); <-done }()
	_ = conn.SetReadDeadline(time.Now().Add(10 * hostileReadTimeout))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, fmt.Errorf("no answer: %w", err)
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func slowLorisBody(addr string) (int, error) {
	body := soakUserEvent("slowloris", nil)
	head := fmt.Sprintf("POST /webhooks/workos HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n%s: %s\r\nContent-Length: %d\r\n\r\n",
		addr, events.HeaderName, signNow(body), len(body))
	return trickle(addr, []byte(head), body, 150*time.Millisecond)
}

func slowLorisHeaders(addr string) (int, error) {
	return trickle(addr, nil, []byte("POST /webhooks/workos HTTP/1.1\r\nHost: x\r\nX-Slow: "+strings.Repeat("s", 200)+"\r\n"), 100*time.Millisecond)
}

// hostilePhase (d) runs the table against a live daemon.
func (e *env) hostilePhase(ctx context.Context, _ options) *result {
	r := &result{phase: "d. hostile input"}
	dir, err := e.phaseDir("hostile")
	if err != nil {
		r.fail("%v", err)
		return r
	}
	d, _, err := e.boot(ctx, dir, harness.Config{ReadTimeout: hostileReadTimeout}, nil)
	if err != nil {
		r.fail("%v", err)
		return r
	}
	defer stop(d)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	var wrong []string
	resets := 0
	for _, c := range hostileRequests(1 << 20) {
		if ctx.Err() != nil {
			break
		}
		r.badTried++
		var before harness.Metrics
		if c.want == 413 {
			before, _ = harness.Scrape(ctx, e.ctl, d.URL())
		}
		got, err := c.do(client, d.WebhookURL())
		if err != nil && c.want == 413 && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) && before != nil {
			// The daemon answered 413 without reading a body larger than
			// net/http drains (256 KiB) and closed the connection; the
			// client, still writing, may see the reset before the answer.
			// The daemon's own counter says whether it refused it.
			if after, serr := harness.Scrape(ctx, e.ctl, d.URL()); serr == nil &&
				after.Refused()["body_too_large"] == before.Refused()["body_too_large"]+1 {
				got, err = 413, nil
				resets++
			}
		}
		if err != nil {
			wrong = append(wrong, fmt.Sprintf("%s: %v", c.name, err))
			continue
		}
		if got >= 400 {
			r.badRefuse++
		}
		if got != c.want {
			wrong = append(wrong, fmt.Sprintf("%s: %d, want %d", c.name, got, c.want))
		}
	}
	for _, w := range wrong {
		r.fail("%s", w)
	}
	if resets > 0 {
		r.note("%d oversized requests: the client saw a connection reset while still sending; the daemon had answered 413 and counted body_too_large", resets)
	}
	if !d.Running() {
		r.fail("the daemon died: %v\n%s", d.ExitErr(), harness.Tail(d.LogPath, 20))
		return r
	}
	if code, body, err := harness.Get(ctx, e.ctl, d.URL()+"/readyz"); err != nil || code != 200 {
		r.fail("/readyz after the hostile requests: %d %s %v", code, body, err)
	} else {
		r.note("/readyz after %d hostile requests: 200", r.badTried)
	}
	m, err := harness.Scrape(ctx, e.ctl, d.URL())
	if err != nil {
		r.fail("metrics: %v", err)
	} else {
		if n := m["dsyncd_webhooks_enqueued_total"] + m["dsyncd_webhooks_duplicate_total"]; n != 0 {
			r.fail("%.0f hostile requests were stored", n)
		}
		var reasons []string
		for k, v := range m.Refused() {
			reasons = append(reasons, fmt.Sprintf("%s %.0f", k, v))
		}
		r.note("refusals counted by the daemon: %s (the net/http-level 431 and header slow-loris never reach it)", strings.Join(slices.Sorted(slices.Values(reasons)), ", "))
	}
	// /v1 requires the token serve created under its data directory.
	token, err := os.ReadFile(filepath.Join(dir, "data", "api.token"))
	if err != nil {
		r.fail("the API token serve creates: %v", err)
	}
	// What a web page open on this host can send (cross-site forms and
	// simple requests, DNS rebinding): refused, and the export below shows
	// that nothing changed.
	csrf := crossSiteRequests(strings.TrimSpace(string(token)))
	for _, c := range csrf {
		if got, err := c.do(ctx, e.ctl, d.URL()); err != nil || got != c.want {
			r.fail("cross-site %s: %d %v, want %d", c.name, got, err, c.want)
		}
	}
	r.note("%d cross-site requests (form posts, a foreign Host) refused with 401/415/421", len(csrf))
	if code, body, err := harness.GetWithToken(ctx, e.ctl, d.URL()+"/v1/export", strings.TrimSpace(string(token))); err != nil || code != 200 {
		r.fail("/v1/export: %d %v", code, err)
	} else {
		var snap struct {
			Directories, Users, Groups, Holds []json.RawMessage
		}
		if err := json.Unmarshal(body, &snap); err != nil {
			r.fail("/v1/export: %v", err)
		} else if n := len(snap.Directories) + len(snap.Users) + len(snap.Groups) + len(snap.Holds); n != 0 {
			r.fail("the store holds %d records after hostile requests", n)
		}
	}
	// Still serving: a valid event is accepted and stored once.
	p := &harness.Poster{Client: e.ctl, URL: d.WebhookURL(), Secret: secret}
	valid := soakUserEvent("after_hostile", nil)
	if code, err := p.Post(ctx, valid); err != nil || code != 200 {
		r.fail("valid event after the hostile requests: %d %v", code, err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	_, err = harness.WaitDrained(wctx, e.ctl, d.URL(), 1)
	cancel()
	if err != nil {
		r.fail("valid event not applied: %v", err)
	}
	if err := d.Stop(time.Minute); err != nil {
		r.fail("%v", err)
	}
	msgs, ids, err := streamIDs(ctx, "", filepath.Join(dir, "data", "jetstream"))
	switch {
	case err != nil:
		r.fail("stream: %v", err)
	case msgs != 1 || !ids["event_after_hostile"]:
		r.fail("the stream holds %d messages %v, want only the valid event", msgs, ids)
	default:
		r.note("stream holds only the valid event sent afterwards")
	}
	if err := checkStore(filepath.Join(dir, "data", "dsyncd.db")); err != nil {
		r.fail("bbolt check: %v", err)
	}
	return r
}

// crossSiteRequest is a request a browser page could make to the API.
type crossSiteRequest struct {
	name, method, path, ctype, host, token string
	want                                   int
}

func (c crossSiteRequest) do(ctx context.Context, client *http.Client, base string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, c.method, base+c.path, strings.NewReader("approve=1"))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Origin", "http://attacker.example")
	if c.ctype != "" {
		req.Header.Set("Content-Type", c.ctype)
	}
	if c.host != "" {
		req.Host = c.host
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// crossSiteRequests: without the token a page gets 401, with a rebound name
// 421; even a request that somehow carried the token is refused as a form.
func crossSiteRequests(token string) []crossSiteRequest {
	const form = "application/x-www-form-urlencoded"
	return []crossSiteRequest{
		{name: "form post resuming an organisation", method: "POST", path: "/v1/organizations/org_hostile/resume", ctype: form, want: 401},
		{name: "text/plain post replaying dead letters", method: "POST", path: "/v1/dlq/replay", ctype: "text/plain", want: 401},
		{name: "form post approving a hold, with the token", method: "POST", path: "/v1/holds/1/approve", ctype: form, token: token, want: 415},
		{name: "export under a rebound name", method: "GET", path: "/v1/export", host: "attacker.example", want: 421},
		{name: "backup under a rebound name, with the token", method: "GET", path: "/v1/backup", host: "attacker.example:8080", token: token, want: 421},
	}
}
