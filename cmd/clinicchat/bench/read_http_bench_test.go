package bench

import (
	"bufio"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkRawConnAnswer reads the gateway's answer to a markRead as the
// read mode's client does (rawConn.readAnswer), from memory: the client's
// own parsing per receipt, without the network.
//
//	go test ./cmd/clinicchat/bench -run '^$' -bench RawConnAnswer -benchmem
func BenchmarkRawConnAnswer(b *testing.B) {
	body := `{"name":"conversations/0193f1f0-7c2a-7b59-9d0e-6f1a2b3c4d5e","patientName":"patients/0193f1f0-7c2a-7b59-9d0e-6f1a2b3c4d5f",` +
		`"state":"ACTIVE","createTime":"2026-12-02T00:00:00Z","lastMessageTime":"2026-12-02T00:00:01.123456Z","lastMessageSeq":"512",` +
		`"lastMessagePreview":"Your crown is ready","readSeq":"300","unreadCount":212}`
	answer := "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nGrpc-Metadata-Content-Type: application/grpc\r\n" +
		"Date: Wed, 02 Dec 2026 00:00:00 GMT\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
	r := strings.NewReader("")
	c := &rawConn{br: bufio.NewReaderSize(r, 8<<10)}
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(answer)
		c.br.Reset(r)
		if status, _, err := c.readAnswer(); err != nil || status != 200 || len(c.body) != len(body) {
			b.Fatalf("%d %v", status, err)
		}
	}
}
