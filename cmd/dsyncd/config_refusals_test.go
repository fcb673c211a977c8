package main

// A bad key or value stops start-up with a message naming the key: those
// validation finds, and those only start-up finds (a directory it cannot
// create, an address it cannot bind, a CA file it cannot read).

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// serveWithConfig runs `dsyncd serve --config` on yaml and returns its exit
// code and stderr; a panic is returned as the message "PANIC: …".
func serveWithConfig(t *testing.T, yaml string) (code int, stderr string) {
	t.Helper()
	dir := t.TempDir()
	base := adminMappingYAML
	if !strings.Contains(yaml, "data_dir:") {
		base += "data_dir: " + filepath.Join(dir, "data") + "\n"
	}
	if !strings.Contains(yaml, "http:") {
		base += "http:\n  listen: 127.0.0.1:0\n"
	}
	p := writeFile(t, dir, "c.yaml", base+yaml)
	defer func() {
		if r := recover(); r != nil {
			code, stderr = -1, fmt.Sprintf("PANIC: %v", r)
		}
	}()
	code, _, stderr = runCLI(t, "serve", "--config", p)
	return code, stderr
}

// TestServeRefusesBadValuesNamingTheKey: each bad value stops serve with a
// message that names its key, never a panic.
func TestServeRefusesBadValuesNamingTheKey(t *testing.T) {
	secrets := "webhook:\n  secrets: [s]\n"
	for _, tc := range []struct{ key, yaml string }{
		{"webhook.secrets", "webhook:\n  path: /h\n"},
		{"log.level", secrets + "log:\n  level: loud\n"},
		{"log.format", secrets + "log:\n  format: xml\n"},
		{"webhook.tolerance", secrets[:len(secrets)-1] + "\n  tolerance: 3\n"},
		{"webhook.max_body_bytes", secrets[:len(secrets)-1] + "\n  max_body_bytes: 1MiB\n"},
		{"nats.replicas", secrets + "nats:\n  replicas: 3\n"},
		{"nats.sync_interval", secrets + "nats:\n  sync_interval: soon\n"},
		{"http.lisen", secrets + "http:\n  lisen: x\n"},
		{"webhook.path", secrets[:len(secrets)-1] + "\n  path: hooks\n"},
		{"webhook.path", secrets[:len(secrets)-1] + "\n  path: \"/hooks/{\"\n"},
		{"webhook.path", secrets[:len(secrets)-1] + "\n  path: \"/hooks/a b\"\n"},
		{"webhook.path", secrets[:len(secrets)-1] + "\n  path: \"/hooks/{x}/{x}\"\n"},
		// Values only found bad when start-up uses them.
		{"data_dir", secrets + "data_dir: /proc/dsyncd-no-such\n"},
		{"store.path", secrets + "store:\n  path: /proc/dsyncd-no-such.db\n"},
		{"http.listen", secrets + "http:\n  listen: 256.1.1.1:8080\n"},
		{"nats.tls_ca", secrets + "nats:\n  url: nats://127.0.0.1:1\n  tls_ca: /nonexistent/ca.pem\n"},
	} {
		t.Run(tc.key+" "+strings.ReplaceAll(strings.TrimSpace(tc.yaml[strings.LastIndex(tc.yaml[:len(tc.yaml)-1], "\n")+1:]), " ", "_"), func(t *testing.T) {
			code, stderr := serveWithConfig(t, tc.yaml)
			if code == 0 || !strings.Contains(stderr, tc.key) || strings.HasPrefix(stderr, "PANIC") {
				t.Errorf("serve: exit %d, stderr %q; want a non-zero exit and a message naming %s", code, firstBytes([]byte(stderr), 300), tc.key)
			}
		})
	}
}

// TestCheckConfigRefusesWebhookPathsTheRouterRejects: check-config refuses
// what http.ServeMux would panic on, or redirect WorkOS's POST away from.
func TestCheckConfigRefusesWebhookPathsTheRouterRejects(t *testing.T) {
	for _, p := range []string{"/hooks/{", "/hooks/a b", "/webhooks//workos", "/healthz"} {
		f := writeFile(t, t.TempDir(), "c.yaml", adminMappingYAML+"webhook:\n  secrets: [s]\n  path: \""+p+"\"\n")
		code, out, errOut := runCLI(t, "check-config", "--config", f)
		if code == 0 || !strings.Contains(out+errOut, "webhook.path") {
			t.Errorf("check-config with webhook.path %q: exit %d, output %q; want exit 1 naming webhook.path", p, code, firstBytes([]byte(out+errOut), 200))
		}
	}
}
