-- The audit log: one append-only Merkle log per practice (see the domain
-- package for the leaf encoding). Triggers refuse every UPDATE, DELETE and
-- TRUNCATE.

-- One row per audit record; idx is the leaf index in the practice's tree.
CREATE TABLE audit_events (
    practice   TEXT   NOT NULL,
    idx        BIGINT NOT NULL,
    event_id   TEXT   NOT NULL,
    time_us    BIGINT NOT NULL,
    actor      TEXT   NOT NULL,
    actor_role TEXT   NOT NULL,
    action     TEXT   NOT NULL,
    resource   TEXT   NOT NULL,
    outcome    TEXT   NOT NULL,
    detail     TEXT   NOT NULL,
    leaf_hash  BYTEA  NOT NULL,
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
    practice TEXT   NOT NULL,
    hidx     BIGINT NOT NULL,
    hash     BYTEA  NOT NULL,
    PRIMARY KEY (practice, hidx)
)
-- +statement
-- Signed checkpoints: tree size and root hash in a signed note.
CREATE TABLE audit_checkpoints (
    practice   TEXT   NOT NULL,
    tree_size  BIGINT NOT NULL,
    root_hash  BYTEA  NOT NULL,
    note       TEXT   NOT NULL,
    created_us BIGINT NOT NULL,
    PRIMARY KEY (practice, tree_size)
)
-- +statement
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only', TG_TABLE_NAME;
END
$$
-- +statement
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_append_only()
-- +statement
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()
-- +statement
CREATE TRIGGER audit_hashes_append_only BEFORE UPDATE OR DELETE ON audit_hashes
    FOR EACH ROW EXECUTE FUNCTION audit_append_only()
-- +statement
CREATE TRIGGER audit_hashes_no_truncate BEFORE TRUNCATE ON audit_hashes
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()
-- +statement
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_append_only()
-- +statement
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()
