package server_test

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
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/server"
	"github.com/dsyncd/dsyncd/storage"
)

const (
	hostileSecret  = "whsec_hostile_test"
	hostileMaxBody = 64 << 10 // a small limit keeps the oversized cases cheap
	hostileReadTO  = time.Second
)

// rig is the real receiver: embedded JetStream, bbolt store, HTTP on loopback.
type rig struct {
	srv *server.Server
	q   *queue.Queue
	st  *storage.Store
}

func newRig(tb testing.TB, log *zap.Logger) *rig { return newRigWith(tb, log, nil) }

// newRigWith is newRig with the server's options changed by edit.
func newRigWith(tb testing.TB, log *zap.Logger, edit func(*server.Options)) *rig {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q := queue.New(queue.Options{StoreDir: tb.TempDir(), DuplicateWindow: time.Minute}, log)
	if err := q.Open(ctx); err != nil {
		tb.Fatalf("queue open: %v", err)
	}
	tb.Cleanup(func() { _ = q.Close() })
	st, err := storage.Open(storage.Options{Path: filepath.Join(tb.TempDir(), "dsyncd.db"),
		Mapping: mapping.Config{AdminBadge: "admin", DefaultBadges: []mapping.Badge{"member"}}})
	if err != nil {
		tb.Fatalf("store open: %v", err)
	}
	tb.Cleanup(func() { _ = st.Close() })
	opts := server.Options{
		Listen:       "127.0.0.1:0",
		MaxBodyBytes: hostileMaxBody,
		ReadTimeout:  hostileReadTO,
		WriteTimeout: 10 * time.Second,
	}
	if edit != nil {
		edit(&opts)
	}
	srv := server.New(opts, events.NewVerifier([]string{hostileSecret}, 0), q, st, log)
	if err := srv.Open(); err != nil {
		tb.Fatalf("server open: %v", err)
	}
	tb.Cleanup(func() { _ = srv.Close() })
	return &rig{srv: srv, q: q, st: st}
}

// userEvent is a dsync.user.created envelope; edit may change it before it is marshalled.
func userEvent(id string, edit func(env, data map[string]any)) []byte {
	data := map[string]any{
		"object": "directory_user", "id": "directory_user_" + id, "directory_id": "directory_hostile",
		"organization_id": "org_hostile", "idp_id": "idp_" + id, "email": id + "@example.com",
		"first_name": "First", "last_name": "Last", "state": "active",
		"custom_attributes": map[string]any{}, "role": map[string]any{"slug": "member"},
		"created_at": "2024-01-01T00:00:00.000Z", "updated_at": "2024-01-01T00:00:00.000Z",
	}
	env := map[string]any{"object": "event", "id": "event_" + id, "event": "dsync.user.created", "data": data,
		"created_at": "2024-01-01T00:00:00.000Z"}
	if edit != nil {
		edit(env, data)
	}
	b, err := json.Marshal(env)
	if err != nil {
		panic(err)
	}
	return b
}

func sign(body []byte) string { return events.Sign(hostileSecret, time.Now(), body) }

func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

// hmacHex is a well-formed v1 that matches nothing.
var hmacHex = strings.Repeat("ab", 32)

// hostileCase is one bad request and the answer it must get. A zero want
// means the server must close the connection without an answer.
type hostileCase struct {
	name   string
	method string
	ctype  string                   // Content-Type; "-" sends none
	header func(body []byte) string // WorkOS-Signature value; nil sends none
	extra  http.Header              // more headers (added after the signature)
	body   []byte
	// chunked sends the body without a Content-Length.
	chunked bool
	// raw, when set, performs the request itself over a TCP connection to
	// addr and returns the status (0: closed without an answer).
	raw    func(t *testing.T, addr string) int
	want   int
	reason string // the refusal reason the server must count ("" for none)
}

func fixed(h string) func([]byte) string { return func([]byte) string { return h } }

