package storage_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/dsyncd/dsyncd/storage"
)

// A Plan's events list the outcomes counted, as they always have (a count
// of 0 included: a rejected hold that dropped no event says so); Counts on
// its own (rebuild's report) has every outcome of Apply and invalid.
func TestCountsKeepTheirJSON(t *testing.T) {
	counted := func(set map[storage.Outcome]int, adds ...storage.Outcome) *storage.Counts {
		c := &storage.Counts{}
		for o, n := range set {
			c.Set(o, n)
		}
		for _, o := range adds {
			c.Add(o)
		}
		return c
	}
	for _, tc := range []struct {
		name string
		plan storage.Plan
		want string
	}{
		{"a mapping change has no events", storage.Plan{Organizations: []storage.OrgPlan{}}, `{"organizations":[]}`},
		{"a resume of nothing has empty events", storage.Plan{Organizations: []storage.OrgPlan{}, Applied: counted(nil)}, `{"organizations":[],"events":{}}`},
		{"a rejection that dropped nothing says dropped 0", storage.Plan{Organizations: []storage.OrgPlan{}, Applied: counted(map[storage.Outcome]int{storage.Dropped: 0})},
			`{"organizations":[],"events":{"dropped":0}}`},
		{"a preview lists its outcomes by name", storage.Plan{Organizations: []storage.OrgPlan{}, Applied: counted(nil, storage.Stale, storage.Applied, storage.Applied, storage.WouldPause)},
			`{"organizations":[],"events":{"applied":2,"stale":1,"would_pause":1}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(tc.plan)
			if err != nil || string(b) != tc.want {
				t.Fatalf("json = %s, %v; want %s", b, err, tc.want)
			}
			var back storage.Plan
			if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, tc.plan) {
				t.Fatalf("read back %+v (%v), want %+v", back, err, tc.plan)
			}
		})
	}
	var c storage.Counts
	c.Add(storage.Applied)
	c.Add(storage.Future)
	if b, _ := json.Marshal(c); string(b) != `{"applied":1,"duplicate":0,"stale":0,"ignored":0,"invalid":0,"deferred":0,"future":1}` {
		t.Errorf("Counts json = %s", b)
	}
	if got := c.String(); got != "applied 1, duplicate 0, stale 0, ignored 0, invalid 0, future-dated (not applied) 1" {
		t.Errorf("Counts.String() = %q", got)
	}
}
