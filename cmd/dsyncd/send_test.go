package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sendConfig is a CLI configuration for send against d, signing with secret.
func sendConfig(t *testing.T, d *daemon, secret string) string {
	t.Helper()
	return writeFile(t, t.TempDir(), "send.yaml", "data_dir: "+d.cfg.DataDir+"\nhttp:\n  listen: "+d.Addr()+
		"\nwebhook:\n  secrets: ["+secret+"]\n"+adminMappingYAML)
}

// runCLIStdin runs the command line in-process with stdin.
func runCLIStdin(stdin string, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestSendSignsPostsAndWaitsUntilApplied(t *testing.T) {
	d := startDaemon(t, testConfig(t), nil)
	cfg := sendConfig(t, d, testSecret)
	code, out, errOut := runCLI(t, "send", "--config", cfg, "../../testdata/try/")
	if code != 0 || !strings.Contains(out, "5 enqueued") || !strings.Contains(out, "applied: all 5 event(s)") {
		t.Fatalf("send: exit %d\n%s%s", code, out, errOut)
	}
	// No waiting for the daemon: send returned once every event was applied.
	export := string(apiGetT(t, d, "/v1/export"))
	for _, email := range []string{"alice@example.com", "bob@example.com"} {
		if !strings.Contains(export, email) {
			t.Errorf("export right after send lacks %s", email)
		}
	}
	// Again, from standard input: duplicates, accepted and already applied.
	ndjson, err := os.ReadFile("../../testdata/try/2_users_created.ndjson")
	mustf(t, err, "read")
	code, out, errOut = runCLIStdin(string(ndjson), "send", "--config", cfg, "-")
	if code != 0 || !strings.Contains(out, "2 duplicate") || !strings.Contains(out, "applied: all 2 event(s)") {
		t.Fatalf("send -: exit %d\n%s%s", code, out, errOut)
	}
}

func TestSendFailsClearly(t *testing.T) {
	d := startDaemon(t, testConfig(t), nil)
	dir := t.TempDir()
	// A user whose email is a number: the receiver runs the worker's own
	// validation and refuses it for good (400), so WorkOS would not retry.
	poison := writeFile(t, dir, "poison.json", `{"id":"event_poison","event":"dsync.user.created","created_at":"2026-01-05T09:00:00Z",`+
		`"data":{"id":"directory_user_p","directory_id":"directory_p","organization_id":"org_p","email":42,"state":"active"}}`)
	empty := filepath.Join(dir, "only-folders")
	mustf(t, os.MkdirAll(filepath.Join(empty, "2026"), 0o755), "mkdir")
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr []string
	}{
		{"a wrong secret is refused, event by event", []string{"--config", sendConfig(t, d, "whsec_wrong"), "../../testdata/try/"}, 1,
			[]string{"refused: ../../testdata/try/1_directory_activated.json:1", "HTTP 401", "bad_signature", "5 of 5 event(s) refused"}},
		{"an event the worker would park is refused with the reason", []string{"--config", sendConfig(t, d, testSecret), "--timeout", "1s", poison}, 1,
			[]string{"refused: " + poison + ":1", "HTTP 400", "data.email: a JSON number where a string belongs", "1 of 1 event(s) refused"}},
		{"no daemon listening", []string{"--config", sendConfig(t, d, testSecret), "--server", "http://127.0.0.1:1", "../../testdata/try/"}, 1,
			[]string{"connection refused", "is dsyncd serve running"}},
		{"a folder of folders has no events", []string{"--config", sendConfig(t, d, testSecret), empty}, 1,
			[]string{"no events found: it holds only folders (2026)"}},
		{"no path is a usage error", []string{"--config", sendConfig(t, d, testSecret)}, 2, []string{"Usage:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, append([]string{"send"}, tc.args...)...)
			if code != tc.code {
				t.Errorf("exit %d, want %d\n%s%s", code, tc.code, out, errOut)
			}
			for _, s := range tc.stderr {
				if !strings.Contains(errOut, s) {
					t.Errorf("stderr lacks %q:\n%s", s, errOut)
				}
			}
		})
	}
}
