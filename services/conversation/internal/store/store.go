// Package store is the conversation service's repository on SQLite or
// PostgreSQL (portable SQL through sqldb).
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store/migrations"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/textfold"
)

// Store implements domain.Repository.
type Store struct {
	db           *sqldb.DB
	participants participants // the projection's cache of user_state rows
	// NoRecipients: ApplyMessages does not read a patient message's
	// recipients (the thread's staff who have not muted it) and hands its
	// events function none; they only address notification requests, so a
	// deployment where nothing can read those sets it (Service's
	// NoNotificationRequests).
	NoRecipients bool
}

var _ domain.Repository = (*Store)(nil)

// New migrates db and returns the store.
func New(ctx context.Context, db *sqldb.DB) (*Store, error) {
	if err := sqldb.Migrate(ctx, db, migrations.FS, "."); err != nil {
		return nil, err
	}
	return &Store{db: db}, nil
}

const convColumns = `c.practice, c.id, c.patient_id, c.patient_display_name, c.state, c.create_time,
	c.last_message_time, c.last_message_seq, c.last_message_preview, c.awaiting_reply_since, c.assignee,
	COALESCE((SELECT s.display_name FROM staff s WHERE s.practice = c.practice AND s.user_name = c.assignee), '') AS assignee_display_name`

// returningConvColumns are convColumns for an UPDATE's RETURNING, which
// SQLite lets name the table but not an alias.
var returningConvColumns = strings.ReplaceAll(convColumns, "c.", "conversations.")

// viewerColumns are the per-user columns for the viewer joined as u; the
// first two arguments are whether the viewer is staff (counts patient
// messages). The unread count is the ordinal of the other side's newest
// message less that of its newest message at or below read_seq: two
// lookups on message_index's key, whatever the backlog.
const viewerColumns = viewerFlags + `,
	` + unreadAtOrBelow + `COALESCE(u.read_seq, 0)` + unreadEnd + ` AS unread`

// viewerFlags are viewerColumns without the unread count.
const viewerFlags = `CASE WHEN u.pinned THEN 1 ELSE 0 END AS pin,
	CASE WHEN u.muted THEN 1 ELSE 0 END AS mute,
	COALESCE(u.read_seq, 0) AS read_seq`

// unreadAtOrBelow + a watermark expression + unreadEnd is viewerColumns'
// unread count for that watermark (MarkRead's: the one after its raise).
const (
	unreadAtOrBelow = `COALESCE((SELECT m.ordinal FROM message_index m WHERE m.practice = c.practice AND m.conversation_id = c.id
		AND m.from_patient = ? ORDER BY m.seq DESC LIMIT 1), 0)
	- COALESCE((SELECT m.ordinal FROM message_index m WHERE m.practice = c.practice AND m.conversation_id = c.id
		AND m.from_patient = ? AND m.seq <= `
	unreadEnd = ` ORDER BY m.seq DESC LIMIT 1), 0)`
)

const viewerJoin = `LEFT JOIN user_state u ON u.practice = c.practice AND u.conversation_id = c.id AND u.user_name = ?`

type scanner interface{ Scan(...any) error }

// convScan is what scanConv scans a row into, in one allocation: Scan's
// destinations escape through the scanner interface, and as locals each was
// an allocation of its own.
type convScan struct {
	c                      domain.Conversation
	state, pin, mute       int
	create, last, awaiting int64
	dest                   [20]any // the columns, the viewer's and a few extra
}

