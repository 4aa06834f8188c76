package natsx

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Subjects. Every event is published on
//
//	<prefix>.<service>.<kind>.<verb>.<practice>[.<more>]
//
// where <prefix>.<service>.<kind>.<verb> is one of the Subject* variables
// below (the event's "base" subject) and the tokens after it carry the tenant:
// the practice always, and for thread events the patient (so that a
// subscriber can ask only for one practice, or one patient's thread). Build a
// subject with Tenant, filter with Filter, read it back with Base and Tokens.
//
// Before tenant tokens existed events were published on the base subject
// alone; Filter matches both forms, so events and outbox rows written by an
// older version are still consumed after an upgrade.
//
// The variables are set from the prefix ("clinicchat" by default, see
// SetPrefix) and must not be assigned otherwise; a new one is declared in
// kinds too (Kinds lists them: the audit service's consumers filter on them).
var (
	SubjectConversationCreated string
	SubjectConversationUpdated string
	SubjectConversationEcho    string
	SubjectConversationRead    string
	SubjectConversationUser    string
	SubjectConversationAccess  string
	SubjectMessageCreated      string
	SubjectMessageUpdated      string
	SubjectMessageStatusEcho   string
	SubjectNotification        string
	SubjectDeliveryAccess      string
	SubjectAttachmentUploaded  string
	SubjectAttachmentAccess    string
	SubjectPatientUpserted     string
	SubjectPreferencesChanged  string
	SubjectPreferencesAccess   string
	SubjectGatewayAccess       string
	StreamConversation         string
	StreamDelivery             string
	StreamAttachment           string
	StreamPreferences          string
	StreamGateway              string
)

const (
	// DefaultPrefix is the subject prefix and (upper-cased) stream-name
	// prefix of a deployment that does not set one.
	DefaultPrefix    = "clinicchat"
	DefaultRetention = 7 * 24 * time.Hour
	// DefaultDuplicateWindow must outlast an outbox relay's republishing
	// (SQLite: published rows are deleted within a second; PostgreSQL: a
	// frozen relay's rows are taken over after its 30 s lease, plus a 10 s
	// publish timeout). The server holds every id of the window in memory
	// (~100 B each, ~5 events per message): 10 minutes at 1,000 sends/s was
	// ~300 MB of heap; 2 minutes is a fifth of that. Consumers are
	// idempotent by event id beyond it. A deployment whose relays all run
	// on SQLite (the all-in-one) sets a shorter StreamsConfig.DuplicateWindow.
	DefaultDuplicateWindow = 2 * time.Minute
	// DefaultStreamMaxBytes bounds each stream. JetStream reserves it on
	// every server holding a replica: the streams (StreamCount of them)
	// must fit the servers' max_file_store together.
	DefaultStreamMaxBytes int64 = 8 << 30
)

// domains are the services that own a stream, in stream order.
var domains = []struct{ name, desc string }{
	{"conversation", "conversation service events"},
	{"delivery", "delivery service events: messages, receipts, notifications"},
	{"attachment", "attachment service events"},
	{"preferences", "preferences service events"},
	{"gateway", "gateway access events"},
}

var prefix string

func init() { setPrefix(DefaultPrefix) }

var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

// SetPrefix sets the subject prefix ("acme" gives subjects "acme.delivery…"
// and streams "ACME_DELIVERY"), so that deployments can share one NATS
// account. Call it once at process start, before any subject or stream is
// used; every process of a deployment must use the same prefix.
func SetPrefix(p string) error {
	if p == "" {
		p = DefaultPrefix
	}
	if !prefixRE.MatchString(p) {
		return fmt.Errorf("NATS prefix %q: want a lower-case letter, then up to 31 of a-z, 0-9, _ and -", p)
	}
	setPrefix(p)
	return nil
}

// Prefix is the current subject prefix.
func Prefix() string { return prefix }

// PrefixFlag registers --nats-prefix on fs; apply it with SetPrefix.
func PrefixFlag(fs *flag.FlagSet, p *string) {
	fs.StringVar(p, "nats-prefix", DefaultPrefix,
		"prefix of every NATS subject and (upper-cased) stream name, so deployments can share a NATS account")
}

