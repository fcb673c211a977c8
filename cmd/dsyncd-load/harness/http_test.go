package harness

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/events"
)

// TestRawConnPostsSignedRequestsOverOneConnection runs RawConn against a
// real net/http server: what it sends must verify, its statuses must be the
// server's, and it must keep one connection open until the server closes it.
func TestRawConnPostsSignedRequestsOverOneConnection(t *testing.T) {
	const secret = "whsec_raw_test"
	v := events.NewVerifier([]string{secret}, time.Minute)
	var conns atomic.Int64
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(r.Body)
			switch {
			case err != nil || r.Method != http.MethodPost || r.URL.Path != "/hook":
				http.Error(w, "bad request", http.StatusBadRequest)
			case v.Verify(r.Header.Get(events.HeaderName), body) != nil:
				http.Error(w, "bad signature", http.StatusUnauthorized)
			case string(body) == "close":
				w.Header().Set("Connection", "close")
				w.WriteHeader(http.StatusServiceUnavailable)
			default:
				_, _ = w.Write([]byte(`{"ok":true}`))
			}
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				conns.Add(1)
			}
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	ctx := context.Background()
	c := &RawConn{Addr: ln.Addr().String(), Path: "/hook", Secret: secret, Timeout: 5 * time.Second}
	defer c.Close()
	for i := range 3 {
		if code, err := c.Post(ctx, []byte(`{"n":`+strings.Repeat("1", i+1)+`}`)); err != nil || code != http.StatusOK {
			t.Fatalf("post %d: %d %v, want 200", i, code, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for three posts, want one kept alive", n)
	}
	if code, err := c.Post(ctx, []byte("close")); err != nil || code != http.StatusServiceUnavailable {
		t.Fatalf("post answered with Connection: close: %d %v, want 503", code, err)
	}
	if code, err := c.Post(ctx, []byte(`{}`)); err != nil || code != http.StatusOK {
		t.Fatalf("post after the server closed: %d %v, want 200 on a new connection", code, err)
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2 (a new one after Connection: close)", n)
	}
	wrong := &RawConn{Addr: ln.Addr().String(), Path: "/hook", Secret: "whsec_other"}
	defer wrong.Close()
	if code, err := wrong.Post(ctx, []byte(`{}`)); err != nil || code != http.StatusUnauthorized {
		t.Fatalf("post signed with another secret: %d %v, want 401", code, err)
	}
}
