package main

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestSoftLimit(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name      string
		live, max uint64
		want      int64
	}{
		{"a small live heap keeps the 128 MiB floor", 40 * mib, 0, 128 * mib},
		{"a live heap past half the floor gets twice itself", 200 * mib, 0, 400 * mib},
		{"a live heap at half the floor keeps the floor", 64 * mib, 0, 128 * mib},
		{"the cgroup's memory.max caps the limit at three quarters of it", 800 * mib, 1024 * mib, 768 * mib},
		{"a memory.max below the floor lowers the limit under it", 10 * mib, 128 * mib, 96 * mib},
		{"a roomy memory.max leaves the floor alone", 10 * mib, 1024 * mib, 128 * mib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := softLimit(tc.live, tc.max); got != tc.want {
				t.Errorf("softLimit(%d MiB live, memory.max %d MiB) = %d MiB, want %d MiB", tc.live/mib, tc.max/mib, got/mib, tc.want/mib)
			}
		})
	}
}

func TestCgroupMemoryMax(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cgroup string
		files  map[string]string
		want   uint64
	}{
		{"cgroup v2 with MemoryMax=1G", "0::/system.slice/dsyncd.service\n",
			map[string]string{"system.slice/dsyncd.service/memory.max": "1073741824\n"}, 1 << 30},
		{"cgroup v2 without a limit", "0::/system.slice/dsyncd.service\n",
			map[string]string{"system.slice/dsyncd.service/memory.max": "max\n"}, 0},
		{"cgroup v1 with a limit", "5:cpu,cpuacct:/x\n4:memory:/system.slice/dsyncd.service\n",
			map[string]string{"memory/system.slice/dsyncd.service/memory.limit_in_bytes": "536870912\n"}, 512 << 20},
		{"cgroup v1 without a limit", "4:memory:/\n",
			map[string]string{"memory/memory.limit_in_bytes": "9223372036854771712\n"}, 0},
		{"a cgroup file system that is not mounted", "0::/system.slice/dsyncd.service\n", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			root := filepath.Join(dir, "cgroup")
			for p, body := range tc.files {
				d := filepath.Dir(filepath.Join(root, p))
				if err := os.MkdirAll(d, 0o700); err != nil {
					t.Fatal(err)
				}
				writeFile(t, d, filepath.Base(p), body)
			}
			self := writeFile(t, dir, "self-cgroup", tc.cgroup)
			if got := cgroupMemoryMax(self, root); got != tc.want {
				t.Errorf("cgroupMemoryMax = %d, want %d", got, tc.want)
			}
		})
	}
	if got := cgroupMemoryMax(filepath.Join(t.TempDir(), "none"), "/nonexistent"); got != 0 {
		t.Errorf("without /proc/self/cgroup: %d, want 0", got)
	}
}

// TestTheSoftLimitFollowsALargeLiveHeap: a live heap above the floor raises
// the limit, so that the collector does not run back to back; GOMEMLIMIT,
// when set, is left to the runtime.
func TestTheSoftLimitFollowsALargeLiveHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("holds 200 MiB")
	}
	t.Setenv("GOMEMLIMIT", "")
	defer debug.SetMemoryLimit(math.MaxInt64)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	followLiveHeap(ctx)
	if got := debug.SetMemoryLimit(-1); got < defaultMemoryLimit || got >= math.MaxInt64 {
		t.Fatalf("limit at start: %d, want at least %d", got, defaultMemoryLimit)
	}
	if cg := cgroupMemoryMax("/proc/self/cgroup", "/sys/fs/cgroup"); cg > 0 && cg/4*3 < 320<<20 {
		t.Skipf("this cgroup's memory.max (%d MiB) caps the limit below what the test looks for", cg>>20)
	}
	live := make([]byte, 200<<20)
	for i := range live {
		live[i] = 1 // resident, not only reserved
	}
	// Other tests of the package may leave serve's follower running: it
	// sets the same limit from the same heap, so this only waits longer.
	deadline := time.Now().Add(30 * time.Second)
	for debug.SetMemoryLimit(-1) < 300<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("limit %d MiB with 200 MiB live, want at least 300 MiB", debug.SetMemoryLimit(-1)>>20)
		}
		runtime.GC()
		time.Sleep(50 * time.Millisecond)
	}
	runtime.KeepAlive(live)

	cancel()
	debug.SetMemoryLimit(math.MaxInt64)
	t.Setenv("GOMEMLIMIT", "1GiB")
	followLiveHeap(context.Background())
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("with GOMEMLIMIT set, the limit was changed to %d", got)
	}
}
