// Command dsyncd-soak is dsyncd's kill/flood/starve harness: it runs
// `dsyncd serve` (-bin) as a subprocess on loopback and proves, phase by
// phase, that no event answered 2xx is ever lost or applied twice.
//
//	a. crash: a synthetic stream delivered shuffled with ~15% duplicates by
//	   concurrent posters that retry until 2xx, while the daemon is SIGKILLed
//	   -kills times at random moments (and sometimes again during startup)
//	   and restarted on the same data and port. At the end the live store's
//	   export must equal, byte for byte, the export of `dsyncd replay` of the
//	   stream in order; every acknowledged event must be in the stream; the
//	   store must pass bbolt's check.
//	b. queue outage: dsyncd on an external nats-server run in this process;
//	   the server is shut down mid-load and started again on the same port
//	   and store. No 2xx may be answered while it is down, and every event
//	   answered 2xx must be applied.
//	c. store faults: the store on a 2 MiB tmpfs filled to ENOSPC (needs
//	   root; otherwise skipped, saying why). Events stay in the stream, none is
//	   acknowledged uncommitted, processing resumes when space returns.
//	d. hostile input: a table of bad requests against the live daemon, each
//	   answered with its documented status; nothing stored; /readyz still 200.
//	e. sustained load (not with -short): 80% of the measured ceiling for
//	   -load-duration, with latency, lag and memory samples.
//	f. 5,000 slow connections: each trickles its request headers (redialled
//	   as soon as the daemon closes it) for 8 s (30 s without -short) while
//	   200 signed webhooks are delivered WorkOS-style. Every one must be
//	   stored and applied; the daemon's peak RSS must stay under 300 MB and
//	   its open files within http.max_connections + 256. Needs an open-files
//	   limit of 11,000 (raised when run as root; otherwise skipped).
//	g. JetStream disk full: the embedded JetStream's data on a 32 MiB tmpfs
//	   filled to ENOSPC while webhooks arrive, then freed (needs root). While
//	   full: 503s, /readyz 503 with the reason; once freed, /readyz 200 and
//	   2xx again within 10 s without a restart, every 2xx applied.
//	h. descriptors exhausted: dsyncd under ulimit -n 256 with more idle
//	   connections than that while webhooks arrive; once they close it
//	   serves again within 10 s, every 2xx applied.
//	i. damaged store: truncated, meta pages zeroed, random bytes, an older
//	   copy swapped in: serve exits 1 with one line saying to run dsyncd
//	   rebuild, never a panic; after the rebuild the export equals the golden.
//	j. change feed: a stream delivered while the daemon is SIGKILLed 4 times
//	   as it relays and delivers, the product's webhook endpoint down (503)
//	   until the second kill: the long-poll consumer, the change stream and
//	   the webhook receiver each end with every seq, in order, without a gap
//	   (the webhooks may repeat a batch after a kill), and the long-poll's
//	   fold equals the export's users. Under 30 s; in soak-short.
//	k. cluster: three nats-server processes (-nats-server, clustered,
//	   JetStream) and three `dsyncd serve` nodes on them, stream replicas 3;
//	   WorkOS-signed events posted round-robin to the nodes while one
//	   nats-server and one node are SIGKILLed and restarted, a last-admin
//	   hold approved on node 1 and the mapping changed (SIGHUP) on node 2.
//	   Every node's export ends equal to the others' and to the stream
//	   replayed into a fresh store (rebuild --from-scratch); every event
//	   answered 2xx is applied on every node.
//
// The mapping grants the admin badge through no rule
// (safeguards.allow_no_admin_rule) and the mass-deprovisioning breaker is off:
// both safeguards depend on delivery order by design, and the comparison
// with the in-order golden needs an order-independent final state.
//
// It prints one table and exits 1 on any loss or failed check.
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dsyncd/dsyncd/cmd/dsyncd-load/harness"
)

type options struct {
	bin          string
	kills        int
	duration     time.Duration
	loadDuration time.Duration
	short        bool
	fuzz         time.Duration
	keep         bool
	seed         uint64
	phases       string
	natsServer   string
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin/dsyncd", "dsyncd binary")
	flag.IntVar(&o.kills, "kills", 20, "SIGKILLs under load in the crash phase (at least 20 for a valid run)")
	flag.DurationVar(&o.duration, "duration", 45*time.Second, "how long the crash phase posts (kills are spread over it)")
	flag.DurationVar(&o.loadDuration, "load-duration", 5*time.Minute, "sustained-load phase length (not with -short)")
	flag.BoolVar(&o.short, "short", false, "small streams, no sustained-load phase (CI: make soak-short)")
	flag.DurationVar(&o.fuzz, "fuzz", 0, "also run `go test -fuzz=FuzzVerify ./events/` this long and report its executions (0: leave fuzzing to make test)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (it is always kept on failure)")
	flag.Uint64Var(&o.seed, "seed", 0, "seed of the random kill moments (0: from the clock)")
	flag.StringVar(&o.phases, "phases", "abcdefghijk", "phases to run")
	flag.StringVar(&o.natsServer, "nats-server", "bin/nats-server", "nats-server binary, for the cluster phase (make build builds it)")
	flag.Parse()
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano())
	}
	bin, err := filepath.Abs(o.bin)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dsyncd-soak: -bin:", err, "(run make build)")
		os.Exit(2)
	}
	o.bin = bin
	if ns, err := filepath.Abs(o.natsServer); err == nil {
		o.natsServer = ns
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// Everything is bounded: the phases' own deadlines sit well inside this.
	ctx, cancel := context.WithTimeout(ctx, o.duration+o.loadDuration+20*time.Minute)
	code := run(ctx, o)
	cancel()
	stop()
	os.Exit(code)
}

