package allinone_test

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	artifactv1 "github.com/clinicchat/clinicchat/proto/clinicchat/artifact/v1"
	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	auditv1 "github.com/clinicchat/clinicchat/proto/clinicchat/audit/v1"
	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
)

// matrixCallers are who calls every RPC: each staff role, the practice
// admin and a practice system of the demo practice; the thread's own
// patient (alice) and another patient of the practice (jose); a dentist of
// another practice; and no token.
var matrixCallers = []struct{ name, subject, role, practice string }{
	{"dentist", "dr-lee", "dentist", "demo"},
	{"hygienist", "hy-kim", "hygienist", "demo"},
	{"assistant", "as-roe", "assistant", "demo"},
	{"front_desk", "fd-ann", "front_desk", "demo"},
	{"practice_admin", "adm-bo", "practice_admin", "demo"},
	{"system", "pms", "system", "demo"},
	{"own_patient", "alice", "patient", "demo"},
	{"other_patient", "jose", "patient", "demo"},
	{"other_practice", "dr-x", "dentist", "other-practice"},
	{"no_token", "", "", ""},
}

// Outcomes in the matrix: "OK" or a gRPC code name.
const (
	ok   = "OK"
	nf   = "NotFound"
	pd   = "PermissionDenied"
	unau = "Unauthenticated"
)

// row is the expected outcome per caller, in matrixCallers' order.
type row [10]string

// allow is a row: the four staff roles share one outcome; no token is
// always UNAUTHENTICATED.
func allow(staff, admin, system, own, other, otherPractice string) row {
	return row{staff, staff, staff, staff, admin, system, own, other, otherPractice, unau}
}

// authzMatrix is every RPC of every clinicchat service with its expected
// outcome for each caller. A new RPC without a row fails
// TestAuthorizationMatrix.
var authzMatrix = map[string]row{
	//                                                                     staff roles, practice_admin, system, own patient, other patient, other practice
	"/clinicchat.conversation.v1.ConversationService/CreateConversation":           allow(ok, ok, ok, pd, pd, nf),
	"/clinicchat.conversation.v1.ConversationService/GetConversation":              allow(ok, ok, ok, ok, nf, nf),
	"/clinicchat.conversation.v1.ConversationService/ListConversations":            allow(ok, ok, ok, ok, ok, ok), // each sees their own
	"/clinicchat.conversation.v1.ConversationService/PinConversation":              allow(ok, ok, pd, pd, nf, nf),
	"/clinicchat.conversation.v1.ConversationService/UnpinConversation":            allow(ok, ok, pd, pd, nf, nf),
	"/clinicchat.conversation.v1.ConversationService/MuteConversation":             allow(ok, ok, pd, pd, nf, nf),
	"/clinicchat.conversation.v1.ConversationService/UnmuteConversation":           allow(ok, ok, pd, pd, nf, nf),
	"/clinicchat.conversation.v1.ConversationService/MarkConversationRead":         allow(ok, ok, ok, ok, nf, nf),
	"/clinicchat.conversation.v1.ConversationService/ResolveConversation":          allow(ok, ok, ok, ok, nf, nf),
	"/clinicchat.conversation.v1.ConversationService/AssignConversation":           allow(ok, ok, pd, pd, nf, nf),
	"/clinicchat.conversation.v1.ConversationService/ListStaff":                    allow(ok, ok, pd, pd, pd, ok), // their own practice's
	"/clinicchat.conversation.v1.ConversationService/ListMessageTemplates":         allow(ok, ok, pd, pd, pd, ok), // their own practice's
	"/clinicchat.conversation.v1.ConversationService/CreateMessageTemplate":        allow(pd, ok, pd, pd, pd, pd),
	"/clinicchat.conversation.v1.ConversationService/UpdateMessageTemplate":        allow(pd, nf, pd, pd, pd, pd), // no template "none"
	"/clinicchat.conversation.v1.ConversationService/DeleteMessageTemplate":        allow(pd, nf, pd, pd, pd, pd),
	"/clinicchat.delivery.v1.DeliveryService/CreateMessage":                        allow(ok, ok, ok, ok, nf, nf),
	"/clinicchat.delivery.v1.DeliveryService/GetMessage":                           allow(ok, ok, ok, ok, nf, nf),
	"/clinicchat.delivery.v1.DeliveryService/ListMessages":                         allow(ok, ok, ok, ok, nf, nf),
	"/clinicchat.delivery.v1.DeliveryService/MarkMessagesDelivered":                allow(ok, ok, pd, ok, nf, nf), // recipients only
	"/clinicchat.delivery.v1.DeliveryService/ListArtifacts":                        allow(ok, ok, ok, pd, pd, nf),
	"/clinicchat.attachment.v1.AttachmentService/UploadAttachment":                 allow(ok, ok, ok, ok, nf, nf),
	"/clinicchat.attachment.v1.AttachmentService/GetAttachment":                    allow(ok, ok, ok, ok, nf, nf),
	"/clinicchat.attachment.v1.AttachmentService/DownloadAttachment":               allow(ok, ok, ok, ok, nf, nf),
	"/clinicchat.preferences.v1.PreferencesService/UpsertPatient":                  allow(pd, ok, ok, pd, pd, pd),
	"/clinicchat.preferences.v1.PreferencesService/GetPatient":                     allow(ok, ok, ok, ok, nf, nf),
	"/clinicchat.preferences.v1.PreferencesService/ListPatients":                   allow(ok, ok, ok, pd, pd, ok), // their own practice's
	"/clinicchat.preferences.v1.PreferencesService/GetCommunicationPreferences":    allow(ok, ok, ok, ok, nf, nf),
	"/clinicchat.preferences.v1.PreferencesService/UpdateCommunicationPreferences": allow(pd, pd, pd, ok, nf, pd),
	"/clinicchat.audit.v1.AuditService/ListAuditEvents":                            allow(pd, ok, pd, pd, pd, pd),
	"/clinicchat.audit.v1.AuditService/ExportAuditEvents":                          allow(pd, ok, pd, pd, pd, pd),
	"/clinicchat.audit.v1.AuditService/VerifyAuditLog":                             allow(pd, ok, pd, pd, pd, pd),
	"/clinicchat.audit.v1.AuditService/GetCheckpoint":                              allow(pd, ok, pd, pd, pd, pd),
	"/clinicchat.audit.v1.AuditService/GetInclusionProof":                          allow(pd, ok, pd, pd, pd, pd),
	"/clinicchat.audit.v1.AuditService/GetConsistencyProof":                        allow(pd, ok, pd, pd, pd, pd),
	// The demo provider (dev mode only) answers a practice's own records
	// to its staff, and to a patient their own.
}

