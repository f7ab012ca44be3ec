package docs

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// repoRoot is the repository, seen from this package's directory.
const repoRoot = ".."

// The README and every page under docs/: each link points inside the
// repository, to a file that exists and, with #, to a heading (or an
// anchor) of it. Links to other sites are not used (docs/README.md says
// why), so any http(s) link outside code fails too.
func TestLinks(t *testing.T) {
	files := []string{filepath.Join(repoRoot, "README.md")}
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".md") {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 8 {
		t.Fatalf("found only %v", files)
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links(string(b)) {
			checked++
			if msg := checkLink(root, file, l.target); msg != "" {
				t.Errorf("%s:%d: link %q %s", file, l.line, l.target, msg)
			}
		}
	}
	if checked < 50 {
		t.Errorf("checked only %d links: the link parser lost some", checked)
	}
}

type link struct {
	target string
	line   int
}

var (
	fence      = regexp.MustCompile("^\\s*(```|~~~)")
	codeSpan   = regexp.MustCompile("`[^`]*`")
	comment    = regexp.MustCompile(`(?s)<!--.*?-->`)
	inlineLink = regexp.MustCompile(`\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)`)
	refDef     = regexp.MustCompile(`^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+"[^"]*")?\s*$`)
	href       = regexp.MustCompile(`(?i)\bhref\s*=\s*"([^"]*)"`)
	bareURL    = regexp.MustCompile(`(?i)\b(https?://[^\s)>\]]+)`)
)

// links returns the link targets of a Markdown text, outside code blocks
// and code spans: inline links and images, reference definitions, HTML
// hrefs and bare URLs (which the renderers turn into links).
func links(text string) []link {
	text = comment.ReplaceAllStringFunc(text, func(c string) string { return strings.Repeat("\n", strings.Count(c, "\n")) })
	var out []link
	inFence := false
	for i, line := range strings.Split(text, "\n") {
		if fence.MatchString(line) {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		line = codeSpan.ReplaceAllString(line, "``")
		for _, re := range []*regexp.Regexp{inlineLink, refDef, href} {
			for _, m := range re.FindAllStringSubmatch(line, -1) {
				out = append(out, link{target: m[1], line: i + 1})
			}
		}
		for _, m := range bareURL.FindAllStringSubmatch(inlineLink.ReplaceAllString(line, ""), -1) {
			out = append(out, link{target: m[1], line: i + 1})
		}
	}
	return out
}

// checkLink returns what is wrong with target, a link of file, or "".
func checkLink(root, file, target string) string {
	u, err := url.Parse(target)
	switch {
	case target == "":
		return "is empty"
	case err != nil:
		return fmt.Sprintf("does not parse: %v", err)
	case u.Scheme != "" || u.Host != "":
		return "leaves the repository (links stay inside it; see docs/README.md)"
	case strings.HasPrefix(u.Path, "/"):
		return "is absolute; write it relative to the file"
	}
	dest := file
	if u.Path != "" {
		dest = filepath.Join(filepath.Dir(file), filepath.FromSlash(u.Path))
	}
	abs, err := filepath.Abs(dest)
	if err != nil {
		return err.Error()
	}
	if rel, err := filepath.Rel(root, abs); err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "points outside the repository"
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "points to a file that does not exist"
	}
	if u.Fragment == "" {
		return ""
	}
	if st.IsDir() || !strings.HasSuffix(abs, ".md") {
		return "has an anchor, but its target is not a Markdown file"
	}
	b, err := os.ReadFile(abs)
	if err != nil {
		return err.Error()
	}
	if !anchors(string(b))[u.Fragment] {
		return fmt.Sprintf("points to #%s, which is not a heading of %s", u.Fragment, filepath.Base(abs))
	}
	return ""
}

var (
	heading  = regexp.MustCompile(`^#{1,6}\s+(.*?)\s*#*\s*$`)
	htmlName = regexp.MustCompile(`(?i)<a\s+(?:name|id)\s*=\s*"([^"]+)"`)
)

// anchors returns the anchors a renderer gives the headings of a Markdown
// text, as GitHub makes them: lower case, punctuation dropped except "-"
// and "_", spaces as "-", repeats numbered -1, -2...; and explicit <a
// id/name> anchors.
func anchors(text string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	inFence := false
	for _, line := range strings.Split(text, "\n") {
		if fence.MatchString(line) {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		for _, m := range htmlName.FindAllStringSubmatch(line, -1) {
			out[m[1]] = true
		}
		m := heading.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		slug := slugify(m[1])
		if n := seen[slug]; n > 0 {
			out[fmt.Sprintf("%s-%d", slug, n)] = true
		} else {
			out[slug] = true
		}
		seen[slug]++
	}
	return out
}

func slugify(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_' || r == '-':
			b.WriteRune(r)
		case r == ' ':
			b.WriteRune('-')
		}
	}
	return b.String()
}

// The checker itself finds what it must.
func TestLinkChecker(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("b.md", "# Title\n\n## The `x.y` key\n\n## Twice\n\n## Twice\n\n```\n# not a heading\n```\n")
	a := write("sub/a.md", "x")
	for _, tc := range []struct {
		target string
		ok     bool
	}{
		{"../b.md", true},
		{"../b.md#title", true},
		{"../b.md#the-xy-key", true},
		{"../b.md#twice-1", true},
		{"../b.md#not-a-heading", false},
		{"../b.md#nope", false},
		{"../c.md", false},
		{"../../outside.md", false},
		{"https://example.com/", false},
		{"mailto:x@example.com", false},
		{"/etc/passwd", false},
		{"#", true}, // the top of the page
	} {
		msg := checkLink(dir, a, tc.target)
		if (msg == "") != tc.ok {
			t.Errorf("checkLink(%q) = %q, want ok=%v", tc.target, msg, tc.ok)
		}
	}
	got := links("[a](x.md) and ![i](img.png \"t\") `[no](code.md)` http://bare.example\n```\n[no](fenced.md)\n```\n[r]: ref.md\n<a href=\"h.md\">h</a>\n")
	var targets []string
	for _, l := range got {
		targets = append(targets, l.target)
	}
	if want := "x.md img.png http://bare.example ref.md h.md"; strings.Join(targets, " ") != want {
		t.Errorf("links = %q, want %q", targets, want)
	}
}
