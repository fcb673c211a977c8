package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/reconcile"
	"github.com/dsyncd/dsyncd/reconcile/workostest"
	"github.com/dsyncd/dsyncd/storage"
)

// flakyReceiver is a product endpoint that answers 503 while down, and
// otherwise hands the POST to the feedReceiver.
type flakyReceiver struct {
	rcv  *feedReceiver
	down atomic.Bool
}

func (f *flakyReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.down.Load() {
		_, _ = io.Copy(io.Discard, r.Body)
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
		return
	}
	f.rcv.ServeHTTP(w, r)
}

// startNATS runs one nats-server with JetStream for the test.
func startNATS(t *testing.T) *natsserver.Server {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	mustf(t, err, "nats server")
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(ns.Shutdown)
	return ns
}

// feedNodeConfig is node id on url, delivering the webhooks out to hook.
func feedNodeConfig(t *testing.T, url, id, hook string) config.Config {
	cfg := testConfig(t)
	cfg.NATS.URL = url
	cfg.Node.ID = id
	cfg.Log.Level = "info"
	cfg.Store.SnapshotsKept = 0
	cfg.Changes.Webhook.URL = hook
	cfg.Changes.Webhook.Secret = "whsec_product"
	return cfg
}

// getReadyz returns /readyz's status code and body.
func getReadyz(t *testing.T, d *daemon) (int, string) {
	t.Helper()
	resp, err := httpClient.Get("http://" + d.Addr() + "/readyz")
	mustf(t, err, "GET /readyz")
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func shortLease(d *daemon) { d.leaseTTL = 1500 * time.Millisecond }

// seqsOnce checks that cs holds seqs 1..last, each once, in order.
func seqsOnce(cs []storage.Change, last uint64) error {
	for i, c := range cs {
		if c.Seq != uint64(i+1) {
			return fmt.Errorf("record %d of %d has seq %d: a gap, a repeat or a reorder", i, len(cs), c.Seq)
		}
	}
	if uint64(len(cs)) != last {
		return fmt.Errorf("%d records delivered, the feed's last seq is %d", len(cs), last)
	}
	return nil
}

// TestWebhooksOutComeFromTheLeaderAloneAndTheNextLeaderGoesOn: two nodes
// on one NATS server, one product endpoint. Each change reaches the
// product once, from the leader only; the follower says in /readyz that it
// does not deliver. The endpoint goes down, more changes pile up, the
// leader stops: the other node takes over and delivers the rest, in order,
// without a gap and without sending again what the first delivered.
func TestWebhooksOutComeFromTheLeaderAloneAndTheNextLeaderGoesOn(t *testing.T) {
	ns := startNATS(t)
	product := &flakyReceiver{rcv: &feedReceiver{verifier: events.NewVerifier([]string{"whsec_product"}, 5*time.Minute)}}
	hook := httptest.NewServer(product)
	defer hook.Close()

	d1 := startDaemon(t, feedNodeConfig(t, ns.ClientURL(), "n1", hook.URL), nil, shortLease)
	waitFor(t, 10*time.Second, "node 1 leads", d1.Leader)
	d2 := startDaemon(t, feedNodeConfig(t, ns.ClientURL(), "n2", hook.URL), nil, shortLease)

	evs := synth.Stream(synth.Options{Seed: 11, Users: 12, Groups: 3, MembershipsPerUser: 2, Changes: 30, OrganizationID: "org_1"})
	// One event at a time, applied by both nodes before the next: their
	// feeds hold the same records under the same seqs.
	postBoth := func(evs []synth.Event) {
		for _, ev := range evs {
			postSigned(t, d1, ev.Body)
			waitFor(t, 20*time.Second, "event "+ev.ID+" applied on both nodes", func() bool {
				a, _ := d1.st.Processed(ev.ID)
				b, _ := d2.st.Processed(ev.ID)
				return a && b
			})
		}
	}
	half := len(evs) / 2
	postBoth(evs[:half])
	last1, err := d1.st.LastChangeSeq()
	mustf(t, err, "last seq")
	if last2, _ := d2.st.LastChangeSeq(); last2 != last1 || last1 == 0 {
		t.Fatalf("the nodes' feeds end at %d and %d: the test needs them alike", last1, last2)
	}
	waitFor(t, 20*time.Second, "the first half delivered", func() bool { return uint64(len(product.rcv.got())) >= last1 })
	if err := seqsOnce(product.rcv.got(), last1); err != nil {
		t.Fatalf("while node 1 leads: %v", err)
	}
	if s := d2.feed.webhook.Status(); s.Delivered != 0 || s.Active {
		t.Fatalf("the follower delivered %d records (active %v)", s.Delivered, s.Active)
	}
	if s := d2.feed.relay.Status(); s.Active {
		t.Fatal("the follower relays the change feed too")
	}
	// The relay is a way out of its own: it reaches last1 in its own time.
	waitFor(t, 20*time.Second, "the leader's relay to reach the first half", func() bool { return d1.feed.relay.Status().Position >= last1 })
	if s := d1.feed.relay.Status(); !s.Active || s.Position != last1 {
		t.Fatalf("the leader's relay: active %v, relayed up to %d of %d", s.Active, s.Position, last1)
	}
	_, body := getReadyz(t, d2)
	if !strings.Contains(body, `"webhooks_out":"not the leader`) || !strings.Contains(body, `"change_relay":"not the leader`) || strings.Contains(body, "degraded") {
		t.Errorf("follower /readyz = %s, want it to say it is not the leader, nothing degraded", body)
	}
	_, body = getReadyz(t, d1)
	if !strings.Contains(body, `"webhooks_out":"delivering`) || !strings.Contains(body, `"leader":true`) {
		t.Errorf("leader /readyz = %s, want it to say it delivers", body)
	}

	// The product goes down; changes pile up on the leader, which stops.
	product.down.Store(true)
	postBoth(evs[half:])
	last, err := d2.st.LastChangeSeq()
	mustf(t, err, "last seq")
	if l1, _ := d1.st.LastChangeSeq(); l1 != last || last <= last1 {
		t.Fatalf("the nodes' feeds end at %d and %d after the second half (first half %d)", l1, last, last1)
	}
	mustf(t, d1.Close(), "stop node 1")
	product.down.Store(false)
	waitFor(t, 10*time.Second, "node 2 leads", d2.Leader)
	waitFor(t, 20*time.Second, "the rest delivered by node 2", func() bool { return uint64(len(product.rcv.got())) >= last })
	if err := seqsOnce(product.rcv.got(), last); err != nil {
		t.Fatalf("after the takeover: %v", err)
	}
	waitFor(t, 10*time.Second, "node 2 relays the rest", func() bool {
		s := d2.feed.relay.Status()
		return s.Active && s.Position == last
	})
	// Counted once the POST returned (the product has the records a moment before).
	waitFor(t, 10*time.Second, fmt.Sprintf("node 2 counts the %d records node 1 had not delivered", last-last1), func() bool {
		return d2.feed.webhook.Status().Delivered == last-last1
	})
	product.rcv.mu.Lock()
	bad := product.rcv.badSig
	product.rcv.mu.Unlock()
	if bad != 0 {
		t.Errorf("%d POSTs with a bad signature", bad)
	}
}

// TestWebhookPositionMovesToNATSOnUpgrade: a store that delivered before
// the position was shared (only its own cursor has it) goes on after it,
// and NATS has it from then on.
func TestWebhookPositionMovesToNATSOnUpgrade(t *testing.T) {
	product := &feedReceiver{verifier: events.NewVerifier([]string{"whsec_product"}, 5*time.Minute)}
	hook := httptest.NewServer(product)
	defer hook.Close()
	cfg := testConfig(t)
	cfg.Store.SnapshotsKept = 0
	cfg.Changes.Webhook.URL = hook.URL
	cfg.Changes.Webhook.Secret = "whsec_product"
	evs := synth.Stream(synth.Options{Seed: 5, Users: 8, Groups: 2, MembershipsPerUser: 1, Changes: 10, OrganizationID: "org_1"})
	half := len(evs) / 2

	d := newDaemon(cfg, zap.NewNop())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mustf(t, d.Open(ctx), "open")
	for _, ev := range evs[:half] {
		postSigned(t, d, ev.Body)
	}
	waitApplied(t, d)
	first, _ := d.st.LastChangeSeq()
	waitFor(t, 20*time.Second, "the first half delivered", func() bool { return uint64(len(product.got())) >= first })
	// Stopped once the position is stored (stopped during a POST, it would
	// send that batch again: at least once).
	waitFor(t, 10*time.Second, "the first half's position stored", func() bool { return d.feed.webhook.Status().Position == first })
	key := d.feed.webhook.Key()
	mustf(t, d.Close(), "close")

	// Before the upgrade there was no positions bucket: drop it.
	q, err := openQueueOffline(ctx, cfg, io.Discard)
	mustf(t, err, "open the queue")
	nc, err := nats.Connect(q.ClientURL())
	mustf(t, err, "connect")
	js, err := jetstream.New(nc)
	mustf(t, err, "jetstream")
	mustf(t, js.DeleteKeyValue(ctx, queue.PositionsBucket(cfg.NATS.Stream)), "drop the positions bucket")
	nc.Close()
	mustf(t, q.Close(), "close the queue")

	d = startDaemon(t, cfg, nil)
	for _, ev := range evs[half:] {
		postSigned(t, d, ev.Body)
	}
	waitApplied(t, d)
	last, _ := d.st.LastChangeSeq()
	waitFor(t, 20*time.Second, "the rest delivered", func() bool { return uint64(len(product.got())) >= last })
	if err := seqsOnce(product.got(), last); err != nil {
		t.Fatalf("across the upgrade: %v", err)
	}
	ps, err := d.q.Positions(ctx)
	mustf(t, err, "positions")
	var v string
	waitFor(t, 10*time.Second, fmt.Sprintf("the shared position at %d", last), func() bool {
		v, _, _, err = ps.Get(ctx, key)
		return err == nil && v == fmt.Sprint(last)
	})
}

// eventsAfter returns the "after" of each /events request the fake got
// from the from-th on.
func eventsAfter(fake *workostest.Server, from int) []string {
	var out []string
	for _, r := range fake.Requests("/events")[from:] {
		out = append(out, r.Query.Get("after"))
	}
	return out
}

// TestEventsCursorIsSharedSoTheNextLeaderPollsOn: two nodes poll the same
// Events API; the leader's cursor is in NATS, so when it stops the other
// node polls on after the last event it read (not from events.start, nor
// from a cursor of its own), and publishes only what came since.
func TestEventsCursorIsSharedSoTheNextLeaderPollsOn(t *testing.T) {
	ns := startNATS(t)
	fake := newWorkOS(t)
	bodies := referenceBodies(t)
	fake.AddEvents(bodies[:len(bodies)-2]...)
	node := func(id string) config.Config {
		cfg := testConfig(t)
		cfg.NATS.URL, cfg.Node.ID, cfg.Log.Level, cfg.Store.SnapshotsKept = ns.ClientURL(), id, "info", 0
		cfg.WorkOS.APIKey, cfg.WorkOS.Endpoint = reconcileTestKey, fake.URL
		cfg.Events.PollInterval, cfg.Events.Start = 50*time.Millisecond, "2021-01-01T00:00:00Z"
		return cfg
	}
	d1 := startDaemon(t, node("n1"), nil, shortLease)
	waitFor(t, 10*time.Second, "node 1 leads", d1.Leader)
	d2 := startDaemon(t, node("n2"), nil, shortLease)
	p1 := d1.bg.Poller
	waitFor(t, 20*time.Second, "node 1 polled every event", func() bool {
		s := p1.Stats()
		return s.Published+s.AlreadyApplied+s.Duplicates+s.Ignored+s.Invalid >= uint64(len(bodies)-2)
	})
	lastID := idOfEvent(t, bodies[len(bodies)-3])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	waitFor(t, 10*time.Second, "the shared cursor on node 1's last event", func() bool {
		v, _, _, err := mustPositions(t, d1).Get(ctx, pollerKey(reconcile.CursorEvents))
		return err == nil && v == lastID
	})
	if c, _ := d2.st.Cursor(reconcile.CursorEvents); c != "" {
		t.Fatalf("node 2, which never led, has a cursor of its own: %q", c)
	}
	if s := d2.bg.Poller.Stats(); s.Polls != 0 {
		t.Fatalf("node 2 polled %d times while node 1 led", s.Polls)
	}

	mustf(t, d1.Close(), "stop node 1")
	from := len(fake.Requests("/events"))
	fake.AddEvents(bodies[len(bodies)-2:]...)
	waitFor(t, 10*time.Second, "node 2 leads", d2.Leader)
	p2 := d2.bg.Poller
	waitFor(t, 20*time.Second, "node 2 polled the two new events", func() bool {
		s := p2.Stats()
		return s.Published+s.AlreadyApplied+s.Duplicates+s.Ignored+s.Invalid >= 2
	})
	afters := eventsAfter(fake, from)
	if len(afters) == 0 || afters[0] != lastID {
		t.Fatalf("node 2's polls went on after %q, want after node 1's last event %s", afters, lastID)
	}
	if s := p2.Stats(); s.Published+s.AlreadyApplied+s.Duplicates+s.Ignored+s.Invalid != 2 {
		t.Errorf("node 2 went through %+v, want only the 2 new events", s)
	}
}

// TestEventsCursorMovesToNATSOnUpgradeAndResetForgetsIt: a store whose
// poller kept its cursor before it was shared polls on from it, and NATS
// has it from then on; reconcile --reset-events-cursor forgets it there too.
func TestEventsCursorMovesToNATSOnUpgradeAndResetForgetsIt(t *testing.T) {
	fake := newWorkOS(t)
	bodies := referenceBodies(t)
	fake.AddEvents(bodies...)
	mid := idOfEvent(t, bodies[2])
	dir := t.TempDir()
	cfgPath := writeFile(t, dir, "dsyncd.yaml", `data_dir: `+filepath.Join(dir, "data")+`
log: {level: warn}
http: {listen: "127.0.0.1:0"}
webhook: {secrets: [`+testSecret+`]}
store: {snapshots_kept: 0}
workos: {endpoint: `+fake.URL+`}
events: {poll_interval: 1s, start: "2021-01-01T00:00:00Z"}
`+adminMappingYAML)
	t.Setenv("DSYNCD_WORKOS_API_KEY", reconcileTestKey)
	cfg, err := config.Load(cfgPath, nil)
	mustf(t, err, "load config")
	// The store of a version that kept the cursor only there.
	st, err := storage.Open(storeOptions(cfg, ""))
	mustf(t, err, "open store")
	mustf(t, st.SetCursor(reconcile.CursorEvents, mid), "set cursor")
	mustf(t, st.Close(), "close store")

	d := startDaemon(t, cfg, nil)
	waitFor(t, 20*time.Second, "the poll after the stored cursor", func() bool { return d.bg.Poller.Stats().Pages > 0 })
	if afters := eventsAfter(fake, 0); len(afters) == 0 || afters[0] != mid {
		t.Fatalf("the upgraded node polled after %q, want after its stored cursor %s", afters, mid)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lastID := idOfEvent(t, bodies[len(bodies)-1])
	waitFor(t, 20*time.Second, "the shared cursor on the last event", func() bool {
		v, _, _, err := mustPositions(t, d).Get(ctx, pollerKey(reconcile.CursorEvents))
		return err == nil && v == lastID
	})
	mustf(t, d.Close(), "stop")

	code, out, errOut := runCLI(t, "reconcile", "--config", cfgPath, "--directory", workostest.UsersDirectory, "--reset-events-cursor")
	if code != 0 || !strings.Contains(out, "events cursor reset") {
		t.Fatalf("reconcile --reset-events-cursor: exit %d\n%s\n%s", code, out, errOut)
	}
	q, err := openQueueOffline(ctx, cfg, io.Discard)
	mustf(t, err, "open the queue")
	defer q.Close()
	ps, err := q.Positions(ctx)
	mustf(t, err, "positions")
	if v, _, found, err := ps.Get(ctx, pollerKey(reconcile.CursorEvents)); err != nil || !found || v != "" {
		t.Errorf("the shared cursor after --reset-events-cursor: %q (found %v, %v), want it forgotten", v, found, err)
	}
}

func idOfEvent(t *testing.T, raw []byte) string {
	t.Helper()
	var e struct {
		ID string `json:"id"`
	}
	mustf(t, json.Unmarshal(raw, &e), "event id")
	return e.ID
}

func mustPositions(t *testing.T, d *daemon) *queue.Positions {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ps, err := d.positions.get(ctx)
	mustf(t, err, "positions bucket")
	return ps
}

// TestARestartedNodeAppliesItsBacklogWithTheMappingInForce: node 2 changes
// the mapping (a rule granting eng, on_unmap keep); node 1, stopped, misses
// events that the rule concerns and starts again with its old file. It
// applies that backlog with the mapping in force, as node 2 did, and keeps
// it (a start never publishes in a cluster): both nodes end with the same
// state.
func TestARestartedNodeAppliesItsBacklogWithTheMappingInForce(t *testing.T) {
	ns := startNATS(t)
	node := func(id string) config.Config {
		cfg := testConfig(t)
		cfg.NATS.URL, cfg.Node.ID, cfg.Log.Level, cfg.Store.SnapshotsKept = ns.ClientURL(), id, "info", 0
		cfg.Changes.JetStream = false
		return cfg
	}
	cfg1 := node("n1")
	d1 := startDaemon(t, cfg1, nil, shortLease)
	cfg2 := node("n2")
	d2 := startDaemon(t, cfg2, nil, shortLease)
	next := cfg2
	next.Mapping.Groups = append(append([]mapping.GroupRule(nil), cfg2.Mapping.Groups...),
		mapping.GroupRule{Name: "Group 1", Badges: []mapping.Badge{"eng"}, OnUnmap: "keep"})
	mustf(t, d2.Reload(next), "reload node 2")
	waitApplied(t, d1)
	mustf(t, d1.Close(), "stop node 1")

	for _, ev := range synth.Stream(synth.Options{Seed: 21, Users: 10, Groups: 3, MembershipsPerUser: 2, OrganizationID: "org_1"}) {
		postSigned(t, d2, ev.Body)
	}
	waitApplied(t, d2)
	d1 = startDaemon(t, cfg1, nil, shortLease) // its file lacks node 2's rule: it keeps the one in force
	var a, b []byte
	waitFor(t, 30*time.Second, "both nodes caught up and equal", func() bool {
		for _, d := range []*daemon{d1, d2} {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			n1, err1 := d.q.Pending(ctx, "dsyncd-worker-n1")
			n2, err2 := d.q.Pending(ctx, "dsyncd-worker-n2")
			cancel()
			if err1 != nil || err2 != nil || n1+n2 > 0 {
				return false
			}
		}
		a, b = apiGetT(t, d1, "/v1/export"), apiGetT(t, d2, "/v1/export")
		return bytes.Equal(a, b)
	})
	if n := bytes.Count(a, []byte(`"eng"`)); n == 0 {
		t.Errorf("no user has the badge node 2's rule granted (kept on unmap): %s", firstBytes(a, 300))
	}
}