// TestAuthorizationMatrix calls every RPC of every clinicchat service in the
// proto registry over the public gRPC address, as every caller, and
// compares the outcome with authzMatrix. MATRIX_PRINT=1 prints what it saw.
func TestAuthorizationMatrix(t *testing.T) {
	in := start(t, t.TempDir())
	h := harness{t: t, in: in}
	lee := h.as("dr-lee", "dentist")
	conv := lee.startConversation("alice")
	msg := lee.send(conv.Name, "hello", "matrix-1")
	code, att := lee.upload(conv.Name, "x-ray.png", "image/png", tinyPNG())
	require.Equal(t, 200, code)
	attName, _ := att["name"].(string)

	cc, err := grpc.NewClient(in.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer cc.Close()

	// Every RPC in the registry.
	var methods []protoreflect.MethodDescriptor
	protoregistry.GlobalFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		if !strings.HasPrefix(string(fd.Package()), "clinicchat.") {
			return true
		}
		for i := 0; i < fd.Services().Len(); i++ {
			sd := fd.Services().Get(i)
			if sd.FullName() == "clinicchat.artifact.v1.ArtifactProviderService" {
				// Practice systems implement it; clinicchat only calls it,
				// with its own credential (never on the public address).
				continue
			}
			for j := 0; j < sd.Methods().Len(); j++ {
				methods = append(methods, sd.Methods().Get(j))
			}
		}
		return true
	})
	sort.Slice(methods, func(i, j int) bool { return methods[i].FullName() < methods[j].FullName() })
	require.NotEmpty(t, methods)

	n := 0
	request := func(full string) proto.Message {
		n++
		rid := fmt.Sprintf("matrix-%d", n)
		appt := artifactv1.Artifact_APPOINTMENT
		switch full {
		case "/clinicchat.conversation.v1.ConversationService/CreateConversation":
			return &conversationv1.CreateConversationRequest{Conversation: &conversationv1.Conversation{Patient: "patients/alice"}}
		case "/clinicchat.conversation.v1.ConversationService/ListConversations":
			return &conversationv1.ListConversationsRequest{}
		case "/clinicchat.conversation.v1.ConversationService/AssignConversation":
			return &conversationv1.AssignConversationRequest{Name: conv.Name}
		case "/clinicchat.conversation.v1.ConversationService/ListStaff":
			return &conversationv1.ListStaffRequest{}
		case "/clinicchat.conversation.v1.ConversationService/ListMessageTemplates":
			return &conversationv1.ListMessageTemplatesRequest{}
		case "/clinicchat.conversation.v1.ConversationService/CreateMessageTemplate":
			return &conversationv1.CreateMessageTemplateRequest{MessageTemplate: &conversationv1.MessageTemplate{Title: rid, Text: "See you soon"}}
		case "/clinicchat.conversation.v1.ConversationService/UpdateMessageTemplate":
			return &conversationv1.UpdateMessageTemplateRequest{MessageTemplate: &conversationv1.MessageTemplate{Name: "messageTemplates/none", Title: "x", Text: "y"}}
		case "/clinicchat.conversation.v1.ConversationService/DeleteMessageTemplate":
			return &conversationv1.DeleteMessageTemplateRequest{Name: "messageTemplates/none"}
		case "/clinicchat.delivery.v1.DeliveryService/CreateMessage":
			return &deliveryv1.CreateMessageRequest{Parent: conv.Name, Text: "hi", RequestId: rid}
		case "/clinicchat.delivery.v1.DeliveryService/GetMessage":
			return &deliveryv1.GetMessageRequest{Name: msg.Name}
		case "/clinicchat.delivery.v1.DeliveryService/ListMessages":
			return &deliveryv1.ListMessagesRequest{Parent: conv.Name}
		case "/clinicchat.delivery.v1.DeliveryService/MarkMessagesDelivered":
			return &deliveryv1.MarkMessagesDeliveredRequest{Parent: conv.Name, UpToSeq: 1}
		case "/clinicchat.delivery.v1.DeliveryService/ListArtifacts":
			return &deliveryv1.ListArtifactsRequest{Parent: "patients/alice", Type: appt}
		case "/clinicchat.attachment.v1.AttachmentService/GetAttachment":
			return &attachmentv1.GetAttachmentRequest{Name: attName}
		case "/clinicchat.attachment.v1.AttachmentService/DownloadAttachment":
			return &attachmentv1.DownloadAttachmentRequest{Name: attName}
		case "/clinicchat.preferences.v1.PreferencesService/UpsertPatient":
			return &preferencesv1.UpsertPatientRequest{Patient: &preferencesv1.Patient{ExternalId: "PMS-" + rid,
				DisplayName: "Matrix Test", DateOfBirth: "1990-01-01"}}
		case "/clinicchat.preferences.v1.PreferencesService/GetPatient":
			return &preferencesv1.GetPatientRequest{Name: "patients/alice"}
		case "/clinicchat.preferences.v1.PreferencesService/ListPatients":
			return &preferencesv1.ListPatientsRequest{}
		case "/clinicchat.preferences.v1.PreferencesService/GetCommunicationPreferences":
			return &preferencesv1.GetCommunicationPreferencesRequest{Name: "patients/alice/communicationPreferences"}
		case "/clinicchat.preferences.v1.PreferencesService/UpdateCommunicationPreferences":
			return &preferencesv1.UpdateCommunicationPreferencesRequest{CommunicationPreferences: &preferencesv1.CommunicationPreferences{
				Name: "patients/alice/communicationPreferences", ChatOptIn: true}}
		case "/clinicchat.audit.v1.AuditService/ListAuditEvents":
			return &auditv1.ListAuditEventsRequest{}
		case "/clinicchat.audit.v1.AuditService/ExportAuditEvents":
			return &auditv1.ExportAuditEventsRequest{}
		case "/clinicchat.audit.v1.AuditService/VerifyAuditLog":
			return &auditv1.VerifyAuditLogRequest{}
		case "/clinicchat.audit.v1.AuditService/GetCheckpoint":
			return &auditv1.GetCheckpointRequest{}
		case "/clinicchat.audit.v1.AuditService/GetInclusionProof":
			return &auditv1.GetInclusionProofRequest{Index: 0, TreeSize: 1}
		case "/clinicchat.audit.v1.AuditService/GetConsistencyProof":
			return &auditv1.GetConsistencyProofRequest{FromTreeSize: 1, ToTreeSize: 1}
		case "/clinicchat.artifact.v1.ArtifactProviderService/ListArtifactRecords":
			return &artifactv1.ListArtifactRecordsRequest{Practice: "demo", Patient: "patients/alice", Type: appt}
		case "/clinicchat.artifact.v1.ArtifactProviderService/GetArtifactRecord":
			return &artifactv1.GetArtifactRecordRequest{Practice: "demo", Patient: "patients/alice", Type: appt, Ref: "x"}
		}
		// The conversation RPCs that take only its name.
		if strings.HasPrefix(full, "/clinicchat.conversation.v1.ConversationService/") {
			return &conversationv1.GetConversationRequest{Name: conv.Name} // same wire shape: name = 1
		}
		return nil
	}

	var printed, mismatches []string
	for _, md := range methods {
		full := "/" + string(md.Parent().FullName()) + "/" + string(md.Name())
		want, hasRow := authzMatrix[full]
		if !hasRow {
			mismatches = append(mismatches, full+" has no row in authzMatrix: add what every caller may do")
		}
		got := make([]string, len(matrixCallers))
		for i, c := range matrixCallers {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			if c.subject != "" {
				tok, err := in.DevIssuer.Issue(c.subject, c.role, c.practice, "", 0)
				require.NoError(t, err)
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
			}
			var err error
			if full == "/clinicchat.attachment.v1.AttachmentService/UploadAttachment" {
				err = matrixUpload(ctx, cc, conv.Name)
			} else {
				req := request(full)
				require.NotNil(t, req, "%s: add its request to the matrix test", full)
				err = invoke(ctx, cc, md, full, req)
			}
			cancel()
			got[i] = ok
			if err != nil {
				got[i] = status.Code(err).String()
			}
		}
		printed = append(printed, fmt.Sprintf("%-80s %q", full, got))
		for i, c := range matrixCallers {
			if want[i] != got[i] {
				mismatches = append(mismatches, fmt.Sprintf("%s as %s: want %s, got %s", full, c.name, want[i], got[i]))
			}
		}
	}
	if os.Getenv("MATRIX_PRINT") != "" {
		t.Log("\n" + strings.Join(printed, "\n"))
	}
	require.Empty(t, mismatches, "outcomes that differ from authzMatrix")
	require.Len(t, authzMatrix, len(methods), "authzMatrix has rows for RPCs that no longer exist")
}

