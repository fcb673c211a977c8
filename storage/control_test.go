package storage_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/storage"
)

// A control's delivery can come again after later ones (its
// acknowledgement lost, or the consumer restarted at its ack floor). Once
// recorded (MarkControlApplied, as a node does after applying it), the
// store refuses it and changes nothing: an older mapping delivered
// again does not come back into force, a refused decision delivered again
// after the state changed is not taken.
func TestAControlDeliveredAgainIsRefusedAndChangesNothing(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	mustApply(t, st, ev("e1", "dsync.group.user_added", 1, mem(usr("u1", "A", "active"), grp("g_ops", "Ops"))))

	withOps := testMapping
	withOps.Groups = append(slices.Clone(testMapping.Groups), mapping.GroupRule{Name: "Ops", Badges: []mapping.Badge{"ops"}})
	// apply applies c as a node does: then records it (and its seq).
	seq := uint64(0)
	apply := func(c storage.Control) error {
		_, err := st.ApplyControl(c)
		if errors.Is(err, storage.ErrControlApplied) {
			return err
		}
		seq++
		if merr := st.MarkControlApplied(c.ID, seq, time.Time{}); merr != nil {
			t.Fatalf("MarkControlApplied: %v", merr)
		}
		return err
	}
	m1 := storage.Control{ID: "control:m1", Kind: storage.ControlMapping, Mapping: &withOps}
	if err := apply(m1); err != nil {
		t.Fatalf("mapping m1: %v", err)
	}
	if !slices.Contains(badgesOf(t, st, "u1"), "ops") {
		t.Fatal("m1 did not grant ops")
	}
	without := testMapping
	if err := apply(storage.Control{ID: "control:m2", Kind: storage.ControlMapping, Mapping: &without, OnUnmap: "remove"}); err != nil {
		t.Fatalf("mapping m2: %v", err)
	}
	if slices.Contains(badgesOf(t, st, "u1"), "ops") {
		t.Fatal("m2 did not take ops away")
	}
	audit, err := st.Audit(storage.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	changes, err := st.LastChangeSeq()
	if err != nil {
		t.Fatal(err)
	}

	if err := apply(m1); !errors.Is(err, storage.ErrControlApplied) {
		t.Fatalf("m1 delivered again: %v, want ErrControlApplied", err)
	}
	if slices.Contains(badgesOf(t, st, "u1"), "ops") {
		t.Error("m1 delivered again granted ops: the older mapping came back into force")
	}
	if got := st.Mapping(); len(got.Groups) != len(testMapping.Groups) {
		t.Errorf("mapping in force has %d group rules, want m2's %d", len(got.Groups), len(testMapping.Groups))
	}
	after, err := st.Audit(storage.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(audit) {
		t.Errorf("audit trail grew from %d to %d entries", len(audit), len(after))
	}
	if n, err := st.LastChangeSeq(); err != nil || n != changes {
		t.Errorf("change feed at %d (%v), want %d", n, err, changes)
	}

	// A refusal is remembered too.
	resume := storage.Control{ID: "control:r1", Kind: storage.ControlResume, Organization: "org_1"}
	if err := apply(resume); !errors.Is(err, storage.ErrNotPaused) {
		t.Fatalf("resume of an organisation not paused: %v, want ErrNotPaused", err)
	}
	if err := apply(resume); !errors.Is(err, storage.ErrControlApplied) {
		t.Fatalf("refused resume delivered again: %v, want ErrControlApplied", err)
	}
	if got, _, err := st.AppliedSeq(); err != nil || got != seq {
		t.Errorf("applied seq %d (%v), want %d: MarkControlApplied records it", got, err, seq)
	}
}
