package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// alertSeries returns every series the alert tables name with label values
// ("dsyncd_x_total{label=\"v\"}", and each value of label=~"a|b"), from
// README.md and docs/*.md, as "name{label=\"value\"}".
func alertSeries(t *testing.T) []string {
	t.Helper()
	files, _ := filepath.Glob("../../docs/*.md")
	files = append(files, "../../README.md")
	sel := regexp.MustCompile(`(dsyncd_[a-z_]+)\{([a-z_]+)(=~?)"([^"]*)"\}`)
	seen := map[string]bool{}
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		mustf(t, err, "read %s", f)
		for _, m := range sel.FindAllStringSubmatch(string(b), -1) {
			values := []string{m[4]}
			if m[3] == "=~" {
				values = strings.Split(strings.ReplaceAll(m[4], `\|`, "|"), "|")
			}
			for _, v := range values {
				s := m[1] + "{" + m[2] + `="` + v + `"}`
				if !seen[s] {
					seen[s] = true
					out = append(out, s)
				}
			}
		}
	}
	return out
}

// TestAlertedSeriesExistFromStartUp: every label value the documented
// alerts name is exported at 0 by a daemon that has seen nothing, so that
// increase(...) > 0 fires on the first one.
func TestAlertedSeriesExistFromStartUp(t *testing.T) {
	series := alertSeries(t)
	// The parse must find the alerts the README is known to have.
	for _, want := range []string{
		`dsyncd_holds_opened_total{kind="mass_deprovision"}`,
		`dsyncd_webhooks_refused_total{reason="bad_signature"}`,
		`dsyncd_webhooks_refused_total{reason="stale_signature"}`,
		`dsyncd_webhooks_refused_total{reason="queue_unavailable"}`,
		`dsyncd_webhooks_refused_total{reason="unsupported_content_type"}`,
	} {
		found := false
		for _, s := range series {
			found = found || s == want
		}
		if !found {
			t.Fatalf("the alert tables no longer name %s (found %v): update this test", want, series)
		}
	}
	// Polling on (with no events to read), for the poller's series.
	cfg := testConfig(t)
	cfg.WorkOS.APIKey, cfg.WorkOS.Endpoint = reconcileTestKey, newWorkOS(t).URL
	cfg.Events.PollInterval = time.Hour
	d := startDaemon(t, cfg, nil)
	scrape := string(apiGetT(t, d, "/metrics"))
	for _, s := range series {
		if !strings.Contains(scrape, "\n"+s+" 0\n") {
			t.Errorf("a fresh daemon does not export %s 0", s)
		}
	}
	// And the label values no alert names yet, for the same reason.
	for _, s := range []string{`dsyncd_holds_opened_total{kind="last_admin"}`, `dsyncd_webhooks_refused_total{reason="method_not_allowed"}`,
		`dsyncd_events_total{outcome="deferred"}`} {
		if !strings.Contains(scrape, "\n"+s+" 0\n") {
			t.Errorf("a fresh daemon does not export %s 0", s)
		}
	}
}