// kinds are the event kinds ("<service>.<kind>.<verb>", the subject
// without prefix and tenant tokens) and the variable holding each one's
// base subject: setPrefix sets every Subject* variable from here, and Kinds
// lists them.
var kinds = []struct {
	v    *string
	kind string
}{
	{&SubjectConversationCreated, "conversation.conversation.created"},
	{&SubjectConversationUpdated, "conversation.conversation.updated"},
	{&SubjectConversationRead, "conversation.conversation.read"},
	{&SubjectConversationUser, "conversation.userstate.changed"},
	{&SubjectConversationAccess, "conversation.access.recorded"},
	{&SubjectMessageCreated, "delivery.message.created"},
	{&SubjectMessageUpdated, "delivery.message.updated"},
	{&SubjectNotification, "conversation.notification.requested"},
	{&SubjectDeliveryAccess, "delivery.access.recorded"},
	{&SubjectAttachmentUploaded, "attachment.attachment.uploaded"},
	{&SubjectAttachmentAccess, "attachment.access.recorded"},
	{&SubjectPatientUpserted, "preferences.patient.upserted"},
	{&SubjectPreferencesChanged, "preferences.preferences.changed"},
	{&SubjectPreferencesAccess, "preferences.access.recorded"},
	{&SubjectGatewayAccess, "gateway.access.recorded"},
	{&SubjectMessageStatusEcho, "delivery.message.status"},
	{&SubjectConversationEcho, "conversation.conversation.activity"},
}

// SystemActor is EventMeta.actor for actions of the product itself
// (events.System sets it; PublishBase routes echoes by it).
const SystemActor = "system"

// echoes are the kinds that carry only the product's own echoes of an
// action already logged (the audit service's consumers do not receive
// them): each is the kind of base subject "of", for events whose actor is
// SystemActor and whose action is "action". PublishBase routes every event
// of either kind, so that an echo kind never carries anything else.
var echoes = []struct {
	echo, of *string
	action   string
}{
	// delivery moving a receipt's status (SENT → DELIVERED → READ)
	{&SubjectMessageStatusEcho, &SubjectMessageUpdated, "message.status"},
	// conversation updating a thread's last message, preview and counts
	{&SubjectConversationEcho, &SubjectConversationUpdated, "conversation.activity"},
}

// PublishBase is the base subject to publish an event of base's kind on,
// given its meta's actor and action: for a kind with an echo kind (or an
// echo kind itself), the echo kind when the actor is SystemActor and the
// action is the echo's, the echoed kind otherwise (a person's action is
// never published on an echo kind); base for any other kind.
func PublishBase(base, actor, action string) string {
	for _, e := range echoes {
		if base != *e.of && base != *e.echo {
			continue
		}
		if actor == SystemActor && action == e.action {
			return *e.echo
		}
		return *e.of
	}
	return base
}

// Echo describes an echo kind: the kind it echoes and the one action (by
// SystemActor) it carries.
type Echo struct{ Kind, Of, Action string }

// Echoes lists the echo kinds (Kind strings, without prefix).
func Echoes() []Echo {
	out := make([]Echo, len(echoes))
	for i, e := range echoes {
		out[i] = Echo{Kind: (*e.echo)[len(prefix)+1:], Of: (*e.of)[len(prefix)+1:], Action: e.action}
	}
	return out
}

// Kinds lists every event kind (Kind of its subject), in declaration order.
func Kinds() []string {
	out := make([]string, len(kinds))
	for i, k := range kinds {
		out[i] = k.kind
	}
	return out
}

func setPrefix(p string) {
	prefix = p
	for _, k := range kinds {
		*k.v = p + "." + k.kind
	}
	StreamConversation = streamName("conversation")
	StreamDelivery = streamName("delivery")
	StreamAttachment = streamName("attachment")
	StreamPreferences = streamName("preferences")
	StreamGateway = streamName("gateway")
}

func streamName(domain string) string {
	return strings.ToUpper(strings.ReplaceAll(prefix, "-", "_")) + "_" + strings.ToUpper(domain)
}

// StreamDomain is the service part of a stream name, lower-case
// ("CLINICCHAT_DELIVERY" → "delivery").
func StreamDomain(stream string) string {
	return strings.ToLower(strings.TrimPrefix(stream, streamName("")))
}

// StreamOf is the name of the stream that holds subject (Streams: stream
// "<PREFIX>_<SERVICE>" holds "<prefix>.<service>.>"), or "" if none does.
func StreamOf(subject string) string {
	rest, ok := strings.CutPrefix(subject, prefix+".")
	if !ok {
		return ""
	}
	domain, _, ok := strings.Cut(rest, ".")
	if !ok {
		return ""
	}
	for _, d := range domains {
		if d.name == domain {
			return streamName(domain)
		}
	}
	return ""
}

// Tenant is base followed by the encoded tokens (Token): the subject an
// event is published on. base is one of the Subject* variables; the first
// token is the practice.
func Tenant(base string, tokens ...string) string {
	var b strings.Builder
	b.Grow(len(base) + 24*len(tokens))
	b.WriteString(base)
	for _, t := range tokens {
		b.WriteByte('.')
		b.WriteString(Token(t))
	}
	return b.String()
}

