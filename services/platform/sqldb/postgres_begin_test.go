package sqldb

import (
	"bytes"
	"io"
	"testing"
	"testing/iotest"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"
)

func backend(t *testing.T, msgs ...pgproto3.BackendMessage) []byte {
	t.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		b, err = m.Encode(b)
		require.NoError(t, err)
	}
	return b
}

// The filter writes BEGIN ahead of the armed write only, and hands on what
// the server answers without BEGIN's three replies, keeping any message the
// server may send at any time (here a notice and a parameter status between
// them), however the bytes arrive.
func TestBeginFilterStripsOnlyBeginsReplies(t *testing.T) {
	stmt := []byte("B....E....S....") // stands for the statement's messages
	notice := &pgproto3.NoticeResponse{Severity: "NOTICE", Message: "hello"}
	status := &pgproto3.ParameterStatus{Name: "TimeZone", Value: "UTC"}
	answer := []pgproto3.BackendMessage{&pgproto3.BindComplete{}, &pgproto3.CommandComplete{CommandTag: []byte("INSERT 0 1")}, &pgproto3.ReadyForQuery{TxStatus: 'T'}}
	for _, c := range []struct {
		name       string
		server     []pgproto3.BackendMessage
		handedOn   []pgproto3.BackendMessage
		chunkReads bool
	}{
		{"plain", append([]pgproto3.BackendMessage{&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.CommandComplete{CommandTag: []byte("BEGIN")}}, answer...), answer, false},
		{"async-between", append([]pgproto3.BackendMessage{notice, &pgproto3.ParseComplete{}, status, &pgproto3.BindComplete{}, &pgproto3.CommandComplete{CommandTag: []byte("BEGIN")}}, answer...),
			append([]pgproto3.BackendMessage{notice, status}, answer...), true},
		{"begin-failed", []pgproto3.BackendMessage{&pgproto3.ErrorResponse{Severity: "ERROR", Code: "XX000"}, &pgproto3.ReadyForQuery{TxStatus: 'I'}},
			[]pgproto3.BackendMessage{&pgproto3.ErrorResponse{Severity: "ERROR", Code: "XX000"}, &pgproto3.ReadyForQuery{TxStatus: 'I'}}, true},
	} {
		var wire bytes.Buffer
		var r io.Reader = bytes.NewReader(backend(t, c.server...))
		if c.chunkReads {
			r = iotest.OneByteReader(r)
		}
		f := &beginFilter{r: r, w: &wire}
		_, err := f.Write([]byte("Pearlier"))
		require.NoError(t, err)
		f.armed = true
		n, err := f.Write(stmt)
		require.NoError(t, err)
		require.Equal(t, len(stmt), n)
		require.Equal(t, append(append([]byte("Pearlier"), beginMsgs...), stmt...), wire.Bytes(), c.name)
		got, err := io.ReadAll(f)
		require.NoError(t, err)
		require.Equal(t, backend(t, c.handedOn...), got, c.name)
		require.Equal(t, 0, f.skip)
	}
}

// Anything else in place of BEGIN's replies is a protocol error (pgx then
// closes the connection), and a simple query is never sent after BEGIN.
func TestBeginFilterRefusesTheUnexpected(t *testing.T) {
	f := &beginFilter{r: bytes.NewReader(backend(t, &pgproto3.ParseComplete{}, &pgproto3.CommandComplete{CommandTag: []byte("BEGIN")})), w: io.Discard, armed: true}
	_, err := f.Write([]byte("B...."))
	require.NoError(t, err)
	_, err = io.ReadAll(f)
	require.ErrorContains(t, err, "unexpected message")

	f = &beginFilter{r: bytes.NewReader(backend(t, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.CommandComplete{CommandTag: []byte("SET")})), w: io.Discard, armed: true}
	_, err = f.Write([]byte("B...."))
	require.NoError(t, err)
	_, err = io.ReadAll(f)
	require.ErrorContains(t, err, "BEGIN answered")

	var wire bytes.Buffer
	f = &beginFilter{w: &wire, armed: true}
	_, err = f.Write([]byte("Qselect 1"))
	require.ErrorIs(t, err, errSimpleAfterBegin)
	require.Zero(t, wire.Len())
}

// Armed with statements of its own (BEGIN and a SET LOCAL), the filter
// writes them ahead of the statement and takes out exactly their replies,
// tag by tag; a SET's error ends the stripping and is handed on.
func TestBeginFilterCarriesSetLocal(t *testing.T) {
	stmt := []byte("B....E....S....")
	pre := encodeSimple(encodeSimple(nil, "begin"), "SET LOCAL x.y = 'z'")
	replies := func(tag string) []pgproto3.BackendMessage {
		return []pgproto3.BackendMessage{&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.CommandComplete{CommandTag: []byte(tag)}}
	}
	answer := []pgproto3.BackendMessage{&pgproto3.BindComplete{}, &pgproto3.CommandComplete{CommandTag: []byte("INSERT 0 1")}, &pgproto3.ReadyForQuery{TxStatus: 'T'}}
	failed := []pgproto3.BackendMessage{&pgproto3.ErrorResponse{Severity: "ERROR", Code: "22023"}, &pgproto3.ReadyForQuery{TxStatus: 'E'}}
	for _, c := range []struct {
		name             string
		server, handedOn []pgproto3.BackendMessage
		err              string
	}{
		{"both", append(append(replies("BEGIN"), replies("SET")...), answer...), answer, ""},
		{"set-failed", append(append(replies("BEGIN"), &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}), failed...), failed, ""},
		{"second-tag-wrong", append(append(replies("BEGIN"), replies("BEGIN")...), answer...), nil, "SET answered"},
	} {
		var wire bytes.Buffer
		f := &beginFilter{r: iotest.OneByteReader(bytes.NewReader(backend(t, c.server...))), w: &wire}
		f.armed, f.pre, f.preTags = true, pre, []string{"BEGIN", "SET"}
		n, err := f.Write(stmt)
		require.NoError(t, err)
		require.Equal(t, len(stmt), n)
		require.Equal(t, append(append([]byte(nil), pre...), stmt...), wire.Bytes(), c.name)
		require.Nil(t, f.pre, "used once")
		got, err := io.ReadAll(f)
		if c.err != "" {
			require.ErrorContains(t, err, c.err, c.name)
			continue
		}
		require.NoError(t, err)
		require.Equal(t, backend(t, c.handedOn...), got, c.name)
		require.Equal(t, 0, f.skip)
	}
}
