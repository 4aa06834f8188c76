package audit

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	auditv1 "github.com/clinicchat/clinicchat/proto/clinicchat/audit/v1"
	"github.com/clinicchat/clinicchat/services/audit/internal/app"
	"github.com/clinicchat/clinicchat/services/audit/internal/grpcapi"
	"github.com/clinicchat/clinicchat/services/audit/internal/ingest"
	"github.com/clinicchat/clinicchat/services/audit/internal/signer"
	"github.com/clinicchat/clinicchat/services/audit/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// DefaultCheckpointInterval is how often a grown log gets a signed checkpoint.
const DefaultCheckpointInterval = time.Minute

// DefaultSignerName names the checkpoint key EnsureDevSignerKey generates.
const DefaultSignerName = "clinicchat-audit"

// Config is the audit service's configuration.
type Config struct {
	// DatabaseDSN is a SQLite file path or a postgres:// URL (the common
	// --database-dsn flag).
	DatabaseDSN string
	// SignerKeyFile holds the note signer key (golang.org/x/mod/sumdb/note
	// format, "PRIVATE+KEY+<name>+<hash>+<base64>") that signs checkpoints.
	// In dev it is generated if missing (EnsureDevSignerKey).
	SignerKeyFile string
	// CheckpointInterval is how often every grown log gets a signed
	// checkpoint (default DefaultCheckpointInterval).
	CheckpointInterval time.Duration
}

// Flags registers the audit-specific flags on fs (--database-dsn is one of
// svcmain.Common's).
func (c *Config) Flags(fs *flag.FlagSet) {
	fs.StringVar(&c.SignerKeyFile, "checkpoint-signer-key-file", "",
		"note signer key file (golang.org/x/mod/sumdb/note format) that signs audit checkpoints; generated if missing in dev")
	fs.DurationVar(&c.CheckpointInterval, "checkpoint-interval", DefaultCheckpointInterval,
		"how often every grown audit log gets a signed checkpoint")
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if c.DatabaseDSN == "" {
		errs = append(errs, errors.New("--database-dsn is required"))
	}
	if c.SignerKeyFile == "" {
		errs = append(errs, errors.New("--checkpoint-signer-key-file is required"))
	}
	if c.CheckpointInterval < 0 {
		errs = append(errs, errors.New("--checkpoint-interval must not be negative"))
	}
	return errors.Join(errs...)
}

// Deps are the audit service's collaborators.
type Deps struct {
	Log *zap.Logger
	JS  jetstream.JetStream
}

// Service is the audit service.
type Service struct {
	cfg       Config
	db        *sqldb.DB
	app       *app.App
	consumers *ingest.Consumers
	key       *signer.Key
}

// EnsureDevSignerKey makes sure path holds a checkpoint signer key for
// development: when the file is missing it generates an Ed25519 note key
// named name (DefaultSignerName when empty), writes it with mode 0600 and its
// public verifier key to path+".pub". An existing file is kept and must parse.
func EnsureDevSignerKey(path, name string) error {
	if name == "" {
		name = DefaultSignerName
	}
	return signer.EnsureDev(path, name)
}

// New opens and migrates the database and loads the signer key.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	if cfg.CheckpointInterval == 0 {
		cfg.CheckpointInterval = DefaultCheckpointInterval
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("audit configuration: %w", err)
	}
	if deps.JS == nil {
		return nil, errors.New("audit: Deps.JS is required")
	}
	log := deps.Log
	if log == nil {
		log = zap.NewNop()
	}
	key, err := signer.Load(cfg.SignerKeyFile)
	if err != nil {
		return nil, err
	}
	db, err := sqldb.Open(ctx, cfg.DatabaseDSN)
	if err != nil {
		return nil, fmt.Errorf("audit database: %w", err)
	}
	st, err := store.New(ctx, db)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("audit database: %w", err)
	}
	a := app.New(st, key, log)
	log.Info("audit service ready", zap.String("checkpoint_verifier_key", key.VerifierKey),
		zap.Duration("checkpoint_interval", cfg.CheckpointInterval), zap.String("database", db.Dialect().String()))
	return &Service{
		cfg:       cfg,
		db:        db,
		app:       a,
		key:       key,
		consumers: &ingest.Consumers{JS: deps.JS, Sink: a, Log: log},
	}, nil
}

// Register registers auditv1.AuditService on g.
func (s *Service) Register(g *grpc.Server) {
	auditv1.RegisterAuditServiceServer(g, grpcapi.New(s.app))
}

// VerifierKey is the public note verifier key of the checkpoint signer, for
// operators who check kept checkpoints (note.NewVerifier).
func (s *Service) VerifierKey() string { return s.key.VerifierKey }

// Run consumes every stream into the log and signs checkpoints until ctx
// ends; it returns nil then.
func (s *Service) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.consumers.Run(ctx) })
	g.Go(func() error { return s.app.RunCheckpoints(ctx, s.cfg.CheckpointInterval) })
	return g.Wait()
}

// Close closes the database. Call it after Run has returned.
func (s *Service) Close() error { return s.db.Close() }

// Migrate applies the service's schema migrations to db (the "migrate"
// subcommand; New applies them too).
func Migrate(ctx context.Context, db *sqldb.DB) error {
	_, err := store.New(ctx, db)
	return err
}
