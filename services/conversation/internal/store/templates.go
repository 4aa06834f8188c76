package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

const templateColumns = `practice, id, title, text, update_time`

func scanTemplate(s scanner) (domain.Template, error) {
	var t domain.Template
	var at int64
	err := s.Scan(&t.Practice, &t.ID, &t.Title, &t.Text, &at)
	t.UpdateTime = sqldb.FromMicros(at)
	return t, err
}

func getTemplate(ctx context.Context, q sqldb.Querier, practice, id string) (domain.Template, error) {
	t, err := scanTemplate(q.QueryRow(ctx, `SELECT `+templateColumns+` FROM message_templates WHERE practice = ? AND id = ?`, practice, id))
	if errors.Is(err, sql.ErrNoRows) {
		return t, domain.ErrTemplateNotFound
	}
	return t, err
}

// ListTemplates implements domain.Repository.
func (s *Store) ListTemplates(ctx context.Context, practice string) ([]domain.Template, error) {
	rows, err := s.db.Query(ctx, `SELECT `+templateColumns+` FROM message_templates WHERE practice = ? ORDER BY title, id LIMIT ?`,
		practice, domain.MaxTemplatesPerPractice)
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	defer rows.Close()
	var out []domain.Template
	for rows.Next() {
		t, err := scanTemplate(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// CreateTemplate implements domain.Repository.
func (s *Store) CreateTemplate(ctx context.Context, t domain.Template, evs func(domain.Template) []domain.Event) (domain.Template, error) {
	err := s.db.Write(ctx, func(tx *sqldb.Tx) error {
		var n int
		if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM message_templates WHERE practice = ?`, t.Practice).Scan(&n); err != nil {
			return fmt.Errorf("count templates: %w", err)
		}
		if n >= domain.MaxTemplatesPerPractice {
			return domain.ErrTooManyTemplates
		}
		if _, err := tx.Exec(ctx, `INSERT INTO message_templates (`+templateColumns+`) VALUES (?, ?, ?, ?, ?)`,
			t.Practice, t.ID, t.Title, t.Text, sqldb.Micros(t.UpdateTime)); err != nil {
			return fmt.Errorf("insert template: %w", err)
		}
		return outbox.AddAll(ctx, tx, evs(t))
	})
	return t, err
}

// UpdateTemplate implements domain.Repository.
func (s *Store) UpdateTemplate(ctx context.Context, practice, id string, title, text *string, at time.Time, evs func(domain.Template) []domain.Event) (domain.Template, error) {
	var out domain.Template
	err := s.db.Write(ctx, func(tx *sqldb.Tx) error {
		t, err := getTemplate(ctx, tx, practice, id)
		if err != nil {
			return err
		}
		if title != nil {
			t.Title = *title
		}
		if text != nil {
			t.Text = *text
		}
		t.UpdateTime = at
		if _, err := tx.Exec(ctx, `UPDATE message_templates SET title = ?, text = ?, update_time = ? WHERE practice = ? AND id = ?`,
			t.Title, t.Text, sqldb.Micros(at), practice, id); err != nil {
			return fmt.Errorf("update template: %w", err)
		}
		out = t
		return outbox.AddAll(ctx, tx, evs(t))
	})
	return out, err
}

// DeleteTemplate implements domain.Repository.
func (s *Store) DeleteTemplate(ctx context.Context, practice, id string, evs func(domain.Template) []domain.Event) error {
	return s.db.Write(ctx, func(tx *sqldb.Tx) error {
		t, err := getTemplate(ctx, tx, practice, id)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM message_templates WHERE practice = ? AND id = ?`, practice, id); err != nil {
			return fmt.Errorf("delete template: %w", err)
		}
		return outbox.AddAll(ctx, tx, evs(t))
	})
}
