package events

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestPeekAgreesWithDecode: for every reference event and every invalid body
// of the decode tests' kind, Peek returns the same id, type and directory, or
// an error of the same class.
func TestPeekAgreesWithDecode(t *testing.T) {
	files, err := filepath.Glob("../testdata/workos/events/*.json")
	if err != nil || len(files) < 10 {
		t.Fatalf("want the reference events in testdata/workos/events, found %d (%v)", len(files), err)
	}
	var bodies [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, b)
	}
	bodies = append(bodies,
		[]byte(`not json`), []byte(`{}`), []byte(`{"event":"dsync.user.created"}`),
		[]byte(`{"id":"e","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z"}`),
		[]byte(`{"id":"e","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"u"}}`),
		[]byte(`{"id":"e","event":"dsync.user.created","created_at":"yesterday","data":{"id":"u","directory_id":"d"}}`),
		[]byte(`{"id":"e","event":"dsync.group.user_added","created_at":"2024-01-01T00:00:00Z","data":{"directory_id":"d","user":{"id":"u"}}}`),
		[]byte(`{"id":"e","event":"dsync.group.user_added","created_at":"2024-01-01T00:00:00Z","data":{"user":{"id":"u","directory_id":"d"},"group":{"id":"g"}}}`),
		[]byte(`{"id":"e","event":"dsync.activated","created_at":"2024-01-01T00:00:00Z","data":{"name":"x"}}`),
		[]byte(`{"id":"e","event":"connection.activated","data":{}}`),
	)
	for _, b := range bodies {
		ev, derr := Decode(b)
		h, perr := Peek(b)
		switch {
		case derr != nil && perr == nil:
			t.Errorf("Decode refused (%v) what Peek accepted: %s", derr, b)
		case derr == nil && perr != nil:
			t.Errorf("Peek refused (%v) what Decode accepted: %s", perr, b)
		case derr != nil:
			if errors.Is(derr, ErrInvalid) != errors.Is(perr, ErrInvalid) {
				t.Errorf("error classes differ: decode %v, peek %v", derr, perr)
			}
		case h.ID != ev.ID || h.Type != ev.Type || (!ev.Ignored() && h.DirectoryID != ev.DirectoryID):
			t.Errorf("Peek = %+v, Decode = %s %s %s", h, ev.ID, ev.Type, ev.DirectoryID)
		}
	}
}

func BenchmarkDecodeMembership(b *testing.B) {
	body, err := os.ReadFile("../testdata/workos/events/dsync_group_user_added.json")
	if err != nil {
		b.Fatal(err)
	}
	b.Run("Decode", func(b *testing.B) {
		for b.Loop() {
			if _, err := Decode(body); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Peek", func(b *testing.B) {
		for b.Loop() {
			if _, err := Peek(body); err != nil {
				b.Fatal(err)
			}
		}
	})
}
