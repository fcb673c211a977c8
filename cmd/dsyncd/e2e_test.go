package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/storage"
	"github.com/dsyncd/dsyncd/worker"
)

type vector struct {
	Secret string `json:"secret"`
	Header string `json:"header"`
	Body   string `json:"body"`
}

func loadVectors(t *testing.T) map[string]vector {
	t.Helper()
	files, err := filepath.Glob("../../testdata/workos/vectors/*.vector.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no vectors: %v", err)
	}
	out := map[string]vector{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		mustf(t, err, "read %s", f)
		var v vector
		mustf(t, json.Unmarshal(b, &v), "decode %s", f)
		out[filepath.Base(f)] = v
	}
	return out
}

// TestSignedVectorsAreStoredAndApplied posts every reference vector with its
// own WorkOS signature (the daemon's clock set to the vector's time).
func TestSignedVectorsAreStoredAndApplied(t *testing.T) {
	vectors := loadVectors(t)
	cfg := testConfig(t)
	cfg.Webhook.Secrets = nil
	for _, v := range vectors {
		cfg.Webhook.Secrets = append(cfg.Webhook.Secrets, v.Secret)
	}
	var now atomic.Int64
	d := startDaemon(t, cfg, nil, func(d *daemon) { d.clock = func() time.Time { return time.UnixMilli(now.Load()) } })
	url := "http://" + d.Addr() + cfg.Webhook.Path
	for name, v := range vectors {
		ts, _, err := events.ParseSignatureHeader(v.Header)
		mustf(t, err, "%s header", name)
		now.Store(ts + 1000)
		code, body := post(t, url, v.Header, []byte(v.Body))
		want := `"enqueued"`
		if strings.Contains(name, "captured_connection") {
			want = `"ignored"` // a connection.* event: acknowledged, not stored
		}
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("%s: %d %s, want 200 %s", name, code, body, want)
		}
		// The same signature 181 s later is stale.
		now.Store(ts + 181_000)
		if code, _ := post(t, url, v.Header, []byte(v.Body)); code != http.StatusUnauthorized {
			t.Errorf("%s replayed 181 s later: %d, want 401", name, code)
		}
	}
	waitApplied(t, d)
	var snap storage.Snapshot
	mustf(t, json.Unmarshal(apiGetT(t, d, "/v1/export"), &snap), "export")
	if len(snap.Directories) != 1 || snap.Directories[0].State != "deleted" {
		// dsync.activated and dsync.deleted share created_at; event_03 (deleted) > event_01 (activated).
		t.Errorf("directories = %+v, want one, deleted", snap.Directories)
	}
	if len(snap.Users) == 0 || len(snap.Groups) == 0 {
		t.Errorf("export has %d users and %d groups, want some", len(snap.Users), len(snap.Groups))
	}
}

// inOrderExport replays bodies in order into a fresh store with cfg's
// mapping and returns its export: the golden a shuffled delivery must match.
func inOrderExport(t *testing.T, cfg config.Config, bodies [][]byte) []byte {
	t.Helper()
	st, err := storage.Open(storeOptions(cfg, filepath.Join(t.TempDir(), "golden.db")))
	mustf(t, err, "open golden store")
	defer st.Close()
	raws := make([]events.Raw, len(bodies))
	for i, b := range bodies {
		raws[i] = events.Raw{Source: "golden", Data: b}
	}
	if _, bad, err := worker.Replay(st, raws); err != nil || len(bad) > 0 {
		t.Fatalf("golden replay: %v %v", err, bad)
	}
	snap, err := st.Export()
	mustf(t, err, "golden export")
	b, err := storage.MarshalSnapshot(snap)
	mustf(t, err, "marshal")
	return b
}

// orderFreeConfig protects a badge no rule grants, so that the last-admin
// safeguard (order-dependent by design) stays out of order-independence tests.
func orderFreeConfig(t *testing.T) config.Config {
	cfg := testConfig(t)
	cfg.Mapping.AdminBadge = "owner"
	cfg.Safeguards.AllowNoAdminRule = true
	cfg.Safeguards.MaxDeprovisions.Count = 0
	cfg.Safeguards.MaxDeprovisions.Percent = 0
	return cfg
}

func postConcurrently(t *testing.T, d *daemon, bodies [][]byte, workers int) {
	t.Helper()
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(bodies) {
					return
				}
				postSigned(t, d, bodies[i])
			}
		}()
	}
	wg.Wait()
}

