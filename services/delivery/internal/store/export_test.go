package store

import (
	"context"
	"database/sql"
	"time"

	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
)

// AdvancePostgres is the batch statement of as (one target status) on a
// plain PostgreSQL transaction: unlike sqldb.DB.Write, it does not retry a
// deadlock, so a test sees one.
func AdvancePostgres(ctx context.Context, tx *sql.Tx, as []domain.Advance) ([][]domain.Message, error) {
	return advancePostgres(ctx, plainTx{tx}, as)
}

type plainTx struct{ tx *sql.Tx }

func (p plainTx) Query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return p.tx.QueryContext(ctx, q, args...)
}

// RaiseMarksSQL is raiseMarks' statement for n receipts (SQLite).
func RaiseMarksSQL(n int) string { return raiseMarksSQL[n] }

// ReceiptsWaiting is the number of receipt writes waiting for another's
// commit (PostgreSQL).
func ReceiptsWaiting(s *Store) int { return int(s.receiptsWaiting.Load()) }

// AdvanceSQL is advancePostgres' statement for READ (read) or DELIVERED
// receipts.
func AdvanceSQL(read bool) string {
	if read {
		return advanceReadSQL
	}
	return advanceDeliveredSQL
}

// SentTogether is the number of sends stored in batches of two or more
// (PostgreSQL).
func SentTogether(s *Store) int64 { return s.sends.together.Load() }

// SendWritesAtOnce is the most send batch writes ever in flight at once
// (PostgreSQL).
func SendWritesAtOnce(s *Store) int64 { return s.sends.mostWriting.Load() }

// SentKnown is the number of sends stored with the seqs the store knew
// (insertKnown), and KnownFailed the number of such writes that failed
// and went again reading their seqs back (PostgreSQL).
func SentKnown(s *Store) int64   { return s.sends.known.Load() }
func KnownFailed(s *Store) int64 { return s.sends.knownFailed.Load() }

// SetKnownClock sets the clock of the store's known counters (their
// pauses after a failed write).
func SetKnownClock(s *Store, now func() time.Time) { s.seqs.now = now }

// KnownBackoff is how long a thread is paused after a failed known write.
const KnownBackoff = knownBackoff
