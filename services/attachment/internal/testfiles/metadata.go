package testfiles

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
)

// GPSMarker is text inside the EXIF and PNG metadata these helpers add, so a
// test can look for it in what is served.
const GPSMarker = "GPS 51.5007N 0.1246W Pixel-7 serial 8F2A"

// ExifGPS is an APP1 Exif payload (without the marker and length): a
// big-endian TIFF with IFD0 pointing at a GPS IFD (latitude N 51°30'2"),
// and an image description carrying GPSMarker.
func ExifGPS() []byte {
	var t bytes.Buffer
	be := binary.BigEndian
	w16 := func(v uint16) { _ = binary.Write(&t, be, v) }
	w32 := func(v uint32) { _ = binary.Write(&t, be, v) }
	t.WriteString("MM")
	w16(42)
	w32(8) // IFD0 at 8
	// IFD0: 2 entries (12 bytes each) + next offset: ends at 8+2+24+4 = 38.
	desc := append([]byte(GPSMarker), 0)
	w16(2)
	w16(0x010E) // ImageDescription, ASCII
	w16(2)
	w32(uint32(len(desc)))
	w32(38)     // description at 38
	w16(0x8825) // GPSInfo IFD pointer
	w16(4)
	w32(1)
	gps := 38 + uint32(len(desc))
	w32(gps)
	w32(0)
	t.Write(desc)
	// GPS IFD: LatitudeRef "N", Latitude 3 rationals at gps+2+24+4.
	w16(2)
	w16(0x0001)
	w16(2)
	w32(2)
	t.Write([]byte{'N', 0, 0, 0})
	w16(0x0002)
	w16(5)
	w32(3)
	w32(gps + 30)
	w32(0)
	for _, v := range []uint32{51, 1, 30, 1, 2, 1} {
		w32(v)
	}
	return append([]byte("Exif\x00\x00"), t.Bytes()...)
}

func segment(marker byte, body []byte) []byte {
	s := []byte{0xFF, marker, 0, 0}
	binary.BigEndian.PutUint16(s[2:], uint16(len(body)+2))
	return append(s, body...)
}

// JPEGWithMetadata is JPEG() with an APP1 Exif segment holding GPS tags, an
// APP1 XMP packet, an APP13 IPTC segment and a COM comment after its APP0,
// an ICC profile in APP2, and trailing bytes after EOI.
func JPEGWithMetadata() []byte {
	j := JPEG()
	// After SOI and the JFIF APP0 segment (if any).
	at := 2
	if j[2] == 0xFF && j[3] == 0xE0 {
		at = 4 + int(binary.BigEndian.Uint16(j[4:6]))
	}
	var out bytes.Buffer
	out.Write(j[:at])
	out.Write(segment(0xE1, ExifGPS()))
	out.Write(segment(0xE1, []byte("http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><exif:GPSLatitude>"+GPSMarker+"</exif:GPSLatitude></x:xmpmeta>")))
	out.Write(segment(0xE2, []byte("ICC_PROFILE\x00\x01\x01fake-icc-profile")))
	out.Write(segment(0xED, []byte("Photoshop 3.0\x008BIM"+GPSMarker)))
	out.Write(segment(0xFE, []byte("comment: "+GPSMarker)))
	out.Write(j[at:])
	out.WriteString("trailing " + GPSMarker)
	return out.Bytes()
}

func chunk(typ string, data []byte) []byte {
	c := make([]byte, 8, 12+len(data))
	binary.BigEndian.PutUint32(c, uint32(len(data)))
	copy(c[4:], typ)
	c = append(c, data...)
	crc := crc32.ChecksumIEEE(c[4:])
	return binary.BigEndian.AppendUint32(c, crc)
}

// PNGWithMetadata is PNG() with tEXt, zTXt, iTXt, eXIf and tIME chunks after
// IHDR and trailing bytes after IEND.
func PNGWithMetadata() []byte {
	p := PNG()
	ihdrEnd := 8 + 8 + 13 + 4
	var out bytes.Buffer
	out.Write(p[:ihdrEnd])
	out.Write(chunk("tEXt", []byte("Comment\x00"+GPSMarker)))
	out.Write(chunk("zTXt", []byte("Raw profile\x00\x00x\x9c")))
	out.Write(chunk("iTXt", []byte("XML:com.adobe.xmp\x00\x00\x00\x00\x00"+GPSMarker)))
	out.Write(chunk("eXIf", ExifGPS()[6:]))
	out.Write(chunk("tIME", []byte{0x07, 0xEA, 11, 30, 12, 0, 0}))
	out.Write(p[ihdrEnd:])
	out.WriteString("trailing " + GPSMarker)
	return out.Bytes()
}