func TestShuffledConcurrentDeliveryExportsTheInOrderGolden(t *testing.T) {
	cfg := orderFreeConfig(t)
	const apiToken = "api-token-e2e-must-not-be-logged"
	cfg.API.Token = apiToken
	stream := synth.Stream(synth.Options{Seed: 7, Users: 80, Groups: 10, MembershipsPerUser: 2, Changes: 600})
	inOrder := make([][]byte, len(stream))
	for i, e := range stream {
		inOrder[i] = e.Body
	}
	want := inOrderExport(t, cfg, inOrder)

	logs := &syncBuffer{}
	d := startDaemon(t, cfg, logs)
	postConcurrently(t, d, synth.Shuffle(stream, 99, 15), 16)
	waitApplied(t, d)
	if got := storage.CanonicalExport(apiGetT(t, d, "/v1/export")); !bytes.Equal(got, want) {
		t.Fatalf("export after shuffled concurrent delivery differs from the in-order golden (%d vs %d bytes)", len(got), len(want))
	}
	// Refusals are logged too: a forged delivery and a wrong API token.
	body := stream[0].Body
	if code, _ := post(t, "http://"+d.Addr()+cfg.Webhook.Path, events.Sign("whsec_forged", time.Now(), body), body); code != http.StatusUnauthorized {
		t.Fatalf("forged delivery = %d, want 401", code)
	}
	if _, err := apiGet(context.Background(), "http://"+d.Addr(), "/v1/export", "wrong-"+apiToken); err == nil {
		t.Fatal("/v1/export with a wrong token succeeded")
	}
	out := logs.String()
	if !strings.Contains(out, `"reason":"bad_signature"`) {
		t.Fatalf("the forged delivery was not logged:\n%s", out)
	}
	for what, leak := range map[string]string{"the webhook secret": testSecret, "the API token": apiToken, "an event body (a user's email)": "synth.example"} {
		if strings.Contains(out, leak) {
			t.Errorf("%s appears in the logs", what)
		}
	}
}

func TestRefusedRequestsStoreNothing(t *testing.T) {
	cfg := testConfig(t)
	cfg.Webhook.MaxBodyBytes = 4096
	logs := &syncBuffer{}
	d := startDaemon(t, cfg, logs)
	url := "http://" + d.Addr() + cfg.Webhook.Path
	body := []byte(`{"id":"event_x1","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"u1","directory_id":"d1","email":"secret.person@example.com"}}`)
	// Signed, but refused: their values must not reach the log either.
	badCreatedAt := []byte(`{"id":"event_x2","event":"dsync.user.created","created_at":"BODY-MARKER-1","data":{"id":"u","directory_id":"d"}}`)
	noDirectory := []byte(`{"id":"BODY-MARKER-2","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"u"}}`)
	now := time.Now()
	for _, tc := range []struct {
		name string
		sig  string
		body []byte
		want int
	}{
		{"unsigned is 401", "", body, 401},
		{"wrong secret is 401", events.Sign("whsec_other", now, body), body, 401},
		{"stale is 401", events.Sign(testSecret, now.Add(-10*time.Minute), body), body, 401},
		{"future is 401", events.Sign(testSecret, now.Add(10*time.Minute), body), body, 401},
		{"malformed header is 401", "t,v1=abc", body, 401},
		{"signature of another body is 401", events.Sign(testSecret, now, []byte(`{}`)), body, 401},
		{"not JSON is 400", events.Sign(testSecret, now, []byte("hello")), []byte("hello"), 400},
		{"missing ids is 400", events.Sign(testSecret, now, []byte(`{"id":"e","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{}}`)), []byte(`{"id":"e","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{}}`), 400},
		{"oversized is 413", events.Sign(testSecret, now, bytes.Repeat([]byte("x"), 5000)), bytes.Repeat([]byte("x"), 5000), 413},
		{"a bad created_at is 400", events.Sign(testSecret, now, badCreatedAt), badCreatedAt, 400},
		{"a missing directory is 400", events.Sign(testSecret, now, noDirectory), noDirectory, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, resp := post(t, url, tc.sig, tc.body); code != tc.want {
				t.Fatalf("status %d (%s), want %d", code, resp, tc.want)
			}
		})
	}
	resp, err := httpClient.Get(url)
	mustf(t, err, "GET webhook")
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET webhook = %d, want 405", resp.StatusCode)
	}
	info, err := d.q.StreamInfo(context.Background())
	mustf(t, err, "stream info")
	if info.State.Msgs != 0 {
		t.Fatalf("stream holds %d messages after refused requests, want 0", info.State.Msgs)
	}
	for _, leak := range []string{testSecret, "secret.person@example.com", "BODY-MARKER"} {
		if strings.Contains(logs.String(), leak) {
			t.Fatalf("logs contain %q", leak)
		}
	}
	if !strings.Contains(logs.String(), `"reason":"stale_signature"`) || !strings.Contains(logs.String(), `"remote":"127.0.0.1:`) {
		t.Fatalf("refusals not logged with reason and remote address:\n%s", logs.String())
	}
}

