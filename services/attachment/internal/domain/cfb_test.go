package domain_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/attachment/internal/domain"
	tf "github.com/clinicchat/clinicchat/services/attachment/internal/testfiles"
)

// craftedSectors makes the crafted document as large as an upload may be.
const craftedSectors = int(domain.MaxBytes/512) - 1

// countingReader counts the reads a sniffer makes of the stored file.
type countingReader struct {
	r     io.ReaderAt
	reads atomic.Int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	c.reads.Add(1)
	return c.r.ReadAt(p, off)
}

// TestCraftedDocCostsLittle: a compound file whose FAT is millions of
// entries long and whose directory chain loops is refused after a number of
// reads bounded by the sectors in the file (it took 4.4 s of CPU before,
// walking the chain as long as the FAT).
func TestCraftedDocCostsLittle(t *testing.T) {
	t.Parallel()
	data := tf.CraftedDOC(craftedSectors)
	require.LessOrEqual(t, int64(len(data)), domain.MaxBytes)
	s := domain.NewSniffer()
	_, _ = s.Write(data)
	require.NoError(t, s.Check("letter.doc", "application/msword"), "the first bytes are an OLE2 header")
	cr := &countingReader{r: bytes.NewReader(data)}
	_, err := s.Finish(cr, "letter.doc", "application/msword")
	require.ErrorIs(t, err, domain.ErrUnsupported)
	// Reading the header, the DIFAT and the FAT sectors that cover the file,
	// then one directory sector before the loop is seen.
	require.LessOrEqual(t, cr.reads.Load(), int64(craftedSectors/128+500),
		"reads of a %d-sector file", craftedSectors)
}

// BenchmarkCraftedDoc is the CPU cost of sniffing the crafted document
// (BENCHMARKS.md).
// "file" reads it from a file on disk, as an upload's temporary blob is.
func BenchmarkCraftedDoc(b *testing.B) {
	data := tf.CraftedDOC(craftedSectors)
	s := domain.NewSniffer()
	_, _ = s.Write(data)
	path := filepath.Join(b.TempDir(), "crafted.doc")
	require.NoError(b, os.WriteFile(path, data, 0o600))
	f, err := os.Open(path)
	require.NoError(b, err)
	defer f.Close()
	for _, bc := range []struct {
		name string
		r    io.ReaderAt
	}{{"memory", bytes.NewReader(data)}, {"file", f}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := s.Finish(bc.r, "letter.doc", "application/msword"); err == nil {
					b.Fatal("the crafted document was accepted")
				}
			}
		})
	}
}
