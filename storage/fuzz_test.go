package storage_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/storage"
)

// FuzzApply feeds arbitrary NDJSON event streams to Apply: it must never
// panic, and the store must keep its invariants (bbolt consistent, users'
// groups and groups' members mirror each other, no badge for an inactive user).
func FuzzApply(f *testing.F) {
	files, _ := filepath.Glob("../testdata/scenarios/*/events.ndjson")
	if len(files) == 0 {
		f.Fatal("no scenario streams in testdata/scenarios")
	}
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var evs []*events.Event
		for _, line := range bytes.Split(data, []byte("\n")) {
			if ev, err := events.Decode(line); err == nil {
				evs = append(evs, ev)
			}
		}
		if len(evs) == 0 {
			return
		}
		st := MustOpen(t, storage.Options{NoSync: true, Safeguards: storage.Safeguards{OnDirectoryDeleted: storage.OnDirectoryDeletedDeprovision}})
		if _, err := st.Apply(evs); err != nil {
			t.Fatalf("apply: %v", err)
		}
		snap, err := st.Export()
		if err != nil {
			t.Fatalf("export: %v", err)
		}
		members := map[string][]string{}
		for _, g := range snap.Groups {
			members[g.ID] = g.Members
		}
		for _, u := range snap.Users {
			// Only an open last-admin hold keeps a badge of an inactive
			// (or deleted) user: the admin badge, shown with the hold's id.
			held := u.HeldBy != 0 && slices.Equal(u.Badges, []mapping.Badge{"admin"})
			if (u.State == "inactive" || u.State == "suspended" || u.Deleted) && len(u.Badges) > 0 && !held {
				t.Fatalf("inactive user %s has badges %v (held by %d)", u.ID, u.Badges, u.HeldBy)
			}
			for _, g := range u.Groups {
				if !slices.Contains(members[g], u.ID) {
					t.Fatalf("user %s lists group %s, which does not list it", u.ID, g)
				}
			}
		}
	})
}
