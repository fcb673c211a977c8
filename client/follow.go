package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// ErrGap: a record's seq does not follow the one before. The feed never
// skips one; a gap means records were lost (retention, a replaced store):
// resync from Export.
var ErrGap = errors.New("dsyncd: a gap in the change feed")

// Follow calls fn for every change record after seq after, in seq order,
// each once, until ctx ends or fn returns an error. It long-polls
// GET /v1/changes (WithWait, 30s by default), so a change reaches fn
// within milliseconds of its commit.
//
// A transport error, a cut answer, a 5xx or a 429 is retried after an
// exponential backoff with jitter (WithBackoff), from the last record fn
// accepted. Follow returns:
//   - fn's error, as is, the record it refused not counted as seen;
//   - an error matching ErrGone when the feed no longer keeps after (or
//     was replaced): resync from Export and follow from its ChangeSeq;
//   - an error matching ErrGap if a record does not follow the one before;
//   - another *Error for an answer asking again cannot mend (401, 404:
//     the feed is off, 400);
//   - ctx's error when it ends.
func (c *Client) Follow(ctx context.Context, after uint64, fn func(Change) error) error {
	failures := 0
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, c.wait+30*time.Second)
		page, err := c.Changes(rctx, after, c.batch, c.wait)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var apiErr *Error
			if errors.As(err, &apiErr) && !apiErr.Temporary() {
				return err
			}
			d := c.backoff(failures)
			failures++
			if c.onRetry != nil {
				c.onRetry(err, d)
			}
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
			continue
		}
		failures = 0
		for _, ch := range page.Changes {
			if ch.Seq <= after {
				continue
			}
			if ch.Seq != after+1 {
				return fmt.Errorf("%w: after %d came %d", ErrGap, after, ch.Seq)
			}
			if err := fn(ch); err != nil {
				return err
			}
			after = ch.Seq
		}
	}
}

// backoff is the wait before the retry after n failures in a row: min
// doubled n times, at most max, of which a random half.
func (c *Client) backoff(n int) time.Duration {
	d := c.minBackoff
	for i := 0; i < n && d < c.maxBackoff; i++ {
		d *= 2
	}
	d = min(d, c.maxBackoff)
	return d/2 + rand.N(d/2+1)
}
