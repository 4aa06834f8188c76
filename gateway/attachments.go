package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
)

// chunkSize is the payload of one upload or download frame (the proto's
// "up to 64 KiB").
const chunkSize = 64 << 10

// maxFormField bounds a non-file multipart part (conversation, filename).
const maxFormField = 4 << 10

// ioIdleTimeout bounds each read of an upload and each write of a download,
// instead of a deadline for the whole transfer (which a 25 MiB file on a
// slow line would exceed).
const ioIdleTimeout = time.Minute

// Multipart limits: the parts before "file" (form fields, unknown parts)
// and every part header among them share maxMultipartPreamble bytes, and
// there are at most maxMultipartParts of them; the bytes of a part header
// are buffered whole by mime/multipart, so this bounds the memory an upload
// can make the gateway hold before the file starts.
const (
	maxMultipartPreamble = 64 << 10
	maxMultipartParts    = 16
)

// budgetReader reads from r until budget bytes are used, then fails with
// errBudget; the budget can be raised as a request moves on.
type budgetReader struct {
	r      io.Reader
	budget int64
}

var errBudget = errors.New("multipart framing over its limit")

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.budget <= 0 {
		return 0, errBudget
	}
	if int64(len(p)) > b.budget {
		p = p[:b.budget]
	}
	n, err := b.r.Read(p)
	b.budget -= int64(n)
	return n, err
}

// tooLarge is the 413 of an attachment over the limit.
func (s *Server) tooLarge() *apiError {
	return newAPIError(codes.InvalidArgument, errs.ReasonAttachmentTooLarge, fmt.Sprintf(
		"The file is larger than %s (%s bytes); send a smaller file", humanBytes(s.cfg.MaxUploadBytes),
		groupDigits(s.cfg.MaxUploadBytes)))
}

// uploadSource is where an upload's bytes come from.
type uploadSource struct {
	conversation string
	filename     string
	contentType  string
	body         io.Reader
}

// upload handles POST /v1/attachments?conversation=conversations/c&filename=…
// with a raw body (its Content-Type declared) or multipart/form-data with the
// file in part "file". The bytes are streamed to
// AttachmentService.UploadAttachment in 64 KiB frames and never held whole;
// byte MaxUploadBytes+1 stops the upload with 413 before it is sent on.
func (s *Server) upload(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	src, aerr := s.uploadSource(w, r)
	if aerr != nil {
		s.writeError(w, r, aerr)
		return
	}
	ctx, err := runtime.AnnotateContext(r.Context(), s.mux, r,
		"/clinicchat.attachment.v1.AttachmentService/UploadAttachment", runtime.WithHTTPPathPattern(routeUpload))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// Canceling (not CloseSend) is how an upload is abandoned, so the service
	// never mistakes a cut-off file for a complete one.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := s.attachments.UploadAttachment(ctx)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	header := &attachmentv1.UploadAttachmentRequest{Frame: &attachmentv1.UploadAttachmentRequest_Header_{
		Header: &attachmentv1.UploadAttachmentRequest_Header{
			Conversation: src.conversation, Filename: src.filename, DeclaredContentType: src.contentType,
		},
	}}
	if err := stream.Send(header); err != nil {
		s.writeError(w, r, uploadError(stream, err))
		return
	}
	rc := http.NewResponseController(w)
	var total int64
	for {
		// A fresh buffer per frame: gRPC may still reference a sent message.
		buf := make([]byte, chunkSize)
		_ = rc.SetReadDeadline(time.Now().Add(ioIdleTimeout))
		n, rerr := io.ReadFull(src.body, buf)
		if n > 0 {
			total += int64(n)
			if total > s.cfg.MaxUploadBytes {
				cancel()
				s.log.Info("upload refused: too large", zap.String(logkeys.Conversation, src.conversation),
					zap.String(logkeys.Actor, actor(r)), zap.Int64("limit_bytes", s.cfg.MaxUploadBytes))
				s.writeError(w, r, s.tooLarge())
				return
			}
			frame := &attachmentv1.UploadAttachmentRequest{Frame: &attachmentv1.UploadAttachmentRequest_Chunk{Chunk: buf[:n]}}
			if err := stream.Send(frame); err != nil {
				s.writeError(w, r, uploadError(stream, err))
				return
			}
			s.metrics.uploadBytes.Add(float64(n))
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			cancel()
			var mbe *http.MaxBytesError
			if errors.As(rerr, &mbe) {
				s.writeError(w, r, s.tooLarge())
				return
			}
			s.log.Info("upload interrupted", zap.String(logkeys.Conversation, src.conversation), zap.Error(rerr))
			s.writeError(w, r, invalidArgument("The upload was interrupted before the whole file arrived; try again"))
			return
		}
	}
	att, err := stream.CloseAndRecv()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("attachment uploaded", zap.String("attachment", att.GetName()),
		zap.String(logkeys.Conversation, src.conversation), zap.Int64("size_bytes", total))
	s.writeProto(w, r, att)
}

