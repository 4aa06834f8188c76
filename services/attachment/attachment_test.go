package attachment_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/attachment"
	tf "github.com/clinicchat/clinicchat/services/attachment/internal/testfiles"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

const practice = "demo"

// fakeConversations is the conversation service's ResolveConversation: staff
// (and systems) of the practice and the thread's patient are participants;
// everyone else gets NOT_FOUND. It runs behind a real grpcx server, so the
// caller's token must have been forwarded for it to see anyone.
type fakeConversations struct {
	conversationv1.UnimplementedConversationServiceServer
	threads map[string]string // conversation id → patient id, all of practice "demo"
}

func (f *fakeConversations) ResolveConversation(ctx context.Context, r *conversationv1.ResolveConversationRequest) (*conversationv1.Conversation, error) {
	who, ok := auth.FromContext(ctx)
	if !ok {
		return nil, errs.Unauthenticated("no caller")
	}
	p, ok := ids.Parse(r.GetName(), "conversations")
	if !ok {
		return nil, errs.InvalidArgument("bad name")
	}
	patient, ok := f.threads[p[0]]
	if !ok || who.Practice != practice || (who.IsPatient() && who.Subject != patient) {
		return nil, errs.NotFound("Conversation not found")
	}
	return &conversationv1.Conversation{Name: r.GetName(), Patient: "patients/" + patient,
		State: conversationv1.Conversation_ACTIVE}, nil
}

type env struct {
	tokens  *testkit.Tokens
	js      jetstream.JetStream
	client  attachmentv1.AttachmentServiceClient
	blobDir string
	dsn     string
}

// newEnv runs the attachment service over real gRPC (bufconn, grpcx
// interceptors, token verification) with an embedded NATS server, a SQLite
// database and a blob directory of its own. Conversation c1 is patient p1's,
// c2 patient p2's.
func newEnv(t testing.TB) *env {
	t.Helper()
	_, _, js := testkit.NATS(t)
	tokens, verifier := testkit.NewTokens()
	log := testkit.Logger(t)

	convLis := bufconn.Listen(1 << 20)
	convSrv := grpcx.NewServer(log, verifier)
	conversationv1.RegisterConversationServiceServer(convSrv.Server, &fakeConversations{threads: map[string]string{"c1": "p1", "c2": "p2"}})
	go func() { _ = convSrv.Serve(convLis) }()
	t.Cleanup(convSrv.Stop)
	convConn, err := grpcx.DialListener(convLis.DialContext)
	require.NoError(t, err)
	t.Cleanup(func() { _ = convConn.Close() })

	dir := t.TempDir()
	e := &env{tokens: tokens, js: js, blobDir: filepath.Join(dir, "blobs"), dsn: filepath.Join(dir, "attachment.db")}
	ctx, cancel := context.WithCancel(context.Background())
	kek := filepath.Join(dir, "keys", "attachment.kek")
	require.NoError(t, os.MkdirAll(filepath.Dir(kek), 0o700))
	_, err = attachment.EnsureDevKEK(kek)
	require.NoError(t, err)
	svc, err := attachment.New(ctx, attachment.Config{DatabaseDSN: e.dsn, BlobDir: e.blobDir, StepUpWindow: 5 * time.Minute,
		Encryption: attachment.Encryption{KEKFile: kek}},
		attachment.Deps{Log: log, JS: js, Conversations: convConn})
	require.NoError(t, err)
	lis := bufconn.Listen(1 << 20)
	srv := grpcx.NewServer(log, verifier)
	svc.Register(srv.Server)
	go func() { _ = srv.Serve(lis) }()
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		srv.Stop()
		cancel()
		require.NoError(t, <-done)
		require.NoError(t, svc.Close())
	})
	conn, err := grpcx.DialListener(lis.DialContext)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	e.client = attachmentv1.NewAttachmentServiceClient(conn)
	return e
}

// as returns a context calling as subject with role; authAge is how long
// ago they signed in.
func (e *env) as(t testing.TB, subject, role string, authAge time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, auth.MetadataKey, "Bearer "+e.tokens.Token(t, subject, role, practice, authAge))
}

func (e *env) staff(t testing.TB) context.Context { return e.as(t, "dr-a", auth.RoleDentist, 0) }

