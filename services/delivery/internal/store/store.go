// Package store is the delivery service's repository on SQLite or PostgreSQL.
package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store/migrations"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// Store implements domain.Repository.
type Store struct {
	db *sqldb.DB
}

var _ domain.Repository = (*Store)(nil)

// New migrates db and returns the store.
func New(ctx context.Context, db *sqldb.DB) (*Store, error) {
	if err := sqldb.Migrate(ctx, db, migrations.FS, "."); err != nil {
		return nil, err
	}
	return &Store{db: db}, nil
}

const columns = `practice, conversation_id, seq, patient_id, sender, sender_role, from_patient, text, extras, sensitive,
	status, create_time, deliver_time, read_time, read_by, request_id, content_hash, sender_display_name`

type scanner interface{ Scan(...any) error }

func scan(s scanner) (domain.Message, error) {
	var m domain.Message
	var extras string
	var status int
	var create, deliver, read int64
	err := s.Scan(&m.Practice, &m.ConversationID, &m.Seq, &m.PatientID, &m.Sender, &m.SenderRole, &m.FromPatient, &m.Text,
		&extras, &m.Sensitive, &status, &create, &deliver, &read, &m.ReadBy, &m.RequestID, &m.ContentHash, &m.SenderDisplayName)
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal([]byte(extras), &m.Extras); err != nil {
		return m, fmt.Errorf("decode message extras: %w", err)
	}
	m.Status = domain.Status(status)
	m.CreateTime, m.DeliverTime, m.ReadTime = sqldb.FromMicros(create), sqldb.FromMicros(deliver), sqldb.FromMicros(read)
	return m, nil
}

func one(row *sql.Row) (domain.Message, error) {
	m, err := scan(row)
	if errors.Is(err, sql.ErrNoRows) {
		return m, domain.ErrNotFound
	}
	return m, err
}

// FindByRequest implements domain.Repository.
func (s *Store) FindByRequest(ctx context.Context, practice, sender, requestID string) (domain.Message, error) {
	return one(s.db.QueryRow(ctx, `SELECT `+columns+` FROM messages WHERE practice = ? AND sender = ? AND request_id = ?`,
		practice, sender, requestID))
}

var errDuplicate = errors.New("duplicate request")

