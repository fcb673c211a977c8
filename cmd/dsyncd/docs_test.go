package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// The README and docs/ link to each other, to anchors inside them and to
// files of the repository; a link that points nowhere is a broken promise to
// the reader, so every relative link must resolve.

const repoRoot = "../.."

// mdLink matches an inline Markdown link's target: ](target).
var mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// docFiles lists README.md and docs/*.md, relative to the repository root.
func docFiles(t *testing.T) []string {
	t.Helper()
	files := []string{"README.md"}
	more, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	if len(more) == 0 {
		t.Fatal("no docs/*.md: the documentation moved or the glob is wrong")
	}
	for _, m := range more {
		rel, err := filepath.Rel(repoRoot, m)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, rel)
	}
	return files
}

// slug is GitHub's anchor for a heading: lower case, punctuation dropped
// (hyphens and underscores kept), spaces turned into hyphens.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// mdDoc is a Markdown file's anchors and link targets, code blocks skipped.
type mdDoc struct {
	anchors map[string]bool
	links   []mdTarget
}

type mdTarget struct {
	line   int
	target string
}

func parseMarkdown(text string) mdDoc {
	d := mdDoc{anchors: map[string]bool{}}
	seen := map[string]int{}
	fenced := false
	for i, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if fenced {
			continue
		}
		if h, ok := strings.CutPrefix(line, "#"); ok {
			s := slug(strings.TrimSpace(strings.TrimLeft(h, "#")))
			if n := seen[s]; n > 0 {
				d.anchors[s+"-"+strconv.Itoa(n)] = true
			} else {
				d.anchors[s] = true
			}
			seen[s]++
		}
		for _, m := range mdLink.FindAllStringSubmatch(line, -1) {
			d.links = append(d.links, mdTarget{line: i + 1, target: m[1]})
		}
	}
	return d
}

func TestDocsLinksResolve(t *testing.T) {
	files := docFiles(t)
	docs := map[string]mdDoc{}
	read := func(rel string) (mdDoc, bool) {
		if d, ok := docs[rel]; ok {
			return d, true
		}
		b, err := os.ReadFile(filepath.Join(repoRoot, rel))
		if err != nil {
			return mdDoc{}, false
		}
		d := parseMarkdown(string(b))
		docs[rel] = d
		return d, true
	}
	checked := 0
	for _, file := range files {
		d, ok := read(file)
		if !ok {
			t.Fatalf("%s: cannot read", file)
		}
		for _, l := range d.links {
			if strings.Contains(l.target, "://") || strings.HasPrefix(l.target, "mailto:") {
				continue
			}
			checked++
			path, anchor, _ := strings.Cut(l.target, "#")
			target := file
			if path != "" {
				target = filepath.Clean(filepath.Join(filepath.Dir(file), path))
				if strings.HasPrefix(target, "..") {
					t.Errorf("%s:%d: %s leaves the repository", file, l.line, l.target)
					continue
				}
				if _, err := os.Stat(filepath.Join(repoRoot, target)); err != nil {
					t.Errorf("%s:%d: %s: no such file or directory %s", file, l.line, l.target, target)
					continue
				}
			}
			if anchor == "" || !strings.HasSuffix(target, ".md") {
				continue
			}
			td, ok := read(target)
			if !ok {
				t.Errorf("%s:%d: %s: cannot read %s", file, l.line, l.target, target)
				continue
			}
			if !td.anchors[anchor] {
				t.Errorf("%s:%d: %s: %s has no heading with anchor #%s", file, l.line, l.target, target, anchor)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no relative links found: the parser is broken")
	}
}

func TestDocsSlugAndLinksParse(t *testing.T) {
	tests := []struct {
		name, heading, want string
	}{
		{"punctuation dropped", "What a 2xx promises", "what-a-2xx-promises"},
		{"code marks and hyphens", "The `make run`-style commands", "the-make-run-style-commands"},
		{"commas dropped", "Preview, then apply or resume", "preview-then-apply-or-resume"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := slug(tt.heading); got != tt.want {
				t.Errorf("slug(%q) = %q, want %q", tt.heading, got, tt.want)
			}
		})
	}
	d := parseMarkdown("# Top\n## Top\n```\n[x](nowhere.md)\n```\nsee [a](b.md#c) and [d](https://e)\n")
	if !d.anchors["top"] || !d.anchors["top-1"] {
		t.Errorf("anchors = %v, want top and top-1", d.anchors)
	}
	if len(d.links) != 2 || d.links[0].target != "b.md#c" || d.links[0].line != 6 {
		t.Errorf("links = %+v, want b.md#c on line 6 and the https one, none from the code block", d.links)
	}
}

// TestMakeHelpListsEveryTarget holds `make help` to its promise: every target
// of the Makefile has a "## " description, and the pattern the help recipe
// greps for matches every target line (a name with a digit, like bench-e2e,
// once fell through it).
func TestMakeHelpListsEveryTarget(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	helpGrep := regexp.MustCompile(`grep -E '([^']+)' \$\(MAKEFILE_LIST\)`).FindSubmatch(b)
	if helpGrep == nil {
		t.Fatal("Makefile: the help recipe's grep -E '...' $(MAKEFILE_LIST) is gone")
	}
	listed := regexp.MustCompile(string(helpGrep[1]))
	target := regexp.MustCompile(`^[^\s#.=:][^\s=:]*:([^=]|$)`)
	n := 0
	for i, line := range strings.Split(string(b), "\n") {
		if !target.MatchString(line) {
			continue
		}
		n++
		if !listed.MatchString(line) {
			t.Errorf("Makefile:%d: target %q is not listed by make help (no \"## \" description, or the help pattern %q misses its name)",
				i+1, strings.SplitN(line, ":", 2)[0], helpGrep[1])
		}
	}
	if n < 10 {
		t.Fatalf("found only %d targets: the target pattern is broken", n)
	}
}