func hostileCases() []hostileCase {
	valid := userEvent("valid_shape", nil)
	now := func() string { return ms(time.Now()) }
	// A huge string field sized so the whole body is exactly n bytes; the
	// event has no id, so even a well-signed one must be refused.
	huge := func(n int) []byte {
		b := userEvent("huge", func(env, data map[string]any) { delete(env, "id"); data["first_name"] = "" })
		pad := n - len(b)
		if pad < 0 {
			panic("huge: too small")
		}
		return bytes.Replace(b, []byte(`"first_name":""`), []byte(`"first_name":"`+strings.Repeat("x", pad)+`"`), 1)
	}
	deep := func(open, close string, depth int) []byte {
		return []byte(`{"id":"event_deep","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":` +
			strings.Repeat(open, depth) + strings.Repeat(close, depth) + `}`)
	}
	cases := []hostileCase{
		// Signature header: absent, empty, and malformed in every shape.
		{name: "no signature header -> 401 not_signed", body: valid, want: 401, reason: server.ReasonNotSigned},
		{name: "empty signature header -> 401 not_signed", header: fixed(""), body: valid, want: 401, reason: server.ReasonNotSigned},
		{name: "blank signature header -> 401 not_signed", header: fixed(" \t "), body: valid, want: 401, reason: server.ReasonNotSigned},
		{name: "t,v1=abc (panics the workos-go SDK) -> 401 malformed", header: fixed("t,v1=abc"), body: valid, want: 401, reason: server.ReasonMalformedSig},
		{name: "t only -> 401 malformed", header: func([]byte) string { return "t=" + now() }, body: valid, want: 401, reason: server.ReasonMalformedSig},
		{name: "v1 only -> 401 malformed", header: fixed("v1=" + hmacHex), body: valid, want: 401, reason: server.ReasonMalformedSig},
		{name: "non-numeric t -> 401 malformed", header: fixed("t=yesterday, v1=" + hmacHex), body: valid, want: 401, reason: server.ReasonMalformedSig},
		{name: "negative t -> 401 malformed", header: fixed("t=-1624648053155, v1=" + hmacHex), body: valid, want: 401, reason: server.ReasonMalformedSig},
		{name: "t with exponent -> 401 malformed", header: fixed("t=1.6e12, v1=" + hmacHex), body: valid, want: 401, reason: server.ReasonMalformedSig},
		{name: "t overflowing int64 -> 401 malformed", header: fixed("t=99999999999999999999, v1=" + hmacHex), body: valid, want: 401, reason: server.ReasonMalformedSig},
		{name: "v1 not hex -> 401 malformed", header: func([]byte) string { return "t=" + now() + ", v1=" + strings.Repeat("zz", 32) }, body: valid, want: 401, reason: server.ReasonMalformedSig},
		{name: "v1 too short -> 401 malformed", header: func([]byte) string { return "t=" + now() + ", v1=abcdef" }, body: valid, want: 401, reason: server.ReasonMalformedSig},
		{name: "v1 too long -> 401 malformed", header: func([]byte) string { return "t=" + now() + ", v1=" + hmacHex + "00" }, body: valid, want: 401, reason: server.ReasonMalformedSig},
		{name: "empty part -> 401 malformed", header: func(b []byte) string { s := sign(b); return strings.Replace(s, ", ", ",, ", 1) }, body: valid, want: 401, reason: server.ReasonMalformedSig},
		{name: "repeated t -> 401 malformed", header: func(b []byte) string { return "t=" + now() + ", " + sign(b) }, body: valid, want: 401, reason: server.ReasonMalformedSig},
		{name: "part without key -> 401 malformed", header: func(b []byte) string { return "=x, " + sign(b) }, body: valid, want: 401, reason: server.ReasonMalformedSig},
		{name: "part without '=' -> 401 malformed", header: func(b []byte) string { return sign(b) + ", garbage" }, body: valid, want: 401, reason: server.ReasonMalformedSig},
		{name: "v0 instead of v1 -> 401 malformed", header: func([]byte) string { return "t=" + now() + ", v0=" + hmacHex }, body: valid, want: 401, reason: server.ReasonMalformedSig},
		{name: "first of two signature headers garbage -> 401 malformed", header: fixed("garbage"), extra: http.Header{events.HeaderName: {"placeholder"}}, body: valid, want: 401, reason: server.ReasonMalformedSig},
		// Well formed, but not ours.
		{name: "wrong secret -> 401 bad_signature", header: func(b []byte) string { return events.Sign("whsec_wrong", time.Now(), b) }, body: valid, want: 401, reason: server.ReasonBadSignature},
		{name: "empty-secret signature -> 401 bad_signature", header: func(b []byte) string { return events.Sign("", time.Now(), b) }, body: valid, want: 401, reason: server.ReasonBadSignature},
		{name: "replayed signature with another body -> 401 bad_signature", header: func([]byte) string { return sign(userEvent("original", nil)) }, body: valid, want: 401, reason: server.ReasonBadSignature},
		{name: "signature over the body plus a newline -> 401 bad_signature", header: func(b []byte) string { return sign(append(append([]byte(nil), b...), '\n')) }, body: valid, want: 401, reason: server.ReasonBadSignature},
		{name: "t changed after signing -> 401 bad_signature", header: func(b []byte) string {
			s := sign(b)
			ts, rest, _ := strings.Cut(strings.TrimPrefix(s, "t="), ",")
			n, _ := strconv.ParseInt(ts, 10, 64)
			return "t=" + strconv.FormatInt(n+1, 10) + "," + rest
		}, body: valid, want: 401, reason: server.ReasonBadSignature},
		{name: "many v1, none matching -> 401 bad_signature", header: func([]byte) string {
			return "t=" + now() + strings.Repeat(", v1="+hmacHex, 200)
		}, body: valid, want: 401, reason: server.ReasonBadSignature},
		// Right secret, wrong time.
		{name: "stale timestamp (10 min old) -> 401 stale", header: func(b []byte) string { return events.Sign(hostileSecret, time.Now().Add(-10*time.Minute), b) }, body: valid, want: 401, reason: server.ReasonStale},
		{name: "future timestamp (10 min ahead) -> 401 stale", header: func(b []byte) string { return events.Sign(hostileSecret, time.Now().Add(10*time.Minute), b) }, body: valid, want: 401, reason: server.ReasonStale},
		// A correct HMAC over a timestamp in seconds (read as ms: January 1970).
		{name: "timestamp in seconds, not ms -> 401 stale", header: func(b []byte) string { return events.Sign(hostileSecret, time.UnixMilli(time.Now().Unix()), b) }, body: valid, want: 401, reason: server.ReasonStale},
		{name: "timestamp 0 -> 401 stale", header: func(b []byte) string { return events.Sign(hostileSecret, time.UnixMilli(0), b) }, body: valid, want: 401, reason: server.ReasonStale},
		// Size.
		{name: "body over the limit with Content-Length -> 413", header: sign, body: huge(hostileMaxBody + 1), want: 413, reason: server.ReasonTooLarge},
		{name: "body over the limit, chunked -> 413", header: sign, body: huge(hostileMaxBody * 3), chunked: true, want: 413, reason: server.ReasonTooLarge},
		{name: "huge string just under the limit (event without id) -> 400 invalid_event", header: sign, body: huge(hostileMaxBody), want: 400, reason: server.ReasonInvalidEvent},
		{name: "huge string just over the limit -> 413", header: sign, body: huge(hostileMaxBody + 2), want: 413, reason: server.ReasonTooLarge},
		{name: "huge unsigned body -> 413 before any HMAC", body: huge(hostileMaxBody * 2), want: 413, reason: server.ReasonTooLarge},
		// Signed, but not an event.
		{name: "empty body -> 400 not_an_event", header: sign, body: []byte{}, want: 400, reason: server.ReasonNotEvent},
		{name: "non-JSON body -> 400 not_an_event", header: sign, body: []byte("event=dsync.user.created&id=1"), want: 400, reason: server.ReasonNotEvent},
		{name: "truncated JSON -> 400 not_an_event", header: sign, body: valid[:len(valid)/2], want: 400, reason: server.ReasonNotEvent},
		{name: "JSON with trailing garbage -> 400 not_an_event", header: sign, body: append(append([]byte(nil), valid...), []byte(" }{")...), want: 400, reason: server.ReasonNotEvent},
		{name: "JSON array -> 400 not_an_event", header: sign, body: []byte(`[` + string(valid) + `]`), want: 400, reason: server.ReasonNotEvent},
		{name: "JSON null -> 400 not_an_event", header: sign, body: []byte(`null`), want: 400, reason: server.ReasonNotEvent},
		{name: "JSON string -> 400 not_an_event", header: sign, body: []byte(`"dsync.user.created"`), want: 400, reason: server.ReasonNotEvent},
		{name: "JSON object that is not an event -> 400 not_an_event", header: sign, body: []byte(`{"hello":"world","data":{}}`), want: 400, reason: server.ReasonNotEvent},
		{name: "event type not a string -> 400 not_an_event", header: sign, body: []byte(`{"id":"event_x","event":42,"data":{}}`), want: 400, reason: server.ReasonNotEvent},
		{name: "UTF-8 BOM before JSON -> 400 not_an_event", header: sign, body: append([]byte("\xef\xbb\xbf"), valid...), want: 400, reason: server.ReasonNotEvent},
		{name: "deep array nesting (30k) -> 400 not_an_event", header: sign, body: deep("[", "]", 30000), want: 400, reason: server.ReasonNotEvent},
		{name: "deep object nesting (10k) -> 400 not_an_event", header: sign, body: deep(`{"a":`, "}", 10000), want: 400, reason: server.ReasonNotEvent},
		{name: "data of the wrong type -> 400 not_an_event", header: sign, body: userEvent("wrongtype", func(env, _ map[string]any) { env["data"] = "a string" }), want: 400, reason: server.ReasonNotEvent},
		// Signed dsync events missing what they need.
		{name: "dsync event without id -> 400 invalid_event", header: sign, body: userEvent("noid", func(env, _ map[string]any) { delete(env, "id") }), want: 400, reason: server.ReasonInvalidEvent},
		{name: "dsync event without created_at -> 400 invalid_event", header: sign, body: userEvent("nocreated", func(env, _ map[string]any) { delete(env, "created_at") }), want: 400, reason: server.ReasonInvalidEvent},
		{name: "dsync event with unparsable created_at -> 400 invalid_event", header: sign, body: userEvent("badtime", func(env, _ map[string]any) { env["created_at"] = "last tuesday" }), want: 400, reason: server.ReasonInvalidEvent},
		{name: "dsync event without data -> 400 invalid_event", header: sign, body: userEvent("nodata", func(env, _ map[string]any) { delete(env, "data") }), want: 400, reason: server.ReasonInvalidEvent},
		{name: "dsync event with data null -> 400 invalid_event", header: sign, body: userEvent("nulldata", func(env, _ map[string]any) { env["data"] = nil }), want: 400, reason: server.ReasonInvalidEvent},
		{name: "user event without data.id -> 400 invalid_event", header: sign, body: userEvent("nouserid", func(_, data map[string]any) { delete(data, "id") }), want: 400, reason: server.ReasonInvalidEvent},
		{name: "user event without directory_id -> 400 invalid_event", header: sign, body: userEvent("nodir", func(_, data map[string]any) { delete(data, "directory_id") }), want: 400, reason: server.ReasonInvalidEvent},
		{name: "membership event without group -> 400 invalid_event", header: sign, body: userEvent("nogroup", func(env, data map[string]any) {
			env["event"] = "dsync.group.user_added"
			env["data"] = map[string]any{"directory_id": "directory_hostile", "user": data}
		}), want: 400, reason: server.ReasonInvalidEvent},
		// Signed dsync events the worker would park for their content.
		{name: "event id over 1 KiB -> 400 invalid_event", header: sign, body: userEvent("longid", func(env, _ map[string]any) { env["id"] = strings.Repeat("e", 2048) }), want: 400, reason: server.ReasonInvalidEvent},
		{name: "user id over 1 KiB -> 400 invalid_event", header: sign, body: userEvent("longuser", func(_, data map[string]any) { data["id"] = strings.Repeat("u", 2048) }), want: 400, reason: server.ReasonInvalidEvent},
		{name: "first_name a number -> 400 not_an_event", header: sign, body: userEvent("fnnum", func(_, data map[string]any) { data["first_name"] = 123 }), want: 400, reason: server.ReasonNotEvent},
		{name: "role a string -> 400 not_an_event", header: sign, body: userEvent("rolestr", func(_, data map[string]any) { data["role"] = "admin" }), want: 400, reason: server.ReasonNotEvent},
		// Transport-level.
		{name: "Content-Type text/plain -> 415", ctype: "text/plain", header: sign, body: valid, want: 415, reason: server.ReasonContentType},
		{name: "Content-Type form -> 415", ctype: "application/x-www-form-urlencoded", header: sign, body: valid, want: 415, reason: server.ReasonContentType},
		{name: "Content-Type multipart -> 415", ctype: "multipart/form-data; boundary=x", header: sign, body: valid, want: 415, reason: server.ReasonContentType},
		{name: "Content-Type unparsable -> 415", ctype: "application/json; charset", header: sign, body: valid, want: 415, reason: server.ReasonContentType},
		{name: "Content-Type application/jsonx -> 415", ctype: "application/jsonx", header: sign, body: valid, want: 415, reason: server.ReasonContentType},
		{name: "unsigned form post -> 401 not_signed, not 415", ctype: "application/x-www-form-urlencoded", body: valid, want: 401, reason: server.ReasonNotSigned},
		{name: "forged text/plain post -> 401 bad_signature, not 415", ctype: "text/plain", header: func(b []byte) string { return events.Sign("whsec_wrong", time.Now(), b) }, body: valid, want: 401, reason: server.ReasonBadSignature},
		{name: "GET -> 405", method: http.MethodGet, header: sign, body: nil, want: 405, reason: server.ReasonMethod},
		{name: "PUT -> 405", method: http.MethodPut, header: sign, body: valid, want: 405, reason: server.ReasonMethod},
		{name: "DELETE -> 405", method: http.MethodDelete, header: sign, want: 405, reason: server.ReasonMethod},
		{name: "PATCH -> 405", method: http.MethodPatch, header: sign, body: valid, want: 405, reason: server.ReasonMethod},
		{name: "header block over 64 KiB -> 431 (net/http)", header: sign, extra: http.Header{"X-Padding": {strings.Repeat("p", 80<<10)}}, body: valid, want: 431},
		{name: "slow-loris body (slower than ReadTimeout) -> 400 body_unreadable", raw: slowBody, want: 400, reason: server.ReasonBodyRead},
		{name: "slow-loris headers -> 400 from net/http, handler never runs", raw: slowHeaders, want: 400},
	}
	return cases
}

