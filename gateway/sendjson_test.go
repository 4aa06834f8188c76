package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
)

// TestAPIMarshalerIsJSONPb: the mux's marshaler writes a Message or a
// Conversation answer as JSONPb does (whitespace aside), and anything else
// through JSONPb itself.
func TestAPIMarshalerIsJSONPb(t *testing.T) {
	jsonpb := newMarshaler()
	api := apiMarshaler{jsonpb}
	r := rand.New(rand.NewPCG(3, 4))
	for _, m := range []proto.Message{&deliveryv1.Message{}, &conversationv1.Conversation{}} {
		for i := range 1000 {
			msg := m.ProtoReflect().New()
			fill(r, msg, 0)
			want, werr := jsonpb.Marshal(msg.Interface())
			got, gerr := api.Marshal(msg.Interface())
			if werr != nil {
				require.Error(t, gerr, "%d: %v", i, msg)
				continue
			}
			require.NoError(t, gerr, "%d: %v", i, msg)
			var compact bytes.Buffer
			require.NoError(t, json.Compact(&compact, want))
			require.Equal(t, compact.String(), string(got), "%d: %v", i, msg)
		}
	}
	for _, v := range []any{(*deliveryv1.Message)(nil), (*conversationv1.Conversation)(nil),
		&deliveryv1.ListMessagesResponse{Messages: []*deliveryv1.Message{{Name: "conversations/c/messages/m"}}}} {
		want, werr := jsonpb.Marshal(v)
		got, gerr := api.Marshal(v)
		require.Equal(t, werr, gerr)
		require.Equal(t, string(want), string(got))
	}
}

// decodeBoth decodes body as a send's request with JSONPb and with the mux's
// marshaler (from a reader that gives one byte at a time, as a slow
// connection may).
func decodeBoth(body []byte) (want, got *deliveryv1.CreateMessageRequest, werr, gerr error) {
	want, got = &deliveryv1.CreateMessageRequest{}, &deliveryv1.CreateMessageRequest{}
	werr, gerr = decodeBothInto(body, want, got)
	return want, got, werr, gerr
}

// decodeBothInto is decodeBoth into want and got.
func decodeBothInto(body []byte, want, got proto.Message) (werr, gerr error) {
	jsonpb := newMarshaler()
	werr = jsonpb.NewDecoder(bytes.NewReader(body)).Decode(want)
	gerr = apiMarshaler{jsonpb}.NewDecoder(iotest.OneByteReader(bytes.NewReader(body))).Decode(got)
	return werr, gerr
}

// decodeMarkReadBoth is decodeBoth for a markRead's request.
func decodeMarkReadBoth(body []byte) (want, got *conversationv1.MarkConversationReadRequest, werr, gerr error) {
	want, got = &conversationv1.MarkConversationReadRequest{}, &conversationv1.MarkConversationReadRequest{}
	werr, gerr = decodeBothInto(body, want, got)
	return want, got, werr, gerr
}

// markReadBodies are everyday markRead bodies and near misses (every send
// body is one too).
var markReadBodies = []string{
	`{"upTo":"conversations/c1/messages/m1"}`, ` {"upTo" : "conversations/c1/messages/m\u0031"} `, `{}`,
	`{"name":"conversations/c1","upTo":"conversations/c1/messages/m2"}`, `{"upTo":""}`,
	`{"up_to":"conversations/c1/messages/m1"}`, `{"upTo":"a","upTo":"b"}`, `{"upTo":null}`, `{"upTo":1}`,
	`{"upTo":"a","up_to":"b"}`, `{"upto":"a"}`, `{"upTo":"a",}`, `{"upTo":"a"} x`, `{"upTo":["a"]}`,
	"{\"upTo\":\"\xff\"}", `{"name":"conversations/c1"}`, `{"upTo":"a"`,
}

// TestDecodeMarkReadIsJSONPb: for every markRead and send body, the mux's
// decoder gives JSONPb's result for a markRead's request.
func TestDecodeMarkReadIsJSONPb(t *testing.T) {
	fast := 0
	for _, body := range append(markReadBodies, sendBodies...) {
		want, got, werr, gerr := decodeMarkReadBoth([]byte(body))
		require.Equal(t, errString(werr), errString(gerr), "%q", body)
		if werr == nil {
			require.True(t, proto.Equal(want, got), "%q: %v, want %v", body, got, want)
		}
		if decodeMarkRead([]byte(body), &conversationv1.MarkConversationReadRequest{}) {
			fast++
		}
	}
	require.GreaterOrEqual(t, fast, 5, "the everyday bodies take the fast path")
}

// sendBodies are everyday sends and near misses.
var sendBodies = []string{
	`{"text":"Your crown is ready","requestId":"r1"}`,
	` {"text":"a\nb \"q\" \\ \/ \b\f\r\t \u00e9 \u2028 \ud83e\uddb7 é 🦷","requestId":"r2","sensitive":true} `,
	`{"parent":"conversations/x","text":"","attachments":["attachments/a","attachments/b"],"requestId":"r3","sensitive":false}`,
	`{"attachments":[],"requestId":"r4"}`,
	`{}`, ``, `   `, `null`, `[]`, `"text"`, `{"text":"a"} trailing`, `{"text":"a"}{"text":"b"}`,
	`{"text":"a","text":"b"}`, `{"request_id":"r","requestId":"s"}`, `{"request_id":"r5"}`,
	`{"text":null}`, `{"sensitive":"true"}`, `{"sensitive":1}`, `{"attachments":null}`, `{"attachments":"a"}`,
	`{"attachments":["a",1]}`, `{"text":"a",}`, `{"text":"a" "requestId":"r"}`, `{"text":"\x01"}`,
	"{\"text\":\"\xff\"}", `{"text":"\ud83e"}`, `{"text":"\udd b7"}`, `{"text":"\ude00\ud83e"}`, `{"text":"\u00"}`,
	`{"text":"\x"}`, `{"sensitve":true}`, `{"artifact":{"type":"APPOINTMENT","ref":"a1"},"requestId":"r6"}`,
	`{"artifact":{"type":"NOPE"}}`, `{"text":"a"`, `{"text":`, `{"tex`, `{"text":"a"}` + "\n",
	`{"Text":"a"}`, `{"text":"\u0000"}`, `{"te\u0078t":"a"}`, "\ufeff{}",
}

