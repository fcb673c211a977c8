package storage_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/storage"
)

// allChanges reads the whole feed after after, page by page, checking that
// seqs follow each other without a gap.
func allChanges(t testing.TB, st *storage.Store, after uint64) []storage.Change {
	t.Helper()
	var out []storage.Change
	for {
		page, err := st.Changes(after, 333)
		if err != nil {
			t.Fatalf("changes after %d: %v", after, err)
		}
		for _, rc := range page.Changes {
			if rc.Seq != after+1 {
				t.Fatalf("change seq %d follows %d: a gap", rc.Seq, after)
			}
			var c storage.Change
			if err := json.Unmarshal(rc.JSON, &c); err != nil {
				t.Fatalf("change %d: %v", rc.Seq, err)
			}
			if c.Seq != rc.Seq {
				t.Fatalf("record %d says seq %d", rc.Seq, c.Seq)
			}
			if c.User != nil && rc.UserID != c.User.ID {
				t.Fatalf("record %d: user id %q, raw says %q", rc.Seq, c.User.ID, rc.UserID)
			}
			after = rc.Seq
			out = append(out, c)
		}
		if len(page.Changes) == 0 {
			return out
		}
	}
}

// checkFoldIsExport folds the whole feed and compares with the export's users.
func checkFoldIsExport(t testing.TB, st *storage.Store) []storage.Change {
	t.Helper()
	cs := allChanges(t, st, 0)
	folded := map[string]storage.ExportUser{}
	storage.FoldChanges(folded, cs)
	snap, err := st.Export()
	if err != nil {
		t.Fatal(err)
	}
	if last, _ := st.LastChangeSeq(); snap.ChangeSeq != last || (len(cs) > 0 && cs[len(cs)-1].Seq != last) {
		t.Fatalf("export change_seq %d, feed's last %d", snap.ChangeSeq, last)
	}
	if len(folded) != len(snap.Users) {
		t.Fatalf("the folded feed has %d users, the export %d", len(folded), len(snap.Users))
	}
	for _, u := range snap.Users {
		got, ok := folded[u.ID]
		if !ok {
			t.Fatalf("user %s is exported but not in the folded feed", u.ID)
		}
		if !reflect.DeepEqual(got, u) {
			a, _ := json.Marshal(got)
			b, _ := json.Marshal(u)
			t.Fatalf("user %s: folded feed\n %s\nexport\n %s", u.ID, a, b)
		}
	}
	return cs
}

// TestChangeFeedFoldsToTheExport: on random directory lifecycles (with the
// admin badge granted by a group, so last-admin holds open and close, and
// with a breaker that pauses the organisation), applied in order and
// shuffled with duplicates, in batches, folding the feed gives exactly the
// export's users; then closing every hold and resuming keeps it so.
func TestChangeFeedFoldsToTheExport(t *testing.T) {
	seeds := 12
	if testing.Short() {
		seeds = 4
	}
	for seed := uint64(1); seed <= uint64(seeds); seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			stream := synth.Stream(synth.Options{Seed: seed, Users: 40, Groups: 6, MembershipsPerUser: 2, Changes: 400, OrganizationID: "org_1"})
			bodies := make([][]byte, len(stream))
			for i, e := range stream {
				bodies[i] = e.Body
			}
			opts := storage.Options{NoSync: true}
			if seed%3 == 0 {
				opts.Safeguards.MaxDeprovisions = storage.Breaker{Count: 3, Window: time.Hour}
			}
			st := MustOpen(t, opts)
			if seed%2 == 0 {
				bodies = synth.Shuffle(stream, seed*31, 15)
			}
			applyBodies(t, st, bodies, 29)
			cs := checkFoldIsExport(t, st)
			kinds := map[storage.ChangeKind]int{}
			for _, c := range cs {
				kinds[c.Kind]++
			}
			if seed%3 != 0 && kinds[storage.ChangeUserCreated] == 0 || kinds[storage.ChangeUserDeleted]+kinds[storage.ChangeUserDeactivated] == 0 && seed%3 != 0 {
				t.Fatalf("kinds %v: the stream creates and removes users", kinds)
			}
			holds, err := st.Holds(true)
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range holds {
				if _, err := st.DecideHold(h.ID, h.ID%2 == 0, false); err != nil && !errors.Is(err, storage.ErrHoldClosed) && !errors.Is(err, storage.ErrNotRejectable) {
					t.Fatalf("decide hold %d: %v", h.ID, err)
				}
			}
			paused, _ := st.Paused()
			for _, org := range paused {
				if _, err := st.Resume(org, false); err != nil {
					t.Fatalf("resume %s: %v", org, err)
				}
			}
			checkFoldIsExport(t, st)
		})
	}
}

