package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/feed"
	"github.com/dsyncd/dsyncd/storage"
)

// feedReceiver is a product's endpoint for the webhooks out: it checks
// each POST's Dsyncd-Signature and folds the records it accepts.
type feedReceiver struct {
	mu       sync.Mutex
	verifier *events.Verifier
	changes  []storage.Change
	badSig   int
}

func (r *feedReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.verifier.Verify(req.Header.Get(feed.HeaderSignature), body); err != nil {
		r.badSig++
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var b struct {
		Changes []storage.Change `json:"changes"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.changes = append(r.changes, b.Changes...)
}

func (r *feedReceiver) got() []storage.Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]storage.Change(nil), r.changes...)
}

// foldChecked folds cs, failing on a seq that does not follow the one before.
func foldChecked(t *testing.T, way string, cs []storage.Change) map[string]storage.ExportUser {
	t.Helper()
	out := map[string]storage.ExportUser{}
	for i, c := range cs {
		if c.Seq != uint64(i+1) {
			t.Fatalf("%s: record %d has seq %d: a gap or a repeat", way, i, c.Seq)
		}
	}
	storage.FoldChanges(out, cs)
	return out
}

// TestEveryWayOutFoldsToTheExport: events posted, signed, to serve reach
// the product by each way out — the long-poll, the JetStream stream and
// the signed webhooks out — every record once, in seq order, and each
// folds to /v1/export's users.
func TestEveryWayOutFoldsToTheExport(t *testing.T) {
	rcv := &feedReceiver{verifier: events.NewVerifier([]string{"whsec_product"}, 5*time.Minute)}
	hook := httptest.NewServer(rcv)
	defer hook.Close()
	cfg := testConfig(t)
	cfg.Changes.Webhook.URL = hook.URL
	cfg.Changes.Webhook.Secret = "whsec_product"
	d := startDaemon(t, cfg, nil)

	stream := synth.Stream(synth.Options{Seed: 7, Users: 30, Groups: 5, MembershipsPerUser: 2, Changes: 150, OrganizationID: "org_1"})
	for _, e := range stream {
		postSigned(t, d, e.Body)
	}
	waitApplied(t, d)
	var export struct {
		ChangeSeq uint64               `json:"change_seq"`
		Users     []storage.ExportUser `json:"users"`
	}
	mustf(t, json.Unmarshal(apiGetT(t, d, "/v1/export"), &export), "export")
	if export.ChangeSeq == 0 {
		t.Fatal("export change_seq 0 after applying events")
	}
	want := map[string]storage.ExportUser{}
	for _, u := range export.Users {
		want[u.ID] = u
	}

	// Long-poll.
	var polled []storage.Change
	for after := uint64(0); ; {
		var page struct {
			Changes []storage.Change `json:"changes"`
			Next    uint64           `json:"next"`
		}
		mustf(t, json.Unmarshal(apiGetT(t, d, "/v1/changes?limit=1000&after="+itoa(after)), &page), "changes")
		if len(page.Changes) == 0 {
			break
		}
		polled, after = append(polled, page.Changes...), page.Next
	}
	if got := foldChecked(t, "long-poll", polled); !reflect.DeepEqual(got, want) {
		t.Fatalf("long-poll folds to %d users, export has %d", len(got), len(want))
	}
	if uint64(len(polled)) != export.ChangeSeq {
		t.Fatalf("long-poll: %d records, export change_seq %d", len(polled), export.ChangeSeq)
	}

	// JetStream: a product's ordered consumer on the stream.
	nc, err := nats.Connect(d.q.ClientURL())
	mustf(t, err, "connect")
	defer nc.Close()
	js, err := jetstream.New(nc)
	mustf(t, err, "jetstream")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, cfg.Changes.Stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{cfg.Changes.SubjectPrefix + ".>"}})
	mustf(t, err, "ordered consumer")
	var streamed []storage.Change
	for uint64(len(streamed)) < export.ChangeSeq {
		m, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		mustf(t, err, "next message after %d", len(streamed))
		var c storage.Change
		mustf(t, json.Unmarshal(m.Data(), &c), "decode")
		if c.User != nil && !strings.HasSuffix(m.Subject(), "."+c.User.ID) {
			t.Fatalf("record %d (user %s) on subject %s", c.Seq, c.User.ID, m.Subject())
		}
		streamed = append(streamed, c)
	}
	if got := foldChecked(t, "jetstream", streamed); !reflect.DeepEqual(got, want) {
		t.Fatalf("the stream folds to %d users, export has %d", len(got), len(want))
	}

	// Webhooks out.
	deadline := time.Now().Add(30 * time.Second)
	for uint64(len(rcv.got())) < export.ChangeSeq && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
	if got := foldChecked(t, "webhooks out", rcv.got()); !reflect.DeepEqual(got, want) || rcv.badSig != 0 {
		t.Fatalf("the webhooks out fold to %d users (%d badly signed), export has %d", len(got), rcv.badSig, len(want))
	}
	metrics := string(get(t, "http://"+d.Addr()+"/metrics"))
	for _, m := range []string{"dsyncd_changes_last_seq " + itoa(export.ChangeSeq), "dsyncd_changes_webhook_pending 0", "dsyncd_changes_relay_pending 0"} {
		if !strings.Contains(metrics, m) {
			t.Errorf("/metrics lacks %q", m)
		}
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

func get(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := httpClient.Get(url)
	mustf(t, err, "GET %s", url)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b
}
