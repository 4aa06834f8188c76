package preferences

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

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
	// ReadLease lets callers keep a GetPatient answer for this long (zero:
	// never). Every write that changes a patient then returns only this long
	// after it committed (creating one, or changing nothing a lease after the
	// last change, needs no wait: grpcapi's outlast), so an answer read before a write is gone from every cache
	// by the time the write is acknowledged: a send that starts after an
	// opt-out returned never sees the patient as opted in. GetPatient
	// announces the lease in its response header (grpcx.ReadLeaseHeader);
	// callers that honour it count it from before they asked.
	ReadLease time.Duration
}

// DefaultReadLease is --read-lease's default in the standalone binary: the
// delivery service asks once per patient and token per 250 ms instead of
// once per send, and an opt-out or a directory change returns 250 ms later.
const DefaultReadLease = 250 * time.Millisecond

// Flags registers the service's own flags on fs (--database-dsn is
// svcmain.Common's).
func (c *Config) Flags(fs *flag.FlagSet) {
	fs.DurationVar(&c.ReadLease, "read-lease", DefaultReadLease,
		"how long callers may keep a GetPatient answer; every patient write that changes a patient returns that long after its commit, as does one that changes nothing within a lease of the last change (0: no lease, writes return at once). While a roll-out lowers it, a write on a replica with the new value may return before an answer leased by one with the old value has run out")
}

// MaxReadLease bounds ReadLease: it delays every patient write.
const MaxReadLease = 5 * time.Second

// Validate reports every problem of c at once.
func (c *Config) Validate() error {
	var problems []error
	if c.DatabaseDSN == "" {
		problems = append(problems, errors.New("preferences: a database DSN is required"))
	}
	if c.ReadLease < 0 || c.ReadLease > MaxReadLease {
		problems = append(problems, fmt.Errorf("preferences: --read-lease must be 0 to %s", MaxReadLease))
	}
	return errors.Join(problems...)
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
		api:   grpcapi.New(app.New(st, log, nil), cfg.ReadLease),
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
