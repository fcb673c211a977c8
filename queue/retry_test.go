package queue

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Only a request JetStream left unanswered, or answered "temporarily
// unavailable", is asked again; a refusal fails the caller at once.
func TestOnlyAnUnansweredRequestIsAskedAgain(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"the attempt's deadline passed: asked again", fmt.Errorf("create: %w", context.DeadlineExceeded), true},
		{"the client's own timeout: asked again", nats.ErrTimeout, true},
		{"no leader for the moment: asked again", &jetstream.APIError{Code: 503, ErrorCode: jsClusterNotAvailable}, true},
		{"the caller gave up: not asked again", context.Canceled, false},
		{"no such stream: not asked again", &jetstream.APIError{Code: 404, ErrorCode: jetstream.JSErrCodeStreamNotFound}, false},
		{"a refused configuration: not asked again", &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeBadRequest}, false},
		{"no message: not asked again", jetstream.ErrMsgNotFound, false},
		{"JetStream not enabled: not asked again", jetstream.ErrJetStreamNotEnabled, false},
	} {
		if got := unanswered(c.err); got != c.want {
			t.Errorf("%s: unanswered(%v) = %v", c.name, c.err, got)
		}
	}
}

// A refusal returns after one attempt; an unanswered request is asked
// again until it is answered.
func TestARefusalIsNotRetriedAndATimeoutIs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	calls := 0
	refused := errors.New("refused")
	if _, err := retryUnanswered(ctx, testLogger(t), "refused", func(context.Context) (int, error) {
		calls++
		return 0, refused
	}); !errors.Is(err, refused) || calls != 1 {
		t.Fatalf("a refusal: %v after %d attempts, want it after 1", err, calls)
	}
	calls = 0
	v, err := retryUnanswered(ctx, testLogger(t), "late", func(context.Context) (int, error) {
		calls++
		if calls < 3 {
			return 0, context.DeadlineExceeded
		}
		return 7, nil
	})
	if err != nil || v != 7 || calls != 3 {
		t.Fatalf("unanswered twice, then answered: %d, %v after %d attempts; want 7 after 3", v, err, calls)
	}
}
