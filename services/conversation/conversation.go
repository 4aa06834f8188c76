package conversation

import (
	"context"
	"errors"
	"flag"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/conversation/internal/adapters"
	"github.com/clinicchat/clinicchat/services/conversation/internal/app"
	"github.com/clinicchat/clinicchat/services/conversation/internal/grpcapi"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// projectionBatch is how many message.created events the projection
// applies in one transaction at most.
const projectionBatch = 64

// Config is the service's own configuration.
type Config struct {
	DatabaseDSN          string
	PreferencesAddr      string        // standalone binary only
	ArchiveAfter         time.Duration // idle time before a thread is archived
	ArchiveSweepInterval time.Duration // how often the sweeper looks
	// NoNotificationRequests: new messages publish no
	// conversation.notification.requested events, and a patient message's
	// recipients are not read for them. For a deployment where no notifier
	// consumes them (the all-in-one without --nats-listen, where none can
	// subscribe; a stack whose operators run none,
	// --notification-requests=false): there they would only be stored for 7
	// days, unread, at ~10% of the CPU of a message.
	NoNotificationRequests bool
}

// Flags registers the service-specific flags (the common ones are svcmain's).
func (c *Config) Flags(fs *flag.FlagSet) {
	fs.StringVar(&c.PreferencesAddr, "preferences-addr", "preferences:9090", "preferences service gRPC address")
	fs.DurationVar(&c.ArchiveAfter, "archive-after", 8760*time.Hour, "archive a conversation with no message for this long")
	fs.DurationVar(&c.ArchiveSweepInterval, "archive-sweep-interval", time.Hour, "how often to look for idle conversations")
	fs.BoolFunc("notification-requests", "publish a conversation.notification.requested event for each recipient of a new message, for an outside push/e-mail/SMS notifier; false where none runs (default true)",
		func(v string) error {
			on, err := strconv.ParseBool(v)
			c.NoNotificationRequests = !on
			return err
		})
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var problems []error
	if c.DatabaseDSN == "" {
		problems = append(problems, errors.New("conversation: database DSN is required"))
	}
	if c.ArchiveAfter <= 0 {
		problems = append(problems, errors.New("conversation: --archive-after must be positive"))
	}
	if c.ArchiveSweepInterval <= 0 {
		problems = append(problems, errors.New("conversation: --archive-sweep-interval must be positive"))
	}
	return errors.Join(problems...)
}

// Deps are the service's collaborators.
type Deps struct {
	Log         *zap.Logger
	JS          jetstream.JetStream
	Preferences grpc.ClientConnInterface
	// PracticeName names a practice in notifications; default: its id.
	PracticeName func(practice string) string
}

// Service is the conversation service.
type Service struct {
	cfg   Config
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
	a := app.New(st, adapters.Patients{Client: preferencesv1.NewPreferencesServiceClient(deps.Preferences)}, deps.Log)
	a.ArchiveAfter = cfg.ArchiveAfter
	a.NoNotificationRequests = cfg.NoNotificationRequests
	st.NoRecipients = cfg.NoNotificationRequests
	if deps.PracticeName == nil {
		deps.PracticeName = func(p string) string { return p }
	}
	return &Service{cfg: cfg, deps: deps, db: db, app: a, relay: outbox.NewRelay(db, deps.JS, deps.Log)}, nil
}

// Register registers the gRPC service.
func (s *Service) Register(g grpc.ServiceRegistrar) {
	conversationv1.RegisterConversationServiceServer(g, &grpcapi.Server{App: s.app})
}

// Run relays the outbox, runs the consumers and the archive sweeper until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.relay.Run(ctx) })
	g.Go(func() error {
		// A batch of messages per transaction (one commit), in stream order,
		// each acked after that commit.
		return natsx.ConsumeBatch(ctx, s.deps.JS, s.deps.Log, natsx.ConsumerSpec{
			Stream: natsx.StreamDelivery, Durable: "conversation-projection",
			FilterSubjects: natsx.Filter(natsx.SubjectMessageCreated),
			Positions:      natsx.DBPositions(s.db),
		}, projectionBatch, func(ctx context.Context, msgs []jetstream.Msg) []error {
			return s.app.HandleMessagesCreated(ctx, msgs, s.deps.PracticeName)
		})
	})
	g.Go(func() error {
		return natsx.Consume(ctx, s.deps.JS, s.deps.Log, natsx.ConsumerSpec{
			Stream: natsx.StreamPreferences, Durable: "conversation-patients",
			FilterSubjects: natsx.Filter(natsx.SubjectPatientUpserted),
		}, s.app.HandlePatientUpserted)
	})
	g.Go(func() error { return s.sweep(ctx) })
	return g.Wait()
}

func (s *Service) sweep(ctx context.Context) error {
	t := time.NewTicker(s.cfg.ArchiveSweepInterval)
	defer t.Stop()
	for {
		n, err := s.app.ArchiveIdle(ctx)
		if err != nil && ctx.Err() == nil {
			s.deps.Log.Error("archive sweep failed", zap.Error(err))
		} else if n > 0 {
			s.deps.Log.Info("archived idle conversations", zap.Int(logkeys.Count, n))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Close closes the database.
func (s *Service) Close() error { return s.db.Close() }

// Collectors are the service's Prometheus metrics: its outbox backlog
// and its database's commits.
func (s *Service) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.relay.Collector("conversation"), s.db.Collector()}
}

// Migrate applies the service's schema migrations to db (the "migrate"
// subcommand; New applies them too).
func Migrate(ctx context.Context, db *sqldb.DB) error {
	_, err := store.New(ctx, db)
	return err
}
