-- The outbox's seq without AUTOINCREMENT (issue 10, wal16; as conversation's 0009).
-- updated the outbox's sqlite_sequence row with every INSERT: one WAL frame
-- (a page write) in every commit that wrote events, about one in thirteen of
-- this database's frames. The SQLite writer now takes the seqs itself
-- (outbox.AddAll, sqldb.Tx.Seqs): in memory, going up within the process
-- even once the relay has deleted every row (SQLite's own choice, one more
-- than the highest seq in the table, would then go back below the relay's
-- last published seq). Its counter starts after the table's highest seq, or
-- the sqlite_sequence row of 'outbox' if there is one: this migration keeps
-- that row, renamed around the DROP that would delete it, so the seqs taken
-- before it are not taken again.
CREATE TABLE outbox_new (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL,
  subject TEXT NOT NULL,
  payload BLOB NOT NULL,
  created_at BIGINT NOT NULL,
  traceparent TEXT
);
INSERT INTO outbox_new (seq, id, subject, payload, created_at, traceparent)
  SELECT seq, id, subject, payload, created_at, traceparent FROM outbox ORDER BY seq;
UPDATE sqlite_sequence SET name = 'outbox_kept' WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
UPDATE sqlite_sequence SET name = 'outbox' WHERE name = 'outbox_kept';
