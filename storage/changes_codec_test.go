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