// uploadError returns the service's own status when Send fails because the
// service already ended the stream (io.EOF), else err.
func uploadError(stream attachmentv1.AttachmentService_UploadAttachmentClient, err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := stream.CloseAndRecv(); rerr != nil {
			return rerr
		}
	}
	return err
}

// uploadSource reads the upload's parameters and finds its bytes.
func (s *Server) uploadSource(w http.ResponseWriter, r *http.Request) (*uploadSource, *apiError) {
	q := r.URL.Query()
	src := &uploadSource{conversation: q.Get("conversation"), filename: q.Get("filename")}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt == "multipart/form-data" {
		// The framing up to the file's first byte has a small budget; then
		// the file may take MaxUploadBytes+1 (upload detects the one byte
		// over) plus room for the closing boundary.
		body := &budgetReader{r: r.Body, budget: maxMultipartPreamble}
		r.Body = struct {
			io.Reader
			io.Closer
		}{body, r.Body}
		mr, err := r.MultipartReader()
		if err != nil {
			return nil, invalidArgument("The multipart body is malformed")
		}
		if err := s.findFilePart(mr, src); err != nil {
			return nil, err
		}
		body.budget += s.cfg.MaxUploadBytes + 1 + maxMultipartPreamble
	} else {
		if r.ContentLength > s.cfg.MaxUploadBytes {
			// The declared length is already too much: refuse before reading.
			return nil, s.tooLarge()
		}
		// One byte over the limit is read (so it is detected), never more.
		src.body = http.MaxBytesReader(w, r.Body, s.cfg.MaxUploadBytes+1)
		src.contentType = r.Header.Get("Content-Type")
	}
	var problems []string
	if !strings.HasPrefix(src.conversation, "conversations/") || len(src.conversation) == len("conversations/") {
		problems = append(problems, "the conversation query parameter must name a conversation (conversations/{conversation})")
	}
	if strings.TrimSpace(src.filename) == "" {
		problems = append(problems, "a filename is required (the filename query parameter, or the file part's filename)")
	}
	if len(problems) > 0 {
		return nil, invalidArgument("Cannot upload: " + strings.Join(problems, "; "))
	}
	return src, nil
}

// findFilePart advances mr to the part named "file", taking conversation and
// filename from earlier form fields when the query did not give them.
func (s *Server) findFilePart(mr *multipart.Reader, src *uploadSource) *apiError {
	for parts := 0; ; parts++ {
		if parts >= maxMultipartParts {
			return invalidArgument(fmt.Sprintf("The multipart body has more than %d parts before the file; put the file in a part named \"file\"", maxMultipartParts))
		}
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return invalidArgument("The multipart body has no part named \"file\"")
		}
		if errors.Is(err, errBudget) {
			return s.framingTooLarge()
		}
		if err != nil {
			return invalidArgument("The multipart body is malformed")
		}
		switch part.FormName() {
		case "file":
			if src.filename == "" {
				src.filename = part.FileName()
			}
			src.contentType = part.Header.Get("Content-Type")
			// The multipart framing is not counted against the limit; the
			// file's bytes are, in upload's loop.
			src.body = part
			return nil
		case "conversation", "filename":
			v, err := io.ReadAll(io.LimitReader(part, maxFormField+1))
			if errors.Is(err, errBudget) {
				return s.framingTooLarge()
			}
			if err != nil || len(v) > maxFormField {
				return invalidArgument("The multipart field " + part.FormName() + " is malformed or too long")
			}
			if part.FormName() == "conversation" && src.conversation == "" {
				src.conversation = string(v)
			}
			if part.FormName() == "filename" && src.filename == "" {
				src.filename = string(v)
			}
		default:
			if _, err := io.Copy(io.Discard, part); err != nil {
				if errors.Is(err, errBudget) {
					return s.framingTooLarge()
				}
				return invalidArgument("The multipart body is malformed: put the file in a part named \"file\"")
			}
		}
	}
}

// framingTooLarge is the 413 of multipart parts and headers before the file
// that pass their budget.
func (s *Server) framingTooLarge() *apiError {
	return newAPIError(codes.InvalidArgument, ReasonRequestTooLarge, fmt.Sprintf(
		"The multipart body has more than %d KiB of fields and headers before the file; send the file in a part named \"file\"",
		maxMultipartPreamble>>10))
}