// TestChangeRecordsSayWhatChanged: one record per user per event that
// changed its view, even within one batch, with the kind of its most
// significant difference; holds and pauses have theirs.
func TestChangeRecordsSayWhatChanged(t *testing.T) {
	st := MustOpen(t, storage.Options{NoSync: true})
	mustApply(t, st,
		ev("e1", "dsync.group.created", 1, grp("g_adm", "App Admins")),
		ev("e2", "dsync.user.created", 2, usr("u1", "Ann", "active")),
		ev("e3", "dsync.group.user_added", 3, map[string]any{"directory_id": "dir_1", "user": usr("u1", "Ann", "active"), "group": grp("g_adm", "App Admins")}),
		ev("e4", "dsync.user.created", 4, usr("u2", "Bob", "active")),
	)
	mustApply(t, st, ev("e5", "dsync.user.updated", 5, usr("u2", "Bobby", "active")))
	mustApply(t, st, ev("e6", "dsync.user.updated", 6, usr("u2", "Bobby", "inactive")))
	mustApply(t, st, ev("e7", "dsync.user.updated", 7, usr("u2", "Bobby", "active")))
	mustApply(t, st, ev("e7", "dsync.user.updated", 7, usr("u2", "Bobby", "active"))) // a duplicate: no record
	// The last admin deactivated: a hold keeps its badge, the user stays visible.
	mustApply(t, st, ev("e8", "dsync.user.updated", 8, usr("u1", "Ann", "inactive")))
	mustApply(t, st, ev("e9", "dsync.user.deleted", 9, usr("u2", "Bobby", "active")))

	cs := checkFoldIsExport(t, st)
	type rec struct {
		kind storage.ChangeKind
		user string
	}
	var got []rec
	for _, c := range cs {
		id := ""
		if c.User != nil {
			id = c.User.ID
		}
		got = append(got, rec{c.Kind, id})
	}
	want := []rec{
		{storage.ChangeUserCreated, "u1"}, {storage.ChangeUserBadges, "u1"}, {storage.ChangeUserCreated, "u2"},
		{storage.ChangeUserUpdated, "u2"},
		{storage.ChangeUserDeactivated, "u2"},
		{storage.ChangeUserReactivated, "u2"},
		{storage.ChangeHoldOpened, ""}, {storage.ChangeUserDeactivated, "u1"},
		{storage.ChangeUserDeleted, "u2"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("records\n got %v\nwant %v", got, want)
	}
	if c := cs[0]; c.OrganizationID != "org_1" || c.DirectoryID != "dir_1" || len(c.User.Groups) != 0 {
		t.Fatalf("u1 created: %+v", c)
	}
	if c := cs[1]; len(c.User.Badges) != 2 || len(c.User.Groups) != 1 || !reflect.DeepEqual(c.Changed, []string{"groups", "badges"}) {
		t.Fatalf("u1 added to the admins: %+v (changed %v)", c.User, c.Changed)
	}
	if c := cs[3]; !reflect.DeepEqual(c.Changed, []string{"first_name"}) {
		t.Fatalf("u2 renamed: changed %v", c.Changed)
	}
	if c := cs[7]; c.User.HeldBy == 0 || c.User.State != "inactive" || len(c.User.Badges) != 1 {
		t.Fatalf("held admin: %+v", c.User)
	}
	if c := cs[6]; c.Hold == nil || c.Hold.Kind != storage.HoldLastAdmin || c.Hold.UserID != "u1" {
		t.Fatalf("hold opened: %+v", c.Hold)
	}
}

// TestChangesOlderThanTheRetentionAreGone: records past changes.retention
// are pruned while applying; asking after them is ErrChangesGone, and so is
// asking past the last seq; the seqs go on from where they were.
func TestChangesOlderThanTheRetentionAreGone(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	st := MustOpen(t, storage.Options{NoSync: true, Now: func() time.Time { return now }, Changes: storage.ChangesOptions{Retention: time.Hour}})
	mustApply(t, st, ev("e1", "dsync.user.created", 1, usr("u1", "Ann", "active")))
	mustApply(t, st, ev("e2", "dsync.user.created", 2, usr("u2", "Bob", "active")))
	if p, err := st.Changes(0, 10); err != nil || len(p.Changes) != 2 || p.Next != 2 {
		t.Fatalf("changes: %+v %v", p, err)
	}
	now = now.Add(2 * time.Hour)
	mustApply(t, st, ev("e3", "dsync.user.created", 3, usr("u3", "Cy", "active")))
	_, err := st.Changes(0, 10)
	var gone *storage.GoneError
	if !errors.As(err, &gone) || !errors.Is(err, storage.ErrChangesGone) || gone.Oldest != 3 {
		t.Fatalf("after 0 once 1 and 2 are pruned: %v", err)
	}
	if p, err := st.Changes(2, 10); err != nil || len(p.Changes) != 1 || p.Changes[0].Seq != 3 {
		t.Fatalf("after 2: %+v %v", p, err)
	}
	if p, err := st.Changes(3, 10); err != nil || len(p.Changes) != 0 || p.Next != 3 {
		t.Fatalf("after the last: %+v %v", p, err)
	}
	if _, err := st.Changes(4, 10); !errors.Is(err, storage.ErrChangesGone) {
		t.Fatalf("after a seq never written: %v", err)
	}
}

// TestChangeFeedOffThenOnStartsAfterAGap: with the feed off nothing is
// written; turned back on, the old records are gone (a reader resyncs) and
// the feed follows from the export's change_seq.
func TestChangeFeedOffThenOnStartsAfterAGap(t *testing.T) {
	path := t.TempDir() + "/dsyncd.db"
	st, err := storage.Open(storage.Options{Path: path, NoSync: true, Mapping: testMapping})
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, st, ev("e1", "dsync.user.created", 1, usr("u1", "Ann", "active")))
	_ = st.Close()

	off, err := storage.Open(storage.Options{Path: path, NoSync: true, Mapping: testMapping, Changes: storage.ChangesOptions{Off: true}})
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, off, ev("e2", "dsync.user.created", 2, usr("u2", "Bob", "active")))
	if _, err := off.Changes(0, 1); !errors.Is(err, storage.ErrChangesOff) {
		t.Fatalf("changes with the feed off: %v", err)
	}
	if seq, _ := off.LastChangeSeq(); seq != 1 {
		t.Fatalf("the feed off wrote records: last seq %d", seq)
	}
	_ = off.Close()

	on := MustOpen(t, storage.Options{Path: path, NoSync: true})
	if _, err := on.Changes(0, 1); !errors.Is(err, storage.ErrChangesGone) {
		t.Fatalf("after 0 once the feed was off: %v", err)
	}
	snap, _ := on.Export()
	mustApply(t, on, ev("e3", "dsync.user.deleted", 3, usr("u2", "Bob", "active")))
	cs := allChanges(t, on, snap.ChangeSeq)
	if len(cs) != 1 || cs[0].Kind != storage.ChangeUserDeleted || cs[0].User.ID != "u2" {
		t.Fatalf("after the export: %+v", cs)
	}
}

