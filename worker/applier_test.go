package worker_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/storage"
	"github.com/dsyncd/dsyncd/worker"
)

// counting is a real store that counts the transactions tried through it.
type counting struct {
	*storage.Store
	tx int
}

func (c *counting) ApplyAt(evs []*events.Event, seq uint64) ([]storage.Outcome, error) {
	c.tx++
	return c.Store.ApplyAt(evs, seq)
}

// userCreated and groupUpdated are events of directory dir_1.
func userCreated(t *testing.T, id string) *events.Event {
	t.Helper()
	return mustDecode(t, `{"id":"e_`+id+`","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"`+id+`","directory_id":"dir_1","state":"active"}}`)
}

func groupUpdated(t *testing.T, id string) *events.Event {
	t.Helper()
	return mustDecode(t, `{"id":"e_`+id+`","event":"dsync.group.updated","created_at":"2024-01-02T00:00:00Z","data":{"id":"`+id+`","directory_id":"dir_1","name":"G"}}`)
}

func mustDecode(t *testing.T, s string) *events.Event {
	t.Helper()
	ev, err := events.Decode([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func openStore(t *testing.T, path string) *storage.Store {
	t.Helper()
	st, err := storage.Open(storage.Options{Path: path, Mapping: rigMapping})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// TestApplyFindsTheEventsAtFaultAndAppliesEveryOther: of a batch of 64
// whose events 9 and 40 the store cannot take, every other event is
// applied, the two are reported in order with their error, the batch's
// highest stream sequence is recorded, and finding them takes a few
// transactions, not one per event.
func TestApplyFindsTheEventsAtFaultAndAppliesEveryOther(t *testing.T) {
	st := &counting{Store: openStore(t, storeWithCorruptGroups(t, "g9", "g40"))}
	var evs []*events.Event
	var seqs []uint64
	for i := range 64 {
		if i == 9 || i == 40 {
			evs = append(evs, groupUpdated(t, fmt.Sprintf("g%d", i)))
		} else {
			evs = append(evs, userCreated(t, fmt.Sprintf("u%d", i)))
		}
		seqs = append(seqs, uint64(100+i))
	}
	var failed []int
	res := worker.Apply(st, evs, seqs, worker.Hooks{Failed: func(i int, err error) {
		if worker.Classify(err) != worker.Park {
			t.Errorf("event %d failed with %v, classified %v, want park", i, err, worker.Classify(err))
		}
		failed = append(failed, i)
	}})
	if res.Err != nil || !res.Split {
		t.Fatalf("Apply: err %v, split %v; want no error, split", res.Err, res.Split)
	}
	if !slices.Equal(failed, []int{9, 40}) {
		t.Fatalf("failed = %v, want [9 40]", failed)
	}
	for i, o := range res.Outcomes {
		want := storage.Applied
		if i == 9 || i == 40 {
			want = ""
		}
		if o != want {
			t.Errorf("outcome %d = %q, want %q", i, o, want)
		}
	}
	for i := range 64 {
		if i == 9 || i == 40 {
			continue
		}
		if _, err := st.User(fmt.Sprintf("u%d", i)); err != nil {
			t.Fatalf("user u%d: %v", i, err)
		}
	}
	if seq, ok, err := st.AppliedSeq(); err != nil || !ok || seq != 163 {
		t.Errorf("applied seq = %d (%v, %v), want 163", seq, ok, err)
	}
	// One try of the batch, then at most two halves per level for each
	// event at fault (log2 64 = 6 levels): far fewer than 64.
	if st.tx > 1+2*2*6 {
		t.Errorf("%d transactions to find 2 events at fault among 64", st.tx)
	}
}

// TestApplyHoldLeavesEventsOut: what Hold holds is neither applied nor
// reported failed; holding everything after the first failure applies the
// batch up to that event, as Replay does.
func TestApplyHoldLeavesEventsOut(t *testing.T) {
	st := openStore(t, storeWithCorruptGroups(t, "g2"))
	evs := []*events.Event{userCreated(t, "u0"), userCreated(t, "u1"), groupUpdated(t, "g2"), userCreated(t, "u3"), userCreated(t, "u4")}
	stopped := false
	var failed []int
	res := worker.Apply(st, evs, nil, worker.Hooks{
		Hold:   func(int) bool { return stopped },
		Failed: func(i int, _ error) { failed, stopped = append(failed, i), true },
	})
	if res.Err != nil || !slices.Equal(failed, []int{2}) {
		t.Fatalf("Apply: err %v, failed %v; want event 2 failed", res.Err, failed)
	}
	if want := []storage.Outcome{storage.Applied, storage.Applied, "", "", ""}; !slices.Equal(res.Outcomes, want) {
		t.Fatalf("outcomes = %q, want %q", res.Outcomes, want)
	}
	if _, err := st.User("u3"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("user u3 = %v, want not applied (held)", err)
	}
}

// TestApplyToAStoreThatCannotBeWrittenAppliesNothingAndBlamesNoEvent: a
// closed store is the store's fault: Apply stops at once with the error,
// classified retry later, and reports no event at fault.
func TestApplyToAStoreThatCannotBeWrittenAppliesNothingAndBlamesNoEvent(t *testing.T) {
	st := openStore(t, t.TempDir()+"/s.db")
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	for _, hold := range []func(int) bool{nil, func(int) bool { return false }} {
		res := worker.Apply(st, []*events.Event{userCreated(t, "u1"), userCreated(t, "u2")}, []uint64{1, 2}, worker.Hooks{
			Hold:   hold,
			Failed: func(i int, err error) { t.Errorf("event %d blamed for %v", i, err) },
		})
		if worker.Classify(res.Err) != worker.RetryLater || slices.ContainsFunc(res.Outcomes, func(o storage.Outcome) bool { return o != "" }) {
			t.Fatalf("Apply to a closed store: err %v, outcomes %q; want retry later, nothing applied", res.Err, res.Outcomes)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		want worker.Verdict
	}{
		{"disk full is retry later", fmt.Errorf("write: %w", syscall.ENOSPC), worker.RetryLater},
		{"read-only file system is retry later", &fs.PathError{Op: "open", Path: "/x", Err: syscall.EROFS}, worker.RetryLater},
		{"permission denied is retry later", fmt.Errorf("open: %w", os.ErrPermission), worker.RetryLater},
		{"a closed store is retry later", fmt.Errorf("apply: %w", storage.ErrClosed), worker.RetryLater},
		{"a record the store cannot decode is park", errors.New("group g1: invalid record"), worker.Park},
		{"no error is neither", nil, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := worker.Classify(c.err); got != c.want {
				t.Errorf("Classify(%v) = %v, want %v", c.err, got, c.want)
			}
		})
	}
}

// TestReplayStopsAtTheFirstEventThatFailsToApply: replay applies every
// event before the failing one, none after, and names it with its file.
func TestReplayStopsAtTheFirstEventThatFailsToApply(t *testing.T) {
	st := openStore(t, storeWithCorruptGroups(t, "g2"))
	raw := func(src, body string) events.Raw { return events.Raw{Source: src, Data: []byte(body)} }
	raws := []events.Raw{
		raw("a.json:1", `{"id":"e1","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"u1","directory_id":"dir_1","state":"active"}}`),
		raw("a.json:2", `{"id":"bad","event":"dsync.group.updated","created_at":"2024-01-02T00:00:00Z","data":{"id":"g2","directory_id":"dir_1","name":"G"}}`),
		raw("a.json:3", `{"id":"e3","event":"dsync.user.created","created_at":"2024-01-03T00:00:00Z","data":{"id":"u3","directory_id":"dir_1","state":"active"}}`),
	}
	c, bad, err := worker.Replay(st, raws)
	if err == nil || !strings.Contains(err.Error(), "a.json:2") || !strings.Contains(err.Error(), "bad") || worker.Classify(err) != worker.Park {
		t.Fatalf("Replay = %v, want an error naming a.json:2 and event bad", err)
	}
	if len(bad) != 0 || c.Applied != 1 {
		t.Fatalf("counts %v, invalid %v; want 1 applied", c, bad)
	}
	if _, err := st.User("u1"); err != nil {
		t.Fatalf("u1 (before the failing event): %v", err)
	}
	if _, err := st.User("u3"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("u3 (after the failing event) = %v, want not applied", err)
	}
}
