// Package audit is clinicchat's audit service: a complete, append-only,
// tamper-evident log of who did what to which resource, per practice.
//
// Data it owns (its own database, SQLite or PostgreSQL):
//   - audit_events: one record per audited event — index, time, practice,
//     actor, actor role, action, resource, outcome, detail, event id and leaf
//     hash. Ids and roles only: never message text, file names or other PHI
//     (only an event's EventMeta is ever decoded).
//   - audit_hashes: each practice's Merkle tree (RFC 6962, as implemented by
//     golang.org/x/mod/sumdb/tlog) as tlog stored hashes, from which roots and
//     proofs are computed.
//   - audit_checkpoints: signed checkpoints (a golang.org/x/mod/sumdb/note over
//     the tree size and root hash), signed every --checkpoint-interval for every
//     grown log and on request (GetCheckpoint).
//
// Triggers refuse every UPDATE and DELETE (and TRUNCATE on PostgreSQL) of
// those tables; VerifyAuditLog recomputes every leaf and the whole tree to
// detect what someone with direct database access changed anyway, naming the
// first bad index (a truncated tail is detected against a checkpoint the
// operator kept).
//
// Events consumed: every subject of every clinicchat stream
// (CLINICCHAT_CONVERSATION, _DELIVERY, _ATTACHMENT, _PREFERENCES, _GATEWAY)
// but the skipped kinds of internal/domain/policy.go (notification
// requests, and the kinds that carry only the product's receipt-status and
// thread-activity echoes), which the consumers' filters leave out, through durable
// JetStream consumers "audit-<stream>", acked after the record's commit;
// redeliveries are ignored by event id. The consumers' batches share one
// transaction, at most one commit per 100 ms while events keep coming, but
// at once for a stream's full batch, so a backlog drains at the log's own
// pace (internal/ingest/group.go). Which events are actions is decided in one
// place, internal/domain/policy.go: everything but notification requests and
// a short list of the product's own receipt and state echoes. Events
// produced: none.
//
// API: auditv1.AuditService, for the practice_admin of a practice only; reads
// of the log are not themselves audited.
package audit
