package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
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
	"github.com/dsyncd/dsyncd/queue"
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
	cfg.Changes.JetStream = false
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
	_, body := getReadyz(t, d2)
	if !strings.Contains(body, `"webhooks_out":"not the leader`) || strings.Contains(body, "degraded") {
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
	if got := d2.feed.webhook.Status().Delivered; got != last-last1 {
		t.Errorf("node 2 delivered %d records, want the %d node 1 had not", got, last-last1)
	}
	if product.rcv.badSig != 0 {
		t.Errorf("%d POSTs with a bad signature", product.rcv.badSig)
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
	v, _, found, err := ps.Get(ctx, key)
	if err != nil || !found || v != fmt.Sprint(last) {
		t.Errorf("the shared position is %q (found %v, %v), want %d", v, found, err, last)
	}
}
