-- The audit log: one append-only Merkle log per practice (see the domain
-- package for the leaf encoding). Triggers refuse every UPDATE and DELETE.

-- One row per audit record; idx is the leaf index in the practice's tree.
CREATE TABLE audit_events (
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
)
-- +statement
-- Exactly one record per published event.
CREATE UNIQUE INDEX audit_events_event_id ON audit_events (event_id)
-- +statement
CREATE INDEX audit_events_time ON audit_events (practice, time_us, idx)
-- +statement
CREATE INDEX audit_events_actor ON audit_events (practice, actor, time_us)
-- +statement
-- tlog stored hashes (tlog.StoredHashIndex numbering) of each practice's tree.
CREATE TABLE audit_hashes (
    practice TEXT    NOT NULL,
    hidx     INTEGER NOT NULL,
    hash     BLOB    NOT NULL,
    PRIMARY KEY (practice, hidx)
)
-- +statement
-- Signed checkpoints: tree size and root hash in a signed note.
CREATE TABLE audit_checkpoints (
    practice   TEXT    NOT NULL,
    tree_size  INTEGER NOT NULL,
    root_hash  BLOB    NOT NULL,
    note       TEXT    NOT NULL,
    created_us INTEGER NOT NULL,
    PRIMARY KEY (practice, tree_size)
)
-- +statement
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END
-- +statement
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END
-- +statement
CREATE TRIGGER audit_hashes_no_update BEFORE UPDATE ON audit_hashes
BEGIN SELECT RAISE(ABORT, 'audit_hashes is append-only'); END
-- +statement
CREATE TRIGGER audit_hashes_no_delete BEFORE DELETE ON audit_hashes
BEGIN SELECT RAISE(ABORT, 'audit_hashes is append-only'); END
-- +statement
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END
-- +statement
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END