// download handles GET /v1/attachments/{a}:download: the first frame of
// AttachmentService.DownloadAttachment gives the headers, the rest is copied
// through as it arrives. A failure after the headers aborts the response, so
// the client sees a truncated transfer, never a wrong file.
func (s *Server) download(w http.ResponseWriter, r *http.Request, params map[string]string) {
	name := params["name"]
	ctx, err := runtime.AnnotateContext(r.Context(), s.mux, r,
		"/clinicchat.attachment.v1.AttachmentService/DownloadAttachment", runtime.WithHTTPPathPattern(routeDownload))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := s.attachments.DownloadAttachment(ctx, &attachmentv1.DownloadAttachmentRequest{Name: name})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	first, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = errors.New("download stream ended before its metadata")
		}
		s.writeError(w, r, err)
		return
	}
	att := first.GetAttachment()
	if att == nil || att.GetSizeBytes() < 0 {
		s.writeError(w, r, errors.New("download stream did not start with the attachment's metadata"))
		return
	}
	h := w.Header()
	h.Set("Content-Type", safeContentType(att.GetContentType()))
	h.Set("Content-Length", strconv.FormatInt(int64(att.GetSizeBytes()), 10))
	h.Set("Content-Disposition", contentDisposition(att.GetFilename()))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", "default-src 'none'; sandbox")
	// Per-chunk write deadlines replace the server's whole-response one.
	rc := http.NewResponseController(w)
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
	w.WriteHeader(http.StatusOK)
	var sent int64
	for {
		frame, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.log.Warn("download failed mid-stream", zap.String("attachment", name), zap.Error(err))
			panic(http.ErrAbortHandler)
		}
		chunk := frame.GetChunk()
		if sent+int64(len(chunk)) > int64(att.GetSizeBytes()) {
			s.log.Error("download longer than its metadata says", zap.String("attachment", name))
			panic(http.ErrAbortHandler)
		}
		_ = rc.SetWriteDeadline(time.Now().Add(ioIdleTimeout))
		if _, err := w.Write(chunk); err != nil {
			return // the client went away
		}
		sent += int64(len(chunk))
	}
	if sent != int64(att.GetSizeBytes()) {
		s.log.Error("download shorter than its metadata says", zap.String("attachment", name))
		panic(http.ErrAbortHandler)
	}
}

// writeProto writes a successful response with the API's JSON options.
func (s *Server) writeProto(w http.ResponseWriter, r *http.Request, m proto.Message) {
	body, err := s.marshaler.Marshal(m)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, body)
}

// actor is the verified caller as a resource name, for logs.
func actor(r *http.Request) string {
	if id, ok := auth.FromContext(r.Context()); ok {
		return id.Principal()
	}
	return ""
}

// safeContentType returns ct when it is a well-formed media type, else
// application/octet-stream.
func safeContentType(ct string) string {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || !strings.Contains(mt, "/") {
		return "application/octet-stream"
	}
	return mime.FormatMediaType(mt, params)
}

// contentDisposition is "attachment" with the file name twice: an ASCII
// fallback (filename=) and the exact UTF-8 name (filename*=, RFC 6266/8187).
// Quotes, backslashes, control characters and path separators never reach
// the header unencoded.
func contentDisposition(name string) string {
	name = strings.TrimSpace(name)
	if name == "" {
		name = "attachment"
	}
	var ascii strings.Builder
	for _, r := range name {
		switch {
		case r < 0x20 || r >= 0x7f || r == '"' || r == '\\' || r == '/' || r == '%' || r == ';':
			ascii.WriteByte('_')
		default:
			ascii.WriteRune(r)
		}
	}
	var enc strings.Builder
	for _, b := range []byte(name) {
		if isAttrChar(b) {
			enc.WriteByte(b)
		} else {
			fmt.Fprintf(&enc, "%%%02X", b)
		}
	}
	return `attachment; filename="` + ascii.String() + `"; filename*=UTF-8''` + enc.String()
}

// isAttrChar reports RFC 8187's attr-char: the bytes left as they are.
func isAttrChar(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return strings.IndexByte("!#$&+-.^_`|~", b) >= 0
}

// humanBytes renders a limit such as 26214400 as "25 MiB".
func humanBytes(n int64) string {
	const mib = 1 << 20
	if n%mib == 0 {
		return strconv.FormatInt(n/mib, 10) + " MiB"
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

// groupDigits renders 26214400 as "26,214,400".
func groupDigits(n int64) string {
	s := strconv.FormatInt(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