func TestRestartMidStreamLosesNothing(t *testing.T) {
	cfg := orderFreeConfig(t)
	stream := synth.Stream(synth.Options{Seed: 11, Users: 40, Groups: 6, MembershipsPerUser: 2, Changes: 300})
	inOrder := make([][]byte, len(stream))
	for i, e := range stream {
		inOrder[i] = e.Body
	}
	want := inOrderExport(t, cfg, inOrder)
	shuffled := synth.Shuffle(stream, 5, 10)
	half := len(shuffled) / 2

	d := startDaemon(t, cfg, nil)
	postConcurrently(t, d, shuffled[:half], 8)
	mustf(t, d.Close(), "close mid-stream") // graceful: finish the batch, drain
	d2 := startDaemon(t, cfg, nil)
	postConcurrently(t, d2, shuffled[half:], 8)
	waitApplied(t, d2)
	if got := storage.CanonicalExport(apiGetT(t, d2, "/v1/export")); !bytes.Equal(got, want) {
		t.Fatal("export after a restart mid-stream differs from the in-order golden")
	}
}

func TestReadAPIAndHealth(t *testing.T) {
	cfg := testConfig(t)
	cfg.API.Token = "api-token-for-tests"
	d := startDaemon(t, cfg, nil)
	admins := `{"id":"directory_group_a","directory_id":"dir_1","organization_id":"org_1","idp_id":"ga","name":"App Admins"}`
	user := `{"id":"directory_user_1","directory_id":"dir_1","organization_id":"org_1","idp_id":"u1","email":"ann@example.com","first_name":"Ann","last_name":"A","state":"active","role":{"slug":"billing"}}`
	postSigned(t, d, []byte(`{"id":"event_1","event":"dsync.group.user_added","created_at":"2024-01-01T00:00:00Z","data":{"directory_id":"dir_1","user":`+user+`,"group":`+admins+`}}`))
	postSigned(t, d, []byte(`{"id":"event_2","event":"dsync.token.created","created_at":"2024-01-01T00:00:00Z","data":{}}`))
	waitApplied(t, d)
	base := "http://" + d.Addr()
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/v1/export": 401, "/metrics": 200} {
		resp, err := httpClient.Get(base + path)
		mustf(t, err, "GET %s", path)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s = %d, want %d", path, resp.StatusCode, want)
		}
	}
	var view storage.UserView
	mustf(t, json.Unmarshal(apiGetT(t, d, "/v1/users/directory_user_1"), &view), "user view")
	if fmt.Sprint(view.Badges) != "[admin member]" || len(view.Grants) != 2 || view.Grants[0].Rule != "group:name=App Admins" {
		t.Fatalf("user view = %+v", view)
	}
	var list struct{ Users []storage.ExportUser }
	mustf(t, json.Unmarshal(apiGetT(t, d, "/v1/directories/dir_1/users?badge=admin"), &list), "users by badge")
	if len(list.Users) != 1 || list.Users[0].ID != "directory_user_1" {
		t.Fatalf("admins of dir_1 = %+v", list.Users)
	}
	// A duplicate and a refusal, for their counters.
	postSigned(t, d, []byte(`{"id":"event_1","event":"dsync.group.user_added","created_at":"2024-01-01T00:00:00Z","data":{"directory_id":"dir_1","user":`+user+`,"group":`+admins+`}}`))
	if code, _ := post(t, base+cfg.Webhook.Path, "", []byte(`{}`)); code != http.StatusUnauthorized {
		t.Fatalf("unsigned post = %d, want 401", code)
	}
	metrics := string(apiGetT(t, d, "/metrics"))
	// Every metric of the Operations issue: webhooks received / refused by
	// reason / enqueued / ignored; events applied / duplicate / stale /
	// invalid; holds open; dead letters; consumer pending; apply latency;
	// event age at apply; build info.
	for _, m := range []string{
		`dsyncd_webhooks_received_total 4`, `dsyncd_webhooks_refused_total{reason="not_signed"} 1`,
		// Every refusal reason is exported from the start, at 0.
		`dsyncd_webhooks_refused_total{reason="too_many_connections"} 0`,
		`dsyncd_webhooks_refused_total{reason="inflight_bytes_exceeded"} 0`,
		`dsyncd_webhooks_enqueued_total 1`, `dsyncd_webhooks_duplicate_total 1`, `dsyncd_webhooks_ignored_total 1`,
		`dsyncd_events_total{outcome="applied"} 1`, `dsyncd_events_total{outcome="duplicate"} 0`,
		`dsyncd_events_total{outcome="stale"} 0`, `dsyncd_events_total{outcome="invalid"} 0`,
		`dsyncd_holds_open 0`, `dsyncd_dead_letters 0`, `dsyncd_consumer_pending 0`,
		`dsyncd_apply_batch_seconds_count 1`, `dsyncd_event_age_seconds_count 1`, `dsyncd_build_info{`,
	} {
		if !strings.Contains(metrics, m) {
			t.Errorf("metrics lack %q", m)
		}
	}
	code, out, _ := runCLI(t, "export", "--server", base, "--config", writeFile(t, t.TempDir(), "c.yaml", "api:\n  token: api-token-for-tests\n"+adminMappingYAML))
	if code != 0 || !strings.Contains(out, "directory_user_1") {
		t.Fatalf("export --server: %d %s", code, out)
	}
}

