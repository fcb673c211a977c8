package main

// serve's soft Go memory limit when GOMEMLIMIT is unset.
//
// The daemon's garbage (decoding, HTTP, the embedded NATS server's copies)
// is larger than its live heap, and the store is memory-mapped, not on the
// heap: a soft limit keeps the process near its live size instead of twice
// it (GOGC's rule). But a fixed limit below what the live heap needs makes
// the collector run back to back: the live heap grows with the directory
// (the embedded server's per-subject index of the change feed, ~13 MB per
// 100,000 users) and the run of 200,000 users (0.8M events) under a fixed
// 128 MiB spent 37% of the CPU in the collector, live 88 MB against a 90 MB
// goal: 319 µs of CPU an event against 181 µs with this rule, for the same
// peak anonymous memory (the collector's CPU cap let the heap pass the fixed
// limit anyway). So the limit follows the live heap: the larger of
// defaultMemoryLimit and twice the live heap, looked at every second; and
// never above three quarters of the cgroup's memory.max (systemd's
// MemoryMax), where the collector's extra work is better than the kernel
// killing the process. GOMEMLIMIT, when set, is used as is.
//
// Twice, not one and a half: the limit counts all of the runtime's memory
// (the heap's fragmentation, stacks, metadata), so one and a half times a
// 148 MB live heap left the heap goal 12 MB above it late in a 1M-user sync:
// ten collections a second, half of the CPU. At 400,000 users (1.6M events,
// one run each, 2026-12-07) twice took 181 µs of CPU an event against 346,
// all applied in 3m01s against 5m28s, reads' p99 18 ms against 29 ms, for a
// peak anonymous memory of 330 MiB against 191 MiB.

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"time"
)

// defaultMemoryLimit is the soft limit's floor. Measured with `make
// bench-e2e` (100k users, 400k events, events stored S2-compressed): 128 MiB
// cost no measurable throughput and kept the anonymous memory at ~125 MiB
// (peak RSS ~247 MiB with the store's mapped pages) against ~175 MiB at
// 256 MiB; 100 MiB kept ~90 MiB but cost ~10 µs of CPU an event, and with
// the change feed's live heap (2026-12-07, 100k users, one run) 96 MiB cost
// ~45 µs an event. With nats.event_encoding json the embedded server's block cache is
// ~1.6x larger: set GOMEMLIMIT.
const defaultMemoryLimit = 128 << 20

// memoryLimitEvery is how often the limit is set again from the live heap.
const memoryLimitEvery = time.Second

// softLimit is the limit for a live heap of live bytes under a cgroup
// memory.max of cgMax bytes (0: none).
func softLimit(live, cgMax uint64) int64 {
	limit := max(defaultMemoryLimit, 2*live)
	if cgMax > 0 {
		limit = min(limit, cgMax/4*3)
	}
	return int64(min(limit, 1<<62))
}

// followLiveHeap sets the soft limit from the live heap every
// memoryLimitEvery until ctx is done; it does nothing when GOMEMLIMIT is set.
func followLiveHeap(ctx context.Context) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	cgMax := cgroupMemoryMax("/proc/self/cgroup", "/sys/fs/cgroup")
	sample := []rtmetrics.Sample{{Name: "/gc/heap/live:bytes"}}
	set := func() {
		rtmetrics.Read(sample)
		var live uint64
		if sample[0].Value.Kind() == rtmetrics.KindUint64 {
			live = sample[0].Value.Uint64()
		}
		debug.SetMemoryLimit(softLimit(live, cgMax))
	}
	set()
	go func() {
		t := time.NewTicker(memoryLimitEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			set()
		}
	}()
}

// cgroupMemoryMax is the memory.max (cgroup v2) or memory.limit_in_bytes
// (v1) of the cgroup /proc/self/cgroup (at cgroupFile) names, under the
// cgroup file system at root; 0 when there is none or no limit.
func cgroupMemoryMax(cgroupFile, root string) uint64 {
	f, err := os.Open(cgroupFile)
	if err != nil {
		return 0
	}
	defer f.Close()
	var candidates []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// hierarchy-ID:controllers:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			candidates = append(candidates, filepath.Join(root, parts[2], "memory.max"))
		case hasController(parts[1], "memory"):
			candidates = append(candidates, filepath.Join(root, "memory", parts[2], "memory.limit_in_bytes"))
		}
	}
	for _, p := range candidates {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		v := strings.TrimSpace(string(b))
		if v == "max" {
			return 0
		}
		n, err := strconv.ParseUint(v, 10, 64)
		// cgroup v1 says "no limit" with a huge number (PAGE_COUNTER_MAX pages).
		if err != nil || n == 0 || n >= 1<<62 {
			return 0
		}
		return n
	}
	return 0
}

func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}
