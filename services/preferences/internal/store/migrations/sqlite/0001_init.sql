-- The patient directory of every practice, with each patient's chat opt-in.
-- name_key is the folded display name (words joined by single spaces): the
-- sort key of "by name" and what an exact full-name match compares.
CREATE TABLE patients (
    practice           TEXT    NOT NULL,
    id                 TEXT    NOT NULL,
    external_id        TEXT    NOT NULL,
    display_name       TEXT    NOT NULL,
    name_key           TEXT    NOT NULL,
    date_of_birth      TEXT    NOT NULL,
    has_portal_account INTEGER NOT NULL,
    chat_opt_in        INTEGER NOT NULL DEFAULT 0,
    update_time        BIGINT  NOT NULL,
    prefs_update_time  BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (practice, id),
    UNIQUE (practice, external_id)
);

-- Empty query and ordered scans: everyone, and the chat-eligible only.
CREATE INDEX patients_by_name ON patients (practice, name_key, id);
CREATE INDEX patients_eligible_by_name ON patients (practice, name_key, id)
    WHERE has_portal_account AND chat_opt_in;

-- Word-prefix search (internal/store/search.go): one row per prefix of every
-- indexed word of a patient's name ("g", "ga", "gar", … "garcia"), so a query
-- word is an equality lookup whose rows come back in name order. rank is 0
-- when the whole name is that one word, 1 when the prefix is a whole word of
-- the name, 2 otherwise. search_text is every indexed word of the name,
-- space separated, with a leading and a trailing space, so the other query
-- words are checked in the index row: LIKE '% gar%' (prefix), '% garcia %'
-- (whole word). eligible copies has_portal_account AND chat_opt_in of the
-- patient, so the default search (the chat-eligible only) never leaves the
-- index. WITHOUT ROWID: the table is its own covering index.
CREATE TABLE patient_prefixes (
    practice    TEXT    NOT NULL,
    prefix      TEXT    NOT NULL,
    rank        INTEGER NOT NULL,
    name_key    TEXT    NOT NULL,
    patient_id  TEXT    NOT NULL,
    search_text TEXT    NOT NULL,
    eligible    INTEGER NOT NULL,
    PRIMARY KEY (practice, prefix, rank, name_key, patient_id)
) WITHOUT ROWID;

-- Transactional outbox (services/platform/outbox).
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL UNIQUE,
    subject    TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    created_at BIGINT  NOT NULL
);
