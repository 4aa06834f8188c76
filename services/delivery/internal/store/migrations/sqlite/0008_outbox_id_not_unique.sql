-- The outbox without the UNIQUE index on id (issue 10, sqlite12). Every
-- event id is fresh (ids.NewOrdered: 48 bits of milliseconds, 80 random) and
-- no statement looks a row up by id, so the index only cost a b-tree insert
-- (after a search for a duplicate) per event written and a delete per event
-- published; a repeated id would still be one event on the stream
-- (Nats-Msg-Id, the stream's duplicate window). SQLite cannot drop a
-- column's UNIQUE: the table is made again with its rows, and the
-- AUTOINCREMENT counter carried over, so no seq is ever taken twice, even when
-- the table was empty.
CREATE TABLE outbox_new (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL,
  subject TEXT NOT NULL,
  payload BLOB NOT NULL,
  created_at BIGINT NOT NULL,
  traceparent TEXT
);
INSERT INTO outbox_new (seq, id, subject, payload, created_at, traceparent)
  SELECT seq, id, subject, payload, created_at, traceparent FROM outbox ORDER BY seq;
DELETE FROM sqlite_sequence WHERE name = 'outbox_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_new', seq FROM sqlite_sequence WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
