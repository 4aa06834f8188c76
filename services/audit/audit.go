package audit

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	auditv1 "github.com/clinicchat/clinicchat/proto/clinicchat/audit/v1"
	"github.com/clinicchat/clinicchat/services/audit/internal/app"
	"github.com/clinicchat/clinicchat/services/audit/internal/grpcapi"
	"github.com/clinicchat/clinicchat/services/audit/internal/ingest"
	"github.com/clinicchat/clinicchat/services/audit/internal/signer"
	"github.com/clinicchat/clinicchat/services/audit/internal/store"
	"github.com/clinicchat/clinicchat/services/audit/internal/witness"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
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
	// PreviousVerifierKeys are the note verifier keys of earlier signing
	// keys (comma separated), so checkpoints signed before a key rotation
	// still verify.
	PreviousVerifierKeys string
	// WitnessURL (an HTTP witness) or WitnessFile receives every signed
	// checkpoint; at start-up and every VerifyInterval the log must still
	// extend what the witness last saw.
	WitnessURL  string
	WitnessFile string
	// VerifyInterval is how often every log is verified (default 1h; it is
	// also verified at start-up).
	VerifyInterval time.Duration
}

// Flags registers the audit-specific flags on fs (--database-dsn is one of
// svcmain.Common's).
func (c *Config) Flags(fs *flag.FlagSet) {
	fs.StringVar(&c.SignerKeyFile, "audit-signing-key-file", "",
		"note signer key file (golang.org/x/mod/sumdb/note format) that signs audit checkpoints, provided by the operator apart from the database; generated if missing in dev")
	fs.StringVar(&c.PreviousVerifierKeys, "audit-previous-verifier-keys", "", "comma-separated note verifier keys of earlier signing keys (key rotation)")
	fs.StringVar(&c.WitnessURL, "audit-witness-url", "", "HTTP witness that receives every signed checkpoint (POST) and answers the latest ones (GET)")
	fs.StringVar(&c.WitnessFile, "audit-witness-file", "", "file witness (JSON lines) instead of --audit-witness-url, kept away from the database")
	fs.DurationVar(&c.VerifyInterval, "audit-verify-interval", time.Hour, "how often every audit log is verified against its checkpoints and the witness")
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
		errs = append(errs, errors.New("--audit-signing-key-file is required"))
	}
	if c.WitnessURL != "" && c.WitnessFile != "" {
		errs = append(errs, errors.New("--audit-witness-url and --audit-witness-file exclude each other"))
	}
	if c.VerifyInterval < 0 {
		errs = append(errs, errors.New("--audit-verify-interval must not be negative"))
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
	// Health, when set, has the AuditService NOT_SERVING while a log does
	// not verify (readiness).
	Health *health.Server
}

// HealthService is the gRPC health service name whose status says whether
// every audit log verifies.
const HealthService = "clinicchat.audit.v1.AuditService"

// Service is the audit service.
type Service struct {
	cfg       Config
	db        *sqldb.DB
	app       *app.App
	consumers *ingest.Consumers
	key       *signer.Key
	log       *zap.Logger
	health    *health.Server
	valid     prometheus.Gauge
	checked   prometheus.Gauge
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
	var prev []note.Verifier
	for _, vk := range strings.Split(cfg.PreviousVerifierKeys, ",") {
		if vk = strings.TrimSpace(vk); vk == "" {
			continue
		}
		v, err := note.NewVerifier(vk)
		if err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("--audit-previous-verifier-keys: %w", err)
		}
		prev = append(prev, v)
	}
	a.SetPreviousVerifiers(prev)
	switch {
	case cfg.WitnessURL != "":
		a.SetWitness(&witness.HTTP{URL: cfg.WitnessURL})
	case cfg.WitnessFile != "":
		w, err := witness.NewFile(cfg.WitnessFile)
		if err != nil {
			_ = db.Close()
			return nil, err
		}
		a.SetWitness(w)
	default:
		log.Warn("no audit witness configured: a rewrite by someone holding the signing key would go unnoticed")
	}
	s := &Service{
		cfg:       cfg,
		db:        db,
		app:       a,
		key:       key,
		log:       log,
		health:    deps.Health,
		consumers: &ingest.Consumers{JS: deps.JS, Sink: a, Log: log, Positions: natsx.DBPositions(db)},
		valid: prometheus.NewGauge(prometheus.GaugeOpts{Name: "clinicchat_audit_log_valid",
			Help: "1 when every audit log verified at the last check (records, hashes, signed checkpoints and the witness), 0 otherwise."}),
		checked: prometheus.NewGauge(prometheus.GaugeOpts{Name: "clinicchat_audit_log_last_check_timestamp_seconds",
			Help: "When the audit logs were last verified (Unix seconds)."}),
	}
	// Verify at start-up, before serving: a truncated or rewritten log is
	// reported at once (log, metric, readiness).
	s.report(a.CheckLogs(ctx))
	log.Info("audit service ready", zap.String("checkpoint_verifier_key", key.VerifierKey),
		zap.Duration("checkpoint_interval", cfg.CheckpointInterval), zap.String("database", db.Dialect().String()))
	return s, nil
}

// report publishes a check's outcome to the metrics and the health status.
func (s *Service) report(h app.Health) {
	if h.OK() {
		s.valid.Set(1)
	} else {
		s.valid.Set(0)
		s.log.Error("audit logs do not verify", zap.String("detail", h.Summary()))
	}
	s.checked.Set(float64(h.Checked.Unix()))
	if s.health != nil {
		st := healthpb.HealthCheckResponse_SERVING
		if !h.OK() {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		s.health.SetServingStatus(HealthService, st)
	}
}

// Verification is the outcome of the last verification of every log: nil
// when they all verified, otherwise an error naming the first problem.
func (s *Service) Verification() error {
	h := s.app.LastHealth()
	if h.OK() {
		return nil
	}
	return errors.New(h.Summary())
}

// Collectors are the service's Prometheus metrics: whether the logs
// verified, when they were last checked, the checkpoint age and the
// database's commits.
func (s *Service) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.valid, s.checked, s.db.Collector(), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "clinicchat_audit_checkpoint_age_seconds",
		Help: "How long the oldest audit record that no signed checkpoint covers has waited (0 when every log is covered; checkpoints are signed every --checkpoint-interval).",
	}, func() float64 { return s.app.CheckpointAge().Seconds() })}
}

// Register registers auditv1.AuditService on g.
func (s *Service) Register(g grpc.ServiceRegistrar) {
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
	interval := s.cfg.VerifyInterval
	if interval == 0 {
		interval = time.Hour
	}
	g.Go(func() error { return s.app.RunChecks(ctx, interval, s.report) })
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
