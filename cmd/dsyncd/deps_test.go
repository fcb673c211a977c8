package main

import (
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The packages' import rules (docs/architecture.md, "Dependency
// direction"), checked on the source of every package's non-test files
// (tests may use bbolt and NATS to inspect what the code did):
//
//   - only storage imports bbolt;
//   - only queue (which holds the embedded server) imports NATS, besides
//     the soak and load tools, which run and inspect a NATS server of their
//     own, and the example consumer, an example product reading the change
//     stream as any product would;
//   - client, the package products import, imports only the standard
//     library: a product takes in no NATS, bbolt or dsyncd internals;
//   - mapping imports only the standard library, and none of its I/O
//     packages: it is pure.
const (
	bboltPath  = "go.etcd.io/bbolt"
	natsPrefix = "github.com/nats-io/"
)

var natsAllowed = []string{"queue", "cmd/dsyncd-soak", "cmd/dsyncd-load", "cmd/dsyncd-example-consumer"}

// ioPackages are the standard library's packages that reach files, the
// network or the operating system.
var ioPackages = []string{"os", "net", "io/fs", "io/ioutil", "database", "syscall", "path/filepath", "plugin", "log/syslog"}

// importViolations lists, for the Go module rooted at root, every import
// that breaks the rules above, as "file imports path (why)".
func importViolations(root string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); p != root && (n == "testdata" || n == "vendor" || strings.HasPrefix(n, ".") || strings.HasPrefix(n, "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		dir := path.Dir(rel)
		for _, spec := range f.Imports {
			imp, err := strconv.Unquote(spec.Path.Value)
			if err != nil {
				return err
			}
			if why := importRule(dir, imp); why != "" {
				out = append(out, fmt.Sprintf("%s imports %s (%s)", rel, imp, why))
			}
		}
		return nil
	})
	return out, err
}

// importRule says why the package in dir (relative to the module root) may
// not import imp, or "".
func importRule(dir, imp string) string {
	under := func(p, root string) bool { return p == root || strings.HasPrefix(p, root+"/") }
	switch {
	case under(imp, bboltPath) && dir != "storage":
		return "only storage uses bbolt"
	case strings.HasPrefix(imp, natsPrefix) && !slices.ContainsFunc(natsAllowed, func(a string) bool { return under(dir, a) }):
		return "only queue uses NATS; hand out queue types instead"
	case under(dir, "client") && strings.Contains(strings.Split(imp, "/")[0], "."):
		return "client imports only the standard library"
	case dir == "mapping" && strings.Contains(strings.Split(imp, "/")[0], "."):
		return "mapping imports only the standard library"
	case dir == "mapping" && slices.ContainsFunc(ioPackages, func(p string) bool { return under(imp, p) }):
		return "mapping does no I/O"
	}
	return ""
}

// TestImportRules: the module keeps its import rules.
func TestImportRules(t *testing.T) {
	bad, err := importViolations(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Errorf("imports that break the rules of docs/architecture.md:\n  %s", strings.Join(bad, "\n  "))
	}
}

// TestImportRulesCatchViolations: a module whose worker imports JetStream,
// whose server imports bbolt, whose mapping imports os and the project and
// whose client imports the project and zap breaks the rules six times; its
// queue, storage, soak tool and example consumer, and its tests, do not.
func TestImportRulesCatchViolations(t *testing.T) {
	bad, err := importViolations(filepath.Join("testdata", "imports"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"client/client.go imports github.com/dsyncd/dsyncd/events (client imports only the standard library)",
		"client/client.go imports go.uber.org/zap (client imports only the standard library)",
		"mapping/mapping.go imports os (mapping does no I/O)",
		"mapping/mapping.go imports github.com/dsyncd/dsyncd/events (mapping imports only the standard library)",
		"server/server.go imports go.etcd.io/bbolt (only storage uses bbolt)",
		"worker/worker.go imports github.com/nats-io/nats.go/jetstream (only queue uses NATS; hand out queue types instead)",
	}
	if !slices.Equal(bad, want) {
		t.Errorf("violations:\n  %s\nwant:\n  %s", strings.Join(bad, "\n  "), strings.Join(want, "\n  "))
	}
}
