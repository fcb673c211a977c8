package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/client"
)

func user(id, state string, badges ...string) *client.User {
	return &client.User{ID: id, Email: id + "@x.example", State: state, Groups: []string{}, Badges: badges}
}

// TestMirrorRevokesAccessLostAndRefusesAGap: the mirror skips a record it
// already applied, prints one revoke line per kind of access lost, none
// for a user that had none, and refuses a record past a gap.
func TestMirrorRevokesAccessLostAndRefusesAGap(t *testing.T) {
	var out, log bytes.Buffer
	m := newMirror(&out, &log, false, 0)
	m.load(&client.Export{ChangeSeq: 10, Users: []client.User{
		*user("ann", "active", "member"), *user("bob", "active", "admin", "member"),
		*user("cy", "active", "member"), *user("dee", "inactive"),
	}})
	for _, c := range []client.Change{
		{Seq: 9, Kind: client.ChangeUserDeleted, User: user("ann", "active")}, // already in the export
		{Seq: 11, Kind: client.ChangeUserDeactivated, User: user("ann", "inactive")},
		{Seq: 12, Kind: client.ChangeUserBadges, User: user("bob", "active", "member")},
		{Seq: 13, Kind: client.ChangeUserDeleted, User: &client.User{ID: "cy", Email: "cy@x.example", State: "active", Deleted: true}},
		{Seq: 14, Kind: client.ChangeUserDeleted, User: user("dee", "inactive")},
		{Seq: 15, Kind: client.ChangeHoldOpened, Hold: &client.Hold{ID: 1}},
		{Seq: 16, Kind: client.ChangeUserCreated, User: user("eve", "active", "member")},
		{Seq: 12, Kind: client.ChangeUserBadges, User: user("bob", "active", "member")}, // again
	} {
		if err := m.apply(c); err != nil {
			t.Fatalf("seq %d: %v", c.Seq, err)
		}
	}
	want := "revoke sessions: ann@x.example (deprovisioned)\n" +
		"revoke sessions: bob@x.example (lost badge admin)\n" +
		"revoke sessions: cy@x.example (deleted)\n"
	if out.String() != want {
		t.Fatalf("revoke lines:\n%s\nwant:\n%s", out.String(), want)
	}
	if err := m.apply(client.Change{Seq: 18, Kind: client.ChangeUserCreated, User: user("fay", "active")}); !errors.Is(err, errGap) {
		t.Fatalf("seq 18 after 16: %v, want a gap", err)
	}
	var snap snapshot
	var b bytes.Buffer
	if err := m.write(&b); err != nil || json.Unmarshal(b.Bytes(), &snap) != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, u := range snap.Users {
		ids = append(ids, u.ID+"/"+u.State)
	}
	if snap.Seq != 16 || strings.Join(ids, " ") != "ann/inactive bob/active eve/active" {
		t.Fatalf("mirror at %d: %v", snap.Seq, ids)
	}
}

// feedServer serves an export at seq 2 and a long-poll whose records skip
// seq 4: what a feed that lost records would look like.
func feedServer(t *testing.T) *httptest.Server {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/export":
			fmt.Fprint(w, `{"change_seq":2,"directories":[],"users":[{"id":"ann","state":"active","groups":[],"badges":["member"]}],"groups":[],"holds":[]}`)
		case "/v1/changes":
			if r.URL.Query().Get("after") != "2" {
				<-r.Context().Done()
				return
			}
			fmt.Fprint(w, `{"changes":[{"seq":3,"kind":"user.updated","user":{"id":"ann","state":"active","groups":[],"badges":["member"]}},`+
				`{"seq":5,"kind":"user.deleted","user":{"id":"ann","state":"active","deleted":true,"groups":[],"badges":[]}}],"next":5}`)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(hs.Close)
	return hs
}

// TestAGapEndsTheConsumerWithStatus2: a jump in seq is reported on
// standard error and ends the consumer with status 2, no mirror written.
func TestAGapEndsTheConsumerWithStatus2(t *testing.T) {
	hs := feedServer(t)
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, []string{"-mode", "longpoll", "-server", hs.URL, "-token", "t"}, &stdout, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "GAP") || !strings.Contains(stderr.String(), "after 3 came 5") {
		t.Fatalf("status %d, stderr:\n%s", code, stderr.String())
	}
	if strings.Contains(stdout.String(), `"users"`) {
		t.Fatalf("wrote a mirror it knows is wrong:\n%s", stdout.String())
	}
}

// TestWebhookModeRefusesUnsignedPostsAndStopsAtUntilSeq: a POST without a
// valid signature is answered 401 and changes nothing; signed batches,
// one sent twice, bring the mirror to -until-seq, where it stops and
// writes it.
func TestWebhookModeRefusesUnsignedPostsAndStopsAtUntilSeq(t *testing.T) {
	hs := feedServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(context.Background(), []string{"-mode", "webhook", "-server", hs.URL, "-token", "t", "-listen", addr,
			"-secret", "whsec_p", "-until-seq", "4"}, &stdout, &stderr)
	}()
	post := func(sig string, body string) int {
		for deadline := time.Now().Add(10 * time.Second); ; {
			req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader(body))
			req.Header.Set(client.HeaderSignature, sig)
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode
			}
			if time.Now().After(deadline) {
				t.Fatalf("post: %v", err)
			}
			time.Sleep(10 * time.Millisecond) // the consumer is starting
		}
	}
	batch := `{"changes":[{"seq":3,"kind":"user.badges_changed","user":{"id":"ann","email":"ann@x.example","state":"active","groups":[],"badges":[]}}]}`
	if code := post("t=1, v1="+strings.Repeat("ab", 32), batch); code != http.StatusUnauthorized {
		t.Fatalf("a badly signed post: %d", code)
	}
	for _, b := range []string{batch, batch, `{"changes":[{"seq":4,"kind":"hold.closed","hold":{"id":1}}]}`} {
		if code := post(sign("whsec_p", b), b); code/100 != 2 {
			t.Fatalf("a signed post: %d\n%s", code, stderr.String())
		}
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("status %d:\n%s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("did not stop at -until-seq 4")
	}
	out := stdout.String()
	if strings.Count(out, "revoke sessions: ann (lost badge member)") != 1 || !strings.Contains(out, `"seq": 4`) {
		t.Fatalf("stdout:\n%s", out)
	}
}