// TestDecodeCreateMessageIsJSONPb: for every body above, the mux's decoder
// gives JSONPb's result: the same request, or the same error.
func TestDecodeCreateMessageIsJSONPb(t *testing.T) {
	fast := 0
	for _, body := range sendBodies {
		want, got, werr, gerr := decodeBoth([]byte(body))
		require.Equal(t, errString(werr), errString(gerr), "%q", body)
		if werr == nil { // after an error the request is not used
			require.True(t, proto.Equal(want, got), "%q: %v, want %v", body, got, want)
		}
		if decodeCreateMessage([]byte(body), &deliveryv1.CreateMessageRequest{}) {
			fast++
		}
	}
	require.GreaterOrEqual(t, fast, 6, "the everyday bodies take the fast path")
}

// TestDecodeCreateMessageLongBody: a body over fastBodyLimit is decoded by
// JSONPb from the stream, with the same result.
func TestDecodeCreateMessageLongBody(t *testing.T) {
	body := []byte(`{"text":"` + strings.Repeat(`\u00e9`, fastBodyLimit/6+10) + `","requestId":"long"}`)
	want, got, werr, gerr := decodeBoth(body)
	require.NoError(t, werr)
	require.NoError(t, gerr)
	require.True(t, proto.Equal(want, got))
	require.False(t, decodeCreateMessage(body[:fastBodyLimit], &deliveryv1.CreateMessageRequest{}))
}

// TestDecodeCreateMessageReadError: a body whose read fails is refused
// with the read's error, as JSONPb refuses it.
func TestDecodeCreateMessageReadError(t *testing.T) {
	boom := errors.New("connection reset")
	for _, prefix := range []string{``, `{"text":"a"`, `{"text":"a"}`} {
		jsonpb := newMarshaler()
		werr := jsonpb.NewDecoder(io.MultiReader(strings.NewReader(prefix), iotest.ErrReader(boom))).
			Decode(&deliveryv1.CreateMessageRequest{})
		gerr := apiMarshaler{jsonpb}.NewDecoder(io.MultiReader(strings.NewReader(prefix), iotest.ErrReader(boom))).
			Decode(&deliveryv1.CreateMessageRequest{})
		require.Equal(t, errString(werr), errString(gerr), "%q", prefix)
	}
}

// TestSendBodyErrorsThroughTheGateway: bodies the decoder refuses get the
// API's error reasons and words through the whole gateway, with and without
// the fast path (an unknown field named, a wrong type explained).
func TestSendBodyErrorsThroughTheGateway(t *testing.T) {
	sb := newSendBench(t)
	for body, want := range map[string]string{
		`{"sensitve":true,"text":"a","requestId":"r"}`: `Unknown field \"sensitve\": check its spelling`,
		`{"text":"a","sensitive":"yes"}`:               `Field \"sensitive\" must be true or false`,
		`{"text":"a","text":"b"}`:                      `Field \"text\" appears more than once`,
		`{"text":"a"`:                                  `The request body is not valid JSON`,
	} {
		req := httptest.NewRequest(http.MethodPost, sendPath, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+sb.token)
		rec := httptest.NewRecorder()
		sb.gw.Handler().ServeHTTP(rec, req)
		require.Equal(t, http.StatusBadRequest, rec.Code, "%s: %s", body, rec.Body)
		require.Contains(t, rec.Body.String(), `"reason":"INVALID_ARGUMENT"`, body)
		require.Contains(t, rec.Body.String(), want, body)
	}
	req := httptest.NewRequest(http.MethodPost, sendPath, bytes.NewReader(sendBody(7)))
	req.Header.Set("Authorization", "Bearer "+sb.token)
	rec := httptest.NewRecorder()
	sb.gw.Handler().ServeHTTP(rec, req)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	var m map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &m))
	require.Equal(t, "req-7", m["requestId"])
	require.Equal(t, "conversations/c1/messages/1", m["name"])
	require.Equal(t, "SENT", m["status"])
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	require.Equal(t, "no-store", rec.Header().Get("Cache-Control"))
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// FuzzDecodeCreateMessage: whatever the body, the mux's decoder and JSONPb
// give the same request or the same error, for a send's request and for a
// markRead's.
func FuzzDecodeCreateMessage(f *testing.F) {
	for _, b := range append(sendBodies, markReadBodies...) {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		want, got, werr, gerr := decodeBoth(body)
		if errString(werr) != errString(gerr) {
			t.Fatalf("%q: error %v, want %v", body, gerr, werr)
		}
		if werr == nil && !proto.Equal(want, got) {
			t.Fatalf("%q: %v, want %v", body, got, want)
		}
		rwant, rgot, werr, gerr := decodeMarkReadBoth(body)
		if errString(werr) != errString(gerr) {
			t.Fatalf("markRead %q: error %v, want %v", body, gerr, werr)
		}
		if werr == nil && !proto.Equal(rwant, rgot) {
			t.Fatalf("markRead %q: %v, want %v", body, rgot, rwant)
		}
	})
}
