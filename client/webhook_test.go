package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/client"
	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/feed"
	"github.com/dsyncd/dsyncd/storage"
)

// TestVerifyWebhookAcceptsOnlyTheSignedBodyWithinTolerance: a header made
// by the daemon's signer (events.Sign, what the webhooks out send) is
// accepted; another secret, another body, a stale or future t, or a
// malformed header is refused with ErrBadSignature.
func TestVerifyWebhookAcceptsOnlyTheSignedBodyWithinTolerance(t *testing.T) {
	const secret = "whsec_product"
	now := time.Date(2026, 1, 5, 10, 0, 0, 0, time.UTC)
	body := []byte(`{"changes":[{"seq":1,"kind":"user.created"}]}`)
	good := events.Sign(secret, now, body)
	_, v1, _ := strings.Cut(good, "v1=")
	for _, tc := range []struct {
		name   string
		secret string
		header string
		body   []byte
		now    time.Time
		ok     bool
	}{
		{"signed now: accepted", secret, good, body, now, true},
		{"signed 4m ago: accepted", secret, events.Sign(secret, now.Add(-4*time.Minute), body), body, now, true},
		{"a second v1 that matches: accepted", secret, "t=" + fmt.Sprint(now.UnixMilli()) + ", v1=" + strings.Repeat("0", 64) + ", v1=" + v1, body, now, true},
		{"another secret: refused", "whsec_other", good, body, now, false},
		{"another body: refused", secret, good, []byte(`{"changes":[]}`), now, false},
		{"signed 6m ago: refused", secret, events.Sign(secret, now.Add(-6*time.Minute), body), body, now, false},
		{"signed 6m ahead: refused", secret, events.Sign(secret, now.Add(6*time.Minute), body), body, now, false},
		{"no header: refused", secret, "", body, now, false},
		{"no v1: refused", secret, "t=" + fmt.Sprint(now.UnixMilli()), body, now, false},
		{"v1 not hex: refused", secret, "t=" + fmt.Sprint(now.UnixMilli()) + ", v1=zz", body, now, false},
		{"t not a number: refused", secret, "t=soon, v1=" + v1, body, now, false},
		{"no secret configured: refused", "", good, body, now, false},
	} {
		err := client.VerifyWebhook(tc.secret, tc.header, tc.body, tc.now, 5*time.Minute)
		if tc.ok && err != nil || !tc.ok && !errors.Is(err, client.ErrBadSignature) {
			t.Errorf("%s: %v", tc.name, err)
		}
		if err != nil && strings.Contains(err.Error(), v1) {
			t.Errorf("%s: the error quotes the signature: %v", tc.name, err)
		}
	}
}

// TestVerifyWebhookAcceptsWhatTheWebhooksOutSend: the daemon's webhooks
// out (feed.Webhook on a real store) POST batches that VerifyWebhook
// accepts and DecodeWebhook reads, every record in seq order.
func TestVerifyWebhookAcceptsWhatTheWebhooksOutSend(t *testing.T) {
	const secret = "whsec_product"
	r := newRig(t, storage.Options{})
	for i := 1; i <= 9; i++ {
		r.user(t, "dsync.user.created", fmt.Sprintf("u%d", i), "active")
	}
	var mu sync.Mutex
	var seqs []uint64
	var refused []error
	all := make(chan struct{})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		mu.Lock()
		defer mu.Unlock()
		if err := client.VerifyWebhook(secret, req.Header.Get(client.HeaderSignature), body, time.Now(), 0); err != nil {
			refused = append(refused, err)
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		cs, err := client.DecodeWebhook(body)
		if err != nil {
			t.Errorf("decode: %v", err)
		}
		for _, c := range cs {
			seqs = append(seqs, c.Seq)
		}
		if len(seqs) == 9 {
			close(all)
		}
	}))
	defer hs.Close()
	w := feed.NewWebhook(r.st, feed.WebhookOptions{URL: hs.URL, Secret: secret, Batch: 4, MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond}, zap.NewNop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	select {
	case <-all:
	case <-time.After(30 * time.Second):
		t.Fatal("the webhooks out did not deliver 9 records")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(refused) > 0 {
		t.Fatalf("refused what the daemon signed: %v", refused)
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("seqs %v", seqs)
		}
	}
}
