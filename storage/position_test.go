package storage_test

import (
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/storage"
)

func decodeAll(t *testing.T, bodies ...[]byte) []*events.Event {
	t.Helper()
	var evs []*events.Event
	for _, b := range bodies {
		e, err := events.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, e)
	}
	return evs
}

func appliedSeq(t *testing.T, st *storage.Store) (uint64, bool) {
	t.Helper()
	seq, ok, err := st.AppliedSeq()
	if err != nil {
		t.Fatal(err)
	}
	return seq, ok
}

func TestAppliedSeqIsRecordedWithTheStateAndOnlyRises(t *testing.T) {
	st := MustOpen(t, storage.Options{})
	if _, ok := appliedSeq(t, st); ok {
		t.Fatal("a new store has an applied sequence")
	}
	mustApply(t, st, ev("e1", "dsync.user.created", 1, usr("u1", "A", "active")))
	if _, ok := appliedSeq(t, st); ok {
		t.Fatal("Apply without a sequence recorded one")
	}
	if _, err := st.ApplyAt(decodeAll(t, ev("e2", "dsync.user.created", 2, usr("u2", "B", "active"))), 7); err != nil {
		t.Fatal(err)
	}
	if seq, ok := appliedSeq(t, st); !ok || seq != 7 {
		t.Fatalf("applied seq = %d, %v; want 7", seq, ok)
	}
	// A retried event applied after later ones does not move it back.
	if _, err := st.ApplyAt(decodeAll(t, ev("e3", "dsync.user.created", 3, usr("u3", "C", "active"))), 5); err != nil {
		t.Fatal(err)
	}
	if err := st.MarkApplied(6); err != nil {
		t.Fatal(err)
	}
	if seq, _ := appliedSeq(t, st); seq != 7 {
		t.Fatalf("applied seq = %d after older sequences; want 7", seq)
	}
	if err := st.MarkApplied(9); err != nil { // a parked event
		t.Fatal(err)
	}
	if seq, _ := appliedSeq(t, st); seq != 9 {
		t.Fatalf("applied seq = %d after MarkApplied(9); want 9", seq)
	}
}

func TestDamagedStoreFileIsAnErrorNotAPanic(t *testing.T) {
	random := make([]byte, 16<<10)
	_, _ = rand.Read(random)
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		{"random bytes", func(t *testing.T, path string) {
			if err := os.WriteFile(path, random, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"random bytes over the pages after the meta pages", func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt(random, 2*int64(os.Getpagesize())); err != nil {
				t.Fatal(err)
			}
		}},
		{"meta pages zeroed", func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt(make([]byte, 2*os.Getpagesize()), 0); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "dsyncd.db")
			st, err := storage.Open(storage.Options{Path: path, Mapping: testMapping})
			if err != nil {
				t.Fatal(err)
			}
			mustApply(t, st, ev("e1", "dsync.user.created", 1, usr("u1", "A", "active")))
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			tc.damage(t, path)
			st, err = storage.Open(storage.Options{Path: path, Mapping: testMapping})
			if err == nil {
				cerr := st.Check()
				_ = st.Close()
				if cerr == nil {
					t.Fatal("a damaged store opened and passed its check")
				}
				err = cerr
			}
			if !errors.Is(err, storage.ErrDamaged) {
				t.Fatalf("error %v does not wrap ErrDamaged", err)
			}
			t.Logf("%v", err)
		})
	}
}