// slowBody sends well-formed, well-signed headers, then the body one byte
// every 150ms: the server's ReadTimeout must cut it off.
func slowBody(t *testing.T, addr string) int {
	body := userEvent("slowloris", nil)
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /webhooks/workos HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n%s: %s\r\nContent-Length: %d\r\n\r\n",
		addr, events.HeaderName, sign(body), len(body))
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < len(body); i++ {
			select {
			case <-stop:
				return
			case <-time.After(150 * time.Millisecond): // pacing the attack, not waiting for work
			}
			if _, err := conn.Write(body[i : i+1]); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); <-done }()
	return readStatus(t, conn, 5*hostileReadTO)
}

// slowHeaders trickles the request line and headers.
func slowHeaders(t *testing.T, addr string) int {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	head := []byte("POST /webhooks/workos HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("s", 200) + "\r\n")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < len(head); i++ {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := conn.Write(head[i : i+1]); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); <-done }()
	return readStatus(t, conn, 5*hostileReadTO)
}

// readStatus reads one response's status from conn; 0 if the server closes
// the connection without one. It fails the test if nothing happens within wait.
func readStatus(t *testing.T, conn net.Conn, wait time.Duration) int {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(wait))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("no answer and no close within %s: the server does not enforce its read timeout", wait)
		}
		return 0 // closed
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Logf("answer: %s %.80s", resp.Status, bytes.TrimSpace(b))
	return resp.StatusCode
}

