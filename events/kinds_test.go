package events

import (
	"path/filepath"
	"testing"
)

// Every WorkOS example of a handled type decodes into the payload its Kind
// names, and its Peek finds the directory Decode finds.
func TestKindsDecodeTheWorkOSExamplesIntoTheirPayload(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join(eventsDir, "dsync_*.json"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[Type]bool{}
	for _, p := range paths {
		raws, err := ReadFixtures(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range raws {
			ev, err := Decode(r.Data)
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			kind, ok := KindOf(ev.Type)
			if !ok {
				t.Fatalf("%s: %s is not in the table of kinds", p, ev.Type)
			}
			seen[ev.Type] = true
			got := map[Payload]bool{
				PayloadDirectory:  ev.Directory != nil,
				PayloadUser:       ev.User != nil && ev.Group == nil,
				PayloadGroup:      ev.Group != nil && ev.User == nil,
				PayloadMembership: ev.User != nil && ev.Group != nil,
			}
			for pl, set := range got {
				if set != (pl == kind.Payload) {
					t.Errorf("%s (%s): payload %s set=%v, want only %s", p, ev.Type, pl, set, kind.Payload)
				}
			}
			h, err := Peek(r.Data)
			if err != nil || h.DirectoryID != ev.DirectoryID {
				t.Errorf("%s: Peek = %+v, %v; Decode found directory %q", p, h, err, ev.DirectoryID)
			}
		}
	}
	for _, typ := range HandledTypes() {
		if !seen[typ] {
			t.Errorf("no WorkOS example of %s in %s", typ, eventsDir)
		}
	}
}

func TestTheTableOfKindsIsWhatHandledSays(t *testing.T) {
	types := HandledTypes()
	if len(types) != len(Kinds()) {
		t.Fatalf("HandledTypes has %d types, the table %d", len(types), len(Kinds()))
	}
	for i, k := range Kinds() {
		if k.Type != types[i] || !k.Type.Handled() || k.Payload == 0 || k.Touches == 0 || k.decode == nil {
			t.Errorf("kind %d = %+v: incomplete, or not what HandledTypes lists (%s)", i, k, types[i])
		}
	}
	for _, ignored := range []Type{"dsync.token.created", "connection.activated", ""} {
		if ignored.Handled() {
			t.Errorf("%q is handled; want ignored", ignored)
		}
		if _, ok := KindOf(ignored); ok {
			t.Errorf("KindOf(%q) found a kind", ignored)
		}
	}
}
