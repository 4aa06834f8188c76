package gateway

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

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
// thread as a streamed PDF for the patient's chart (staff only): the practice, the
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
	// The service lists newest first and a chart reads oldest first. A first
	// pass counts the messages and keeps each page's token (a few bytes a
	// page, on disk: see pageTokens); the PDF is then written from the
	// oldest page back, one page of messages in memory at a time. Pages are
	// cursors over an append-only thread, so the second pass reads exactly
	// the messages the first counted; the newest page is kept from the first
	// pass (a message sent meanwhile is not in this export).
	pass := exportPass{list: func(token string) (*deliveryv1.ListMessagesResponse, error) {
		return s.delivery.ListMessages(ctx, &deliveryv1.ListMessagesRequest{Parent: conv.GetName(), PageSize: exportPageSize, PageToken: token})
	}}
	defer pass.close()
	if err := pass.count(); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.recordAccess(ctx, &typev1.AccessRecorded{Meta: events.Meta(who, "conversation.export", conv.GetName(), time.Now())}); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/pdf")
	w.Header().Set("Content-Disposition", `attachment; filename="conversation-`+strings.TrimPrefix(conv.GetName(), "conversations/")+`.pdf"`)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	// A long export is bounded by time only: each page pushes the write
	// deadline on, so a client that stops reading is still cut off.
	rc := http.NewResponseController(w)
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
	_ = rc.SetWriteDeadline(time.Now().Add(time.Minute))
	if err := writeThreadPDF(w, who.Practice, conv, patient, pass.summary, pass.oldestFirst, staffNames,
		func() { _ = rc.SetWriteDeadline(time.Now().Add(time.Minute)) }); err != nil {
		panic(http.ErrAbortHandler) // never a silently truncated PDF
	}
}

// exportPageSize is how many messages the export asks the service for at once.
const exportPageSize = 200

// exportPass walks a thread for the export: count, then oldestFirst.
type exportPass struct {
	list    func(token string) (*deliveryv1.ListMessagesResponse, error)
	summary threadSummary
	newest  []*deliveryv1.Message // the first page, newest first
	tokens  *pageTokens           // the tokens of the pages after it
}

// count reads the thread newest first, keeping the first page and the
// other pages' tokens, and sums it up for the heading.
func (p *exportPass) count() error {
	tokens, err := newPageTokens()
	if err != nil {
		return err
	}
	p.tokens = tokens
	for token := ""; ; {
		page, err := p.list(token)
		if err != nil {
			return err
		}
		msgs := page.GetMessages()
		if token == "" {
			p.newest = msgs
		} else if err := p.tokens.push(token); err != nil {
			return err
		}
		if len(msgs) > 0 {
			if p.summary.count == 0 {
				p.summary.newest = msgs[0].GetCreateTime().AsTime()
			}
			p.summary.oldest = msgs[len(msgs)-1].GetCreateTime().AsTime()
			p.summary.count += len(msgs)
		}
		if token = page.GetNextPageToken(); token == "" {
			return nil
		}
	}
}

// oldestFirst calls fn with every message counted, oldest first: the pages
// again from the last token back, then the first page.
func (p *exportPass) oldestFirst(fn func(*deliveryv1.Message) error) error {
	each := func(msgs []*deliveryv1.Message) error {
		for i := len(msgs) - 1; i >= 0; i-- {
			if err := fn(msgs[i]); err != nil {
				return err
			}
		}
		return nil
	}
	err := p.tokens.popAll(func(token string) error {
		page, err := p.list(token)
		if err != nil {
			return err
		}
		return each(page.GetMessages())
	})
	if err != nil {
		return err
	}
	return each(p.newest)
}

func (p *exportPass) close() {
	if p.tokens != nil {
		p.tokens.close()
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

// threadSummary is what the PDF's heading says about the messages.
type threadSummary struct {
	count          int
	oldest, newest time.Time
}

// writeThreadPDF lays the thread out on A4 pages and streams them to w: the
// heading, then each message that each calls fn with, oldest first. Memory
// holds one page and one message at a time.
func writeThreadPDF(w io.Writer, practice string, conv *conversationv1.Conversation, patient *preferencesv1.Patient,
	sum threadSummary, each func(func(*deliveryv1.Message) error) error, staffNames map[string]string, onPage func()) error {
	pdf, err := newStreamPDF(w, "Conversation "+conv.GetName(), onPage)
	if err != nil {
		return err
	}
	pdf.text("B", 16, 22, "Chat conversation for the patient's chart")
	pdf.text("", 10, 14, "Practice: "+practice)
	pdf.text("", 10, 14, "Patient: "+patient.GetDisplayName()+" ("+conv.GetPatient()+")")
	pdf.text("", 10, 14, "Date of birth: "+patient.GetDateOfBirth())
	from, to := "no messages", ""
	if sum.count > 0 {
		from = sum.oldest.UTC().Format(time.RFC3339)
		to = " to " + sum.newest.UTC().Format(time.RFC3339)
	}
	pdf.text("", 10, 14, "Messages: "+fmt.Sprint(sum.count)+", "+from+to+" (UTC)")
	pdf.text("", 10, 14, "Exported: "+time.Now().UTC().Format(time.RFC3339))
	pdf.gap(10)
	err = each(func(m *deliveryv1.Message) error {
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
		pdf.rule()
		pdf.text("B", 10, 14, head)
		if m.GetText() != "" {
			pdf.text("", 10, 14, m.GetText())
		}
		for _, a := range m.GetAttachments() {
			pdf.text("I", 9, 12.75, fmt.Sprintf("Attachment: %s (%s, %d bytes)", a.GetFilename(), a.GetContentType(), a.GetSizeBytes()))
		}
		if art := m.GetArtifact(); art != nil {
			p := art.GetPreview()
			card := []string{art.GetType().String() + ":", p.GetTitle()}
			for _, x := range []string{p.GetSubtitle(), p.GetDate(), p.GetAmount()} {
				if x != "" {
					card = append(card, "- "+x)
				}
			}
			pdf.text("I", 9, 12.75, strings.Join(card, " "))
		}
		pdf.gap(6)
		return pdf.out.err
	})
	if err != nil {
		return err
	}
	return pdf.Close()
}
