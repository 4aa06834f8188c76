package sqldb_test

import (
	"io/fs"
	"testing/fstest"
)

type testFS map[string]string

func (m testFS) FS() fs.FS {
	out := fstest.MapFS{}
	for k, v := range m {
		out[k] = &fstest.MapFile{Data: []byte(v)}
	}
	return out
}
