package events

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// scanSeeds are bodies that exercise each way the scanner must step aside.
var scanSeeds = []string{
	`{"id":"e","event":"dsync.user.created","created_at":"2024-01-01T00:00:00Z","data":{"id":"u","directory_id":"d"}}`,
	` {"ID":"e","event":"dsync.user.created"} `,
	`{"id":"e","id":"f","event":"dsync.user.created"}`,
	`{"id":"\u0065","event":"dsync.user.created"}`,
	`{"i\u0064":"e","event":"dsync.user.created"}`,
	`{"id":"é","event":"dsync.user.created"}`,
	`{"id":null,"event":"dsync.user.created","data":null}`,
	`{"id":5,"event":"dsync.user.created"}`,
	`{"id":"e","event":"dsync.group.user_added","data":{"user":{"id":"u","directory_id":"d"},"group":null,"x":[1,-2.5e+3,true,false,null,{"a":[]}]}}`,
	`{"id":"e","event":"dsync.group.user_added","data":{"user":{"id":"u"},"user":{"directory_id":"d"}}}`,
	`{"data":{"id":"a"},"data":{"directory_id":"d"}}`,
	`{"id":"e",}`, `{"id":"e"`, `{"id":"e"} x`, `[]`, `null`, `"x"`, ``, `{"a":01}`, `{"a":1.}`, `{"a":-}`, `{"a":"\x"}`,
	`{"a":"` + "\x01" + `"}`, `{"a":tru}`, `{"a":[1,]}`, `{"a":{"b":1,}}`, `{"a":"\u12"}`, `{"a" 1}`,
}

// FuzzScanAgrees: whenever the scanner accepts a body, the body is valid
// JSON and the scanner's fields are exactly json.Unmarshal's.
func FuzzScanAgrees(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(eventsDir, "*.json"))
	if len(files) == 0 {
		f.Fatal("no example events in " + eventsDir)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		var env envelope
		if json.Unmarshal(b, &env) == nil && len(env.Data) > 0 {
			f.Add([]byte(env.Data))
		}
	}
	for _, s := range append(scanSeeds, dataSeeds...) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkScanAgrees(t, b)
	})
}

// dataSeeds exercise the data scanners.
var dataSeeds = []string{
	`{"id":"u","directory_id":"d","organization_id":null,"email":null,"emails":[{"primary":true,"value":"a@x"},null,{"primary":false,"value":"b@x","type":"work"}],"role":{"slug":"admin"},"roles":[{"slug":"b"},null],"custom_attributes":{"emails":[],"x":{"y":[1]}}}`,
	`{"id":"u","emails":"none","custom_attributes":null,"role":null,"roles":null}`,
	`{"id":"u","emails":[{"primary":"yes"}]}`,
	`{"id":"u","emails":[{"Primary":true}]}`,
	`{"id":"u","emails":[{"value":"a","value":"b"}]}`,
	`{"id":"u","roles":[5]}`,
	`{"id":"u","role":{"slug":null},"first_name":"A","last_name":null,"state":"active","idp_id":"i"}`,
	`{"directory_id":"d","user":{"id":"u"},"group":{"id":"g","name":null,"organization_id":"o"}}`,
	`{"directory_id":"d","user":null,"group":5}`,
	`{"id":"d","organization_id":"o","name":"n","type":"okta scim v2.0","state":"active"}`,
	`{"id":"d","type":null,"state":1}`,
	`{"id":"u","first_name":"José","last_name":"Zoë 山田","email":"jose@x"}`,
	"{\"id\":\"u\",\"first_name\":\"Jos\xe9\"}",
	`{"id":"u","first_name":"Jos\u00e9"}`,
	`{"id":"u","ſtate":"active","Key":1}`,
}

// checkScanData: whenever a data scanner accepts b, json.Unmarshal fills
// the same wire struct identically.
func checkScanData[T any](t *testing.T, b []byte, name string, scan func(*scanner, *T) bool) {
	t.Helper()
	var got, want T
	if !scanData(b, func(s *scanner) bool { return scan(s, &got) }) {
		return
	}
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatalf("%s scanner accepted %q, json.Unmarshal: %v", name, b, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s scanner on %q = %+v, json.Unmarshal = %+v", name, b, got, want)
	}
}

func checkScanAgrees(t *testing.T, b []byte) {
	t.Helper()
	checkScanData(t, b, "user", func(s *scanner, w *wireUser) bool { return s.wireUserObject(0, w) })
	checkScanData(t, b, "group", func(s *scanner, w *wireGroup) bool { return s.wireGroupObject(0, w) })
	checkScanData(t, b, "directory", func(s *scanner, w *wireDirectory) bool { return s.wireDirectoryObject(0, w) })
	checkScanData(t, b, "membership", func(s *scanner, w *wireMembership) bool { return s.wireMembershipObject(0, w) })
	var env, want envelope
	if scanEnvelope(b, &env) {
		if !json.Valid(b) {
			t.Fatalf("scanEnvelope accepted invalid JSON %q", b)
		}
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatalf("scanEnvelope accepted %q, json.Unmarshal: %v", b, err)
		}
		if env.ID != want.ID || env.Event != want.Event || env.CreatedAt != want.CreatedAt || string(env.Data) != string(want.Data) {
			t.Fatalf("scanEnvelope(%q) = %+v, json.Unmarshal = %+v", b, env, want)
		}
	}
	var penv, pwant peekEnvelope
	if scanPeek(b, &penv) {
		if !json.Valid(b) {
			t.Fatalf("scanPeek accepted invalid JSON %q", b)
		}
		if err := json.Unmarshal(b, &pwant); err != nil {
			t.Fatalf("scanPeek accepted %q, json.Unmarshal: %v", b, err)
		}
		if !reflect.DeepEqual(penv, pwant) {
			t.Fatalf("scanPeek(%q) = %+v, json.Unmarshal = %+v", b, penv, pwant)
		}
	}
}

func TestScanAgrees(t *testing.T) {
	for _, s := range append(scanSeeds, dataSeeds...) {
		checkScanAgrees(t, []byte(s))
	}
}

// TestScanTakesTheCommonCase: the scanner must not step aside for the
// events WorkOS sends, or it would only add work.
func TestScanTakesTheCommonCase(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(eventsDir, "*.json"))
	if len(files) == 0 {
		t.Fatal("no example events")
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var env envelope
		var penv peekEnvelope
		if !scanEnvelope(b, &env) || !scanPeek(b, &penv) {
			t.Errorf("%s: the scanner left a WorkOS example to encoding/json", filepath.Base(file))
			continue
		}
		var ok bool
		switch env.Event {
		case DirectoryActivated, DirectoryDeleted:
			ok = scanData(env.Data, func(s *scanner) bool { return s.wireDirectoryObject(0, &wireDirectory{}) })
		case UserCreated, UserUpdated, UserDeleted:
			ok = scanData(env.Data, func(s *scanner) bool { return s.wireUserObject(0, &wireUser{}) })
		case GroupCreated, GroupUpdated, GroupDeleted:
			ok = scanData(env.Data, func(s *scanner) bool { return s.wireGroupObject(0, &wireGroup{}) })
		case GroupUserAdded, GroupUserRemoved:
			ok = scanData(env.Data, func(s *scanner) bool { return s.wireMembershipObject(0, &wireMembership{}) })
		default:
			continue
		}
		if !ok {
			t.Errorf("%s: the scanner left the data of a WorkOS example to encoding/json", filepath.Base(file))
		}
	}
}
