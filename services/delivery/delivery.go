package delivery

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

	artifactv1 "github.com/clinicchat/clinicchat/proto/clinicchat/artifact/v1"
	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/delivery/internal/adapters"
	"github.com/clinicchat/clinicchat/services/delivery/internal/app"
	"github.com/clinicchat/clinicchat/services/delivery/internal/grpcapi"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/policy/messageview"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// Config is the service's own configuration.
type Config struct {
	DatabaseDSN      string
	ConversationAddr string // standalone binary only
	PreferencesAddr  string
	AttachmentAddr   string
	// ArtifactProvider: the practice system's ArtifactProvider (standalone
	// binary; no address: none connected).
	ArtifactProvider ArtifactProviderConfig
	StepUpWindow     time.Duration
}

// Flags registers the service-specific flags (the common ones are svcmain's).
func (c *Config) Flags(fs *flag.FlagSet) {
	fs.StringVar(&c.ConversationAddr, "conversation-addr", "conversation:9090", "conversation service gRPC address")
	fs.StringVar(&c.PreferencesAddr, "preferences-addr", "preferences:9090", "preferences service gRPC address")
	fs.StringVar(&c.AttachmentAddr, "attachment-addr", "attachment:9090", "attachment service gRPC address")
	c.ArtifactProvider.Flags(fs)
	fs.DurationVar(&c.StepUpWindow, "step-up-window", messageview.DefaultStepUpWindow, "how recently a patient must have signed in to see a sensitive message")
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var problems []error
	if c.DatabaseDSN == "" {
		problems = append(problems, errors.New("delivery: database DSN is required"))
	}
	if c.StepUpWindow <= 0 {
		problems = append(problems, errors.New("delivery: --step-up-window must be positive"))
	}
	if err := c.ArtifactProvider.Validate(); err != nil {
		problems = append(problems, err)
	}
	return errors.Join(problems...)
}

// Deps are the service's collaborators. The connections to the other
// clinicchat services forward the caller's token; Artifacts is the practice
// system's ArtifactProvider and must carry the service's own credential
// (DialArtifactProvider), never the caller's token.
type Deps struct {
	Log           *zap.Logger
	JS            jetstream.JetStream
	Conversations grpc.ClientConnInterface
	Preferences   grpc.ClientConnInterface
	Attachments   grpc.ClientConnInterface
	Artifacts     grpc.ClientConnInterface // nil: no practice system connected
}

// Service is the delivery service.
type Service struct {
	deps  Deps
	db    *sqldb.DB
	app   *app.App
	relay *outbox.Relay
}

// New opens and migrates the database.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	db, err := sqldb.Open(ctx, cfg.DatabaseDSN)
	if err != nil {
		return nil, err
	}
	st, err := store.New(ctx, db)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	var arts app.Artifacts
	if deps.Artifacts != nil {
		arts = adapters.Artifacts{Client: artifactv1.NewArtifactProviderServiceClient(deps.Artifacts)}
	}
	a := app.New(st,
		&adapters.CachingConversations{Inner: adapters.Conversations{Client: conversationv1.NewConversationServiceClient(deps.Conversations)}},
		adapters.Patients{Client: preferencesv1.NewPreferencesServiceClient(deps.Preferences)},
		adapters.Attachments{Client: attachmentv1.NewAttachmentServiceClient(deps.Attachments)},
		arts, deps.Log)
	a.StepUpWindow = cfg.StepUpWindow
	return &Service{deps: deps, db: db, app: a, relay: outbox.NewRelay(db, deps.JS, deps.Log)}, nil
}

// Register registers the gRPC service.
func (s *Service) Register(g grpc.ServiceRegistrar) {
	deliveryv1.RegisterDeliveryServiceServer(g, &grpcapi.Server{App: s.app})
}

// Run relays the outbox and consumes read receipts until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.relay.Run(ctx) })
	g.Go(func() error {
		// One transaction per batch of read receipts (idempotent and
		// order-free), acked after its commit; batches paced to gather
		// (app.ReadConsumer).
		return natsx.ConsumeBatch(ctx, s.deps.JS, s.deps.Log, natsx.ConsumerSpec{
			Stream: natsx.StreamConversation, Durable: "delivery-receipts",
			FilterSubjects: natsx.Filter(natsx.SubjectConversationRead),
			Positions:      natsx.DBPositions(s.db),
		}, readBatch, s.app.ReadConsumer(app.DefaultReadWindow, readBatch))
	})
	return g.Wait()
}

// readBatch bounds the read receipts of one transaction.
const readBatch = 64

// Close closes the database.
func (s *Service) Close() error { return s.db.Close() }

// Collectors are the service's Prometheus metrics: its outbox backlog
// and its database's commits.
func (s *Service) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.relay.Collector("delivery"), s.db.Collector()}
}

// Migrate applies the service's schema migrations to db (the "migrate"
// subcommand; New applies them too).
func Migrate(ctx context.Context, db *sqldb.DB) error {
	_, err := store.New(ctx, db)
	return err
}
