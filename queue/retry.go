package queue

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// A JetStream cluster that has just formed, or is electing its meta leader,
// drops requests that create streams, buckets and consumers instead of
// answering them; several clients creating the same stream at once can all
// wait in vain (nats-server issue 3677); a stream whose leader is being
// elected answers a read with "temporarily unavailable". The same request
// sent again a moment later goes through. createAttempt bounds each attempt
// and createBudget all of them when the caller's context has no deadline.
const (
	createAttempt = 5 * time.Second
	createBudget  = time.Minute
)

// jsClusterNotAvailable is JetStream's "JetStream system temporarily
// unavailable" (no meta leader, or the group has none), worth asking again.
const jsClusterNotAvailable jetstream.ErrorCode = 10008

// retryUnanswered calls create (a request that creates, or one a node's
// start reads, each safe to repeat) until it succeeds, fails for a reason
// other than an unanswered request, or the time runs out: ctx's deadline,
// else createBudget. The first attempt has at most createAttempt, each next
// one twice the last's (up to 8 times), so that a request that is only slow
// still gets through; a jittered pause of 0.1 to 1 s separates them, so that
// nodes started together do not ask in step. what names the object for the
// log.
func retryUnanswered[T any](ctx context.Context, log *zap.Logger, what string, create func(context.Context) (T, error)) (T, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, createBudget)
		defer cancel()
	}
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, createAttempt<<min(attempt-1, 3))
		v, err := create(actx)
		cancel()
		if err == nil || !unanswered(err) {
			return v, err
		}
		pause := 100*time.Millisecond + rand.N(900*time.Millisecond)
		if dl, _ := ctx.Deadline(); time.Until(dl) < pause {
			return v, err
		}
		log.Warn("JetStream did not answer; asking again (a cluster electing its leader, or nodes creating the same stream at once)",
			zap.String("what", what), zap.Int("attempt", attempt), zap.Error(err))
		if !wait(ctx, pause) {
			return v, err
		}
	}
}

// wait pauses for d; false if ctx ended first.
func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// unanswered reports whether err says JetStream did not answer in time or
// is briefly without a leader, rather than refusing the request.
func unanswered(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		(errors.As(err, &apiErr) && apiErr.ErrorCode == jsClusterNotAvailable)
}

// kvNoRespondersWait bounds how long kvGet waits for a replica to answer.
const kvNoRespondersWait = 10 * time.Second

// kvGet is kv.Get, waiting out the moments when no server answers the
// bucket's direct gets (nats.ErrNoResponders): a replicated bucket just
// created, or whose leader just changed, answers them only once its
// replicas are caught up. It tries again, 20 ms apart at first, until one
// answers, ctx ends or kvNoRespondersWait has passed; then it returns the
// last error. (No server answering a JetStream API request, by contrast,
// means JetStream is off: retryUnanswered does not ask that again.)
func kvGet(ctx context.Context, kv jetstream.KeyValue, key string) (jetstream.KeyValueEntry, error) {
	deadline := time.Now().Add(kvNoRespondersWait)
	for pause := 20 * time.Millisecond; ; pause = min(2*pause, 500*time.Millisecond) {
		e, err := kv.Get(ctx, key)
		if !errors.Is(err, nats.ErrNoResponders) || time.Now().Add(pause).After(deadline) || !wait(ctx, pause) {
			return e, err
		}
	}
}
