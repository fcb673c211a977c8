package queue

import (
	"testing"
	"time"
)

// TestFirstControlFindsTheFirstOfItsKindFromASequence: among events and
// controls of other kinds, FirstControl returns the first control of the
// kind asked at or after the sequence given, and none past the last.
func TestFirstControlFindsTheFirstOfItsKindFromASequence(t *testing.T) {
	q := openQueue(t, Options{StoreDir: t.TempDir()})
	ctx := testCtx(t, 30*time.Second)
	if _, _, found, err := q.FirstControl(ctx, "mapping", 0); err != nil || found {
		t.Fatalf("FirstControl on an empty stream = found %v, %v; want none", found, err)
	}
	if _, err := q.Publish(ctx, "directory_1", "dsync.user.created", "event_1", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := q.PublishControl(ctx, "hold", "control:a", []byte(`{"kind":"hold"}`)); err != nil {
		t.Fatal(err)
	}
	first, err := q.PublishControl(ctx, "mapping", "control:b", []byte(`{"kind":"mapping","n":1}`))
	if err != nil {
		t.Fatal(err)
	}
	second, err := q.PublishControl(ctx, "mapping", "control:c", []byte(`{"kind":"mapping","n":2}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		from      uint64
		wantSeq   uint64
		wantData  string
		wantFound bool
	}{
		{"from the start: the first mapping control", 0, first, `{"kind":"mapping","n":1}`, true},
		{"from the first: itself", first, first, `{"kind":"mapping","n":1}`, true},
		{"past the first: the next one", first + 1, second, `{"kind":"mapping","n":2}`, true},
		{"past the last: none", second + 1, 0, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seq, data, found, err := q.FirstControl(ctx, "mapping", tc.from)
			if err != nil || found != tc.wantFound || seq != tc.wantSeq || string(data) != tc.wantData {
				t.Errorf("FirstControl(mapping, %d) = %d %s %v %v; want %d %s %v", tc.from, seq, data, found, err, tc.wantSeq, tc.wantData, tc.wantFound)
			}
		})
	}
}
