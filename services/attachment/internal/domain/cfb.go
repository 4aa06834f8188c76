package domain

import (
	"encoding/binary"
	"errors"
	"io"
	"unicode/utf16"
)

// A minimal reader of the directory of a Compound File Binary (OLE2) file
// ([MS-CFB]), the container of legacy .doc, .xls and .ppt files: enough to
// list the names of its storages and streams. Every offset and count is
// checked against the file's size, and every chain is walked at most once
// per sector actually in the file (a chain that revisits a sector is
// refused), so a crafted file cannot make it loop or read far.

const (
	cfbMaxRegSect  = 0xFFFFFFFA
	cfbEndOfChain  = 0xFFFFFFFE
	cfbHeaderBytes = 512
	cfbDirEntry    = 128
	cfbMaxEntries  = 1 << 16
)

var errCFB = errors.New("not a well-formed compound file")

// cfbNames returns the names of the storages and streams in the compound
// file r of size bytes.
func cfbNames(r io.ReaderAt, size int64) ([]string, error) {
	h := make([]byte, cfbHeaderBytes)
	if _, err := r.ReadAt(h, 0); err != nil {
		return nil, errCFB
	}
	le := binary.LittleEndian
	if string(h[:8]) != string(sigOLE) || le.Uint16(h[28:]) != 0xFFFE {
		return nil, errCFB
	}
	shift := le.Uint16(h[30:])
	if shift != 9 && shift != 12 {
		return nil, errCFB
	}
	ssz := int64(1) << shift
	// Sectors after the header (v4 pads the header to 4096 bytes); a last
	// sector cut short reads as zero-padded.
	sectors := (size - ssz + ssz - 1) / ssz
	if size <= ssz {
		return nil, errCFB
	}
	readSector := func(s uint32, buf []byte) error {
		if s > cfbMaxRegSect || int64(s) >= sectors {
			return errCFB
		}
		n, err := r.ReadAt(buf, (int64(s)+1)*ssz)
		if err != nil && !(errors.Is(err, io.EOF) && n > 0) {
			return errCFB
		}
		clear(buf[n:])
		return nil
	}

	// The FAT's own sectors: 109 in the header, the rest in the DIFAT chain.
	numFAT := int64(le.Uint32(h[44:]))
	if numFAT <= 0 || numFAT > sectors {
		return nil, errCFB
	}
	fatSectors := make([]uint32, 0, numFAT)
	for i := 0; i < 109 && int64(len(fatSectors)) < numFAT; i++ {
		fatSectors = append(fatSectors, le.Uint32(h[76+4*i:]))
	}
	buf := make([]byte, ssz)
	// Every chain below is walked at most once per sector of the file, and a
	// chain that comes back to a sector it has visited is malformed: the
	// work is bounded by the file's real size, whatever its header claims.
	difatSeen := make(map[uint32]bool)
	next := le.Uint32(h[68:])
	for int64(len(fatSectors)) < numFAT {
		if next > cfbMaxRegSect || difatSeen[next] || int64(len(difatSeen)) >= sectors {
			return nil, errCFB
		}
		difatSeen[next] = true
		if err := readSector(next, buf); err != nil {
			return nil, err
		}
		per := int(ssz/4) - 1
		for i := 0; i < per && int64(len(fatSectors)) < numFAT; i++ {
			fatSectors = append(fatSectors, le.Uint32(buf[4*i:]))
		}
		next = le.Uint32(buf[ssz-4:])
	}
	// Only the FAT entries of sectors that exist matter: read no more FAT
	// sectors than cover the file.
	perFAT := ssz / 4
	need := (sectors + perFAT - 1) / perFAT
	fatSectors = fatSectors[:min(int64(len(fatSectors)), need)]
	fat := make([]uint32, 0, int64(len(fatSectors))*perFAT)
	for _, s := range fatSectors {
		if err := readSector(s, buf); err != nil {
			return nil, err
		}
		for i := int64(0); i < ssz; i += 4 {
			fat = append(fat, le.Uint32(buf[i:]))
		}
	}
	fat = fat[:min(int64(len(fat)), sectors)]

	// Walk the directory chain: each sector at most once.
	var names []string
	seen := make([]bool, len(fat))
	s := le.Uint32(h[48:])
	for s != cfbEndOfChain {
		if int64(s) >= int64(len(fat)) || seen[s] || len(names) > cfbMaxEntries {
			return nil, errCFB
		}
		seen[s] = true
		if err := readSector(s, buf); err != nil {
			return nil, err
		}
		for off := int64(0); off+cfbDirEntry <= ssz; off += cfbDirEntry {
			e := buf[off : off+cfbDirEntry]
			typ := e[66]
			if typ != 1 && typ != 2 { // storage or stream
				continue
			}
			n := int(le.Uint16(e[64:]))
			if n < 2 || n > 64 || n%2 != 0 {
				continue
			}
			u := make([]uint16, 0, n/2-1)
			for i := 0; i+2 <= n-2; i += 2 {
				u = append(u, le.Uint16(e[i:]))
			}
			names = append(names, string(utf16.Decode(u)))
		}
		s = fat[s]
	}
	return names, nil
}
