package natsx

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Subjects: clinicchat.<service>.<kind>.<verb>. Each service publishes only
// under its own prefix, into its own stream.
const (
	SubjectConversationCreated       = "clinicchat.conversation.conversation.created"
	SubjectConversationUpdated       = "clinicchat.conversation.conversation.updated"
	SubjectConversationRead          = "clinicchat.conversation.conversation.read"
	SubjectConversationUser          = "clinicchat.conversation.userstate.changed"
	SubjectConversationAccess        = "clinicchat.conversation.access.recorded"
	SubjectMessageCreated            = "clinicchat.delivery.message.created"
	SubjectMessageUpdated            = "clinicchat.delivery.message.updated"
	SubjectNotification              = "clinicchat.conversation.notification.requested"
	SubjectDeliveryAccess            = "clinicchat.delivery.access.recorded"
	SubjectAttachmentUploaded        = "clinicchat.attachment.attachment.uploaded"
	SubjectAttachmentAccess          = "clinicchat.attachment.access.recorded"
	SubjectPatientUpserted           = "clinicchat.preferences.patient.upserted"
	SubjectPreferencesChanged        = "clinicchat.preferences.preferences.changed"
	SubjectPreferencesAccess         = "clinicchat.preferences.access.recorded"
	SubjectGatewayAccess             = "clinicchat.gateway.access.recorded"
	StreamConversation               = "CLINICCHAT_CONVERSATION"
	StreamDelivery                   = "CLINICCHAT_DELIVERY"
	StreamAttachment                 = "CLINICCHAT_ATTACHMENT"
	StreamPreferences                = "CLINICCHAT_PREFERENCES"
	StreamGateway                    = "CLINICCHAT_GATEWAY"
	DefaultRetention                 = 7 * 24 * time.Hour
	DefaultDuplicateWindow           = 10 * time.Minute
	defaultStreamMaxBytes      int64 = 8 << 30
)

// StreamsConfig parameterizes the stream declarations.
type StreamsConfig struct {
	Replicas  int           // 1 embedded, 3 in a cluster
	Retention time.Duration // how long events stay (the SSE resume window); default 7 days
}

// Streams returns clinicchat's streams as data.
func Streams(cfg StreamsConfig) []jetstream.StreamConfig {
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	mk := func(name, prefix, desc string) jetstream.StreamConfig {
		return jetstream.StreamConfig{
			Name:        name,
			Description: desc,
			Subjects:    []string{prefix + ".>"},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      cfg.Retention,
			MaxBytes:    defaultStreamMaxBytes,
			Duplicates:  DefaultDuplicateWindow,
			Replicas:    cfg.Replicas,
			Discard:     jetstream.DiscardOld,
		}
	}
	return []jetstream.StreamConfig{
		mk(StreamConversation, "clinicchat.conversation", "conversation service events"),
		mk(StreamDelivery, "clinicchat.delivery", "delivery service events: messages, receipts, notifications"),
		mk(StreamAttachment, "clinicchat.attachment", "attachment service events"),
		mk(StreamPreferences, "clinicchat.preferences", "preferences service events"),
		mk(StreamGateway, "clinicchat.gateway", "gateway access events"),
	}
}

// EnsureStreams creates or updates every stream to match its declaration.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, cfg StreamsConfig) error {
	for _, sc := range Streams(cfg) {
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("reconcile stream %s: %w", sc.Name, err)
		}
	}
	return nil
}