// upload streams r in 64 KiB frames, each in a fresh buffer, as the gateway does.
func (e *env) upload(ctx context.Context, conversation, filename, declared string, r io.Reader) (*attachmentv1.Attachment, error) {
	stream, err := e.client.UploadAttachment(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&attachmentv1.UploadAttachmentRequest{Frame: &attachmentv1.UploadAttachmentRequest_Header_{
		Header: &attachmentv1.UploadAttachmentRequest_Header{Conversation: conversation, Filename: filename, DeclaredContentType: declared},
	}}); err != nil {
		return nil, err
	}
	buf := make([]byte, 64<<10) // Send has encoded the frame when it returns
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			err := stream.Send(&attachmentv1.UploadAttachmentRequest{Frame: &attachmentv1.UploadAttachmentRequest_Chunk{Chunk: buf[:n]}})
			if errors.Is(err, io.EOF) {
				break // the service ended the stream: CloseAndRecv has its status
			}
			if err != nil {
				return nil, err
			}
		}
		if rerr != nil {
			break
		}
	}
	return stream.CloseAndRecv()
}

// download returns the first frame's metadata and the bytes.
func (e *env) download(ctx context.Context, name string) (*attachmentv1.Attachment, []byte, error) {
	stream, err := e.client.DownloadAttachment(ctx, &attachmentv1.DownloadAttachmentRequest{Name: name})
	if err != nil {
		return nil, nil, err
	}
	first, err := stream.Recv()
	if err != nil {
		return nil, nil, err
	}
	var data bytes.Buffer
	data.Grow(int(min(first.GetAttachment().GetSizeBytes(), 32<<20)))
	for {
		frame, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return first.GetAttachment(), data.Bytes(), nil
		}
		if err != nil {
			return first.GetAttachment(), data.Bytes(), err
		}
		if len(frame.GetChunk()) > 64<<10 || frame.GetAttachment() != nil {
			return nil, nil, errors.New("bad frame")
		}
		data.Write(frame.GetChunk())
	}
}

// requireRefused asserts a gRPC status code and ErrorInfo reason.
func requireRefused(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, code, status.Code(err), "status: %v", err)
	require.Equal(t, reason, errs.Reason(err), "status: %v", err)
}

// blobFiles lists the regular files under the blob directory, temporary ones included.
func (e *env) blobFiles(t *testing.T) []string {
	t.Helper()
	var out []string
	require.NoError(t, filepath.WalkDir(e.blobDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			out = append(out, p)
		}
		return err
	}))
	return out
}

// rows counts the stored attachments.
func (e *env) rows(t *testing.T) int {
	t.Helper()
	db, err := sqldb.Open(context.Background(), e.dsn)
	require.NoError(t, err)
	defer db.Close()
	var n int
	require.NoError(t, db.QueryRow(context.Background(), `SELECT COUNT(*) FROM attachments`).Scan(&n))
	return n
}

// waitEvent returns the first event on subject that match accepts, reading
// the stream from its start.
func waitEvent[T proto.Message](t *testing.T, js jetstream.JetStream, stream, subject string, newT func() T, match func(T) bool) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: natsx.Filter(subject)})
	require.NoError(t, err)
	for ctx.Err() == nil {
		m, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		if errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) {
			continue
		}
		require.NoError(t, err)
		v := newT()
		require.NoError(t, proto.Unmarshal(m.Data(), v))
		if match(v) {
			return v
		}
	}
	t.Fatalf("no matching event on %s", subject)
	var zero T
	return zero
}

