package events

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Raw is one undecoded event read from a fixture file, with where it came from.
type Raw struct {
	// Source is "file:line" of the event's first byte, for error messages.
	Source string
	Data   []byte
}

// ReadFixtures reads events from paths, in order. A path may be a file with
// one JSON event, a JSON array of events, or NDJSON (one event per line), or a
// directory, meaning its files (not subdirectories) in name order. A file
// that is none of these is one Raw per line so that each bad line is reported
// where it is.
func ReadFixtures(paths ...string) ([]Raw, error) {
	var out []Raw
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			raws, err := readFixtureFile(p)
			if err != nil {
				return nil, err
			}
			out = append(out, raws...)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, err
		}
		var names []string
		for _, e := range entries {
			if !e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
				names = append(names, e.Name())
			}
		}
		sort.Strings(names)
		for _, n := range names {
			raws, err := readFixtureFile(filepath.Join(p, n))
			if err != nil {
				return nil, err
			}
			out = append(out, raws...)
		}
	}
	return out, nil
}

func readFixtureFile(path string) ([]Raw, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseFixture(path, data)
}

// ParseFixture splits data, read from the file (or stream) named name, into
// events as ReadFixtures does a file's: one JSON event, a JSON array of
// events, or NDJSON.
func ParseFixture(name string, data []byte) ([]Raw, error) {
	path := name
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, nil
	}
	// A JSON array of events.
	if trimmed[0] == '[' && json.Valid(trimmed) {
		if out, ok := readArray(path, data); ok {
			return out, nil
		}
	}
	// One JSON value spanning the whole file.
	if json.Valid(trimmed) {
		line := 1 + bytes.Count(data[:bytes.Index(data, trimmed[:1])], []byte("\n"))
		return []Raw{{Source: fmt.Sprintf("%s:%d", path, line), Data: trimmed}}, nil
	}
	// NDJSON: one event per non-blank line.
	var out []Raw
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	n := 0
	for sc.Scan() {
		n++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		out = append(out, Raw{Source: fmt.Sprintf("%s:%d", path, n), Data: append([]byte(nil), line...)})
	}
	return out, sc.Err()
}

// readArray splits a JSON array of events into its elements, each named by
// the line it starts on. It reports false when data is not an array.
func readArray(path string, data []byte) ([]Raw, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return nil, false
	}
	var out []Raw
	for dec.More() {
		var m json.RawMessage
		if err := dec.Decode(&m); err != nil {
			return nil, false
		}
		start := int(dec.InputOffset()) - len(m)
		line := 1 + bytes.Count(data[:start], []byte("\n"))
		out = append(out, Raw{Source: fmt.Sprintf("%s:%d", path, line), Data: m})
	}
	return out, true
}