func scanConv(s scanner, withViewer bool, extra ...any) (domain.Conversation, error) {
	t := new(convScan)
	c := &t.c
	dest := append(t.dest[:0], &c.Practice, &c.ID, &c.PatientID, &c.PatientDisplayName, &t.state, &t.create, &t.last,
		&c.LastMessageSeq, &c.LastMessagePreview, &t.awaiting, &c.Assignee, &c.AssigneeDisplayName)
	if withViewer {
		dest = append(dest, &t.pin, &t.mute, &c.ReadSeq, &c.UnreadCount)
	}
	dest = append(dest, extra...)
	if err := s.Scan(dest...); err != nil {
		return *c, err
	}
	c.State = domain.State(t.state)
	c.CreateTime = sqldb.FromMicros(t.create)
	c.LastMessageTime = sqldb.FromMicros(t.last)
	if t.awaiting > 0 {
		c.AwaitingReplySince = sqldb.FromMicros(t.awaiting)
	}
	if c.Assignee != "" && c.AssigneeDisplayName == "" {
		c.AssigneeDisplayName = strings.TrimPrefix(c.Assignee, "users/")
	}
	c.Pinned, c.Muted = t.pin == 1, t.mute == 1
	return *c, nil
}

func getTx(ctx context.Context, q sqldb.Querier, practice, id string, v domain.Viewer) (domain.Conversation, error) {
	row := q.QueryRow(ctx, `SELECT `+convColumns+`, `+viewerColumns+` FROM conversations c `+viewerJoin+`
		WHERE c.practice = ? AND c.id = ?`, !v.IsPatient, !v.IsPatient, v.Principal, practice, id)
	c, err := scanConv(row, true)
	if errors.Is(err, sql.ErrNoRows) {
		return c, domain.ErrNotFound
	}
	return c, err
}

// getShared loads a thread without any viewer's state (no unread count).
func getShared(ctx context.Context, q sqldb.Querier, practice, id string) (domain.Conversation, error) {
	row := q.QueryRow(ctx, `SELECT `+convColumns+` FROM conversations c WHERE c.practice = ? AND c.id = ?`, practice, id)
	c, err := scanConv(row, false)
	if errors.Is(err, sql.ErrNoRows) {
		return c, domain.ErrNotFound
	}
	return c, err
}

// GetShared implements domain.Repository.
func (s *Store) GetShared(ctx context.Context, practice, id string) (domain.Conversation, error) {
	return getShared(ctx, s.db, practice, id)
}

// Create implements domain.Repository.
func (s *Store) Create(ctx context.Context, c domain.Conversation, onCreate func(domain.Conversation) []domain.Event) (domain.Conversation, bool, error) {
	var out domain.Conversation
	var created bool
	err := s.db.Write(ctx, func(tx *sqldb.Tx) error {
		res, err := tx.Exec(ctx, `INSERT INTO conversations (practice, id, patient_id, patient_display_name, patient_name_key,
			state, create_time, last_activity) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (practice, patient_id) DO NOTHING`,
			c.Practice, c.ID, c.PatientID, c.PatientDisplayName, textfold.Key(c.PatientDisplayName), int(domain.Active),
			sqldb.Micros(c.CreateTime), sqldb.Micros(c.CreateTime))
		if err != nil {
			return fmt.Errorf("insert conversation: %w", err)
		}
		n, _ := res.RowsAffected()
		created = n == 1
		row := tx.QueryRow(ctx, `SELECT `+convColumns+` FROM conversations c WHERE c.practice = ? AND c.patient_id = ?`, c.Practice, c.PatientID)
		if out, err = scanConv(row, false); err != nil {
			return fmt.Errorf("load conversation: %w", err)
		}
		if created {
			return outbox.AddAll(ctx, tx, onCreate(out))
		}
		return nil
	})
	return out, created, err
}

// Get implements domain.Repository.
func (s *Store) Get(ctx context.Context, practice, id string, v domain.Viewer) (domain.Conversation, error) {
	return getTx(ctx, s.db, practice, id, v)
}

