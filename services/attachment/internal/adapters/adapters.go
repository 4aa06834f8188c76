// Package adapters implements the attachment service's ports: the
// conversation service over gRPC (every call runs as the caller, whose token
// the connection forwards, so the conversation service authorizes the same
// person) and the blob directory.
package adapters

import (
	"context"
	"io"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	"github.com/clinicchat/clinicchat/services/attachment/internal/app"
	"github.com/clinicchat/clinicchat/services/attachment/internal/blob"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/ids"
)

// Conversations is the conversation service.
type Conversations struct {
	Client conversationv1.ConversationServiceClient
}

var _ app.Conversations = Conversations{}

// Resolve implements app.Conversations with ResolveConversation.
func (c Conversations) Resolve(ctx context.Context, id string) (app.ConversationRef, error) {
	conv, err := c.Client.ResolveConversation(ctx, &conversationv1.ResolveConversationRequest{Name: "conversations/" + id})
	if err != nil {
		return app.ConversationRef{}, errs.FromStatus(err)
	}
	p, ok := ids.Parse(conv.GetPatient(), "patients")
	if !ok {
		return app.ConversationRef{}, errs.NotFound("Conversation not found")
	}
	return app.ConversationRef{ID: id, PatientID: p[0]}, nil
}

// Blobs is the blob directory.
type Blobs struct {
	Store *blob.Store
}

var _ app.Blobs = Blobs{}

// Create implements app.Blobs.
func (b Blobs) Create() (app.TempBlob, error) { return b.Store.Create() }

// Open implements app.Blobs.
// The bytes are decrypted as they are read; the size is the plaintext's.
func (b Blobs) Open(id string) (io.ReadCloser, int64, error) { return b.Store.Read(id) }

// Remove implements app.Blobs.
func (b Blobs) Remove(id string) error { return b.Store.Remove(id) }
