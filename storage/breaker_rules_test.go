package storage_test

// The breaker's limit with the shipped defaults (config.Default): each
// example of issue 24, item 6, through the real apply path.

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/storage"
)

func defaultBreaker() storage.Breaker {
	md := config.Default().Safeguards.MaxDeprovisions
	return storage.Breaker{Count: md.Count, Percent: md.Percent, Floor: md.Floor, Window: md.Window}
}

// orgStore opens a store with breaker b, holders active users of org_1
// holding a mapped badge (billing) and dormant deactivated accounts.
func orgStore(t *testing.T, b storage.Breaker, holders, dormant int) *storage.Store {
	t.Helper()
	st := MustOpen(t, storage.Options{NoSync: true, Safeguards: storage.Safeguards{MaxDeprovisions: b}})
	var bodies [][]byte
	for i := range holders {
		u := usr(fmt.Sprintf("u%04d", i), "A", "active")
		u["roles"] = []map[string]string{{"slug": "billing"}}
		bodies = append(bodies, ev(fmt.Sprintf("c%04d", i), "dsync.user.created", 0, u))
	}
	for i := range dormant {
		bodies = append(bodies, ev(fmt.Sprintf("z%04d", i), "dsync.user.created", 0, usr(fmt.Sprintf("z%04d", i), "Z", "inactive")))
	}
	mustApply(t, st, bodies...)
	return st
}

// deactivate deactivates users u0000.. u(n-1), one event each, spaced by
// every (from second 10), and reports whether any was deferred (the
// organisation paused).
func deactivate(t *testing.T, st *storage.Store, n int, every time.Duration) bool {
	t.Helper()
	base := time.Date(2024, 1, 1, 0, 0, 10, 0, time.UTC)
	paused := false
	for i := range n {
		b := evAt(fmt.Sprintf("d%04d", i), "dsync.user.updated", base.Add(time.Duration(i)*every), usr(fmt.Sprintf("u%04d", i), "A", "inactive"))
		if out := mustApply(t, st, b); out[0] == storage.Deferred {
			paused = true
		}
	}
	return paused
}

func TestBreakerDefaultsPauseAMajorityOfASmallOrganisationAndIgnoreDormantAccounts(t *testing.T) {
	for _, c := range []struct {
		name                   string
		holders, dormant, lose int
		every                  time.Duration
		pause                  bool
	}{
		{"12 of 20 pauses", 20, 0, 12, time.Second, true},
		{"3 of 20 does not pause", 20, 0, 3, time.Second, false},
		{"20 of 80 does not pause", 80, 0, 20, time.Second, false},
		{"26 of 1000 pauses", 1000, 0, 26, time.Second, true},
		{"20 of 1000 does not pause", 1000, 0, 20, time.Second, false},
		{"55 of 60 active beside 600 dormant pauses", 60, 600, 55, time.Second, true},
		{"a trickle of one every 90s through 18 of 20 never pauses", 20, 0, 18, 90 * time.Second, false},
		{"a trickle of one every 90s through 90 of 100 never pauses", 100, 0, 90, 90 * time.Second, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := orgStore(t, defaultBreaker(), c.holders, c.dormant)
			if got := deactivate(t, st, c.lose, c.every); got != c.pause {
				t.Fatalf("paused = %v, want %v (limit %s)", got, c.pause, defaultBreaker().Describe(c.holders))
			}
		})
	}
}

// The limit's formula, at a glance: the README's table.
func TestBreakerLimitTable(t *testing.T) {
	b := defaultBreaker()
	for _, c := range []struct {
		holders int
		limit   float64
	}{{0, 10}, {8, 10}, {20, 10}, {30, 15}, {40, 20}, {50, 25}, {80, 25}, {1000, 25}} {
		if got := b.Limit(c.holders); got != c.limit {
			t.Errorf("Limit(%d) = %g, want %g", c.holders, got, c.limit)
		}
	}
	if got := (storage.Breaker{Count: 25}).Limit(1000); got != 25 {
		t.Errorf("count only: %g", got)
	}
	if got := (storage.Breaker{Percent: 10}).Limit(25); got != 2.5 {
		t.Errorf("percent only, no floor: %g", got)
	}
}

// A revocation wave: most users lose a mapped badge but keep others (and
// the default badge); the organisation pauses, the hold names the badge
// and the count.
func TestBreakerCatchesARevocationWave(t *testing.T) {
	st := MustOpen(t, storage.Options{NoSync: true, Safeguards: storage.Safeguards{MaxDeprovisions: defaultBreaker()}})
	eng := grp("g_eng", "Engineering")
	var bodies [][]byte
	for i := range 20 {
		u := usr(fmt.Sprintf("u%02d", i), "A", "active")
		u["roles"] = []map[string]string{{"slug": "billing"}}
		bodies = append(bodies, ev(fmt.Sprintf("c%02d", i), "dsync.group.user_added", 1, mem(u, eng)))
	}
	mustApply(t, st, bodies...)
	// The IdP empties the roles of 12 of them: they keep engineer and member.
	var outs []storage.Outcome
	for i := range 12 {
		u := usr(fmt.Sprintf("u%02d", i), "A", "active")
		u["roles"] = []any{}
		outs = append(outs, mustApply(t, st, ev(fmt.Sprintf("r%02d", i), "dsync.user.updated", 10+i, u))...)
	}
	if !slices.Contains(outs, storage.Deferred) {
		t.Fatalf("outcomes %v: 12 of 20 losing billing did not pause", outs)
	}
	hs := openHolds(t, st)
	if len(hs) != 1 || hs[0].Kind != storage.HoldMassDeprovision || hs[0].Badge != "billing" || hs[0].Users != 11 {
		t.Fatalf("holds = %+v, want a mass_deprovision hold naming billing and 11 users", hs)
	}
	// plan --org previews the deferred revocations; resume applies them.
	plan, err := st.Resume("org_1", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Organizations) != 1 || len(plan.Organizations[0].Losses["billing"]) != 2 {
		t.Fatalf("preview = %+v, want billing lost by the 2 deferred users", plan)
	}
	if !slices.Contains(badgesOf(t, st, "u11"), "billing") {
		t.Fatal("the preview changed the store")
	}
	if _, err := st.Resume("org_1", false); err != nil {
		t.Fatal(err)
	}
	if got := badgesOf(t, st, "u11"); slices.Contains(got, "billing") || !slices.Contains(got, "engineer") {
		t.Fatalf("u11 after resume = %v, want engineer kept, billing gone", got)
	}
}

// evAt builds an event envelope created at at.
func evAt(id, typ string, at time.Time, data any) []byte {
	b, err := json.Marshal(map[string]any{"id": id, "event": typ, "created_at": at.Format(time.RFC3339Nano), "data": data})
	if err != nil {
		panic(err)
	}
	return b
}
