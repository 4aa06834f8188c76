package doclinks_test

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

var (
	inlineLink = regexp.MustCompile(`\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	refLink    = regexp.MustCompile(`^\s{0,3}\[[^\]]+\]:\s*(\S+)`)
	inlineCode = regexp.MustCompile("`[^`]*`")
	scheme     = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
)

// links returns the link targets of a Markdown file, outside code blocks and
// code spans, with their line numbers.
func links(t *testing.T, path string) map[int][]string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	out := map[int][]string{}
	inFence := false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		// A code span may be a link's text ([`x`](y)): blank it, keep the rest.
		line = inlineCode.ReplaceAllStringFunc(line, func(s string) string { return strings.Repeat("x", len(s)) })
		for _, m := range inlineLink.FindAllStringSubmatch(line, -1) {
			out[n] = append(out[n], m[1])
		}
		if m := refLink.FindStringSubmatch(line); m != nil {
			out[n] = append(out[n], m[1])
		}
	}
	require.NoError(t, sc.Err())
	return out
}

// anchors returns the GitHub heading anchors of a Markdown file.
func anchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	body, err := os.ReadFile(path)
	require.NoError(t, err)
	out := map[string]bool{}
	inFence := false
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inFence = !inFence
		}
		if inFence || !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127:
				b.WriteRune(r)
			}
		}
		out[b.String()] = true
	}
	return out
}

// check returns one problem per broken relative link in the files (paths
// relative to root).
func check(t *testing.T, root string, files []string) []string {
	t.Helper()
	var problems []string
	for _, file := range files {
		for n, ls := range links(t, filepath.Join(root, file)) {
			for _, target := range ls {
				where := fmt.Sprintf("%s:%d: %s", file, n, target)
				if scheme.MatchString(target) {
					continue // a web address
				}
				pathPart, frag, _ := strings.Cut(target, "#")
				pathPart, _, _ = strings.Cut(pathPart, "?")
				resolved := file
				if pathPart != "" {
					if strings.HasPrefix(pathPart, "/") {
						problems = append(problems, where+": absolute path; link relative to the file")
						continue
					}
					resolved = filepath.ToSlash(filepath.Clean(filepath.Join(filepath.Dir(file), pathPart)))
					if resolved == ".." || strings.HasPrefix(resolved, "../") {
						problems = append(problems, where+": points outside the repository")
						continue
					}
					if _, err := os.Stat(filepath.Join(root, resolved)); err != nil {
						problems = append(problems, where+": no such file in the repository")
						continue
					}
				}
				if frag != "" && strings.HasSuffix(resolved, ".md") && !anchors(t, filepath.Join(root, resolved))[strings.ToLower(frag)] {
					problems = append(problems, where+": no heading #"+frag+" in "+resolved)
				}
			}
		}
	}
	return problems
}

// documents are the repository's own documents the test checks.
func documents(t *testing.T, root string) []string {
	t.Helper()
	files := []string{"README.md", "BENCHMARKS.md", "deploy/README.md"}
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	require.NoError(t, err)
	require.NotEmpty(t, docs)
	for _, d := range docs {
		rel, err := filepath.Rel(root, d)
		require.NoError(t, err)
		files = append(files, filepath.ToSlash(rel))
	}
	var out []string
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(root, f)); err == nil {
			out = append(out, f)
		}
	}
	return out
}

func TestDocumentLinksStayInTheRepository(t *testing.T) {
	root := filepath.Join("..", "..")
	files := documents(t, root)
	require.Contains(t, files, "README.md")
	n := 0
	for _, f := range files {
		for _, ls := range links(t, filepath.Join(root, f)) {
			n += len(ls)
		}
	}
	require.Greater(t, n, 10, "the documents link to each other")
	if p := check(t, root, files); len(p) > 0 {
		t.Fatalf("%d broken links:\n%s", len(p), strings.Join(p, "\n"))
	}
}

// TestBrokenLinksAreFound runs the check on a small tree in testdata with one
// link of each broken kind.
func TestBrokenLinksAreFound(t *testing.T) {
	root := filepath.Join("testdata", "repo")
	got := check(t, root, []string{"README.md", "docs/a.md"})
	require.ElementsMatch(t, []string{
		"README.md:3: ../shared/SPEC.md: points outside the repository",
		"README.md:4: docs/missing.md: no such file in the repository",
		"README.md:5: /etc/passwd: absolute path; link relative to the file",
		"README.md:6: docs/a.md#nowhere: no heading #nowhere in docs/a.md",
		"docs/a.md:5: ../../outside.md: points outside the repository",
	}, got)
}
