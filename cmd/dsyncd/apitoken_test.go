package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/storage"
)

// TestServeCreatesAnAPITokenTheCLIReads: with api.token unset, serve
// creates <data_dir>/api.token (0600, never logged) at its first start and
// keeps it across restarts; the CLI on the host finds it through the
// configuration; a configured api.token wins over the file.
func TestServeCreatesAnAPITokenTheCLIReads(t *testing.T) {
	cfg := testConfig(t)
	logs := &syncBuffer{}
	d := startDaemon(t, cfg, logs)
	path := filepath.Join(cfg.DataDir, "api.token")
	fi, err := os.Stat(path)
	mustf(t, err, "token file")
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %s, want 0600", path, fi.Mode().Perm())
	}
	token := strings.TrimSpace(readString(t, path))
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(token) {
		t.Fatalf("token %q is not 32 random bytes in hex", token)
	}
	if strings.Contains(logs.String(), token) {
		t.Error("the API token was logged")
	}
	if !strings.Contains(logs.String(), path) {
		t.Errorf("the start-up log does not say where the token is: %s", logs)
	}
	cliCfg := writeFile(t, t.TempDir(), "cli.yaml", "data_dir: "+cfg.DataDir+"\nhttp:\n  listen: "+d.Addr()+"\n"+adminMappingYAML)
	if code, out, errOut := runCLI(t, "export", "--config", cliCfg); code != 0 || !strings.Contains(out, `"users"`) {
		t.Fatalf("export through the API with the token file: exit %d\n%s%s", code, out, errOut)
	}
	// Without the token file the CLI says why it had no token.
	otherCfg := writeFile(t, t.TempDir(), "other.yaml", "data_dir: "+t.TempDir()+"\nhttp:\n  listen: "+d.Addr()+"\n"+adminMappingYAML)
	code, _, errOut := runCLI(t, "holds", "--config", otherCfg)
	if code != 1 || !strings.Contains(errOut, "HTTP 401") || !strings.Contains(errOut, "api.token is unset") {
		t.Errorf("holds without a token: exit %d, %s; want 1, a 401 and why there was no token", code, errOut)
	}
	mustf(t, d.Close(), "close")

	// A restart keeps the token; a configured api.token wins.
	d2 := startDaemon(t, cfg, nil)
	if got := strings.TrimSpace(readString(t, path)); got != token || d2.apiToken != token {
		t.Errorf("after a restart the token changed: file %q, serve %q", got, d2.apiToken)
	}
	mustf(t, d2.Close(), "close")
	cfg.API.Token = "configured-token"
	d3 := startDaemon(t, cfg, nil)
	if _, err := apiGet(t.Context(), "http://"+d3.Addr(), "/v1/export", token); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("the file's token with api.token set: %v, want 401", err)
	}
	if _, err := apiGet(t.Context(), "http://"+d3.Addr(), "/v1/export", "configured-token"); err != nil {
		t.Errorf("api.token: %v", err)
	}
}

// TestCrossSiteRequestsChangeNothing: what a web page open in a browser on
// the host can send to /v1 (a form post to approve a hold, a read through a
// name rebound to 127.0.0.1) is refused and changes nothing.
func TestCrossSiteRequestsChangeNothing(t *testing.T) {
	d := startDaemon(t, testConfig(t), nil)
	ev := &opsEvents{at: time.Now()}
	for _, b := range [][]byte{
		ev.group("ev_group", "g_admins", "App Admins"), ev.user("ev_u1", "u1"),
		ev.member("user_added", "ev_add_u1", "u1", "g_admins", "App Admins"),
		ev.member("user_removed", "ev_rm_u1", "u1", "g_admins", "App Admins"),
	} {
		postSigned(t, d, b)
	}
	waitApplied(t, d)
	openHolds := func() int {
		hs, err := d.st.Holds(true)
		mustf(t, err, "holds")
		return len(hs)
	}
	opsEventually(t, "the last-admin hold", func() bool { return openHolds() == 1 })
	base := "http://" + d.Addr()
	send := func(method, path, host, auth, ct string) int {
		req, err := http.NewRequest(method, base+path, strings.NewReader("confirm=yes"))
		mustf(t, err, "request")
		req.Host = host
		req.Header.Set("Origin", "http://attacker.example")
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		resp, err := httpClient.Do(req)
		mustf(t, err, "%s %s", method, path)
		resp.Body.Close()
		return resp.StatusCode
	}
	host := d.Addr()
	for _, tc := range []struct {
		name                         string
		method, path, host, auth, ct string
		want                         int
	}{
		{"a form post approving the hold", "POST", "/v1/holds/1/approve", host, "", "application/x-www-form-urlencoded", 401},
		{"a text post approving the hold", "POST", "/v1/holds/1/approve", "localhost", "", "text/plain", 401},
		{"a form post with the token", "POST", "/v1/holds/1/approve", host, d.apiToken, "application/x-www-form-urlencoded", 415},
		{"a rebound name approving the hold", "POST", "/v1/holds/1/approve", "attacker.example:8080", "", "application/json", 421},
		{"a rebound name reading the export", "GET", "/v1/export", "attacker.example", "", "", 421},
		{"a rebound name reading the backup", "GET", "/v1/backup", "attacker.example", "", "", 421},
		{"a rebound name replaying dead letters", "POST", "/v1/dlq/replay", "attacker.example", "", "", 421},
	} {
		if got := send(tc.method, tc.path, tc.host, tc.auth, tc.ct); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
		if openHolds() != 1 {
			t.Fatalf("%s changed the holds", tc.name)
		}
	}
	// The operator's JSON request with the token does what the others could not.
	if got := send("POST", "/v1/holds/1/approve", host, d.apiToken, "application/json"); got != 200 {
		t.Fatalf("approve with the token: %d", got)
	}
	var all struct{ Holds []storage.Hold }
	mustf(t, json.Unmarshal(apiGetT(t, d, "/v1/holds?all=true"), &all), "holds")
	if openHolds() != 0 || len(all.Holds) != 1 {
		t.Errorf("after approving: %d open, %+v", openHolds(), all.Holds)
	}
}
