package storage

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/mapping"
)

// TestHandWrittenViewsDecodeAsEncodingJSON: what appendView and
// appendUserChange write decodes to the same values as encoding/json's
// encoding of them, whatever the strings hold.
func TestHandWrittenViewsDecodeAsEncodingJSON(t *testing.T) {
	odd := "q\"uote\\ <b>&amp; \n\t\r\x01 \u2028\u2029 é 日本 \xff\xfe end"
	for _, v := range []ExportUser{
		{ID: "u1", DirectoryID: "d", OrganizationID: "o", State: "active", Groups: []string{}, Badges: []mapping.Badge{}},
		{ID: odd, DirectoryID: odd, OrganizationID: odd, IdpID: odd, Email: odd, FirstName: odd, LastName: odd, State: odd,
			Groups: []string{odd, "g2"}, Badges: []mapping.Badge{"admin", mapping.Badge(odd)}, Deleted: true, HeldBy: 42, MovedTo: odd},
		{ID: "u3", Groups: nil, Badges: nil, HeldBy: 7},
	} {
		var ends [nViewFields]uint32
		got := appendView(nil, &v, &ends)
		if !json.Valid(got) {
			t.Fatalf("invalid JSON: %s", got)
		}
		want, _ := json.Marshal(v)
		var a, b ExportUser
		if err := json.Unmarshal(got, &a); err != nil {
			t.Fatal(err)
		}
		_ = json.Unmarshal(want, &b)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("appendView decodes to\n %+v\nencoding/json to\n %+v", a, b)
		}
		m := encodeMirror(&v)
		view, fields, ok := mirrorView(m)
		if !ok || !bytes.Equal(view, got) || bytes.Join(fields[:], nil) == nil {
			t.Fatalf("mirror: ok %v", ok)
		}
		if joined := append(append([]byte{'{'}, bytes.Join(fields[:], nil)...), '}'); !bytes.Equal(joined, got) {
			t.Fatalf("fields do not cover the view:\n%s\n%s", joined, got)
		}
		if activeView(&fields) != (!v.Deleted && isActiveState(v.State)) {
			t.Fatalf("activeView of %+v", v)
		}
		rec := appendUserChange(nil, 9, time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), ChangeUserUpdated, odd, odd, []string{"email", "state"}, got)
		var c Change
		if err := json.Unmarshal(rec, &c); err != nil {
			t.Fatalf("%s: %v", rec, err)
		}
		if c.Seq != 9 || c.Kind != ChangeUserUpdated || c.User == nil || !reflect.DeepEqual(*c.User, b) || len(c.Changed) != 2 ||
			!c.Time.Equal(time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)) {
			t.Fatalf("record decodes to %+v", c)
		}
	}
}

// TestChangeRecordsNameTheirOrganizationAndUserAsEncodingJSONReadsThem: the
// relay reads each record's organisation and user ids without decoding the
// record; whatever the ids hold and whoever wrote the record, they are the
// ones encoding/json reads.
func TestChangeRecordsNameTheirOrganizationAndUserAsEncodingJSONReadsThem(t *testing.T) {
	odd := "q\"uote\\ \n é \u2028 end"
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	var records [][]byte
	fast := 0
	for _, org := range []string{"org_01", odd, ""} {
		for _, id := range []string{"directory_user_01", odd, ""} {
			for _, dir := range []string{"", "directory_01", odd} {
				for _, changed := range [][]string{nil, {"email"}, {"email", odd, "badges"}} {
					var ends [nViewFields]uint32
					view := appendView(nil, &ExportUser{ID: id, OrganizationID: org, State: "active"}, &ends)
					records = append(records, appendUserChange(nil, 7, at, ChangeUserUpdated, org, dir, changed, view))
				}
			}
		}
	}
	for _, c := range []storedChange{
		{Seq: 8, Time: at, Kind: ChangeHoldOpened, OrganizationID: "org_01", Hold: &Hold{ID: 3, OrganizationID: "org_01"}},
		{Seq: 9, Time: at, Kind: ChangeOrgResumed, OrganizationID: odd},
	} {
		b, _ := json.Marshal(c)
		records = append(records, b)
	}
	// A record of another layout that names a user further in.
	records = append(records, []byte(`{"seq":10,"time":"2026-01-02T03:04:05Z","kind":"x","organization_id":"o","extra":{"user":{"id":"not him"}},"user":{"id":"him"}}`))
	for _, rec := range records {
		var want struct {
			OrganizationID string `json:"organization_id"`
			User           *struct {
				ID string `json:"id"`
			} `json:"user"`
		}
		if err := json.Unmarshal(rec, &want); err != nil {
			t.Fatalf("%s: %v", rec, err)
		}
		wantUser := ""
		if want.User != nil {
			wantUser = want.User.ID
		}
		v := append(make([]byte, 8), rec...)
		rc, err := decodeRawChange(make([]byte, 8), v)
		if err != nil || rc.OrganizationID != want.OrganizationID || rc.UserID != wantUser || !bytes.Equal(rc.JSON, rec) {
			t.Fatalf("%s: read organisation %q, user %q (%v); encoding/json reads %q, %q", rec, rc.OrganizationID, rc.UserID, err, want.OrganizationID, wantUser)
		}
		if _, _, ok := userChangeIDs(rec); ok {
			fast++
		}
	}
	if fast < 9 {
		t.Fatalf("only %d records read without decoding: the plain ids must be", fast)
	}
}
