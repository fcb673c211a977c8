package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dsyncd/dsyncd/cmd/dsyncd-load/harness"
	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/events/synth"
)

const feedSecret = "whsec_dsyncd_load_feed"

// arrival is a change record of a user seen by a consumer.
type arrival struct {
	user string
	at   time.Time
}

// runFeedLatency (-feed-latency N) measures how long one badge change
// takes from its webhook in to the change feed's consumers: a long-poll
// consumer of /v1/changes and a webhook-out receiver (changes.webhook.url).
// It starts dsyncd with the receiver configured, posts the initial sync of
// -users/-groups, then N single badge changes one after the other (one of
// five users added to, then removed from "Group 3", which grants the badge
// "three"),
// each timed from just before its POST to its record's arrival at each
// consumer.
func runFeedLatency(ctx context.Context, o options) error {
	if o.url != "" {
		return fmt.Errorf("-feed-latency starts its own daemon (to point changes.webhook.url at its receiver): leave -url empty")
	}
	if o.groups < 4 {
		return fmt.Errorf("-feed-latency needs -groups >= 4 (the badge changes use Group 3)")
	}
	dir, err := os.MkdirTemp("", "dsyncd-load-feed-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	hooked := make(chan arrival, 4096)
	verifier := events.NewVerifier([]string{feedSecret}, 5*time.Minute)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hook := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		at := time.Now()
		if err := verifier.Verify(r.Header.Get("Dsyncd-Signature"), body); err != nil {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		for _, u := range changedUsers(body) {
			select {
			case hooked <- arrival{u, at}:
			default:
			}
		}
	})}
	go func() { _ = hook.Serve(ln) }()
	defer hook.Close()

	port, err := harness.FreePort()
	if err != nil {
		return err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	cfgPath := filepath.Join(dir, "dsyncd.yaml")
	if err := harness.WriteConfig(cfgPath, harness.Config{DataDir: filepath.Join(dir, "data"), Listen: listen, Secret: o.secret, AdminRule: true,
		ChangesWebhookURL: "http://" + ln.Addr().String() + "/changes", ChangesWebhookSecret: feedSecret}); err != nil {
		return err
	}
	d := &harness.Daemon{Bin: o.bin, Config: cfgPath, Listen: listen, LogPath: filepath.Join(dir, "dsyncd.log")}
	if o.daemonEnv != "" {
		d.Env = append(d.Env, strings.Split(o.daemonEnv, ",")...)
	}
	if err := d.Start(); err != nil {
		return err
	}
	defer func() {
		if d.Running() {
			_ = d.Stop(30 * time.Second)
		}
	}()
	ctl := harness.NewClient(4, 15*time.Second)
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	err = d.WaitReady(rctx, ctl)
	cancel()
	if err != nil {
		return err
	}

	so := synth.Options{Seed: o.seed, Users: o.users, Groups: o.groups, MembershipsPerUser: o.memberships, Changes: o.changes}
	stream := synth.Stream(so)
	dirID, orgID := fmt.Sprintf("directory_synth%d", o.seed), fmt.Sprintf("org_synth%d", o.seed)
	// The users whose badge "three" comes and goes: few, so that their
	// losses stay under the mass-deprovisioning breaker's floor.
	const users = 5
	userData := func(uid string) map[string]any {
		return map[string]any{"object": "directory_user", "id": uid, "directory_id": dirID, "organization_id": orgID,
			"email": uid + "@synth.example", "state": "active", "first_name": "Feed", "last_name": "Latency"}
	}
	for i := range users {
		uid := fmt.Sprintf("feed_latency_user_%03d", i)
		ev, _ := json.Marshal(map[string]any{"object": "event", "id": "event_feed_latency_created_" + uid, "event": "dsync.user.created",
			"created_at": time.Now().UTC().Format(time.RFC3339Nano), "data": userData(uid)})
		stream = append(stream, synth.Event{ID: "event_feed_latency_created_" + uid, Type: "dsync.user.created", Body: ev})
	}
	p := &harness.Poster{Client: harness.NewClient(o.concurrency, 30*time.Second), URL: d.WebhookURL(), Secret: o.secret}
	retry := harness.Retry{First: 100 * time.Millisecond, Max: 2 * time.Second, MaxAttempts: 20}
	t0 := time.Now()
	for _, e := range stream { // in order: the initial sync is not what is measured
		if dl := p.Deliver(ctx, e.Body, retry, nil); !dl.Delivered() {
			return fmt.Errorf("initial sync: an event never got a 2xx")
		}
	}
	if _, err := harness.WaitDrained(ctx, ctl, d.URL(), float64(len(stream))); err != nil {
		return err
	}
	fmt.Printf("initial sync: %d events applied in %s\n", len(stream), time.Since(t0).Round(time.Millisecond))

	token, err := os.ReadFile(filepath.Join(dir, "data", "api.token"))
	if err != nil {
		return err
	}
	code, body, err := harness.GetWithToken(ctx, ctl, d.URL()+"/v1/export", strings.TrimSpace(string(token)))
	if err != nil || code != http.StatusOK {
		return fmt.Errorf("export: %d %v", code, err)
	}
	var export struct {
		ChangeSeq uint64 `json:"change_seq"`
	}
	if err := json.Unmarshal(body, &export); err != nil {
		return err
	}
	polled := make(chan arrival, 4096)
	pctx, stopPoll := context.WithCancel(ctx)
	defer stopPoll()
	go longPoll(pctx, d.URL(), strings.TrimSpace(string(token)), export.ChangeSeq, polled)
	drain(hooked) // the initial sync's records, delivered meanwhile

	group := map[string]any{"object": "directory_group", "id": fmt.Sprintf("directory_group_%d_%05d", o.seed, 3), "idp_id": "g00003",
		"directory_id": dirID, "organization_id": orgID, "name": "Group 3"}
	var lpLat, whLat []time.Duration
	for i := 0; i < o.feedLatency && ctx.Err() == nil; i++ {
		uid := fmt.Sprintf("feed_latency_user_%03d", (i/2)%users)
		typ := "dsync.group.user_added"
		if i%2 == 1 {
			typ = "dsync.group.user_removed"
		}
		ev, _ := json.Marshal(map[string]any{"object": "event", "id": fmt.Sprintf("event_feed_latency_%06d", i), "event": typ,
			"created_at": time.Now().UTC().Format(time.RFC3339Nano), "data": map[string]any{"directory_id": dirID, "user": userData(uid), "group": group}})
		start := time.Now()
		if dl := p.Deliver(ctx, ev, retry, nil); !dl.Delivered() {
			return fmt.Errorf("badge change %d: never got a 2xx", i)
		}
		lp, err := await(ctx, polled, uid, start)
		if err != nil {
			return fmt.Errorf("badge change %d (%s %s): long-poll: %w", i, typ, uid, err)
		}
		wh, err := await(ctx, hooked, uid, start)
		if err != nil {
			return fmt.Errorf("badge change %d (%s %s): webhook out: %w", i, typ, uid, err)
		}
		lpLat, whLat = append(lpLat, lp), append(whLat, wh)
		time.Sleep(20 * time.Millisecond) // a trickle: one change at a time, with idle time between
	}
	fmt.Printf("\ndsyncd-load -feed-latency: %d single badge changes (webhook in -> change record out), after an initial sync of %d events\n\n",
		len(lpLat), len(stream))
	t := harness.Table{Header: []string{"consumer", "p50", "p99", "max"}}
	for _, row := range []struct {
		name string
		lat  []time.Duration
	}{{"long-poll GET /v1/changes?wait=30s", lpLat}, {"webhook out (changes.webhook.url)", whLat}} {
		t.Add(row.name, harness.Percentile(row.lat, 50).Round(10*time.Microsecond), harness.Percentile(row.lat, 99).Round(10*time.Microsecond),
			harness.Percentile(row.lat, 100).Round(10*time.Microsecond))
	}
	t.Print(os.Stdout)
	return nil
}