func denied(t *testing.T, js jetstream.JetStream, actor, action, resource, reason string) *typev1.AccessRecorded {
	t.Helper()
	return waitEvent(t, js, natsx.StreamAttachment, natsx.SubjectAttachmentAccess, func() *typev1.AccessRecorded { return &typev1.AccessRecorded{} },
		func(e *typev1.AccessRecorded) bool {
			m := e.GetMeta()
			return m.GetActor() == actor && m.GetAction() == action && m.GetResource() == resource &&
				m.GetOutcome() == typev1.EventMeta_DENIED && m.GetDetail() == reason
		})
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestUploadAccepted(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tests := []struct {
		name, filename, declared, wantType, wantName string
		data                                         []byte
	}{
		{"png", "x-ray.png", "image/png", "image/png", "x-ray.png", tf.PNG()},
		{"pdf", "referral.pdf", "application/pdf", "application/pdf", "referral.pdf", tf.PDF()},
		{"docx", "care plan.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
			"application/vnd.openxmlformats-officedocument.wordprocessingml.document", "care plan.docx", tf.DOCX()},
		{"jpeg as octet-stream", "photo.jpg", "application/octet-stream", "image/jpeg", "photo.jpg", tf.JPEG()},
		{"heic", "IMG_0001.HEIC", "image/heic", "image/heic", "IMG_0001.HEIC", tf.HEIC()},
		{"text", "notes.txt", "text/plain", "text/plain; charset=utf-8", "notes.txt", tf.Text()},
		{"windows path, no extension", `C:\scans\referral`, "", "application/pdf", "referral.pdf", tf.PDF()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			att, err := e.upload(e.staff(t), "conversations/c1", tc.filename, tc.declared, bytes.NewReader(tc.data))
			require.NoError(t, err)
			_, ok := ids.Parse(att.GetName(), "attachments")
			require.True(t, ok, att.GetName())
			require.Equal(t, "conversations/c1", att.GetConversation())
			require.Equal(t, tc.wantName, att.GetFilename())
			require.Equal(t, tc.wantType, att.GetContentType())
			require.Equal(t, int32(len(tc.data)), att.GetSizeBytes())
			require.Equal(t, sum(tc.data), att.GetSha256())
			require.WithinDuration(t, time.Now(), att.GetCreateTime().AsTime(), time.Minute)

			got, err := e.client.GetAttachment(e.staff(t), &attachmentv1.GetAttachmentRequest{Name: att.GetName()})
			require.NoError(t, err)
			require.True(t, proto.Equal(att, got))

			ev := waitEvent(t, e.js, natsx.StreamAttachment, natsx.SubjectAttachmentUploaded,
				func() *attachmentv1.AttachmentUploaded { return &attachmentv1.AttachmentUploaded{} },
				func(ev *attachmentv1.AttachmentUploaded) bool { return ev.GetAttachment().GetName() == att.GetName() })
			require.True(t, proto.Equal(att, ev.GetAttachment()))
			require.Equal(t, "attachment.upload", ev.GetMeta().GetAction())
			require.Equal(t, "users/dr-a", ev.GetMeta().GetActor())
			require.Equal(t, practice, ev.GetMeta().GetPractice())
			require.Equal(t, att.GetName(), ev.GetMeta().GetResource())
			require.Equal(t, typev1.EventMeta_ALLOWED, ev.GetMeta().GetOutcome())
		})
	}
	// The patient of the thread may upload too.
	att, err := e.upload(e.as(t, "p1", auth.RolePatient, time.Hour), "conversations/c1", "tooth.png", "image/png", bytes.NewReader(tf.PNG()))
	require.NoError(t, err)
	require.Equal(t, "image/png", att.GetContentType())
}

// sized yields size bytes: prefix, then a repeating pattern, generated on
// the fly, so a 25 MiB file is never held by the test either.
type sized struct {
	prefix []byte
	size   int64
	off    int64
}

func (s *sized) Read(p []byte) (int, error) {
	if s.off >= s.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), s.size-s.off))
	for i := range n {
		o := s.off + int64(i)
		if o < int64(len(s.prefix)) {
			p[i] = s.prefix[o]
		} else {
			p[i] = byte(o*31 + o>>11)
		}
	}
	s.off += int64(n)
	return n, nil
}

func TestUploadSizeLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pdf := []byte("%PDF-1.7\n")

	t.Run("one byte over is refused and leaves nothing", func(t *testing.T) {
		_, err := e.upload(e.staff(t), "conversations/c1", "big.pdf", "application/pdf", &sized{prefix: pdf, size: attachment.MaxBytes + 1})
		requireRefused(t, err, codes.InvalidArgument, errs.ReasonAttachmentTooLarge)
		require.Empty(t, e.blobFiles(t))
		require.Zero(t, e.rows(t))
		denied(t, e.js, "users/dr-a", "attachment.upload", "conversations/c1", errs.ReasonAttachmentTooLarge)
	})

	t.Run("exactly the limit is accepted and downloads whole", func(t *testing.T) {
		h := sha256.New()
		att, err := e.upload(e.staff(t), "conversations/c1", "big.pdf", "application/pdf",
			io.TeeReader(&sized{prefix: pdf, size: attachment.MaxBytes}, h))
		require.NoError(t, err)
		require.Equal(t, int32(26_214_400), att.GetSizeBytes())
		require.Equal(t, hex.EncodeToString(h.Sum(nil)), att.GetSha256())
		require.Len(t, e.blobFiles(t), 1)
		require.Equal(t, 1, e.rows(t))

		stream, err := e.client.DownloadAttachment(e.staff(t), &attachmentv1.DownloadAttachmentRequest{Name: att.GetName()})
		require.NoError(t, err)
		first, err := stream.Recv()
		require.NoError(t, err)
		require.True(t, proto.Equal(att, first.GetAttachment()))
		got := sha256.New()
		var n int64
		for {
			frame, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err)
			require.LessOrEqual(t, len(frame.GetChunk()), 64<<10)
			n += int64(len(frame.GetChunk()))
			got.Write(frame.GetChunk())
		}
		require.Equal(t, int64(att.GetSizeBytes()), n)
		require.Equal(t, att.GetSha256(), hex.EncodeToString(got.Sum(nil)))
	})
}

func TestUploadRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tests := []struct {
		name, conversation, filename, declared string
		data                                   []byte
		code                                   codes.Code
		reason                                 string
	}{
		{"pdf named png", "conversations/c1", "scan.png", "image/png", tf.PDF(), codes.InvalidArgument, errs.ReasonUnsupportedType},
		{"pdf declared png", "conversations/c1", "scan.pdf", "image/png", tf.PDF(), codes.InvalidArgument, errs.ReasonUnsupportedType},
		{"executable", "conversations/c1", "setup.exe", "application/x-msdownload", tf.Executable(), codes.InvalidArgument, errs.ReasonUnsupportedType},
		{"executable named pdf", "conversations/c1", "invoice.pdf", "application/pdf", tf.Executable(), codes.InvalidArgument, errs.ReasonUnsupportedType},
		{"plain zip", "conversations/c1", "files.zip", "application/zip", tf.PlainZip(), codes.InvalidArgument, errs.ReasonUnsupportedType},
		{"empty file", "conversations/c1", "empty.pdf", "application/pdf", nil, codes.InvalidArgument, errs.ReasonInvalidArgument},
		{"no file name", "conversations/c1", "  ", "", tf.PDF(), codes.InvalidArgument, errs.ReasonInvalidArgument},
		{"bad conversation", "c1", "scan.pdf", "", tf.PDF(), codes.InvalidArgument, errs.ReasonInvalidArgument},
		{"unknown conversation", "conversations/nope", "scan.pdf", "", tf.PDF(), codes.NotFound, errs.ReasonNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.upload(e.staff(t), tc.conversation, tc.filename, tc.declared, bytes.NewReader(tc.data))
			requireRefused(t, err, tc.code, tc.reason)
		})
	}
	// A large refused file is refused from its first bytes, and nothing is kept.
	_, err := e.upload(e.staff(t), "conversations/c1", "setup.exe", "", &sized{prefix: tf.Executable(), size: 20 << 20})
	requireRefused(t, err, codes.InvalidArgument, errs.ReasonUnsupportedType)
	require.Empty(t, e.blobFiles(t))
	require.Zero(t, e.rows(t))
	denied(t, e.js, "users/dr-a", "attachment.upload", "conversations/c1", errs.ReasonUnsupportedType)

	// Frames out of order.
	stream, err := e.client.UploadAttachment(e.staff(t))
	require.NoError(t, err)
	require.NoError(t, stream.Send(&attachmentv1.UploadAttachmentRequest{Frame: &attachmentv1.UploadAttachmentRequest_Chunk{Chunk: tf.PDF()}}))
	_, err = stream.CloseAndRecv()
	requireRefused(t, err, codes.InvalidArgument, errs.ReasonInvalidArgument)
}

func TestUploadCanceledKeepsNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx, cancel := context.WithCancel(e.staff(t))
	stream, err := e.client.UploadAttachment(ctx)
	require.NoError(t, err)
	require.NoError(t, stream.Send(&attachmentv1.UploadAttachmentRequest{Frame: &attachmentv1.UploadAttachmentRequest_Header_{
		Header: &attachmentv1.UploadAttachmentRequest_Header{Conversation: "conversations/c1", Filename: "scan.pdf"}}}))
	require.NoError(t, stream.Send(&attachmentv1.UploadAttachmentRequest{Frame: &attachmentv1.UploadAttachmentRequest_Chunk{Chunk: tf.PDF()}}))
	// Wait until the service holds the upload's temporary file, then abandon it.
	require.Eventually(t, func() bool { return len(e.blobFiles(t)) == 1 }, 10*time.Second, 5*time.Millisecond)
	cancel()
	require.Eventually(t, func() bool { return len(e.blobFiles(t)) == 0 }, 10*time.Second, 5*time.Millisecond)
	require.Zero(t, e.rows(t))
}

func TestNonParticipants(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	att, err := e.upload(e.staff(t), "conversations/c1", "x-ray.png", "image/png", bytes.NewReader(tf.PNG()))
	require.NoError(t, err)

	otherPatient := e.as(t, "p2", auth.RolePatient, 0)
	_, err = e.upload(otherPatient, "conversations/c1", "mine.png", "image/png", bytes.NewReader(tf.PNG()))
	requireRefused(t, err, codes.NotFound, errs.ReasonNotFound)
	denied(t, e.js, "patients/p2", "attachment.upload", "conversations/c1", errs.ReasonNotFound)

	_, err = e.client.GetAttachment(otherPatient, &attachmentv1.GetAttachmentRequest{Name: att.GetName()})
	requireRefused(t, err, codes.NotFound, errs.ReasonNotFound)
	denied(t, e.js, "patients/p2", "attachment.view", att.GetName(), errs.ReasonNotFound)

	_, _, err = e.download(otherPatient, att.GetName())
	requireRefused(t, err, codes.NotFound, errs.ReasonNotFound)
	denied(t, e.js, "patients/p2", "attachment.download", att.GetName(), errs.ReasonNotFound)

	// Staff of another practice: the attachment does not exist for them.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	elsewhere := metadata.AppendToOutgoingContext(ctx, auth.MetadataKey, "Bearer "+e.tokens.Token(t, "dr-b", auth.RoleDentist, "other", 0))
	_, _, err = e.download(elsewhere, att.GetName())
	requireRefused(t, err, codes.NotFound, errs.ReasonNotFound)

	// No token at all.
	_, err = e.client.GetAttachment(context.Background(), &attachmentv1.GetAttachmentRequest{Name: att.GetName()})
	require.Equal(t, codes.Unauthenticated, status.Code(err))
	_, err = e.client.GetAttachment(e.staff(t), &attachmentv1.GetAttachmentRequest{Name: "attachments/" + ids.New()})
	requireRefused(t, err, codes.NotFound, errs.ReasonNotFound)
	_, err = e.client.GetAttachment(e.staff(t), &attachmentv1.GetAttachmentRequest{Name: "files/x"})
	requireRefused(t, err, codes.InvalidArgument, errs.ReasonInvalidArgument)
}

func TestDownloadRoundTrip(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	data := append(tf.PDF(), bytes.Repeat([]byte("% filler\n"), 20000)...) // ~180 KiB: several frames
	att, err := e.upload(e.staff(t), "conversations/c1", "referral.pdf", "application/pdf", bytes.NewReader(data))
	require.NoError(t, err)

	for _, ctx := range []context.Context{e.staff(t), e.as(t, "p1", auth.RolePatient, 0)} {
		meta, got, err := e.download(ctx, att.GetName())
		require.NoError(t, err)
		require.True(t, proto.Equal(att, meta))
		require.Equal(t, data, got)
	}
	ev := waitEvent(t, e.js, natsx.StreamAttachment, natsx.SubjectAttachmentAccess, func() *typev1.AccessRecorded { return &typev1.AccessRecorded{} },
		func(ev *typev1.AccessRecorded) bool {
			return ev.GetMeta().GetAction() == "attachment.download" && ev.GetMeta().GetActor() == "patients/p1"
		})
	require.Equal(t, att.GetName(), ev.GetMeta().GetResource())
	require.Equal(t, typev1.EventMeta_ALLOWED, ev.GetMeta().GetOutcome())
	require.Equal(t, "conversations/c1", ev.GetMeta().GetDetail())
}

