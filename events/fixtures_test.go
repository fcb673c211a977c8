package events_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/dsyncd/dsyncd/events"
)

// TestReadFixturesNamesFileAndLine: every event, whatever the file's layout,
// is named by its file and the line it starts on, so replay can say where an
// invalid one is.
func TestReadFixturesNamesFileAndLine(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, body string
		want       []string // sources, relative to the file
	}{
		{"array.json", "[\n {\"id\":\"e1\"},\n {\"id\":\"e2\",\n  \"x\":[1,2]},\n\n {\"id\":\"e3\"}\n]\n", []string{":2", ":3", ":6"}},
		{"inline-array.json", `[{"id":"e1"},{"id":"e2"}]`, []string{":1", ":1"}},
		{"single.json", "\n\n{\n  \"id\": \"e1\"\n}\n", []string{":3"}},
		{"stream.ndjson", "{\"id\":\"e1\"}\n\n{\"id\":\"e2\", broken\n{\"id\":\"e3\"}\n", []string{":1", ":3", ":4"}},
		{"broken-array.json", "[\n{\"id\":\"e1\"},\n{broken\n", []string{":1", ":2", ":3"}},
		{"empty.json", " \n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := write(tc.name, tc.body)
			raws, err := events.ReadFixtures(p)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range raws {
				got = append(got, r.Source[len(p):])
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("sources = %q, want %q", got, tc.want)
			}
		})
	}
}