// do sends c and returns the status. With resetOK, a connection reset while
// the client is still sending the body is reported as status 0 (the server
// answered early and closed; see TestHostileRequests).
func (c hostileCase) do(t *testing.T, client *http.Client, url string, resetOK bool) int {
	t.Helper()
	method := c.method
	if method == "" {
		method = http.MethodPost
	}
	var body io.Reader = bytes.NewReader(c.body)
	if c.chunked {
		body = io.MultiReader(bytes.NewReader(c.body)) // unknown length: chunked
	}
	if c.body == nil {
		body = nil
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	switch c.ctype {
	case "":
		req.Header.Set("Content-Type", "application/json")
	case "-":
	default:
		req.Header.Set("Content-Type", c.ctype)
	}
	if c.header != nil {
		req.Header.Set(events.HeaderName, c.header(c.body))
	}
	for k, vs := range c.extra {
		for _, v := range vs {
			if k == events.HeaderName && v == "placeholder" {
				v = sign(c.body)
			}
			req.Header.Add(k, v)
		}
	}
	resp, err := client.Do(req)
	if err != nil && resetOK && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
		return 0
	}
	if err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestHostileRequests sends the real receiver (embedded JetStream, bbolt
// store, HTTP on loopback) every kind of bad request, one at a time, and
// checks each answer and the refusal reason counted. Afterwards nothing may
// be stored, and a valid event must still be accepted, once.
func TestHostileRequests(t *testing.T) {
	r := newRig(t, zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel)))
	url := r.srv.URL() + "/webhooks/workos"
	// Keep-alive: net/http then drains an unread body (up to 256 KiB) after an
	// early answer instead of resetting the connection under the client.
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil}}
	cases := hostileCases()
	if len(cases) < 30 {
		t.Fatalf("only %d hostile cases", len(cases))
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := r.srv.Stats().Refused()
			var got int
			if c.raw != nil {
				got = c.raw(t, r.srv.Addr())
			} else {
				got = c.do(t, client, url, c.want == http.StatusRequestEntityTooLarge)
			}
			after := r.srv.Stats().Refused()
			if got == 0 && c.want == http.StatusRequestEntityTooLarge && after[c.reason] == before[c.reason]+1 {
				// The server answered 413 without reading the whole body
				// and closed the connection; the client, still sending,
				// saw the reset before the answer. The refusal counter
				// shows the server's decision.
				got = c.want
			}
			if got != c.want {
				t.Fatalf("status %d, want %d", got, c.want)
			}
			if c.reason != "" && after[c.reason] != before[c.reason]+1 {
				t.Errorf("refusal reason %q counted %d -> %d; all: %v", c.reason, before[c.reason], after[c.reason], after)
			}
		})
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if n := streamMsgs(t, ctx, r.q); n != 0 {
		t.Fatalf("after %d hostile requests the stream holds %d messages, want 0", len(cases), n)
	}
	if s := r.srv.Stats(); s.Enqueued.Load() != 0 || s.Duplicate.Load() != 0 {
		t.Fatalf("receiver counted enqueued %d, duplicate %d", s.Enqueued.Load(), s.Duplicate.Load())
	}
	snap, err := r.st.Export()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Directories)+len(snap.Users)+len(snap.Groups)+len(snap.Holds) != 0 {
		t.Fatalf("store is not empty after hostile requests: %+v", snap)
	}

	// A signed event of a type dsyncd does not handle: 200, not stored.
	ignored := []byte(`{"id":"event_conn","event":"connection.activated","data":{"id":"conn_1"},"created_at":"2024-01-01T00:00:00Z"}`)
	if got := (hostileCase{name: "ignored type", header: sign, body: ignored}).do(t, client, url, false); got != 200 {
		t.Fatalf("ignored event type: status %d, want 200", got)
	}
	if n := streamMsgs(t, ctx, r.q); n != 0 {
		t.Fatalf("an ignored event type was stored: %d messages", n)
	}

	// The receiver still works: a valid signed event gets 200 and is stored, once.
	valid := userEvent("after_the_storm", nil)
	for i, want := range []uint64{1, 1} {
		if got := (hostileCase{name: "valid", header: sign, body: valid}).do(t, client, url, false); got != 200 {
			t.Fatalf("valid event (delivery %d): status %d, want 200", i+1, got)
		}
		if n := streamMsgs(t, ctx, r.q); n != want {
			t.Fatalf("after delivery %d of a valid event the stream holds %d messages, want %d", i+1, n, want)
		}
	}
	if s := r.srv.Stats(); s.Enqueued.Load() != 1 || s.Duplicate.Load() != 1 {
		t.Fatalf("receiver counted enqueued %d, duplicate %d; want 1, 1", s.Enqueued.Load(), s.Duplicate.Load())
	}
}

