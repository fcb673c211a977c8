package queue

// Leases: a key in a JetStream key-value bucket whose entries expire after
// the lease's time to live unless renewed. A node holds one for its id (so
// that two live nodes never share an id, hence a consumer and a store's
// place in the stream), and at most one node holds "leader" (the one that
// polls the Events API and reconciles).

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// DefaultLeaseTTL is how long a lease outlives its holder's last renewal;
// the holder renews it every third of that.
const DefaultLeaseTTL = 15 * time.Second

// LeaseBucketBytes is the lease bucket's size cap (a few hundred bytes
// per node); a server's JetStream storage limit must leave room for it.
const LeaseBucketBytes = 1 << 20

// LeaseBucket is the name of the key-value bucket of leases for a main
// stream named stream.
func LeaseBucket(stream string) string { return stream + "_LEASES" }

// LeaseHeldError is returned by ClaimLease when a live holder has the key.
type LeaseHeldError struct {
	Key    string
	Holder []byte // what the holder wrote when it claimed it
	Age    time.Duration
}

func (e *LeaseHeldError) Error() string {
	return fmt.Sprintf("lease %s is held by %s (renewed %s ago)", e.Key, e.Holder, e.Age.Round(time.Millisecond))
}

// Lease is a key of the lease bucket this process holds, or campaigns for,
// renewed in the background until Release.
type Lease struct {
	q     *Queue
	kv    jetstream.KeyValue
	key   string
	value []byte
	ttl   time.Duration
	log   *zap.Logger
	// onChange, if set, is called from the renewing goroutine each time the
	// lease is won or lost.
	onChange func(held bool)
	// takeOver, if set, recognises a holder that is this process's own dead
	// predecessor (Campaign).
	takeOver func(holder []byte) bool

	held   atomic.Bool
	mu     sync.Mutex
	rev    uint64
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// Held reports whether this process holds the lease as of its last renewal.
func (l *Lease) Held() bool { return l != nil && l.held.Load() }

// leases opens (creating it if need be) the lease bucket: entries live ttl,
// with the streams' replicas.
func (q *Queue) leases(ctx context.Context, ttl time.Duration) (jetstream.KeyValue, error) {
	st, err := q.state()
	if err != nil {
		return nil, err
	}
	kv, err := retryUnanswered(ctx, q.log, "bucket "+LeaseBucket(q.opts.Stream), func(ctx context.Context) (jetstream.KeyValue, error) {
		return st.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      LeaseBucket(q.opts.Stream),
			Description: "dsyncd: node and leader leases",
			TTL:         ttl,
			History:     1,
			MaxBytes:    LeaseBucketBytes,
			Storage:     jetstream.FileStorage,
			Replicas:    q.opts.Replicas,
		})
	})
	if err != nil {
		return nil, fmt.Errorf("queue: lease bucket %s: %w", LeaseBucket(q.opts.Stream), err)
	}
	return kv, nil
}

func (q *Queue) newLease(ctx context.Context, key string, value []byte, ttl time.Duration, onChange func(bool)) (*Lease, error) {
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	kv, err := q.leases(ctx, ttl)
	if err != nil {
		return nil, err
	}
	return &Lease{q: q, kv: kv, key: key, value: value, ttl: ttl, log: q.log.Named("lease"), onChange: onChange,
		done: make(chan struct{})}, nil
}

