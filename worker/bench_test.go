package worker_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/storage"
	"github.com/dsyncd/dsyncd/worker"
)

// BenchmarkReplay100k measures `dsyncd replay` of a 100k-event stream: an
// initial sync of 20k users, 200 groups and ~60k memberships, then changes;
// with the change feed on (the default) and off, for the feed's share.
func BenchmarkReplay100k(b *testing.B) {
	stream := synth.Stream(synth.Options{Seed: 42, Users: 20000, Groups: 200, MembershipsPerUser: 3, Changes: 20000})
	raws := make([]events.Raw, len(stream))
	for i, e := range stream {
		raws[i] = events.Raw{Source: e.ID, Data: e.Body}
	}
	for _, off := range []bool{false, true} {
		b.Run(map[bool]string{false: "feed=on", true: "feed=off"}[off], func(b *testing.B) { benchReplay(b, raws, off) })
	}
}

func benchReplay(b *testing.B, raws []events.Raw, feedOff bool) {
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		st, err := storage.Open(storage.Options{Path: filepath.Join(b.TempDir(), "bench.db"), Changes: storage.ChangesOptions{Off: feedOff}, Mapping: mapping.Config{
			AdminBadge: "admin", DefaultBadges: []mapping.Badge{"member"},
			Groups: []mapping.GroupRule{{Name: "App Admins", Badges: []mapping.Badge{"admin"}}, {Name: "Group 7", Badges: []mapping.Badge{"seven"}}},
			Roles:  []mapping.RoleRule{{Slug: "billing", Badges: []mapping.Badge{"billing"}}},
		}})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		c, bad, err := worker.Replay(st, raws)
		total += time.Since(start)
		b.StopTimer()
		if err != nil || len(bad) > 0 || c.Applied == 0 {
			b.Fatalf("replay: %v %v %+v", err, bad, c)
		}
		_ = st.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(len(raws)*b.N)/total.Seconds(), "events/s")
	b.ReportMetric(float64(len(raws)), "events")
}