// List implements domain.Repository.
func (s *Store) List(ctx context.Context, q domain.ListQuery) ([]domain.Conversation, *domain.Cursor, error) {
	state := domain.Active
	if q.Archived {
		state = domain.Archived
	}
	args := []any{!q.Viewer.IsPatient, !q.Viewer.IsPatient, q.Viewer.Principal, q.Practice}
	where := []string{"c.practice = ?"}
	if len(q.IDs) > 0 {
		where = append(where, "c.id IN (?"+strings.Repeat(", ?", len(q.IDs)-1)+")")
		for _, id := range q.IDs {
			args = append(args, id)
		}
	} else {
		where = append(where, "c.state = ?")
		args = append(args, int(state))
	}
	if q.PatientID != "" {
		where = append(where, "c.patient_id = ?")
		args = append(args, q.PatientID)
	}
	for _, w := range q.Words {
		where = append(where, `(' ' || c.patient_name_key) LIKE ? ESCAPE '\'`)
		args = append(args, "% "+escapeLike(w)+"%")
	}
	if q.Assignee != "" {
		where = append(where, "c.assignee = ?")
		args = append(args, q.Assignee)
	}
	if q.AwaitingReply {
		return s.listAwaiting(ctx, q, where, args)
	}
	inner := `SELECT ` + convColumns + `, ` + viewerColumns + `, c.last_activity AS activity FROM conversations c ` + viewerJoin +
		` WHERE ` + strings.Join(where, " AND ")
	query := `SELECT * FROM (` + inner + `) q`
	if a := q.After; a != nil {
		pin := 0
		if a.Pinned {
			pin = 1
		}
		query += ` WHERE (pin < ? OR (pin = ? AND (activity < ? OR (activity = ? AND id > ?))))`
		args = append(args, pin, pin, a.LastActivity, a.LastActivity, a.ID)
	}
	query += ` ORDER BY pin DESC, activity DESC, id ASC LIMIT ?`
	args = append(args, q.Limit+1)
	rows, err := s.db.Query(ctx, query, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("list conversations: %w", err)
	}
	defer rows.Close()
	var out []domain.Conversation
	var activity []int64
	for rows.Next() {
		var act int64
		c, err := scanConv(rows, true, &act)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, c)
		activity = append(activity, act)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	if len(out) <= q.Limit {
		return out, nil, nil
	}
	out = out[:q.Limit]
	last := out[len(out)-1]
	return out, &domain.Cursor{Pinned: last.Pinned, LastActivity: activity[q.Limit-1], ID: last.ID}, nil
}