func streamMsgs(t *testing.T, ctx context.Context, q *queue.Queue) uint64 {
	t.Helper()
	info, err := q.StreamInfo(ctx)
	if err != nil {
		t.Fatalf("StreamInfo: %v", err)
	}
	return info.State.Msgs
}

// BenchmarkWebhook measures the receiver's work per request, in process:
// signature check, decode, and publish to an embedded JetStream until it
// acknowledges (file storage, default sync interval), from parallel callers.
// Each request carries a new event id, so JetStream stores every one; the
// HMAC signing done by the "sender" is included (a few µs).
func BenchmarkWebhook(b *testing.B) {
	r := newRig(b, zap.NewNop())
	h := r.srv.Handler()
	var n atomic.Int64
	tmpl := userEvent("%08d", nil)
	// WorkOS and the load generators post concurrently; each caller blocks
	// on JetStream's ack, so model 16 callers per CPU.
	b.SetParallelism(16)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			body := bytes.ReplaceAll(tmpl, []byte("%08d"), []byte(strconv.FormatInt(n.Add(1), 10)))
			req := httptest.NewRequest(http.MethodPost, "/webhooks/workos", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set(events.HeaderName, sign(body))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				b.Errorf("status %d: %s", rec.Code, rec.Body.String())
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
}