// Filter is what a consumer of base events filters on: the tenant form
// (base.>) and the pre-tenant form (base alone) that older versions
// published. A durable started by Consume or ConsumeBatch leaves the
// pre-tenant forms out once none can match (Narrow).
func Filter(base ...string) []string {
	out := make([]string, 0, 2*len(base))
	for _, b := range base {
		out = append(out, b, b+".>")
	}
	return out
}

// NoAttachments is the token that follows a message.created subject's
// practice and patient when the message carries no attachments
// (<base>.<practice>.<patient>.n; CreatedSubject): the attachment service's
// consumer filters on the subjects without it (CreatedWithAttachments) and is
// not delivered the messages it has nothing to record for. A message with
// attachments keeps the subject versions before this one published for
// every message, so what they published is still read as possibly
// carrying attachments. Every other consumer of the kind filters on
// Filter (base.>), which matches both.
const NoAttachments = "n"

// CreatedSubject is the subject of a message.created event given its
// tenant subject (Tenant(base, practice, patient)): marked with
// NoAttachments when the message carries none.
func CreatedSubject(tenant string, attachments bool) string {
	if attachments {
		return tenant
	}
	return tenant + "." + NoAttachments
}

// CreatedWithAttachments is the filter of a consumer of the message.created
// events that may carry attachments: the tenant form without the
// NoAttachments mark (exactly practice and patient after the base: what
// this version publishes for a message with attachments and what older
// versions published for every message) and the pre-tenant form (base
// alone), which Narrow leaves out once none can match.
func CreatedWithAttachments() []string {
	return []string{SubjectMessageCreated, SubjectMessageCreated + ".*.*"}
}

// baseTokens is how many tokens a base subject has after the prefix.
const baseTokens = 3

// Base is the base subject of an event's subject (the subject itself for
// the pre-tenant form), or "" if subject is not one of ours.
func Base(subject string) string {
	rest, ok := strings.CutPrefix(subject, prefix+".")
	if !ok {
		return ""
	}
	end := len(prefix) + 1
	for i := 0; i < baseTokens; i++ {
		j := strings.IndexByte(rest, '.')
		if j < 0 {
			if i == baseTokens-1 && rest != "" {
				return subject
			}
			return ""
		}
		end += j + 1
		rest = rest[j+1:]
	}
	return subject[:end-1]
}

// Kind is the base subject without the prefix
// ("conversation.notification.requested"): what an event is, the same in
// every deployment. "" if subject is not one of ours.
func Kind(subject string) string {
	b := Base(subject)
	if b == "" {
		return ""
	}
	return b[len(prefix)+1:]
}

// TenantTokens returns the first two (still encoded) tenant tokens after
// subject's base, and how many there are (0 for the pre-tenant form, at most
// 2), without allocating: the hub reads them for every event it is handed.
func TenantTokens(subject string) (t0, t1 string, n int) {
	b := Base(subject)
	if b == "" || len(b) == len(subject) {
		return "", "", 0
	}
	t0, rest, more := strings.Cut(subject[len(b)+1:], ".")
	if !more {
		return t0, "", 1
	}
	t1, _, _ = strings.Cut(rest, ".")
	return t0, t1, 2
}

// Token encodes an id (a practice id, "patients/p", "users/u": any
// characters) as one subject token: '.', '*', '>', '%', and every byte
// outside printable ASCII become %XX; the empty string is "_" (and "_"
// itself "%5F"). Decode with Untoken.
func Token(id string) string {
	if id == "" {
		return "_"
	}
	if id == "_" {
		return "%5F"
	}
	n := 0
	for i := 0; i < len(id); i++ {
		if escaped(id[i]) {
			n++
		}
	}
	if n == 0 {
		return id
	}
	const hex = "0123456789ABCDEF"
	out := make([]byte, 0, len(id)+2*n)
	for i := 0; i < len(id); i++ {
		c := id[i]
		if escaped(c) {
			out = append(out, '%', hex[c>>4], hex[c&15])
		} else {
			out = append(out, c)
		}
	}
	return string(out)
}

func escaped(c byte) bool {
	return c <= ' ' || c >= 0x7f || c == '.' || c == '*' || c == '>' || c == '%'
}

var errBadToken = errors.New("not an encoded subject token")

// Untoken decodes a token made by Token.
func Untoken(tok string) (string, error) {
	if tok == "_" {
		return "", nil
	}
	if !strings.Contains(tok, "%") {
		return tok, nil
	}
	out := make([]byte, 0, len(tok))
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if c != '%' {
			out = append(out, c)
			continue
		}
		if i+2 >= len(tok) {
			return "", errBadToken
		}
		hi, ok1 := unhex(tok[i+1])
		lo, ok2 := unhex(tok[i+2])
		if !ok1 || !ok2 {
			return "", errBadToken
		}
		out = append(out, hi<<4|lo)
		i += 2
	}
	return string(out), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// StreamsConfig parameterizes the stream declarations.