// invoke calls a unary or server-streaming RPC and returns its first error.
func invoke(ctx context.Context, cc *grpc.ClientConn, md protoreflect.MethodDescriptor, full string, req proto.Message) error {
	resp := dynamicpb.NewMessage(md.Output())
	if !md.IsStreamingServer() {
		return cc.Invoke(ctx, full, req, resp)
	}
	st, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, full)
	if err != nil {
		return err
	}
	if err := st.SendMsg(req); err != nil {
		return err
	}
	if err := st.CloseSend(); err != nil {
		return err
	}
	return st.RecvMsg(resp)
}

// matrixUpload uploads a small PNG to the conversation.
func matrixUpload(ctx context.Context, cc *grpc.ClientConn, conv string) error {
	up, err := attachmentv1.NewAttachmentServiceClient(cc).UploadAttachment(ctx)
	if err != nil {
		return err
	}
	if err := up.Send(&attachmentv1.UploadAttachmentRequest{Frame: &attachmentv1.UploadAttachmentRequest_Header_{
		Header: &attachmentv1.UploadAttachmentRequest_Header{Conversation: conv, Filename: "x.png", DeclaredContentType: "image/png"}}}); err != nil {
		_, rerr := up.CloseAndRecv()
		return rerr
	}
	if err := up.Send(&attachmentv1.UploadAttachmentRequest{Frame: &attachmentv1.UploadAttachmentRequest_Chunk{Chunk: tinyPNG()}}); err != nil {
		_, rerr := up.CloseAndRecv()
		return rerr
	}
	_, err = up.CloseAndRecv()
	return err
}

// tinyPNG is a 1×1 PNG image.
func tinyPNG() []byte {
	var b bytes.Buffer
	_ = png.Encode(&b, image.NewGray(image.Rect(0, 0, 1, 1)))
	return b.Bytes()
}
