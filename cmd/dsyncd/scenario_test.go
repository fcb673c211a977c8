package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/storage"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestScenarios replays each testdata/scenarios/<name>/events.ndjson with its
// config.yaml through `dsyncd replay` and `dsyncd export`, and compares with
// export.golden.json and replay.golden.txt. Unless the scenario is marked
// ORDERED (safeguards depend on delivery order by design), the same events
// shuffled and duplicated must export byte-identical. Then the events are
// posted, signed, to a real `serve`, whose /v1/export must match too.
func TestScenarios(t *testing.T) {
	dirs, err := filepath.Glob("../../testdata/scenarios/*")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no scenarios: %v", err)
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			cfgPath := filepath.Join(dir, "config.yaml")
			evPath := filepath.Join(dir, "events.ndjson")
			tmp := t.TempDir()

			db := filepath.Join(tmp, "inorder.db")
			code, counts, stderr := runCLI(t, "replay", "--config", cfgPath, "--db", db, evPath)
			if code != 0 {
				t.Fatalf("replay exit %d: %s", code, stderr)
			}
			golden(t, filepath.Join(dir, "replay.golden.txt"), []byte(counts))
			code, export, stderr := runCLI(t, "export", "--config", cfgPath, "--db", db)
			if code != 0 {
				t.Fatalf("export exit %d: %s", code, stderr)
			}
			want := golden(t, filepath.Join(dir, "export.golden.json"), []byte(export))

			if _, err := os.Stat(filepath.Join(dir, "ORDERED")); err != nil {
				lines := readNDJSON(t, evPath)
				for seed := uint64(1); seed <= 3; seed++ {
					shuffled := shuffleWithDuplicates(lines, seed)
					p := writeFile(t, tmp, "shuffled.ndjson", string(bytes.Join(shuffled, []byte("\n"))))
					sdb := filepath.Join(tmp, "shuffled.db")
					_ = os.Remove(sdb)
					if code, _, stderr := runCLI(t, "replay", "--config", cfgPath, "--db", sdb, p); code != 0 {
						t.Fatalf("shuffled replay exit %d: %s", code, stderr)
					}
					_, got, _ := runCLI(t, "export", "--config", cfgPath, "--db", sdb)
					if got != string(want) {
						t.Fatalf("seed %d: shuffled, duplicated delivery exports differently from the in-order golden", seed)
					}
				}
			}

			cfg, err := config.Load(cfgPath, nil)
			mustf(t, err, "load %s", cfgPath)
			cfg.DataDir = filepath.Join(tmp, "serve")
			cfg.HTTP.Listen = "127.0.0.1:0"
			cfg.Webhook.Secrets = []string{testSecret}
			d := startDaemon(t, cfg, nil)
			for _, line := range readNDJSON(t, evPath) {
				postSigned(t, d, line)
			}
			waitApplied(t, d)
			if got := storage.CanonicalExport(apiGetT(t, d, "/v1/export")); !bytes.Equal(got, want) {
				t.Fatalf("serve export differs from the golden:\n%s", got)
			}
			checkFeedFoldsToExport(t, d)
		})
	}
}

// checkFeedFoldsToExport follows the daemon's /v1/changes from 0, checks
// the seqs follow each other, folds the records by user id and compares
// with /v1/export's users, and its change_seq with the feed's last seq.
func checkFeedFoldsToExport(t *testing.T, d *daemon) {
	t.Helper()
	var export struct {
		ChangeSeq uint64               `json:"change_seq"`
		Users     []storage.ExportUser `json:"users"`
	}
	mustf(t, json.Unmarshal(apiGetT(t, d, "/v1/export"), &export), "decode export")
	folded := map[string]storage.ExportUser{}
	var after uint64
	for {
		var page struct {
			Changes []storage.Change `json:"changes"`
			Next    uint64           `json:"next"`
		}
		mustf(t, json.Unmarshal(apiGetT(t, d, fmt.Sprintf("/v1/changes?after=%d&limit=50", after)), &page), "decode changes")
		for _, c := range page.Changes {
			if c.Seq != after+1 {
				t.Fatalf("change %d follows %d: a gap", c.Seq, after)
			}
			after = c.Seq
		}
		storage.FoldChanges(folded, page.Changes)
		if len(page.Changes) == 0 {
			break
		}
		if page.Next != after {
			t.Fatalf("next %d, last change %d", page.Next, after)
		}
	}
	if after != export.ChangeSeq {
		t.Fatalf("the feed ends at %d, the export says change_seq %d", after, export.ChangeSeq)
	}
	if len(folded) != len(export.Users) {
		t.Fatalf("folded feed has %d users, the export %d", len(folded), len(export.Users))
	}
	for _, u := range export.Users {
		if got := folded[u.ID]; !reflect.DeepEqual(got, u) {
			t.Fatalf("user %s: folded feed %+v, export %+v", u.ID, got, u)
		}
	}
}

func shuffleWithDuplicates(lines [][]byte, seed uint64) [][]byte {
	r := rand.New(rand.NewPCG(seed, seed))
	out := append([][]byte(nil), lines...)
	for _, l := range lines {
		if r.IntN(100) < 20 {
			out = append(out, l)
		}
	}
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// golden compares got with the file at path (rewriting it with -update) and
// returns the golden content.
func golden(t *testing.T, path string, got []byte) []byte {
	t.Helper()
	if *update {
		mustf(t, os.WriteFile(path, got, 0o644), "update %s", path)
		return got
	}
	want, err := os.ReadFile(path)
	mustf(t, err, "read golden (run go test ./cmd/dsyncd -run TestScenarios -update)")
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from the golden:\n got: %s\nwant: %s", filepath.Base(path), got, want)
	}
	return want
}
