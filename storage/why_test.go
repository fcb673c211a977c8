package storage_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/storage"
)

func TestWhyWithoutAuditEntriesSaysWhatTheTrailCanProve(t *testing.T) {
	u := &storage.UserView{ExportUser: storage.ExportUser{ID: "u1", State: "active"}}
	for _, tc := range []struct {
		name      string
		retention time.Duration
		want      string
	}{
		{"a trail kept forever proves the badge was never granted", 0,
			"u1 does not have admin: never granted: no rule of the mapping grants it to this user"},
		{"a pruned trail only proves no recent change", 720 * time.Hour,
			"u1 does not have admin: no rule of the mapping grants it to this user, and the audit trail (kept for 720h) records no change of it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := storage.Explain(u, "admin", nil, nil, tc.retention).Explanation; got != tc.want {
				t.Fatalf("why = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestWhyWritesTheRetentionAsConfigured: store.audit_retention reads as an
// operator wrote it (720h, 1h30m), not as 720h0m0s.
func TestWhyWritesTheRetentionAsConfigured(t *testing.T) {
	u := &storage.UserView{ExportUser: storage.ExportUser{ID: "u1", State: "active"}}
	for d, want := range map[time.Duration]string{
		720 * time.Hour:                      "720h",
		90 * time.Minute:                     "1h30m",
		30 * time.Second:                     "30s",
		time.Hour + 30*time.Second:           "1h0m30s",
		5*time.Minute + 500*time.Millisecond: "5m0.5s",
	} {
		if got := storage.Explain(u, "admin", nil, nil, d).Explanation; !strings.Contains(got, "(kept for "+want+")") {
			t.Errorf("retention %v: %q, want (kept for %s)", d, got, want)
		}
	}
}

// TestWhyOfAnUnknownUserIsNotFound: the API answers it 404 and the CLI "no such user".
func TestWhyOfAnUnknownUserIsNotFound(t *testing.T) {
	st, err := storage.Open(storage.Options{Path: filepath.Join(t.TempDir(), "s.db"),
		Mapping: mapping.Config{AdminBadge: "admin", DefaultBadges: []mapping.Badge{"member"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Why("u_missing", "admin"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Why of an unknown user: %v, want ErrNotFound", err)
	}
}
