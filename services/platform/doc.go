// Package platform is the shared plumbing of clinicchat's services. Its
// subpackages hold no business rules: auth (bearer tokens and the caller's
// identity), errs (typed errors and their gRPC status), sqldb (SQLite and
// PostgreSQL behind one handle, migrations, group commit), outbox (the
// transactional outbox and its JetStream relay), natsx (JetStream connection,
// streams as data, embedded server), grpcx (the server builder with
// interceptors, health and reflection) and logkeys (log field names).
package platform
