// Package grpcapi serves auditv1.AuditService: it converts between protos and
// the app layer, which authorizes every call.
package grpcapi

import (
	"context"

	"golang.org/x/mod/sumdb/tlog"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/clinicchat/clinicchat/proto/clinicchat/audit/v1"
	"github.com/clinicchat/clinicchat/services/audit/internal/app"
	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
)

// Server implements auditv1.AuditServiceServer.
type Server struct {
	auditv1.UnimplementedAuditServiceServer
	app *app.App
}

// New returns the gRPC server of a.
func New(a *app.App) *Server { return &Server{app: a} }

// ListAuditEvents implements auditv1.AuditServiceServer.
func (s *Server) ListAuditEvents(ctx context.Context, req *auditv1.ListAuditEventsRequest) (*auditv1.ListAuditEventsResponse, error) {
	p, err := s.app.List(ctx, req.GetFilter(), req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	out := &auditv1.ListAuditEventsResponse{NextPageToken: p.NextPageToken, AuditEvents: make([]*auditv1.AuditEvent, len(p.Records))}
	for i, r := range p.Records {
		out.AuditEvents[i] = ToProto(r)
		out.AuditEvents[i].Integrity = integrity[p.Integrity[i]]
	}
	return out, nil
}

var integrity = map[app.Integrity]auditv1.AuditEvent_Integrity{
	app.IntegrityVerified:   auditv1.AuditEvent_VERIFIED,
	app.IntegrityTampered:   auditv1.AuditEvent_TAMPERED,
	app.IntegrityUnverified: auditv1.AuditEvent_UNVERIFIED,
}

// ExportAuditEvents implements auditv1.AuditServiceServer.
func (s *Server) ExportAuditEvents(req *auditv1.ExportAuditEventsRequest, stream auditv1.AuditService_ExportAuditEventsServer) error {
	return s.app.Export(stream.Context(), req.GetFilter(), func(r domain.Record, v app.Integrity) error {
		e := ToProto(r)
		e.Integrity = integrity[v]
		return stream.Send(e)
	})
}

// VerifyAuditLog implements auditv1.AuditServiceServer.
func (s *Server) VerifyAuditLog(ctx context.Context, req *auditv1.VerifyAuditLogRequest) (*auditv1.VerifyAuditLogResponse, error) {
	kept, err := app.ParseKept(req.GetCheckpointTreeSize(), req.GetCheckpointRootHash())
	if err != nil {
		return nil, err
	}
	res, err := s.app.Verify(ctx, kept)
	if err != nil {
		return nil, err
	}
	out := &auditv1.VerifyAuditLogResponse{
		Valid:         res.Valid,
		Checked:       int32(res.Checked),
		TreeSize:      int32(res.TreeSize),
		FirstBadIndex: int32(res.FirstBadIndex),
		Reason:        res.Reason,
	}
	if res.Valid {
		out.RootHash = res.Root.String()
	}
	return out, nil
}

// GetCheckpoint implements auditv1.AuditServiceServer.
func (s *Server) GetCheckpoint(ctx context.Context, _ *auditv1.GetCheckpointRequest) (*auditv1.Checkpoint, error) {
	c, err := s.app.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	return &auditv1.Checkpoint{TreeSize: int32(c.Size), RootHash: c.Root.String(), Note: c.Note}, nil
}

// GetInclusionProof implements auditv1.AuditServiceServer.
func (s *Server) GetInclusionProof(ctx context.Context, req *auditv1.GetInclusionProofRequest) (*auditv1.GetInclusionProofResponse, error) {
	p, size, err := s.app.InclusionProof(ctx, req.GetIndex(), req.GetTreeSize())
	if err != nil {
		return nil, err
	}
	return &auditv1.GetInclusionProofResponse{Hashes: hashStrings(p), TreeSize: size}, nil
}

// GetConsistencyProof implements auditv1.AuditServiceServer.
func (s *Server) GetConsistencyProof(ctx context.Context, req *auditv1.GetConsistencyProofRequest) (*auditv1.GetConsistencyProofResponse, error) {
	p, err := s.app.ConsistencyProof(ctx, req.GetFromTreeSize(), req.GetToTreeSize())
	if err != nil {
		return nil, err
	}
	return &auditv1.GetConsistencyProofResponse{Hashes: hashStrings(p)}, nil
}

func hashStrings(hs []tlog.Hash) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.String() // base64
	}
	return out
}

// ToProto is the API form of a record.
func ToProto(r domain.Record) *auditv1.AuditEvent {
	outcome := auditv1.AuditEvent_ALLOWED
	if r.Outcome == domain.OutcomeDenied {
		outcome = auditv1.AuditEvent_DENIED
	}
	return &auditv1.AuditEvent{
		Name:      "auditEvents/" + r.EventID,
		Index:     int32(r.Index),
		Time:      timestamppb.New(r.Time),
		Practice:  r.Practice,
		Actor:     r.Actor,
		ActorRole: r.ActorRole,
		Action:    r.Action,
		Resource:  r.Resource,
		Outcome:   outcome,
		Detail:    r.Detail,
		Hash:      r.Hash.String(),
	}
}
