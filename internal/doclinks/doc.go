// Package doclinks checks the repository's own documents: its test fails
// when a relative link in README.md, BENCHMARKS.md, deploy/README.md or
// docs/*.md does not resolve to a file inside the repository (a link to
// ../shared or any path outside it included), or names a heading anchor the
// target Markdown file does not have.
package doclinks