// Send implements domain.Repository. The conversation's counter row is taken
// first, so concurrent sends to one thread serialize on it and a concurrent
// repeat of a request sees the first one's commit.
func (s *Store) Send(ctx context.Context, m domain.Message, evs func(domain.Message) []domain.Event) (domain.Message, bool, error) {
	extras, err := json.Marshal(m.Extras)
	if err != nil {
		return m, false, err
	}
	var existing domain.Message
	for attempt := 0; ; attempt++ {
		out := m
		err = s.db.Write(ctx, func(tx *sqldb.Tx) error {
			if err := tx.QueryRow(ctx, `INSERT INTO conversation_seq (practice, conversation_id, last_seq) VALUES (?, ?, 1)
				ON CONFLICT (practice, conversation_id) DO UPDATE SET last_seq = conversation_seq.last_seq + 1
				RETURNING last_seq`, m.Practice, m.ConversationID).Scan(&out.Seq); err != nil {
				return fmt.Errorf("next sequence: %w", err)
			}
			// A repeat of the request is found by the insert itself (the
			// unique messages_by_request), not by a lookup before it: one
			// statement and one index search fewer for every new message.
			res, err := tx.Exec(ctx, `INSERT INTO messages (`+columns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
				ON CONFLICT (practice, sender, request_id) DO NOTHING`,
				out.Practice, out.ConversationID, out.Seq, out.PatientID, out.Sender, out.SenderRole, out.FromPatient, out.Text,
				string(extras), out.Sensitive, int(out.Status), sqldb.Micros(out.CreateTime), sqldb.Micros(out.DeliverTime),
				sqldb.Micros(out.ReadTime), out.ReadBy, out.RequestID, out.ContentHash, out.SenderDisplayName)
			if err != nil {
				return fmt.Errorf("insert message: %w", err)
			}
			if n, err := res.RowsAffected(); err != nil {
				return fmt.Errorf("insert message: %w", err)
			} else if n == 0 {
				prev, err := one(tx.QueryRow(ctx, `SELECT `+columns+` FROM messages WHERE practice = ? AND sender = ? AND request_id = ?`,
					m.Practice, m.Sender, m.RequestID))
				if err != nil {
					return fmt.Errorf("find repeated request: %w", err)
				}
				existing = prev
				return errDuplicate // rolls back the counter
			}
			return outbox.AddAll(ctx, tx, evs(out))
		})
		switch {
		case err == nil:
			return out, true, nil
		case errors.Is(err, errDuplicate):
			if existing.ContentHash != m.ContentHash {
				return existing, false, domain.ErrRequestIDReused
			}
			return existing, false, nil
		case sqldb.IsUniqueViolation(err) && attempt < 3:
			continue // a concurrent repeat in another thread won: look again
		default:
			return out, false, err
		}
	}
}

// Get implements domain.Repository.
func (s *Store) Get(ctx context.Context, practice, conversationID string, seq int64) (domain.Message, error) {
	return one(s.db.QueryRow(ctx, `SELECT `+columns+` FROM messages WHERE practice = ? AND conversation_id = ? AND seq = ?`,
		practice, conversationID, seq))
}

// List implements domain.Repository.
func (s *Store) List(ctx context.Context, practice, conversationID string, before int64, limit int) ([]domain.Message, error) {
	q := `SELECT ` + columns + ` FROM messages WHERE practice = ? AND conversation_id = ?`
	args := []any{practice, conversationID}
	if before > 0 {
		q += ` AND seq < ?`
		args = append(args, before)
	}
	q += ` ORDER BY seq DESC LIMIT ?`
	args = append(args, limit)
	rows, err := s.db.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list messages: %w", err)
	}
	defer rows.Close()
	var out []domain.Message
	for rows.Next() {
		m, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// Advance implements domain.Repository. The status only rises, so a replayed
// or out-of-order receipt changes nothing.
func (s *Store) Advance(ctx context.Context, a domain.Advance, evs func([]domain.Message) []domain.Event) ([]domain.Message, error) {
	var changed []domain.Message
	err := s.db.Write(ctx, func(tx *sqldb.Tx) error {
		changed = changed[:0]
		at := sqldb.Micros(a.At)
		var q string
		args := []any{}
		if a.To == domain.Read {
			q = `UPDATE messages SET status = ?, read_time = ?, read_by = ?,
				deliver_time = CASE WHEN deliver_time = 0 THEN ? ELSE deliver_time END`
			args = append(args, int(domain.Read), at, a.Reader, at)
		} else {
			q = `UPDATE messages SET status = ?, deliver_time = ?`
			args = append(args, int(domain.Delivered), at)
		}
		// "status < 3" (below Read) is messages_unadvanced's predicate: it
		// lets the planner use that partial index.
		q += ` WHERE practice = ? AND conversation_id = ? AND from_patient = ? AND seq <= ? AND status < ? AND status < 3 RETURNING ` + columns
		args = append(args, a.Practice, a.ConversationID, !a.ReaderIsPatient, a.UpTo, int(a.To))
		rows, err := tx.Query(ctx, q, args...)
		if err != nil {
			return fmt.Errorf("advance receipts: %w", err)
		}
		for rows.Next() {
			m, err := scan(rows)
			if err != nil {
				rows.Close()
				return err
			}
			changed = append(changed, m)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(changed) == 0 {
			return nil
		}
		return outbox.AddAll(ctx, tx, evs(changed))
	})
	return changed, err
}

// Record implements domain.Repository.
func (s *Store) Record(ctx context.Context, evs ...domain.Event) error {
	if len(evs) == 0 {
		return nil
	}
	return s.db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, evs) })
}