// changedUsers returns the user ids of a {"changes":[…]} body.
func changedUsers(body []byte) []string {
	var b struct {
		Changes []struct {
			User *struct {
				ID string `json:"id"`
			} `json:"user"`
		} `json:"changes"`
	}
	if json.Unmarshal(body, &b) != nil {
		return nil
	}
	var out []string
	for _, c := range b.Changes {
		if c.User != nil {
			out = append(out, c.User.ID)
		}
	}
	return out
}

// longPoll follows /v1/changes after after, sending each user record's arrival.
func longPoll(ctx context.Context, base, token string, after uint64, out chan<- arrival) {
	c := harness.NewClient(1, 40*time.Second)
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/changes?limit=1000&wait=30s&after="+strconv.FormatUint(after, 10), nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := c.Do(req)
		if err != nil {
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		at := time.Now()
		var page struct {
			Next uint64 `json:"next"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &page) != nil {
			return
		}
		after = page.Next
		for _, u := range changedUsers(body) {
			select {
			case out <- arrival{u, at}:
			default:
			}
		}
	}
}

// await waits for user's next record at a consumer, at most 10 s.
func await(ctx context.Context, ch <-chan arrival, user string, start time.Time) (time.Duration, error) {
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case a := <-ch:
			if a.user == user && !a.at.Before(start) {
				return a.at.Sub(start), nil
			}
		case <-timeout.C:
			return 0, fmt.Errorf("no record within 10s")
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

func drain(ch <-chan arrival) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}
