package gateway

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-pdf/fpdf"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/events"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

const routeConversationExport = "/v1/{name=conversations/*}:export"

// exportConversation answers GET /v1/conversations/{c}:export with the whole
// thread as a PDF for the patient's chart (staff only): the practice, the
// patient (name, date of birth), the date range, and every message oldest
// first with sender name and role, time, status, attachment names and sizes
// and artifact cards; sensitive messages are included and marked. It pages
// through the thread over gRPC as the caller, so the services authorize every
// read; the export itself is audited as "conversation.export" on the gateway's
// access subject before any byte is sent (no audit record, no PDF).
func (s *Server) exportConversation(w http.ResponseWriter, r *http.Request, params map[string]string) {
	name := params["name"]
	ctx, err := runtime.AnnotateContext(r.Context(), s.mux, r,
		"/clinicchat.conversation.v1.ConversationService/GetConversation", runtime.WithHTTPPathPattern(routeConversationExport))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	who, ok := auth.FromContext(r.Context())
	if !ok {
		s.writeError(w, r, errs.Unauthenticated("Sign in again: no verified caller"))
		return
	}
	if !who.IsStaff() {
		refusal := errs.PermissionDenied("Only practice staff can export a conversation")
		_ = s.recordAccess(ctx, &typev1.AccessRecorded{Meta: events.Denied(who, "conversation.export", name, errs.Reason(refusal), time.Now())})
		s.writeError(w, r, refusal)
		return
	}
	conv, err := s.conversations.GetConversation(ctx, &conversationv1.GetConversationRequest{Name: name})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	patient, err := preferencesv1.NewPreferencesServiceClient(s.deps.Preferences).GetPatient(ctx,
		&preferencesv1.GetPatientRequest{Name: conv.GetPatient()})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	staffNames, err := s.staffNames(ctx)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var msgs []*deliveryv1.Message
	for token := ""; ; {
		page, err := s.delivery.ListMessages(ctx, &deliveryv1.ListMessagesRequest{Parent: conv.GetName(), PageSize: 200, PageToken: token})
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		msgs = append(msgs, page.GetMessages()...)
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	slices.Reverse(msgs) // the service lists newest first; a chart reads oldest first
	if err := s.recordAccess(ctx, &typev1.AccessRecorded{Meta: events.Meta(who, "conversation.export", conv.GetName(), time.Now())}); err != nil {
		s.writeError(w, r, err)
		return
	}
	doc := threadPDF(who.Practice, conv, patient, msgs, staffNames)
	w.Header().Set("Content-Type", "application/pdf")
	w.Header().Set("Content-Disposition", `attachment; filename="conversation-`+strings.TrimPrefix(conv.GetName(), "conversations/")+`.pdf"`)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if err := doc.Output(w); err != nil {
		panic(http.ErrAbortHandler) // never a silently truncated PDF
	}
}

// staffNames maps "users/u" to the display name the practice knows.
func (s *Server) staffNames(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	for token := ""; ; {
		page, err := s.conversations.ListStaff(ctx, &conversationv1.ListStaffRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			return nil, err
		}
		for _, m := range page.GetStaff() {
			out[m.GetName()] = m.GetDisplayName()
		}
		if token = page.GetNextPageToken(); token == "" {
			return out, nil
		}
	}
}

// recordAccess publishes an access event of the gateway's own (audited by
// the audit service) with the event id as Nats-Msg-Id.
func (s *Server) recordAccess(ctx context.Context, ev *typev1.AccessRecorded) error {
	if s.deps.JS == nil {
		return fmt.Errorf("record access: no NATS connection")
	}
	data, err := proto.Marshal(ev)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, upstreamTimeout)
	defer cancel()
	if _, err := s.deps.JS.Publish(ctx, natsx.Tenant(natsx.SubjectGatewayAccess, ev.GetMeta().GetPractice()), data, jetstream.WithMsgID(ev.GetMeta().GetId())); err != nil {
		return fmt.Errorf("record access: %w", err)
	}
	return nil
}

// threadPDF lays the thread out on A4 pages.
func threadPDF(practice string, conv *conversationv1.Conversation, patient *preferencesv1.Patient,
	msgs []*deliveryv1.Message, staffNames map[string]string) *fpdf.Fpdf {
	pdf := fpdf.New("P", "mm", "A4", "")
	pdf.SetTitle("Conversation "+conv.GetName(), true)
	pdf.SetCreator("clinicchat", true)
	pdf.SetAutoPageBreak(true, 15)
	tr := pdf.UnicodeTranslatorFromDescriptor("") // core fonts speak cp1252
	pdf.SetFooterFunc(func() {
		pdf.SetY(-12)
		pdf.SetFont("Helvetica", "I", 8)
		pdf.CellFormat(0, 8, fmt.Sprintf("Page %d", pdf.PageNo()), "", 0, "C", false, 0, "")
	})
	pdf.AddPage()
	line := func(style string, size float64, h float64, text string) {
		pdf.SetFont("Helvetica", style, size)
		pdf.MultiCell(0, h, tr(text), "", "L", false)
	}
	line("B", 16, 8, "Chat conversation for the patient's chart")
	line("", 10, 5, "Practice: "+practice)
	line("", 10, 5, "Patient: "+patient.GetDisplayName()+" ("+conv.GetPatient()+")")
	line("", 10, 5, "Date of birth: "+patient.GetDateOfBirth())
	from, to := "no messages", ""
	if len(msgs) > 0 {
		from = msgs[0].GetCreateTime().AsTime().UTC().Format(time.RFC3339)
		to = " to " + msgs[len(msgs)-1].GetCreateTime().AsTime().UTC().Format(time.RFC3339)
	}
	line("", 10, 5, "Messages: "+fmt.Sprint(len(msgs))+", "+from+to+" (UTC)")
	line("", 10, 5, "Exported: "+time.Now().UTC().Format(time.RFC3339))
	pdf.Ln(4)
	for _, m := range msgs {
		sender := m.GetSender()
		switch {
		case m.GetSenderDisplayName() != "":
			sender = m.GetSenderDisplayName() // the name at send time
		case m.GetSenderRole() == auth.RolePatient:
			sender = patient.GetDisplayName()
		case staffNames[m.GetSender()] != "":
			sender = staffNames[m.GetSender()]
		}
		head := fmt.Sprintf("%s (%s), %s, %s", sender, m.GetSenderRole(),
			m.GetCreateTime().AsTime().UTC().Format("2006-01-02 15:04:05"), m.GetStatus())
		if m.GetSensitive() {
			head += " [SENSITIVE]"
		}
		pdf.SetDrawColor(200, 200, 200)
		pdf.Line(pdf.GetX(), pdf.GetY(), 200, pdf.GetY())
		pdf.Ln(1)
		line("B", 10, 5, head)
		if m.GetText() != "" {
			line("", 10, 5, m.GetText())
		}
		for _, a := range m.GetAttachments() {
			line("I", 9, 4.5, fmt.Sprintf("Attachment: %s (%s, %d bytes)", a.GetFilename(), a.GetContentType(), a.GetSizeBytes()))
		}
		if art := m.GetArtifact(); art != nil {
			p := art.GetPreview()
			card := []string{art.GetType().String() + ":", p.GetTitle()}
			for _, x := range []string{p.GetSubtitle(), p.GetDate(), p.GetAmount()} {
				if x != "" {
					card = append(card, "- "+x)
				}
			}
			line("I", 9, 4.5, strings.Join(card, " "))
		}
		pdf.Ln(2)
	}
	return pdf
}
