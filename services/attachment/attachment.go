package attachment

import (
	"context"
	"errors"
	"flag"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	"github.com/clinicchat/clinicchat/services/attachment/internal/adapters"
	"github.com/clinicchat/clinicchat/services/attachment/internal/app"
	"github.com/clinicchat/clinicchat/services/attachment/internal/blob"
	"github.com/clinicchat/clinicchat/services/attachment/internal/domain"
	"github.com/clinicchat/clinicchat/services/attachment/internal/grpcapi"
	"github.com/clinicchat/clinicchat/services/attachment/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/policy/messageview"
	"github.com/clinicchat/clinicchat/services/platform/ratelimit"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// MaxBytes is the largest attachment accepted: 26,214,400 bytes (25 MiB).
const MaxBytes = domain.MaxBytes

// ConsumerLinks is the durable consumer of delivery's MessageCreated events.
const ConsumerLinks = "attachment-links"

// Config is the service's own configuration.
type Config struct {
	// DatabaseDSN is a postgres:// URL or a SQLite file path (svcmain's
	// --database-dsn).
	DatabaseDSN string
	// BlobDir holds the attachment bytes; every replica must see the same
	// directory. Required.
	BlobDir string
	// ConversationAddr is the conversation service (standalone binary only).
	ConversationAddr string
	// StepUpWindow is how recently a patient must have signed in to open an
	// attachment of a sensitive message (default 5 minutes).
	StepUpWindow time.Duration
	// Encryption at rest (encryption.go).
	Encryption Encryption
	// PendingUploadQuota bounds the bytes of one identity's uploads that no
	// message carries yet (default 200 MiB).
	PendingUploadQuota int64
	// UnattachedTTL is how long an upload no message carries is kept
	// (default a day); UnattachedSweepInterval how often they are looked
	// for (default an hour).
	UnattachedTTL           time.Duration
	UnattachedSweepInterval time.Duration
	// LimitMetrics counts quota refusals (optional).
	LimitMetrics *ratelimit.Metrics
}

// Defaults of Config.
const (
	DefaultUnattachedTTL           = 24 * time.Hour
	DefaultUnattachedSweepInterval = time.Hour
)

// Flags registers the service-specific flags (the common ones are svcmain's).
func (c *Config) Flags(fs *flag.FlagSet) {
	fs.StringVar(&c.BlobDir, "blob-dir", "", "directory of the attachment bytes, shared by every replica (required)")
	fs.StringVar(&c.ConversationAddr, "conversation-addr", "conversation:9090", "conversation service gRPC address")
	fs.DurationVar(&c.StepUpWindow, "step-up-window", messageview.DefaultStepUpWindow, "how recently a patient must have signed in to open an attachment of a sensitive message")
	c.Encryption.Flags(fs)
	fs.Int64Var(&c.PendingUploadQuota, "pending-upload-quota", app.DefaultPendingQuota, "bytes of uploads not yet on a message that one identity may hold")
	fs.DurationVar(&c.UnattachedTTL, "unattached-ttl", DefaultUnattachedTTL, "remove uploads that no message carries after this long")
	fs.DurationVar(&c.UnattachedSweepInterval, "unattached-sweep-interval", DefaultUnattachedSweepInterval, "how often to look for uploads no message carries")
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var problems []error
	if c.DatabaseDSN == "" {
		problems = append(problems, errors.New("attachment: database DSN is required"))
	}
	if c.BlobDir == "" {
		problems = append(problems, errors.New("attachment: --blob-dir is required"))
	}
	if err := c.Encryption.Validate(); err != nil {
		problems = append(problems, err)
	}
	if c.StepUpWindow <= 0 {
		problems = append(problems, errors.New("attachment: --step-up-window must be positive"))
	}
	if c.PendingUploadQuota < 0 || c.UnattachedTTL < 0 || c.UnattachedSweepInterval < 0 {
		problems = append(problems, errors.New("attachment: --pending-upload-quota, --unattached-ttl and --unattached-sweep-interval must not be negative"))
	}
	return errors.Join(problems...)
}

// Deps are the service's collaborators. The gRPC connections must forward
// the caller's token (grpcx.Dial, grpcx.DialListener).
type Deps struct {
	Log *zap.Logger
	JS  jetstream.JetStream
	// Conversations reaches the conversation service: every access is
	// authorized with ResolveConversation as the caller. Required.
	Conversations grpc.ClientConnInterface
}

// Service is the attachment service.
type Service struct {
	cfg   Config
	deps  Deps
	db    *sqldb.DB
	app   *app.App
	relay *outbox.Relay
}

// New opens and migrates the database and opens the blob directory.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var problems []error
	if deps.Log == nil {
		problems = append(problems, errors.New("attachment: Deps.Log is required"))
	}
	if deps.JS == nil {
		problems = append(problems, errors.New("attachment: Deps.JS is required"))
	}
	if deps.Conversations == nil {
		problems = append(problems, errors.New("attachment: Deps.Conversations is required"))
	}
	if err := errors.Join(problems...); err != nil {
		return nil, err
	}
	keys, err := cfg.Encryption.keyring()
	if err != nil {
		return nil, err
	}
	blobs, err := blob.OpenEncrypted(cfg.BlobDir, keys)
	if err != nil {
		return nil, err
	}
	deps.Log.Info("attachments encrypted at rest", zap.String("kek_id", keys.CurrentID()))
	db, err := sqldb.Open(ctx, cfg.DatabaseDSN)
	if err != nil {
		return nil, err
	}
	st, err := store.New(ctx, db)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	a := app.New(st, adapters.Conversations{Client: conversationv1.NewConversationServiceClient(deps.Conversations)},
		adapters.Blobs{Store: blobs}, deps.Log, cfg.StepUpWindow)
	a.PendingQuota, a.Limits = cfg.PendingUploadQuota, cfg.LimitMetrics
	if cfg.UnattachedTTL == 0 {
		cfg.UnattachedTTL = DefaultUnattachedTTL
	}
	if cfg.UnattachedSweepInterval == 0 {
		cfg.UnattachedSweepInterval = DefaultUnattachedSweepInterval
	}
	return &Service{cfg: cfg, deps: deps, db: db, app: a, relay: outbox.NewRelay(db, deps.JS, deps.Log)}, nil
}