// ClaimLease takes key for this process, storing value (which says who holds
// it) and keeps renewing it until Release. When a live holder has it,
// ClaimLease returns a *LeaseHeldError with what that holder stored, unless
// takeOver, given it, reports that holder is this process's own dead
// predecessor (the caller knows, say, by a file lock it now holds): then it
// takes the lease over. A lease whose holder died expires after ttl
// (DefaultLeaseTTL when zero).
func (q *Queue) ClaimLease(ctx context.Context, key string, value []byte, ttl time.Duration, takeOver func(holder []byte) bool) (*Lease, error) {
	l, err := q.newLease(ctx, key, value, ttl, nil)
	if err != nil {
		return nil, err
	}
	rev, err := l.kv.Create(ctx, key, value)
	if errors.Is(err, jetstream.ErrKeyExists) {
		e, gerr := kvGet(ctx, l.kv, key)
		switch {
		case errors.Is(gerr, jetstream.ErrKeyNotFound):
			rev, err = l.kv.Create(ctx, key, value) // expired meanwhile
		case gerr != nil:
			return nil, fmt.Errorf("queue: lease %s: %w", key, gerr)
		case takeOver != nil && takeOver(e.Value()):
			rev, err = l.kv.Update(ctx, key, value, e.Revision())
		default:
			return nil, &LeaseHeldError{Key: key, Holder: e.Value(), Age: time.Since(e.Created())}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("queue: lease %s: %w", key, err)
	}
	l.rev = rev
	l.held.Store(true)
	l.start()
	return l, nil
}

// Campaign keeps trying to take key (storing value) until Release, and
// renews it while it holds it; onChange is called each time it is won or
// lost. Another process's lease expires ttl (DefaultLeaseTTL when zero)
// after its last renewal, so a dead holder is replaced within ttl plus a
// third of it; one that takeOver, given it, recognises as this process's
// own dead predecessor (as ClaimLease's) is replaced at once.
func (q *Queue) Campaign(ctx context.Context, key string, value []byte, ttl time.Duration, takeOver func(holder []byte) bool,
	onChange func(held bool)) (*Lease, error) {
	l, err := q.newLease(ctx, key, value, ttl, onChange)
	if err != nil {
		return nil, err
	}
	l.takeOver = takeOver
	l.start()
	return l, nil
}

func (l *Lease) start() {
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	go l.run(ctx)
}

// run renews the lease every third of its ttl, or tries to take it when it
// does not hold it.
func (l *Lease) run(ctx context.Context) {
	defer close(l.done)
	every := l.ttl / 3
	t := time.NewTimer(0)
	if l.held.Load() {
		t.Reset(every)
	}
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l.step(ctx)
		t.Reset(every)
	}
}

// step renews the lease, or takes it when free.
func (l *Lease) step(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, l.ttl/3)
	defer cancel()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held.Load() {
		rev, err := l.kv.Update(cctx, l.key, l.value, l.rev)
		if err == nil {
			l.rev = rev
			return
		}
		if ctx.Err() != nil {
			return
		}
		// Expired (we could not renew in time) or taken: find out below.
		l.log.Warn("lease not renewed", zap.String("key", l.key), zap.Error(err))
	}
	rev, err := l.kv.Create(cctx, l.key, l.value)
	switch {
	case err == nil:
		l.rev = rev
		l.set(true)
	case errors.Is(err, jetstream.ErrKeyExists):
		if l.takeOver != nil {
			if e, gerr := kvGet(cctx, l.kv, l.key); gerr == nil && l.takeOver(e.Value()) {
				if rev, uerr := l.kv.Update(cctx, l.key, l.value, e.Revision()); uerr == nil {
					l.rev = rev
					l.set(true)
					return
				}
			}
		}
		l.set(false) // someone else holds it
	default:
		// NATS unreachable: we cannot tell. A held lease stays held until
		// its ttl has passed without a renewal; the holder cannot know
		// better, so it gives it up after one failed renewal.
		if l.held.Load() && ctx.Err() == nil {
			l.set(false)
		}
	}
}

func (l *Lease) set(held bool) {
	if l.held.Swap(held) == held {
		return
	}
	l.log.Info("lease "+map[bool]string{true: "won", false: "lost"}[held], zap.String("key", l.key))
	if l.onChange != nil {
		l.onChange(held)
	}
}

// Release stops renewing and, if the lease is held, deletes it so that
// another process can take it at once. Safe to call more than once and on
// a nil Lease.
func (l *Lease) Release() {
	if l == nil {
		return
	}
	l.once.Do(func() {
		if l.cancel != nil {
			l.cancel()
			<-l.done
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.held.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := l.kv.Delete(ctx, l.key, jetstream.LastRevision(l.rev)); err != nil {
				l.log.Debug("lease not deleted; it expires by itself", zap.String("key", l.key), zap.Error(err))
			}
			l.set(false)
		}
	})
}
