// Package store is the attachment service's repository on SQLite or
// PostgreSQL: attachment metadata, message links and the outbox.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/clinicchat/clinicchat/services/attachment/internal/domain"
	"github.com/clinicchat/clinicchat/services/attachment/internal/store/migrations"
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

const columns = `practice, id, conversation_id, uploader, uploader_role, filename, content_type, size_bytes, sha256, create_time`

// Create implements domain.Repository.
func (s *Store) Create(ctx context.Context, a domain.Attachment, evs ...domain.Event) error {
	return s.db.Write(ctx, func(tx *sqldb.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO attachments (`+columns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			a.Practice, a.ID, a.ConversationID, a.Uploader, a.UploaderRole, a.Filename, a.ContentType,
			a.SizeBytes, a.SHA256, sqldb.Micros(a.CreateTime)); err != nil {
			return fmt.Errorf("insert attachment: %w", err)
		}
		return outbox.AddAll(ctx, tx, evs)
	})
}

// Get implements domain.Repository.
func (s *Store) Get(ctx context.Context, practice, id string) (domain.Attachment, error) {
	var a domain.Attachment
	var created int64
	err := s.db.QueryRow(ctx, `SELECT `+columns+` FROM attachments WHERE practice = ? AND id = ?`, practice, id).
		Scan(&a.Practice, &a.ID, &a.ConversationID, &a.Uploader, &a.UploaderRole, &a.Filename, &a.ContentType,
			&a.SizeBytes, &a.SHA256, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return a, domain.ErrNotFound
	}
	if err != nil {
		return a, fmt.Errorf("get attachment: %w", err)
	}
	a.CreateTime = sqldb.FromMicros(created)
	return a, nil
}

// Links implements domain.Repository.
func (s *Store) Links(ctx context.Context, practice, attachmentID string) ([]domain.Link, error) {
	rows, err := s.db.Query(ctx, `SELECT practice, attachment_id, message, sender, sensitive, create_time
		FROM attachment_links WHERE practice = ? AND attachment_id = ? ORDER BY create_time, message`, practice, attachmentID)
	if err != nil {
		return nil, fmt.Errorf("list attachment links: %w", err)
	}
	defer rows.Close()
	var out []domain.Link
	for rows.Next() {
		var l domain.Link
		var created int64
		if err := rows.Scan(&l.Practice, &l.AttachmentID, &l.Message, &l.Sender, &l.Sensitive, &created); err != nil {
			return nil, err
		}
		l.CreateTime = sqldb.FromMicros(created)
		out = append(out, l)
	}
	return out, rows.Err()
}

// AddLinks implements domain.Repository: a replayed event changes nothing.
func (s *Store) AddLinks(ctx context.Context, links ...domain.Link) error {
	if len(links) == 0 {
		return nil
	}
	return s.db.Write(ctx, func(tx *sqldb.Tx) error {
		for _, l := range links {
			if _, err := tx.Exec(ctx, `INSERT INTO attachment_links (practice, attachment_id, message, sender, sensitive, create_time)
				VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (practice, attachment_id, message) DO NOTHING`,
				l.Practice, l.AttachmentID, l.Message, l.Sender, l.Sensitive, sqldb.Micros(l.CreateTime)); err != nil {
				return fmt.Errorf("insert attachment link: %w", err)
			}
		}
		return nil
	})
}

// Record implements domain.Repository.
func (s *Store) Record(ctx context.Context, evs ...domain.Event) error {
	if len(evs) == 0 {
		return nil
	}
	return s.db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, evs) })
}

// notLinked is the condition of an attachment (alias a) no message carries.
const notLinked = `NOT EXISTS (SELECT 1 FROM attachment_links l WHERE l.practice = a.practice AND l.attachment_id = a.id)`

// PendingBytes implements domain.Repository.
func (s *Store) PendingBytes(ctx context.Context, practice, uploader string) (int64, error) {
	var n int64
	err := s.db.QueryRow(ctx, `SELECT COALESCE(SUM(a.size_bytes), 0) FROM attachments a
		WHERE a.practice = ? AND a.uploader = ? AND `+notLinked, practice, uploader).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("pending upload bytes: %w", err)
	}
	return n, nil
}

// Unattached implements domain.Repository.
func (s *Store) Unattached(ctx context.Context, before time.Time, limit int) ([]domain.Attachment, error) {
	rows, err := s.db.Query(ctx, `SELECT a.practice, a.id, a.uploader FROM attachments a
		WHERE a.create_time < ? AND `+notLinked+` ORDER BY a.create_time LIMIT ?`, sqldb.Micros(before), limit)
	if err != nil {
		return nil, fmt.Errorf("list unattached uploads: %w", err)
	}
	defer rows.Close()
	var out []domain.Attachment
	for rows.Next() {
		var a domain.Attachment
		if err := rows.Scan(&a.Practice, &a.ID, &a.Uploader); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// DeleteUnattached implements domain.Repository.
func (s *Store) DeleteUnattached(ctx context.Context, practice, id string) (bool, error) {
	var n int64
	err := s.db.Write(ctx, func(tx *sqldb.Tx) error {
		res, err := tx.Exec(ctx, `DELETE FROM attachments WHERE practice = ? AND id = ? AND NOT EXISTS
			(SELECT 1 FROM attachment_links l WHERE l.practice = ? AND l.attachment_id = ?)`, practice, id, practice, id)
		if err != nil {
			return fmt.Errorf("delete unattached upload: %w", err)
		}
		n, err = res.RowsAffected()
		return err
	})
	return n == 1, err
}