// TestChangesNotifyWakesAfterACommit: a reader waiting on ChangesNotify is
// woken by the commit that writes a record, not by one that writes none.
func TestChangesNotifyWakesAfterACommit(t *testing.T) {
	st := MustOpen(t, storage.Options{NoSync: true})
	ch := st.ChangesNotify()
	mustApply(t, st, ev("e1", "dsync.user.created", 1, usr("u1", "Ann", "active")))
	select {
	case <-ch:
	default:
		t.Fatal("not woken by a commit that wrote a record")
	}
	ch = st.ChangesNotify()
	mustApply(t, st, ev("e1", "dsync.user.created", 1, usr("u1", "Ann", "active"))) // duplicate
	select {
	case <-ch:
		t.Fatal("woken by a commit that wrote nothing")
	default:
	}
}

// TestChangeFeedIsTheSameWhateverTheBatches: the same stream (events dated
// by their stream time), applied one event per transaction, in batches of
// 29, and in batches of random sizes — as nodes whose workers fetch
// differently would — writes the same change feed, byte for byte and seq for
// seq, and the same export (change_seq included). With a breaker that
// pauses the organisation, and shuffled with duplicates.
func TestChangeFeedIsTheSameWhateverTheBatches(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			stream := synth.Stream(synth.Options{Seed: seed, Users: 40, Groups: 6, MembershipsPerUser: 2, Changes: 300, OrganizationID: "org_1"})
			bodies := synth.Shuffle(stream, seed*17, 15)
			base := time.Now().UTC()
			evs := make([]*events.Event, len(bodies))
			for i, b := range bodies {
				e, err := events.Decode(b)
				if err != nil {
					t.Fatal(err)
				}
				e.Stored = base.Add(time.Duration(i) * 7 * time.Millisecond)
				evs[i] = e
			}
			rng := rand.New(rand.NewPCG(seed, 99))
			batchings := map[string]func() int{
				"one by one":    func() int { return 1 },
				"batches of 29": func() int { return 29 },
				"random sizes":  func() int { return 1 + rng.IntN(60) },
			}
			var wantFeed, wantExport []byte
			var wantName string
			for name, size := range batchings {
				opts := storage.Options{NoSync: true, Now: func() time.Time { return base.Add(time.Duration(rng.IntN(3600)) * time.Second) }}
				if seed%2 == 0 {
					opts.Safeguards.MaxDeprovisions = storage.Breaker{Count: 3, Window: time.Hour}
				}
				st := MustOpen(t, opts)
				for i := 0; i < len(evs); {
					n := min(size(), len(evs)-i)
					if _, err := st.Apply(evs[i : i+n]); err != nil {
						t.Fatal(err)
					}
					i += n
				}
				checkFoldIsExport(t, st)
				page, err := st.Changes(0, 1<<20)
				if err != nil {
					t.Fatal(err)
				}
				var feed []byte
				for _, c := range page.Changes {
					feed = append(append(feed, c.JSON...), '\n')
				}
				var exp bytes.Buffer
				if err := st.ExportTo(&exp); err != nil {
					t.Fatal(err)
				}
				if wantFeed == nil {
					wantFeed, wantExport, wantName = feed, exp.Bytes(), name
					if len(page.Changes) < 40 {
						t.Fatalf("only %d change records", len(page.Changes))
					}
					continue
				}
				if !bytes.Equal(feed, wantFeed) {
					t.Fatalf("%s: the feed differs from %s's\n%s", name, wantName, firstDiff(feed, wantFeed))
				}
				if !bytes.Equal(exp.Bytes(), wantExport) {
					t.Fatalf("%s: the export differs from %s's\n%s", name, wantName, firstDiff(exp.Bytes(), wantExport))
				}
			}
		})
	}
}
