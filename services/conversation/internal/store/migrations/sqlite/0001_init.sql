-- Threads: one per patient per practice.
CREATE TABLE conversations (
  practice TEXT NOT NULL,
  id TEXT NOT NULL,
  patient_id TEXT NOT NULL,
  patient_display_name TEXT NOT NULL,
  patient_name_key TEXT NOT NULL,
  state INTEGER NOT NULL,
  create_time BIGINT NOT NULL,
  last_message_time BIGINT NOT NULL DEFAULT 0,
  last_message_seq BIGINT NOT NULL DEFAULT 0,
  last_message_preview TEXT NOT NULL DEFAULT '',
  last_activity BIGINT NOT NULL,
  PRIMARY KEY (practice, id)
);
CREATE UNIQUE INDEX conversations_by_patient ON conversations (practice, patient_id);
CREATE INDEX conversations_by_activity ON conversations (practice, state, last_activity);
CREATE INDEX conversations_idle ON conversations (state, last_activity);

-- Per-user state: pin, mute, read watermark. A row makes the user a participant.
CREATE TABLE user_state (
  practice TEXT NOT NULL,
  conversation_id TEXT NOT NULL,
  user_name TEXT NOT NULL,
  pinned BOOLEAN NOT NULL DEFAULT FALSE,
  muted BOOLEAN NOT NULL DEFAULT FALSE,
  read_seq BIGINT NOT NULL DEFAULT 0,
  update_time BIGINT NOT NULL,
  PRIMARY KEY (practice, conversation_id, user_name)
);

-- Projection of delivery's messages: which side sent each sequence number.
CREATE TABLE message_index (
  practice TEXT NOT NULL,
  conversation_id TEXT NOT NULL,
  seq BIGINT NOT NULL,
  from_patient BOOLEAN NOT NULL,
  PRIMARY KEY (practice, conversation_id, seq)
);

CREATE TABLE outbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  subject TEXT NOT NULL,
  payload BLOB NOT NULL,
  created_at BIGINT NOT NULL
);