// listAwaiting lists threads awaiting a reply, longest-waiting first.
func (s *Store) listAwaiting(ctx context.Context, q domain.ListQuery, where []string, args []any) ([]domain.Conversation, *domain.Cursor, error) {
	where = append(where, "c.awaiting_reply_since > 0")
	if a := q.After; a != nil {
		where = append(where, "(c.awaiting_reply_since > ? OR (c.awaiting_reply_since = ? AND c.id > ?))")
		args = append(args, a.LastActivity, a.LastActivity, a.ID)
	}
	query := `SELECT ` + convColumns + `, ` + viewerColumns + ` FROM conversations c ` + viewerJoin +
		` WHERE ` + strings.Join(where, " AND ") + ` ORDER BY c.awaiting_reply_since ASC, c.id ASC LIMIT ?`
	args = append(args, q.Limit+1)
	rows, err := s.db.Query(ctx, query, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("list conversations awaiting reply: %w", err)
	}
	defer rows.Close()
	var out []domain.Conversation
	for rows.Next() {
		c, err := scanConv(rows, true)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	if len(out) <= q.Limit {
		return out, nil, nil
	}
	out = out[:q.Limit]
	last := out[len(out)-1]
	return out, &domain.Cursor{Awaiting: true, LastActivity: sqldb.Micros(last.AwaitingReplySince), ID: last.ID}, nil
}

func escapeLike(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(s)
}

func ensureUser(ctx context.Context, tx *sqldb.Tx, practice, id, user string, now time.Time) error {
	_, err := tx.Exec(ctx, `INSERT INTO user_state (practice, conversation_id, user_name, update_time) VALUES (?, ?, ?, ?)
		ON CONFLICT (practice, conversation_id, user_name) DO NOTHING`, practice, id, user, sqldb.Micros(now))
	if err != nil {
		return fmt.Errorf("insert user state: %w", err)
	}
	return nil
}

// SetFlags implements domain.Repository.
func (s *Store) SetFlags(ctx context.Context, practice, id string, v domain.Viewer, f domain.UserFlags, evs func(domain.Conversation) []domain.Event) (domain.Conversation, error) {
	var out domain.Conversation
	err := s.db.Write(ctx, func(tx *sqldb.Tx) error {
		if _, err := getTx(ctx, tx, practice, id, v); err != nil {
			return err
		}
		now := time.Now()
		if err := ensureUser(ctx, tx, practice, id, v.Principal, now); err != nil {
			return err
		}
		if f.Pinned != nil {
			if _, err := tx.Exec(ctx, `UPDATE user_state SET pinned = ?, update_time = ? WHERE practice = ? AND conversation_id = ? AND user_name = ?`,
				*f.Pinned, sqldb.Micros(now), practice, id, v.Principal); err != nil {
				return err
			}
		}
		if f.Muted != nil {
			if _, err := tx.Exec(ctx, `UPDATE user_state SET muted = ?, update_time = ? WHERE practice = ? AND conversation_id = ? AND user_name = ?`,
				*f.Muted, sqldb.Micros(now), practice, id, v.Principal); err != nil {
				return err
			}
		}
		var err error
		if out, err = getTx(ctx, tx, practice, id, v); err != nil {
			return err
		}
		return outbox.AddAll(ctx, tx, evs(out))
	})
	return out, err
}

// MarkRead implements domain.Repository. In one job of the writer it
// reads, in one statement, the thread (shared columns: the writer's pages
// are warm, where a read on a reader connection starts a read transaction
// and reloads the pages other writes changed), the viewer's state, and the
// unread count the viewer will have once the watermark is raised; hands the
// thread to check (authorization and the watermark's bounds: its error ends
// the transaction, nothing written); and raises the watermark, capped at
// the thread's last message, in one upsert that never lowers it, only when
// it rises (advanced). So a markRead is two statements and its event. The
// read stays in the transaction: outside it, concurrent callers spend that
// time away from the writer, its batches are smaller, and the commits per
// receipt (fsyncs, the larger cost) rise (BenchmarkMarkRead).
func (s *Store) MarkRead(ctx context.Context, practice, id string, v domain.Viewer, upTo int64, check func(domain.Conversation) error, evs func(domain.Conversation, bool) []domain.Event) (domain.Conversation, error) {
	var out domain.Conversation
	err := s.db.Write(ctx, func(tx *sqldb.Tx) error {
		// The watermark after the raise: the larger of the stored one and
		// upTo capped at the last message (everything when upTo <= 0).
		const target = `CASE WHEN CAST(? AS BIGINT) <= 0 OR c.last_message_seq < CAST(? AS BIGINT) THEN c.last_message_seq ELSE CAST(? AS BIGINT) END`
		const after = `CASE WHEN COALESCE(u.read_seq, 0) > ` + target + ` THEN COALESCE(u.read_seq, 0) ELSE ` + target + ` END`
		var pin, mute, unreadAfter int
		var readBefore int64
		// Each argument boxed once (a boxing is an allocation): upTo is six
		// of the read's, the thread and viewer go to the upsert too.
		up, p, cid, who := any(upTo), any(practice), any(id), any(v.Principal)
		c, err := scanConv(tx.QueryRow(ctx, `SELECT `+convColumns+`, `+viewerFlags+`, `+unreadAtOrBelow+after+unreadEnd+`
			FROM conversations c `+viewerJoin+` WHERE c.practice = ? AND c.id = ?`,
			!v.IsPatient, !v.IsPatient, up, up, up, up, up, up, who, p, cid),
			false, &pin, &mute, &readBefore, &unreadAfter)
		if errors.Is(err, sql.ErrNoRows) {
			return domain.ErrNotFound // nothing was written
		}
		if err != nil {
			return err
		}
		if err := check(c); err != nil {
			return err
		}
		mark := c.LastMessageSeq
		if upTo > 0 {
			mark = min(upTo, mark)
		}
		c.Pinned, c.Muted = pin == 1, mute == 1
		c.ReadSeq, c.UnreadCount = max(readBefore, mark), unreadAfter
		advanced := false
		if mark > readBefore {
			res, err := tx.Exec(ctx, `INSERT INTO user_state (practice, conversation_id, user_name, read_seq, update_time)
				VALUES (?, ?, ?, ?, ?)
				ON CONFLICT (practice, conversation_id, user_name) DO UPDATE
				SET read_seq = excluded.read_seq, update_time = excluded.update_time WHERE user_state.read_seq < excluded.read_seq`,
				p, cid, who, mark, sqldb.Micros(time.Now()))
			if err != nil {
				return fmt.Errorf("raise read watermark: %w", err)
			}
			n, _ := res.RowsAffected()
			if advanced = n > 0; !advanced {
				// Raised meanwhile by another transaction (PostgreSQL):
				// read what it left.
				if err := viewerStateTx(ctx, tx, &c, v); err != nil {
					return err
				}
			}
		}
		out = c
		return outbox.AddAll(ctx, tx, evs(out, advanced))
	})
	return out, err
}

// viewerStateTx fills c's per-user state for v (pin, mute, read watermark,
// unread count), as getTx reads it, without reading the shared columns
// again.
func viewerStateTx(ctx context.Context, q sqldb.Querier, c *domain.Conversation, v domain.Viewer) error {
	var pin, mute int
	err := q.QueryRow(ctx, `SELECT `+viewerColumns+` FROM conversations c `+viewerJoin+`
		WHERE c.practice = ? AND c.id = ?`, !v.IsPatient, !v.IsPatient, v.Principal, c.Practice, c.ID).
		Scan(&pin, &mute, &c.ReadSeq, &c.UnreadCount)
	if errors.Is(err, sql.ErrNoRows) {
		return domain.ErrNotFound
	}
	c.Pinned, c.Muted = pin == 1, mute == 1
	return err
}

// RenamePatient implements domain.Repository.
func (s *Store) RenamePatient(ctx context.Context, practice, patientID, displayName string) error {
	return s.db.Write(ctx, func(tx *sqldb.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE conversations SET patient_display_name = ?, patient_name_key = ? WHERE practice = ? AND patient_id = ?`,
			displayName, textfold.Key(displayName), practice, patientID)
		return err
	})
}

// idlePractices is the practices of the threads, one index search each (a
// loose index scan of conversations' indexes that lead with practice): the
// idle sweep looks for each practice's idle threads through
// conversations_by_activity (practice, state, last_activity). The sweep
// archives every idle thread, so it needs no order across practices, and
// the index on (state, last_activity) it had instead (conversations_idle)
// was an entry deleted and inserted again by every message projected into
// a thread: a page written per thread in each commit (0010, wal16). CROSS
// JOIN keeps the practices the outer loop on SQLite.
const idlePractices = `WITH RECURSIVE p (practice) AS (SELECT MIN(practice) FROM conversations
	UNION ALL SELECT (SELECT MIN(n.practice) FROM conversations n WHERE n.practice > p.practice) FROM p WHERE p.practice IS NOT NULL)`

// idleProbeSQL finds whether a thread in a state (domain.Active) is idle
// since a time; idleSelectSQL reads up to a limit of them.
const (
	idleProbeSQL = idlePractices + ` SELECT 1 FROM p CROSS JOIN conversations c
		WHERE c.practice = p.practice AND c.state = ? AND c.last_activity < ? LIMIT 1`
	idleSelectSQL = idlePractices + ` SELECT ` + convColumns + ` FROM p CROSS JOIN conversations c
		WHERE c.practice = p.practice AND c.state = ? AND c.last_activity < ? LIMIT ?`
)

// ArchiveIdle implements domain.Repository.
func (s *Store) ArchiveIdle(ctx context.Context, before time.Time, limit int, evs func(domain.Conversation) []domain.Event) (int, error) {
	// A sweep that finds nothing commits nothing.
	var one int
	switch err := s.db.QueryRow(ctx, idleProbeSQL, int(domain.Active), sqldb.Micros(before)).Scan(&one); {
	case errors.Is(err, sql.ErrNoRows):
		return 0, nil
	case err != nil:
		return 0, err
	}
	n := 0
	err := s.db.Write(ctx, func(tx *sqldb.Tx) error {
		n = 0 // PostgreSQL may run this again (a serialization failure or deadlock)
		rows, err := tx.Query(ctx, idleSelectSQL, int(domain.Active), sqldb.Micros(before), limit)
		if err != nil {
			return err
		}
		var idle []domain.Conversation
		for rows.Next() {
			c, err := scanConv(rows, false)
			if err != nil {
				rows.Close()
				return err
			}
			idle = append(idle, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, c := range idle {
			res, err := tx.Exec(ctx, `UPDATE conversations SET state = ? WHERE practice = ? AND id = ? AND state = ? AND last_activity < ?`,
				int(domain.Archived), c.Practice, c.ID, int(domain.Active), sqldb.Micros(before))
			if err != nil {
				return err
			}
			if k, _ := res.RowsAffected(); k == 0 {
				continue
			}
			c.State = domain.Archived
			if err := outbox.AddAll(ctx, tx, evs(c)); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// Assign implements domain.Repository.
func (s *Store) Assign(ctx context.Context, practice, id, assignee string, v domain.Viewer, evs func(domain.Conversation) []domain.Event) (domain.Conversation, error) {
	var out domain.Conversation
	err := s.db.Write(ctx, func(tx *sqldb.Tx) error {
		if assignee != "" {
			var n int
			if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM staff WHERE practice = ? AND user_name = ?`, practice, assignee).Scan(&n); err != nil {
				return fmt.Errorf("look up staff: %w", err)
			}
			if n == 0 {
				return domain.UnknownStaff(assignee)
			}
		}
		res, err := tx.Exec(ctx, `UPDATE conversations SET assignee = ? WHERE practice = ? AND id = ?`, assignee, practice, id)
		if err != nil {
			return fmt.Errorf("assign conversation: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return domain.ErrNotFound
		}
		if out, err = getTx(ctx, tx, practice, id, v); err != nil {
			return err
		}
		return outbox.AddAll(ctx, tx, evs(out))
	})
	return out, err
}

