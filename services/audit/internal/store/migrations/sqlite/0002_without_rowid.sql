-- audit_events and audit_hashes as WITHOUT ROWID tables keyed by their
-- primary keys (issue 10): a rowid table plus its primary key index were two
-- b-trees written per record and per stored hash; now the key is the table.
-- Rows, indexes and the append-only triggers are carried over as they were.
CREATE TABLE audit_events_new (
    practice   TEXT    NOT NULL,
    idx        INTEGER NOT NULL,
    event_id   TEXT    NOT NULL,
    time_us    INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    actor_role TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    resource   TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    detail     TEXT    NOT NULL,
    leaf_hash  BLOB    NOT NULL,
    PRIMARY KEY (practice, idx)
) WITHOUT ROWID;
INSERT INTO audit_events_new (practice, idx, event_id, time_us, actor, actor_role, action, resource, outcome, detail, leaf_hash)
  SELECT practice, idx, event_id, time_us, actor, actor_role, action, resource, outcome, detail, leaf_hash FROM audit_events;
DROP TABLE audit_events;
ALTER TABLE audit_events_new RENAME TO audit_events;
-- Exactly one record per published event.
CREATE UNIQUE INDEX audit_events_event_id ON audit_events (event_id);
CREATE INDEX audit_events_time ON audit_events (practice, time_us, idx);
CREATE INDEX audit_events_actor ON audit_events (practice, actor, time_us);
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;

CREATE TABLE audit_hashes_new (
    practice TEXT    NOT NULL,
    hidx     INTEGER NOT NULL,
    hash     BLOB    NOT NULL,
    PRIMARY KEY (practice, hidx)
) WITHOUT ROWID;
INSERT INTO audit_hashes_new (practice, hidx, hash) SELECT practice, hidx, hash FROM audit_hashes;
DROP TABLE audit_hashes;
ALTER TABLE audit_hashes_new RENAME TO audit_hashes;
CREATE TRIGGER audit_hashes_no_update BEFORE UPDATE ON audit_hashes
BEGIN SELECT RAISE(ABORT, 'audit_hashes is append-only'); END;
CREATE TRIGGER audit_hashes_no_delete BEFORE DELETE ON audit_hashes
BEGIN SELECT RAISE(ABORT, 'audit_hashes is append-only'); END;
