package preferences

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/preferences/internal/app"
	"github.com/clinicchat/clinicchat/services/preferences/internal/grpcapi"
	"github.com/clinicchat/clinicchat/services/preferences/internal/store"
)

// Config is the service's own configuration.
type Config struct {
	// DatabaseDSN is a SQLite file path or a postgres:// URL (the common
	// --database-dsn flag of svcmain).
	DatabaseDSN string
}

// Flags registers the service's own flags on fs. The preferences service has
// none beyond svcmain.Common's (--database-dsn is common); it exists so every
// service is configured the same way.
func (c *Config) Flags(fs *flag.FlagSet) {}

// Validate reports every problem of c at once.
func (c *Config) Validate() error {
	if c.DatabaseDSN == "" {
		return errors.New("preferences: a database DSN is required")
	}
	return nil
}

// Deps are what the service is given.
type Deps struct {
	Log *zap.Logger
	// JS publishes the outbox's events.
	JS jetstream.JetStream
}

// Service is the preferences service.
type Service struct {
	db    *sqldb.DB
	api   *grpcapi.Server
	relay *outbox.Relay
}

// New opens and migrates the database and builds the service.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Log == nil || deps.JS == nil {
		return nil, errors.New("preferences: Deps.Log and Deps.JS are required")
	}
	log := deps.Log
	db, err := sqldb.Open(ctx, cfg.DatabaseDSN)
	if err != nil {
		return nil, fmt.Errorf("preferences: %w", err)
	}
	st, err := store.New(ctx, db)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("preferences: %w", err)
	}
	return &Service{
		db:    db,
		api:   grpcapi.New(app.New(st, log, nil)),
		relay: outbox.NewRelay(db, deps.JS, log),
	}, nil
}

// Register registers the PreferencesService on s.
func (s *Service) Register(srv grpc.ServiceRegistrar) {
	preferencesv1.RegisterPreferencesServiceServer(srv, s.api)
}

// Run relays the outbox to JetStream until ctx ends; it returns nil then.
func (s *Service) Run(ctx context.Context) error { return s.relay.Run(ctx) }

// Close closes the database. Call it after Run has returned.
func (s *Service) Close() error { return s.db.Close() }

// Collectors are the service's Prometheus metrics: its outbox backlog
// and its database's commits.
func (s *Service) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.relay.Collector("preferences"), s.db.Collector()}
}

// Migrate applies the service's schema migrations to db (the "migrate"
// subcommand; New applies them too).
func Migrate(ctx context.Context, db *sqldb.DB) error {
	_, err := store.New(ctx, db)
	return err
}
