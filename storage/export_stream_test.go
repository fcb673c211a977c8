package storage_test

import (
	"bytes"
	"io"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/storage"
)

// checkStreamedExport fails t unless ExportTo writes exactly want (the
// buffered MarshalSnapshot(Export()) of the same store).
func checkStreamedExport(t testing.TB, st *storage.Store, want []byte) {
	t.Helper()
	var got bytes.Buffer
	if err := st.ExportTo(&got); err != nil {
		t.Fatalf("streamed export: %v", err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("streamed export differs from the buffered one:\nstreamed: %s\nbuffered: %s", got.Bytes(), want)
	}
}

// applyStream applies evs to st in batches of 1024, as the worker does.
func applyStream(t testing.TB, st *storage.Store, evs []synth.Event) {
	t.Helper()
	batch := make([]*events.Event, 0, 1024)
	flush := func() {
		if _, err := st.Apply(batch); err != nil {
			t.Fatalf("apply: %v", err)
		}
		batch = batch[:0]
	}
	for _, e := range evs {
		ev, err := events.Decode(e.Body)
		if err != nil {
			t.Fatalf("decode %s: %v", e.Body, err)
		}
		if batch = append(batch, ev); len(batch) == cap(batch) {
			flush()
		}
	}
	flush()
}

func TestStreamedExportIsByteIdenticalToTheBufferedOne(t *testing.T) {
	cases := []struct {
		name  string
		build func(t *testing.T, st *storage.Store)
	}{
		{"an empty store", func(*testing.T, *storage.Store) {}},
		{"a generated store of three directories with churn, deletes and an open hold", func(t *testing.T, st *storage.Store) {
			for seed := uint64(1); seed <= 3; seed++ {
				applyStream(t, st, synth.Stream(synth.Options{Seed: seed, Users: 2000, Groups: 40, MembershipsPerUser: 3, Changes: 4000}))
			}
			// The only admin of org_1, deleted: held, listed with held_by.
			mustApply(t, st,
				ev("h1", "dsync.group.created", 1, grp("g_adm", "App Admins")),
				ev("h2", "dsync.user.created", 2, usr("u_adm", "Ada", "active")),
				ev("h3", "dsync.group.user_added", 3, mem(usr("u_adm", "Ada", "active"), grp("g_adm", "App Admins"))),
				ev("h4", "dsync.user.deleted", 4, usr("u_adm", "Ada", "active")))
			if len(openHolds(t, st)) == 0 {
				t.Fatal("the case needs an open hold")
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := MustOpen(t, storage.Options{})
			c.build(t, st)
			mustExport(t, st) // compares the two
		})
	}
}

func TestStreamedExportStopsWithTheWritersError(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	applyStream(t, st, synth.Stream(synth.Options{Seed: 7, Users: 3000, Groups: 20, MembershipsPerUser: 2}))
	w := &failAfter{n: 100 << 10}
	if err := st.ExportTo(w); err == nil {
		t.Fatal("ExportTo to a writer that fails returned no error")
	}
}

type failAfter struct{ n int }

func (f *failAfter) Write(p []byte) (int, error) {
	if f.n -= len(p); f.n < 0 {
		return 0, io.ErrShortWrite
	}
	return len(p), nil
}

// BenchmarkExport measures both exports of a store of DSYNCD_EXPORT_USERS
// users (default 100,000) in directories of 100,000 users, 500 groups and 3
// memberships per user, built through Apply: allocated bytes per export and
// the live heap's peak above the idle process (peak-heap-MB), which is what
// bounds the daemon's memory.
//
//	DSYNCD_EXPORT_USERS=1000000 go test -run '^$' -bench Export -benchtime 1x -timeout 60m ./storage/
func BenchmarkExport(b *testing.B) {
	users := 100000
	if v := os.Getenv("DSYNCD_EXPORT_USERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatal(err)
		}
		users = n
	}
	defer storage.WithoutOrgCountCheck()()
	st := MustOpen(b, storage.Options{})
	start := time.Now()
	for d := 0; d*100000 < users; d++ {
		n := min(100000, users-d*100000)
		applyStream(b, st, synth.Stream(synth.Options{Seed: uint64(d + 1), Users: n, Groups: max(1, n/200), MembershipsPerUser: 3}))
		runtime.GC()
	}
	b.Logf("store of %d users built in %s", users, time.Since(start).Round(time.Second))
	run := func(b *testing.B, export func(w io.Writer) error) {
		for i := 0; i < b.N; i++ {
			runtime.GC()
			idle := liveHeap()
			var peak atomic.Uint64
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				tick := time.NewTicker(5 * time.Millisecond)
				defer tick.Stop()
				for {
					if h := liveHeap(); h > peak.Load() {
						peak.Store(h)
					}
					select {
					case <-stop:
						return
					case <-tick.C:
					}
				}
			}()
			cw := &countWriter{}
			if err := export(cw); err != nil {
				b.Fatal(err)
			}
			close(stop)
			wg.Wait()
			b.ReportMetric(float64(peak.Load()-min(idle, peak.Load()))/(1<<20), "peak-heap-MB")
			b.ReportMetric(float64(cw.n)/(1<<20), "output-MB")
		}
	}
	b.Run("streamed", func(b *testing.B) {
		b.ReportAllocs()
		run(b, st.ExportTo)
	})
	b.Run("buffered", func(b *testing.B) {
		b.ReportAllocs()
		run(b, func(w io.Writer) error {
			snap, err := st.Export()
			if err != nil {
				return err
			}
			body, err := storage.MarshalSnapshot(snap)
			if err != nil {
				return err
			}
			_, err = w.Write(body)
			return err
		})
	})
}

// liveHeap returns the bytes of live and not yet swept heap objects.
func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }
