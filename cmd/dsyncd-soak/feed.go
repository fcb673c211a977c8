package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dsyncd/dsyncd/cmd/dsyncd-load/harness"
	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/feed"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/storage"
)

const productSecret = "whsec_dsyncd_soak_product"

// hookReceiver is the product's endpoint for the webhooks out: it checks
// each POST's signature and records the seqs, in the order received; while
// down it answers 503.
type hookReceiver struct {
	verifier *events.Verifier
	down     atomic.Bool
	mu       sync.Mutex
	seqs     []uint64
	refused  int
	badSig   int
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.verifier.Verify(r.Header.Get(feed.HeaderSignature), body); err != nil {
		h.badSig++
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	if h.down.Load() {
		h.refused++
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	var b struct {
		Changes []struct {
			Seq uint64 `json:"seq"`
		} `json:"changes"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	for _, c := range b.Changes {
		h.seqs = append(h.seqs, c.Seq)
	}
}

func (h *hookReceiver) snapshot() (seqs []uint64, refused, badSig int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]uint64(nil), h.seqs...), h.refused, h.badSig
}

// poller follows /v1/changes across restarts, checking seq continuity.
type poller struct {
	mu     sync.Mutex
	after  uint64
	gaps   []string
	users  map[string]storage.ExportUser
	errors int
}

func (p *poller) position() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.after
}

func (p *poller) run(ctx context.Context, c *http.Client, d *harness.Daemon, tokenPath string) {
	for ctx.Err() == nil {
		token, _ := os.ReadFile(tokenPath)
		code, body, err := harness.GetWithToken(ctx, c, d.URL()+"/v1/changes?limit=1000&wait=3s&after="+strconv.FormatUint(p.position(), 10),
			strings.TrimSpace(string(token)))
		if err != nil || code != http.StatusOK {
			p.mu.Lock()
			p.errors++
			if err == nil && code == http.StatusGone {
				p.gaps = append(p.gaps, "410: "+string(body))
			}
			p.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond): // the daemon is restarting
			}
			continue
		}
		var page struct {
			Changes []storage.Change `json:"changes"`
			Next    uint64           `json:"next"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			p.mu.Lock()
			p.gaps = append(p.gaps, "undecodable page: "+err.Error())
			p.mu.Unlock()
			return
		}
		p.mu.Lock()
		for _, ch := range page.Changes {
			if ch.Seq != p.after+1 {
				p.gaps = append(p.gaps, fmt.Sprintf("seq %d after %d", ch.Seq, p.after))
			}
			p.after = ch.Seq
		}
		storage.FoldChanges(p.users, page.Changes)
		p.mu.Unlock()
	}
}

// feedPhase (j): the change feed's three ways out while the daemon is
// SIGKILLed as it relays and delivers, and the product's webhook endpoint is
// down for the first half: the long-poll consumer, the JetStream stream and
// the webhook receiver each end with every seq, in order, without a gap
// (the webhooks may repeat a batch: at least once), and the long-poll fold
// equals the export's users.
func (e *env) feedPhase(ctx context.Context, o options) *result {
	r := &result{phase: "j. change feed (SIGKILL)"}
	dir, err := e.phaseDir("feed")
	if err != nil {
		r.fail("%v", err)
		return r
	}
	rcv := &hookReceiver{verifier: events.NewVerifier([]string{productSecret}, 5*time.Minute)}
	rcv.down.Store(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.fail("%v", err)
		return r
	}
	hook := &http.Server{Handler: rcv, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hook.Serve(ln) }()
	defer hook.Close()
	natsPort, err := harness.FreePort()
	if err != nil {
		r.fail("%v", err)
		return r
	}
	cfg := harness.Config{AckWait: 2 * time.Second, NATSListen: fmt.Sprintf("127.0.0.1:%d", natsPort),
		ChangesWebhookURL: "http://" + ln.Addr().String() + "/dsyncd", ChangesWebhookSecret: productSecret}
	so := synth.Options{Seed: 17, Users: 120, Groups: 10, MembershipsPerUser: 2, Changes: 500}
	stream := synth.Stream(so)
	r.events = len(stream)
	booted := time.Now()
	d, _, err := e.boot(ctx, dir, cfg, nil)
	if err != nil {
		r.fail("%v", err)
		return r
	}
	r.note("booted in %s", time.Since(booted).Round(100*time.Millisecond))
	defer stop(d)

	pctx, cancelPoll := context.WithCancel(ctx)
	pl := &poller{users: map[string]storage.ExportUser{}}
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		pl.run(pctx, harness.NewClient(2, 15*time.Second), d, filepath.Join(dir, "data", "api.token"))
	}()
	defer func() { cancelPoll(); <-pollDone }()

	spread, kills := 6*time.Second, 4
	dl := newDelivery(false)
	p := &harness.Poster{Client: harness.NewClient(4, 15*time.Second), URL: d.WebhookURL(), Secret: secret}
	postDone := make(chan struct{})
	go func() { defer close(postDone); post(ctx, p, bodiesOf(stream), 4, spread, dl) }()
	start := time.Now()
	for k := 0; k < kills && ctx.Err() == nil; k++ {
		due := start.Add(time.Duration(k)*spread/time.Duration(kills) + time.Duration(e.rng.Float64()*float64(spread)/float64(kills)))
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(due)): // a random kill moment
		}
		if err := d.Kill(); err != nil {
			r.fail("kill %d: %v", k+1, err)
			break
		}
		r.kills++
		if k == 1 {
			rcv.down.Store(false) // the product's endpoint comes back
		}
		if err := e.start(ctx, d); err != nil {
			r.fail("restart after kill %d: %v", k+1, err)
			break
		}
	}
	<-postDone
	r.note("posted in %s", time.Since(start).Round(100*time.Millisecond))
	rcv.down.Store(false)
	r.posted, r.acked = dl.posted.Load(), dl.acked.Load()
	if len(dl.failed) > 0 {
		r.fail("%d deliveries never got a 2xx", len(dl.failed))
		return r
	}
	drain := time.Now()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	_, err = harness.WaitDrained(wctx, e.ctl, d.URL(), 0)
	cancel()
	r.note("drained in %s", time.Since(drain).Round(100*time.Millisecond))
	if err != nil {
		r.fail("worker did not drain: %v", err)
		return r
	}
	token, _ := os.ReadFile(filepath.Join(dir, "data", "api.token"))
	code, body, err := harness.GetWithToken(ctx, e.ctl, d.URL()+"/v1/export", strings.TrimSpace(string(token)))
	var export struct {
		ChangeSeq uint64               `json:"change_seq"`
		Users     []storage.ExportUser `json:"users"`
	}
	if err == nil && code == http.StatusOK {
		err = json.Unmarshal(body, &export)
	} else if err == nil {
		err = fmt.Errorf("status %d", code)
	}
	if err != nil || export.ChangeSeq == 0 {
		r.fail("export: %v (change_seq %d)", err, export.ChangeSeq)
		return r
	}
	last := export.ChangeSeq

	// Each way out reaches the last seq.
	nc, err := nats.Connect("nats://" + cfg.NATSListen)
	if err != nil {
		r.fail("connect to the embedded NATS: %v", err)
		return r
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		r.fail("%v", err)
		return r
	}
	var streamLast uint64
	caught := time.Now()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		hooked, _, _ := rcv.snapshot()
		streamLast, _ = streamLastChange(ctx, js)
		if pl.position() >= last && streamLast >= last && len(hooked) > 0 && hooked[len(hooked)-1] >= last {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling three consumers with a deadline
	}

	r.note("the three ways out reached seq %d %s after the worker drained", last, time.Since(caught).Round(10*time.Millisecond))

	// Long-poll: 1..last, no gap, folds to the export.
	pl.mu.Lock()
	if len(pl.gaps) > 0 {
		r.fail("long-poll: %d gaps, first %s", len(pl.gaps), pl.gaps[0])
	}
	if pl.after != last {
		r.fail("long-poll reached seq %d, the export says %d", pl.after, last)
	}
	want := map[string]storage.ExportUser{}
	for _, u := range export.Users {
		want[u.ID] = u
	}
	if !reflect.DeepEqual(pl.users, want) {
		r.fail("long-poll: the folded feed (%d users) differs from the export (%d users)", len(pl.users), len(want))
	}
	r.note("long-poll: seqs 1..%d without a gap across %d restarts (%d requests failed while down); fold = export (%d users)",
		pl.after, r.kills, pl.errors, len(pl.users))
	pl.mu.Unlock()

	// JetStream: each seq once, in order.
	if err := checkStreamSeqs(ctx, js, last); err != nil {
		r.fail("stream %s: %v", queue.DefaultChangesStream, err)
	} else {
		r.note("stream %s: seqs 1..%d, each once, in order", queue.DefaultChangesStream, last)
	}

	// Webhooks out: never a gap, in order; a batch may come again.
	hooked, refused, badSig := rcv.snapshot()
	var top uint64
	repeats := 0
	for i, s := range hooked {
		if s > top+1 {
			r.fail("webhooks out: seq %d (received #%d) after %d: a gap", s, i, top)
			break
		}
		if s <= top {
			repeats++
		}
		top = max(top, s)
	}
	if top != last {
		r.fail("webhooks out reached seq %d, the export says %d", top, last)
	}
	if badSig > 0 {
		r.fail("webhooks out: %d badly signed POSTs", badSig)
	}
	if refused == 0 {
		r.fail("the endpoint was never tried while down")
	}
	r.note("webhooks out: seqs 1..%d in order without a gap; %d records sent again after a kill (at least once); %d POSTs answered 503 while the endpoint was down",
		top, repeats, refused)
	if len(r.failures) == 0 {
		r.applied = fmt.Sprintf("%d changes × 3 ways out", last)
	}
	stopping := time.Now()
	if err := d.Stop(time.Minute); err != nil {
		r.fail("%v", err)
	}
	r.note("stopped in %s", time.Since(stopping).Round(100*time.Millisecond))
	return r
}

// streamLastChange is the seq (message id) of the change stream's last message.
func streamLastChange(ctx context.Context, js jetstream.JetStream) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, queue.DefaultChangesStream)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil || info.State.Msgs == 0 {
		return 0, err
	}
	m, err := s.GetMsg(ctx, info.State.LastSeq)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(m.Header.Get(jetstream.MsgIDHeader), 10, 64)
}

// checkStreamSeqs checks the change stream holds exactly seqs 1..last, in order.
func checkStreamSeqs(ctx context.Context, js jetstream.JetStream, last uint64) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, queue.DefaultChangesStream)
	if err != nil {
		return err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return err
	}
	if info.State.Msgs != last {
		return fmt.Errorf("%d messages, want %d", info.State.Msgs, last)
	}
	want := uint64(1)
	for i := info.State.FirstSeq; i <= info.State.LastSeq; i++ {
		m, err := s.GetMsg(ctx, i)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		got, _ := strconv.ParseUint(m.Header.Get(jetstream.MsgIDHeader), 10, 64)
		if got != want {
			return fmt.Errorf("message %d holds seq %d, want %d", i, got, want)
		}
		want++
	}
	return nil
}
