package domain

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzCFB reads arbitrary compound-file directories: no panic, no loop, and
// never more names than the file has directory entries.
func FuzzCFB(f *testing.F) {
	h := make([]byte, 1536)
	copy(h, sigOLE)
	le := binary.LittleEndian
	le.PutUint16(h[28:], 0xFFFE)
	le.PutUint16(h[30:], 9)
	le.PutUint32(h[44:], 1)
	le.PutUint32(h[48:], 1)
	le.PutUint32(h[68:], cfbEndOfChain)
	f.Add(h)
	f.Add(append([]byte(nil), sigOLE...))
	f.Fuzz(func(t *testing.T, data []byte) {
		names, err := cfbNames(bytes.NewReader(data), int64(len(data)))
		if err == nil && int64(len(names)) > int64(len(data))/cfbDirEntry {
			t.Fatalf("%d names from %d bytes", len(names), len(data))
		}
	})
}