func TestCorruptBlobIsNeverDeliveredWhole(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	data := append(tf.PDF(), bytes.Repeat([]byte("0123456789"), 20000)...)
	att, err := e.upload(e.staff(t), "conversations/c1", "referral.pdf", "", bytes.NewReader(data))
	require.NoError(t, err)
	files := e.blobFiles(t)
	require.Len(t, files, 1)
	corrupt := bytes.Clone(data)
	corrupt[len(corrupt)-1] ^= 0xFF // same size, last byte flipped
	require.NoError(t, os.WriteFile(files[0], corrupt, 0o600))

	_, got, err := e.download(e.staff(t), att.GetName())
	require.Equal(t, codes.Internal, status.Code(err), "%v", err)
	require.Less(t, len(got), len(data), "the last frame is held back")

	require.NoError(t, os.WriteFile(files[0], data[:100], 0o600))
	_, _, err = e.download(e.staff(t), att.GetName())
	require.Equal(t, codes.Internal, status.Code(err), "%v", err)
}

// messageCreated publishes delivery's event for a message carrying attachments.
func messageCreated(t *testing.T, js jetstream.JetStream, seq int, sender string, sensitive bool, attachments ...string) {
	t.Helper()
	msg := &deliveryv1.Message{Name: "conversations/c1/messages/" + string(rune('0'+seq)), Sender: sender,
		Sensitive: sensitive, CreateTime: timestamppb.Now()}
	for _, a := range attachments {
		msg.Attachments = append(msg.Attachments, &deliveryv1.Message_AttachmentRef{Attachment: a})
	}
	ev := &deliveryv1.MessageCreated{Meta: &typev1.EventMeta{Id: ids.New(), Practice: practice, Action: "message.send",
		Actor: sender, Resource: msg.Name, Time: timestamppb.Now()}, Message: msg, Patient: "patients/p1"}
	data, err := proto.Marshal(ev)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = js.Publish(ctx, natsx.SubjectMessageCreated, data, jetstream.WithMsgID(ev.Meta.Id))
	require.NoError(t, err)
}

func TestSensitiveStepUp(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	upload := func(ctx context.Context) *attachmentv1.Attachment {
		att, err := e.upload(ctx, "conversations/c1", "result.pdf", "application/pdf", bytes.NewReader(tf.PDF()))
		require.NoError(t, err)
		return att
	}
	secret := upload(e.staff(t))                      // on a sensitive message from staff
	plain := upload(e.staff(t))                       // on an ordinary message
	own := upload(e.as(t, "p1", auth.RolePatient, 0)) // the patient's own, on their sensitive message
	messageCreated(t, e.js, 1, "users/dr-a", true, secret.GetName())
	messageCreated(t, e.js, 2, "users/dr-a", false, plain.GetName())
	messageCreated(t, e.js, 3, "patients/p1", true, own.GetName())
	messageCreated(t, e.js, 1, "users/dr-a", true, secret.GetName()) // a redelivery changes nothing

	stale := e.as(t, "p1", auth.RolePatient, 10*time.Minute)
	fresh := e.as(t, "p1", auth.RolePatient, time.Minute)

	// The ordinary message's attachment opens without a recent sign-in
	// (once its message is known: the service waits for it briefly).
	_, got, err := e.download(stale, plain.GetName())
	require.NoError(t, err)
	require.Equal(t, tf.PDF(), got)
	_, _, err = e.download(stale, own.GetName())
	require.NoError(t, err)

	// The sensitive one needs it.
	_, _, err = e.download(stale, secret.GetName())
	requireRefused(t, err, codes.FailedPrecondition, errs.ReasonStepUpRequired)
	require.Equal(t, "Sign in again to view this sensitive attachment", status.Convert(err).Message())
	denied(t, e.js, "patients/p1", "attachment.download", secret.GetName(), errs.ReasonStepUpRequired)
	_, err = e.client.GetAttachment(stale, &attachmentv1.GetAttachmentRequest{Name: secret.GetName()})
	requireRefused(t, err, codes.FailedPrecondition, errs.ReasonStepUpRequired)

	_, got, err = e.download(fresh, secret.GetName())
	require.NoError(t, err)
	require.Equal(t, tf.PDF(), got)
	// Staff are never asked to step up.
	_, _, err = e.download(e.as(t, "dr-b", auth.RoleHygienist, 24*time.Hour), secret.GetName())
	require.NoError(t, err)
}