// SaveStaff implements domain.Repository.
func (s *Store) SaveStaff(ctx context.Context, m domain.StaffMember) error {
	return s.db.Write(ctx, func(tx *sqldb.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO staff (practice, user_name, display_name, role, update_time) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (practice, user_name) DO UPDATE SET
			display_name = CASE WHEN excluded.display_name = '' THEN staff.display_name ELSE excluded.display_name END, role = excluded.role,
			update_time = excluded.update_time`, m.Practice, m.User, m.DisplayName, m.Role, sqldb.Micros(m.UpdateTime))
		if err != nil {
			return fmt.Errorf("save staff: %w", err)
		}
		return nil
	})
}

// ListStaff implements domain.Repository.
func (s *Store) ListStaff(ctx context.Context, practice string, after *domain.StaffCursor, limit int) ([]domain.StaffMember, bool, error) {
	args := []any{practice}
	query := `SELECT practice, user_name, display_name, role, update_time FROM staff WHERE practice = ?`
	if after != nil {
		query += ` AND (display_name > ? OR (display_name = ? AND user_name > ?))`
		args = append(args, after.DisplayName, after.DisplayName, after.User)
	}
	query += ` ORDER BY display_name, user_name LIMIT ?`
	args = append(args, limit+1)
	rows, err := s.db.Query(ctx, query, args...)
	if err != nil {
		return nil, false, fmt.Errorf("list staff: %w", err)
	}
	defer rows.Close()
	var out []domain.StaffMember
	for rows.Next() {
		var m domain.StaffMember
		var at int64
		if err := rows.Scan(&m.Practice, &m.User, &m.DisplayName, &m.Role, &at); err != nil {
			return nil, false, err
		}
		m.UpdateTime = sqldb.FromMicros(at)
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	if len(out) > limit {
		return out[:limit], true, nil
	}
	return out, false, nil
}

// Record implements domain.Repository.
func (s *Store) Record(ctx context.Context, evs ...domain.Event) error {
	if len(evs) == 0 {
		return nil
	}
	return s.db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, evs) })
}
