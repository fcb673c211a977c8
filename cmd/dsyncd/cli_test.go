package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestUsageErrorsExit2WithTheUsageLine: a command line that cannot run
// exits 2 and prints the command's usage line; a runtime error exits 1.
func TestUsageErrorsExit2WithTheUsageLine(t *testing.T) {
	cfg := writeFile(t, t.TempDir(), "c.yaml", "data_dir: "+t.TempDir()+"\nhttp:\n  listen: 127.0.0.1:1\nwebhook:\n  secrets: [s]\n"+adminMappingYAML)
	for _, tc := range []struct {
		name  string
		args  []string
		code  int
		usage string // the usage line printed, for a usage error
		say   string
	}{
		{"an unknown command", []string{"frobnicate"}, 2, "dsyncd [flags]", `unknown command "frobnicate"`},
		{"an unknown subcommand", []string{"dlq", "frob", "--config", cfg}, 2, "dsyncd dlq (list", `unknown command "frob"`},
		{"an unknown flag", []string{"holds", "--frob"}, 2, "dsyncd holds [--all]", "unknown flag: --frob"},
		{"a missing argument", []string{"why", "u1", "--config", cfg}, 2, "dsyncd why USER BADGE", "accepts 2 arg(s), received 1"},
		{"an extra argument", []string{"version", "extra"}, 2, "dsyncd version", `unknown command "extra"`},
		{"no event path", []string{"replay", "--config", cfg}, 2, "dsyncd replay", "requires at least 1 arg"},
		{"a bad flag value", []string{"holds", "--format", "yaml", "--config", cfg}, 2, "dsyncd holds", `"yaml" is not text or json`},
		{"flags that exclude each other", []string{"holds", "--offline", "--server", "http://x", "--config", cfg}, 2, "dsyncd holds", "exclude each other"},
		{"a dead letter id that is not a number", []string{"dlq", "show", "x", "--config", cfg}, 2, "dsyncd dlq show ID", `dead letter id "x"`},
		{"a missing configuration file is a runtime error", []string{"holds", "--config", "/nonexistent/dsyncd.yaml"}, 1, "", "/nonexistent/dsyncd.yaml"},
		{"a refused connection is a runtime error", []string{"send", "--config", cfg, "../../testdata/try/"}, 1, "", "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d\n%s%s", code, tc.code, out, errOut)
			}
			if !strings.Contains(errOut, tc.say) {
				t.Errorf("stderr lacks %q:\n%s", tc.say, errOut)
			}
			if hasUsage := strings.Contains(errOut, "Usage: "); hasUsage != (tc.usage != "") {
				t.Errorf("usage line printed: %v, want %v:\n%s", hasUsage, tc.usage != "", errOut)
			} else if tc.usage != "" && !strings.Contains(errOut, "Usage: "+tc.usage) {
				t.Errorf("stderr lacks the usage line %q:\n%s", tc.usage, errOut)
			}
		})
	}
}

// TestEveryFormatFlagSpeaksTextAndJSON: every command's --format takes text
// and json, and table (the old name of text) as text.
func TestEveryFormatFlagSpeaksTextAndJSON(t *testing.T) {
	root := (&app{}).rootCommand()
	var with []string
	var walk func(prefix string, cmds []*cobra.Command)
	walk = func(prefix string, cmds []*cobra.Command) {
		for _, c := range cmds {
			if f := c.Flag("format"); f != nil {
				with = append(with, prefix+c.Name())
				if f.Value.Type() != "text|json" || f.DefValue != "text" {
					t.Errorf("%s%s --format: type %s, default %s; want text|json, text", prefix, c.Name(), f.Value.Type(), f.DefValue)
				}
				for in, want := range map[string]string{"text": "text", "table": "text", "json": "json"} {
					if err := f.Value.Set(in); err != nil || f.Value.String() != want {
						t.Errorf("%s%s --format %s: %v, %q", prefix, c.Name(), in, err, f.Value.String())
					}
				}
			}
			walk(prefix+c.Name()+" ", c.Commands())
		}
	}
	walk("", root.Commands())
	for _, want := range []string{"holds", "audit", "why", "dlq list", "backup", "rebuild", "check-config", "plan", "apply", "resume", "reconcile"} {
		found := false
		for _, w := range with {
			found = found || w == want
		}
		if !found {
			t.Errorf("%s has no --format (commands with one: %v)", want, with)
		}
	}
	// The old spelling still works end to end.
	cfg := writeFile(t, t.TempDir(), "c.yaml", "webhook:\n  secrets: [s]\n"+adminMappingYAML)
	for _, f := range []string{"table", "text"} {
		if code, out, errOut := runCLI(t, "check-config", "--config", cfg, "--format", f); code != 0 || !strings.HasSuffix(strings.TrimSpace(out), ": OK") {
			t.Errorf("check-config --format %s: exit %d %s%s", f, code, out, errOut)
		}
	}
	code, out, _ := runCLI(t, "check-config", "--config", cfg, "--format", "json")
	var v map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil {
		t.Errorf("check-config --format json: exit %d %s", code, out)
	}
}

// TestReplayOfNothingFails: a folder holding only folders, an empty folder
// or file, or empty standard input is not "applied 0": replay says no events
// were found and exits 1. Standard input ("-") is read like a file.
func TestReplayOfNothingFails(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir, "c.yaml", "data_dir: "+filepath.Join(dir, "data")+"\n"+adminMappingYAML)
	folders := filepath.Join(dir, "events")
	mustf(t, os.MkdirAll(filepath.Join(folders, "2026-01"), 0o755), "mkdir")
	writeFile(t, filepath.Join(folders, "2026-01"), "e.json", readString(t, "../../testdata/try/3_group_created.json"))
	emptyDir := filepath.Join(dir, "empty")
	mustf(t, os.MkdirAll(emptyDir, 0o755), "mkdir")
	emptyFile := writeFile(t, dir, "empty.ndjson", "\n\n")
	for _, tc := range []struct {
		name, stdin string
		args        []string
		code        int
		say         string
	}{
		{"a folder of folders", "", []string{folders}, 1, folders + ": no events found: it holds only folders (2026-01), whose files are not read"},
		{"an empty folder", "", []string{emptyDir}, 1, emptyDir + ": no events found: the folder is empty"},
		{"an empty file", "", []string{emptyFile}, 1, emptyFile + ": no events found"},
		{"empty standard input", "", []string{"-"}, 1, "standard input: no events found"},
		{"standard input", readString(t, "../../testdata/try/2_users_created.ndjson"), []string{"-"}, 0, ""},
		{"the folder's folder", "", []string{filepath.Join(folders, "2026-01")}, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLIStdin(tc.stdin, append([]string{"replay", "--config", cfg}, tc.args...)...)
			if code != tc.code || !strings.Contains(errOut, tc.say) {
				t.Errorf("exit %d, want %d; stderr %q, want %q", code, tc.code, errOut, tc.say)
			}
			if tc.code != 0 && strings.Contains(out, "applied") {
				t.Errorf("reported counts for nothing: %s", out)
			}
			if tc.code == 0 && !strings.Contains(out, "applied ") {
				t.Errorf("no counts: %s", out)
			}
		})
	}
}