const adminMappingYAML = "mapping:\n  groups:\n    - {name: App Admins, badges: [admin]}\n"

// TestExternalNATS runs the same pipeline against a nats-server listening on
// a TCP port, as an external cluster would.
func TestExternalNATS(t *testing.T) {
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	mustf(t, err, "nats server")
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(ns.Shutdown)
	cfg := testConfig(t)
	cfg.NATS.URL = ns.ClientURL()
	d := startDaemon(t, cfg, nil)
	body := []byte(`{"id":"event_ext","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"u_ext","directory_id":"d","state":"active","emails":[{"primary":true,"value":"ext.user@example.com"}],"first_name":"Ext","last_name":"User"}}`)
	postSigned(t, d, body)
	waitApplied(t, d)
	if !strings.Contains(string(apiGetT(t, d, "/v1/export")), `"u_ext"`) {
		t.Fatal("event posted through an external NATS was not applied")
	}
	// By default the stream holds the event compressed, as any other
	// client of the cluster sees it.
	nc, err := nats.Connect(ns.ClientURL())
	mustf(t, err, "connect")
	defer nc.Close()
	js, err := jetstream.New(nc)
	mustf(t, err, "jetstream")
	stream, err := js.Stream(context.Background(), cfg.NATS.Stream)
	mustf(t, err, "stream")
	raw, err := stream.GetMsg(context.Background(), 1)
	mustf(t, err, "get stored message")
	got, err := queue.Data(raw.Header.Get(queue.HeaderEncoding), raw.Data)
	if raw.Header.Get(queue.HeaderEncoding) != "s2" || len(raw.Data) >= len(body) || err != nil || !bytes.Equal(got, body) {
		t.Fatalf("stored %d bytes with encoding %q for a %d-byte body (decoded equal: %v, %v); want it s2-compressed",
			len(raw.Data), raw.Header.Get(queue.HeaderEncoding), len(body), bytes.Equal(got, body), err)
	}
	// Stopping the external server makes the receiver answer 503, never 200.
	ns.Shutdown()
	ns.WaitForShutdown()
	code, _ := post(t, "http://"+d.Addr()+cfg.Webhook.Path, events.Sign(testSecret, time.Now(), []byte(`{"id":"event_down","event":"dsync.user.created","created_at":"2024-01-01T00:00:01Z","data":{"id":"u_down","directory_id":"d"}}`)), []byte(`{"id":"event_down","event":"dsync.user.created","created_at":"2024-01-01T00:00:01Z","data":{"id":"u_down","directory_id":"d"}}`))
	if code != http.StatusServiceUnavailable {
		t.Fatalf("post with NATS down = %d, want 503", code)
	}
	// Readiness says so, and why; liveness does not change.
	resp, err := httpClient.Get("http://" + d.Addr() + "/readyz")
	mustf(t, err, "GET /readyz")
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), "jetstream") {
		t.Fatalf("/readyz with NATS down = %d %s, want 503 naming jetstream", resp.StatusCode, b)
	}
	resp, err = httpClient.Get("http://" + d.Addr() + "/healthz")
	mustf(t, err, "GET /healthz")
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz with NATS down = %d, want 200", resp.StatusCode)
	}
}