type StreamsConfig struct {
	Replicas  int           // 1 embedded, 3 in a cluster
	Retention time.Duration // how long events stay (the SSE resume window); default 7 days
	// MaxBytes bounds each stream (default DefaultStreamMaxBytes); the
	// oldest events go first when it is reached.
	MaxBytes int64
	// DuplicateWindow is how long the server remembers each published
	// event id to drop a republished one (default DefaultDuplicateWindow).
	// Its memory grows with it (~110 B per event, ~5 events per message);
	// its CPU does not (each id is purged once: BenchmarkDuplicateWindow).
	DuplicateWindow time.Duration
	// SmallBlocks has EnsureStreams open a stream that does not exist yet
	// with 4 MiB blocks instead of the 8 MiB its MaxBytes gives (see
	// SmallBlocksConfig), for a NATS server in this process, whose clean stop
	// calls PrepareStreamsForRestart so that its next start opens the
	// streams with 4 MiB blocks too.
	SmallBlocks bool
}

// StreamCount is how many streams Streams declares.
func StreamCount() int { return len(domains) }

// Streams returns clinicchat's streams as data. Each holds
// "<prefix>.<service>.>": the tenant tokens need no stream change.
func Streams(cfg StreamsConfig) []jetstream.StreamConfig {
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultStreamMaxBytes
	}
	if cfg.DuplicateWindow <= 0 {
		cfg.DuplicateWindow = DefaultDuplicateWindow
	}
	out := make([]jetstream.StreamConfig, 0, len(domains))
	for _, d := range domains {
		out = append(out, jetstream.StreamConfig{
			Name:        streamName(d.name),
			Description: d.desc,
			Subjects:    []string{prefix + "." + d.name + ".>"},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      cfg.Retention,
			MaxBytes:    cfg.MaxBytes,
			Duplicates:  cfg.DuplicateWindow,
			Replicas:    cfg.Replicas,
			Discard:     jetstream.DiscardOld,
			// Fast batches (nats-server 2.14+): the outbox relays publish
			// a stream's rows of a round as one batch, one PubAck for all
			// (outbox.publishChained). Set on existing streams by
			// EnsureStreams' update; a server before 2.14 does not keep it,
			// and the relays then publish row by row.
			AllowBatchPublish: true,
		})
	}
	return out
}

// EnsureStreams creates or updates every stream to match its declaration.
// With cfg.SmallBlocks a missing stream is first created as SmallBlocksConfig
// has it, then updated to its declaration, both before EnsureStreams
// returns: the declared limits hold before anything is published.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, cfg StreamsConfig) error {
	for _, sc := range Streams(cfg) {
		if cfg.SmallBlocks {
			// An existing stream answers "already in use" (or, stored as
			// PrepareStreamsForRestart leaves it, nothing): it keeps the
			// blocks it was opened with either way.
			if _, err := js.CreateStream(ctx, SmallBlocksConfig(sc)); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				return fmt.Errorf("create stream %s: %w", sc.Name, err)
			}
		}
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("reconcile stream %s: %w", sc.Name, err)
		}
	}
	return nil
}

// PrepareStreamsForRestart stores every stream as SmallBlocksConfig has it, so
// that a NATS server started on the same store opens it with 4 MiB blocks;
// EnsureStreams at that start stores the declaration again before anything
// publishes. Call it at a clean stop, after the last publish and once
// EnsureStreams has succeeded. No event is dropped (the stored limits are
// the declared ones without MaxBytes); after a crash the streams open with
// their declared limits and 8 MiB blocks until the next clean stop.
func PrepareStreamsForRestart(ctx context.Context, js jetstream.JetStream, cfg StreamsConfig) error {
	for _, sc := range Streams(cfg) {
		if _, err := js.UpdateStream(ctx, SmallBlocksConfig(sc)); err != nil {
			return fmt.Errorf("prepare stream %s for restart: %w", sc.Name, err)
		}
	}
	return nil
}

// SmallBlocksConfig is sc with limits that make nats-server choose 4 MiB blocks
// when it opens the stream (it chooses a stream's block size then, from its
// limits, and keeps it while the stream is open: MaxBytes of 32 MiB or more
// gives 8 MiB blocks, a per-subject limit with neither MaxBytes nor MaxMsgs
// 4 MiB) and drop nothing sc would keep: no MaxBytes, and a per-subject
// limit no stream reaches. Every finished block's cache lives on ~10 s
// after its last write, so at a steady rate the block size sets most of the
// server's memory (BENCHMARKS.md, mem16 and mem17).
func SmallBlocksConfig(sc jetstream.StreamConfig) jetstream.StreamConfig {
	sc.MaxBytes, sc.MaxMsgsPerSubject = -1, math.MaxInt64
	return sc
}
