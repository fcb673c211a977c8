package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

// A signed webhook dated 2099 is taken (2xx: it is stored), not applied:
// the worker parks it as a dead letter that says why, the metric counts it,
// and the user's later real event applies.
func TestServeParksAFutureDatedEventAndCountsIt(t *testing.T) {
	d := startDaemon(t, testConfig(t), nil)
	user := func(first string) string {
		return `{"id":"directory_user_1","directory_id":"dir_1","organization_id":"org_1","first_name":"` + first + `","state":"active"}`
	}
	postSigned(t, d, []byte(`{"id":"event_1","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":`+user("Old")+`}`))
	postSigned(t, d, []byte(`{"id":"event_2099","event":"dsync.user.updated","created_at":"2099-01-01T00:00:00Z","data":`+user("Frozen")+`}`))
	postSigned(t, d, []byte(`{"id":"event_2","event":"dsync.user.updated","created_at":"2024-01-02T00:00:00Z","data":`+user("Real")+`}`))
	waitApplied(t, d)
	if u := string(apiGetT(t, d, "/v1/users/directory_user_1")); !strings.Contains(u, `"first_name":"Real"`) {
		t.Fatalf("user after the real later event = %s, want first_name Real", u)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dl, err := d.q.DeadLetters(ctx)
	mustf(t, err, "dead letters")
	if len(dl) != 1 || dl[0].MsgID != "event_2099" || !strings.Contains(dl[0].Reason, "future-dated") {
		t.Fatalf("dead letters = %+v, want event_2099 parked as future-dated", dl)
	}
	if m := string(apiGetT(t, d, "/metrics")); !strings.Contains(m, "dsyncd_events_future_dated_total 1\n") {
		t.Fatalf("metrics lack dsyncd_events_future_dated_total 1")
	}
}
