package domain

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxFilenameBytes bounds a stored file name (the usual file-system limit).
const MaxFilenameBytes = 255

// maxKeptExtBytes is the longest extension kept whole when a long name is
// shortened.
const maxKeptExtBytes = 16

// SanitizeFilename returns the name to store for an uploaded file: the last
// element of any path the client sent (browsers on Windows may send
// "C:\…\scan.pdf"), without control or invisible formatting characters
// (such as the right-to-left override that disguises "exe" as "pdf"), without
// surrounding spaces or trailing dots, and at most MaxFilenameBytes bytes
// (the stem is shortened, the extension kept).
func SanitizeFilename(name string) (string, error) {
	if strings.TrimSpace(name) == "" {
		return "", ErrNoFilename
	}
	if !utf8.ValidString(name) {
		return "", ErrBadFilename
	}
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == utf8.RuneError {
			return -1
		}
		return r
	}, name)
	name = strings.TrimRightFunc(name, func(r rune) bool { return unicode.IsSpace(r) || r == '.' })
	name = strings.TrimLeftFunc(name, unicode.IsSpace)
	if name == "" || name == "." || name == ".." {
		return "", ErrBadFilename
	}
	if len(name) > MaxFilenameBytes {
		ext := Ext(name)
		if len(ext) > maxKeptExtBytes {
			ext = ""
		}
		stem := name[:len(name)-len(ext)]
		stem = truncateUTF8(stem, MaxFilenameBytes-len(ext))
		name = strings.TrimRightFunc(stem, unicode.IsSpace) + ext
	}
	return name, nil
}

// truncateUTF8 cuts s to at most n bytes without splitting a character.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Ext returns the lower-case extension of name with its dot (".pdf"), or ""
// when the name has none.
func Ext(name string) string {
	i := strings.LastIndexByte(name, '.')
	if i < 0 || i == len(name)-1 {
		return ""
	}
	return strings.ToLower(name[i:])
}
