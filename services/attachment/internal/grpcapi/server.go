// Package grpcapi adapts the attachment application layer to gRPC: it turns
// the upload stream into chunks and streams a download in 64 KiB frames.
package grpcapi

import (
	"context"
	"errors"
	"io"

	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	"github.com/clinicchat/clinicchat/services/attachment/internal/app"
	"github.com/clinicchat/clinicchat/services/attachment/internal/domain"
)

// ChunkSize is the payload of one download frame (the proto's "up to 64 KiB").
const ChunkSize = 64 << 10

// Server implements attachmentv1.AttachmentServiceServer.
type Server struct {
	attachmentv1.UnimplementedAttachmentServiceServer
	App *app.App
}

// UploadAttachment implements the RPC. The client ends a complete upload
// with CloseSend; a canceled stream is an abandoned upload and keeps nothing.
func (s *Server) UploadAttachment(stream attachmentv1.AttachmentService_UploadAttachmentServer) error {
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return domain.ErrNoHeader
	}
	if err != nil {
		return err
	}
	h := first.GetHeader()
	if h == nil {
		return domain.ErrNoHeader
	}
	att, err := s.App.Upload(stream.Context(), app.UploadHeader{
		Conversation: h.GetConversation(), Filename: h.GetFilename(), DeclaredContentType: h.GetDeclaredContentType(),
	}, chunks{stream})
	if err != nil {
		return err
	}
	return stream.SendAndClose(app.ToProto(att))
}

// chunks reads the frames after the header.
type chunks struct {
	stream attachmentv1.AttachmentService_UploadAttachmentServer
}

func (c chunks) Next() ([]byte, error) {
	m, err := c.stream.Recv()
	if err != nil {
		return nil, err
	}
	if m.GetHeader() != nil {
		return nil, domain.ErrExtraHeader
	}
	return m.GetChunk(), nil
}

// GetAttachment implements the RPC.
func (s *Server) GetAttachment(ctx context.Context, r *attachmentv1.GetAttachmentRequest) (*attachmentv1.Attachment, error) {
	att, err := s.App.Get(ctx, r.GetName())
	if err != nil {
		return nil, err
	}
	return app.ToProto(att), nil
}

// DownloadAttachment implements the RPC: the metadata, then the bytes in
// 64 KiB frames. Each frame is sent only once the next read succeeded, so
// the last frame leaves only after the whole file matched its SHA-256: a
// corrupt file ends the stream with an error before it is complete.
func (s *Server) DownloadAttachment(r *attachmentv1.DownloadAttachmentRequest, stream attachmentv1.AttachmentService_DownloadAttachmentServer) error {
	d, err := s.App.Download(stream.Context(), r.GetName())
	if err != nil {
		return err
	}
	defer d.Content.Close()
	if err := stream.Send(&attachmentv1.DownloadAttachmentResponse{
		Frame: &attachmentv1.DownloadAttachmentResponse_Attachment{Attachment: app.ToProto(d.Attachment)},
	}); err != nil {
		return err
	}
	send := func(b []byte) error {
		return stream.Send(&attachmentv1.DownloadAttachmentResponse{Frame: &attachmentv1.DownloadAttachmentResponse_Chunk{Chunk: b}})
	}
	// Two buffers: one held back, one being filled. A sent frame is already
	// encoded when Send returns, so its buffer may be reused.
	bufs := [2][]byte{make([]byte, ChunkSize), make([]byte, ChunkSize)}
	var held []byte
	for i := 0; ; i++ {
		buf := bufs[i%2]
		n, err := io.ReadFull(d.Content, buf)
		end := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
		if err != nil && !end {
			return err
		}
		if n > 0 {
			if held != nil {
				if err := send(held); err != nil {
					return err
				}
			}
			held = buf[:n]
		}
		if end {
			if held != nil {
				return send(held)
			}
			return nil
		}
	}
}
