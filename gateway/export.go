package gateway

import (
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"

	auditv1 "github.com/clinicchat/clinicchat/proto/clinicchat/audit/v1"
)

const routeExport = "/v1/auditEvents:export"

// exportAudit streams the audit log as NDJSON, one AuditEvent per line
// oldest first, for a compliance officer (practice_admin; the audit service
// authorizes). GET /v1/auditEvents:export?filter=… takes ListAuditEvents'
// filter. An error before the first line answers as JSON; a failure later
// aborts the connection so a truncated export is never mistaken for a whole one.
func (s *Server) exportAudit(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	ctx, err := runtime.AnnotateContext(r.Context(), s.mux, r,
		"/clinicchat.audit.v1.AuditService/ExportAuditEvents", runtime.WithHTTPPathPattern(routeExport))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	stream, err := auditv1.NewAuditServiceClient(s.deps.Audit).ExportAuditEvents(ctx,
		&auditv1.ExportAuditEventsRequest{Filter: r.URL.Query().Get("filter")})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	first, err := stream.Recv()
	if err != nil && !errors.Is(err, io.EOF) {
		s.writeError(w, r, err)
		return
	}
	rc := http.NewResponseController(w)
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Content-Disposition", `attachment; filename="audit-log.ndjson"`)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	for ev := first; ev != nil; {
		line, err := s.marshaler.Marshal(ev)
		if err != nil {
			panic(http.ErrAbortHandler)
		}
		_ = rc.SetWriteDeadline(time.Now().Add(time.Minute))
		if _, err := w.Write(append(line, '\n')); err != nil {
			return
		}
		if ev, err = stream.Recv(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			panic(http.ErrAbortHandler) // never a silently truncated export
		}
	}
}