// Register registers the gRPC service.
func (s *Service) Register(g grpc.ServiceRegistrar) {
	attachmentv1.RegisterAttachmentServiceServer(g, &grpcapi.Server{App: s.app})
}

// Run relays the outbox and consumes delivery's MessageCreated events (which
// messages carry which attachments) until ctx ends; it then returns nil.
func (s *Service) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.relay.Run(ctx) })
	g.Go(func() error {
		return natsx.Consume(ctx, s.deps.JS, s.deps.Log, natsx.ConsumerSpec{
			Stream: natsx.StreamDelivery, Durable: ConsumerLinks,
			// Only the messages that may carry attachments (the others'
			// subjects end in natsx.NoAttachments).
			FilterSubjects: natsx.CreatedWithAttachments(),
		}, s.app.HandleMessageCreated)
	})
	g.Go(func() error { s.sweep(ctx); return nil })
	return g.Wait()
}

// sweep removes never-attached uploads at start and every
// UnattachedSweepInterval until ctx ends. A failed sweep is logged and
// retried at the next tick.
func (s *Service) sweep(ctx context.Context) {
	t := time.NewTicker(s.cfg.UnattachedSweepInterval)
	defer t.Stop()
	for {
		n, err := s.app.SweepUnattached(ctx, s.cfg.UnattachedTTL)
		if err != nil && ctx.Err() == nil {
			s.deps.Log.Warn("sweep of never-attached uploads failed", zap.Error(err))
		}
		if n > 0 {
			s.deps.Log.Info("never-attached uploads removed", zap.Int("count", n))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Close closes the database.
func (s *Service) Close() error { return s.db.Close() }

// Collectors are the service's Prometheus metrics: its outbox backlog
// and its database's commits.
func (s *Service) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.relay.Collector("attachment"), s.db.Collector()}
}

// Migrate applies the service's schema migrations to db (the "migrate"
// subcommand; New applies them too).
func Migrate(ctx context.Context, db *sqldb.DB) error {
	_, err := store.New(ctx, db)
	return err
}