func run(ctx context.Context, o options) int {
	work, err := os.MkdirTemp("", "dsyncd-soak-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "dsyncd-soak:", err)
		return 1
	}
	e := &env{bin: o.bin, work: work, ctl: harness.NewClient(4, 15*time.Second), rng: rand.New(rand.NewPCG(o.seed, o.seed^0x5eed))}
	fmt.Printf("dsyncd-soak: bin %s, work %s, seed %d, kills %d, duration %s, short %v\n", o.bin, work, o.seed, o.kills, o.duration, o.short)
	began := time.Now()

	var results []*result
	runPhase := func(key string, f func() *result) {
		if !strings.Contains(o.phases, key) || ctx.Err() != nil {
			return
		}
		t := time.Now()
		r := f()
		r.note("took %s", time.Since(t).Round(100*time.Millisecond))
		results = append(results, r)
		status := "ok"
		if len(r.failures) > 0 {
			status = "FAILED: " + strings.Join(r.failures, "; ")
		} else if r.skipped != "" {
			status = "skipped: " + r.skipped
		}
		fmt.Printf("  %-24s %s (%s)\n", r.phase, status, time.Since(t).Round(100*time.Millisecond))
	}
	runPhase("a", func() *result { return e.crashPhase(ctx, o) })
	runPhase("b", func() *result { return e.outagePhase(ctx, o) })
	runPhase("c", func() *result { return e.storeFaultPhase(ctx, o) })
	runPhase("d", func() *result { return e.hostilePhase(ctx, o) })
	if !o.short {
		runPhase("e", func() *result { return e.sustainPhase(ctx, o) })
	}
	runPhase("f", func() *result { return e.slowConnsPhase(ctx, o) })
	runPhase("g", func() *result { return e.jsDiskFullPhase(ctx, o) })
	runPhase("h", func() *result { return e.fdExhaustionPhase(ctx, o) })
	runPhase("i", func() *result { return e.damagedStorePhase(ctx, o) })
	runPhase("j", func() *result { return e.feedPhase(ctx, o) })
	runPhase("k", func() *result { return e.clusterPhase(ctx, o) })
	fuzzCell, fuzzOK := "not run here: make test runs every fuzz target (make fuzz)", true
	if o.fuzz > 0 {
		fuzzCell, fuzzOK = runFuzz(ctx, o.fuzz)
	}

	failed := ctx.Err() != nil || !fuzzOK
	fmt.Println()
	t := harness.Table{Header: []string{"phase", "kills", "posted", "2xx", "events", "applied", "lost", "dup stored", "applied twice", "bad tried/refused", "result"}}
	var kills, lost, twice, tried, refused int
	var posted, acked int64
	for _, r := range results {
		status := "ok"
		switch {
		case len(r.failures) > 0:
			status, failed = "FAIL", true
		case r.skipped != "":
			status = "skipped"
		}
		bad := "-"
		if r.badTried > 0 {
			bad = fmt.Sprintf("%d/%d", r.badTried, r.badRefuse)
		}
		applied := r.applied
		if applied == "" {
			applied = "-"
		}
		t.Add(r.phase, r.kills, r.posted, r.acked, r.events, applied, r.lost, r.dupStored, r.twice, bad, status)
		kills += r.kills
		lost += r.lost
		twice += r.twice
		tried += r.badTried
		refused += r.badRefuse
		posted += r.posted
		acked += r.acked
	}
	t.Add("total", kills, posted, acked, "", "", lost, "", twice, fmt.Sprintf("%d/%d", tried, refused), map[bool]string{true: "FAIL", false: "ok"}[failed])
	t.Print(os.Stdout)
	fmt.Printf("\nfuzz executions: %s\n", fuzzCell)
	if strings.Contains(o.phases, "a") && kills < 20 {
		fmt.Printf("kills survived: %d, fewer than the 20 a valid run needs\n", kills)
		failed = true
	}
	for _, r := range results {
		fmt.Printf("\n%s:\n", r.phase)
		if r.skipped != "" {
			fmt.Printf("  skipped: %s\n", r.skipped)
		}
		for _, n := range r.notes {
			fmt.Printf("  %s\n", n)
		}
		for _, f := range r.failures {
			fmt.Printf("  FAIL: %s\n", f)
		}
	}
	fmt.Printf("\ntotal %s\n", time.Since(began).Round(time.Second))
	if ctx.Err() != nil {
		fmt.Println("dsyncd-soak: interrupted or out of time:", ctx.Err())
	}
	if failed {
		fmt.Println("dsyncd-soak: FAILED; work directory kept:", work)
		return 1
	}
	if o.keep {
		fmt.Println("work directory kept:", work)
	} else {
		_ = os.RemoveAll(work)
	}
	return 0
}
