-- Per-conversation message counter: the next message's sequence number.
CREATE TABLE conversation_seq (
  practice TEXT NOT NULL,
  conversation_id TEXT NOT NULL,
  last_seq BIGINT NOT NULL,
  PRIMARY KEY (practice, conversation_id)
);

-- Messages are never deleted. text and extras (attachments, artifact card) are PHI.
CREATE TABLE messages (
  practice TEXT NOT NULL,
  conversation_id TEXT NOT NULL,
  seq BIGINT NOT NULL,
  patient_id TEXT NOT NULL,
  sender TEXT NOT NULL,
  sender_role TEXT NOT NULL,
  from_patient BOOLEAN NOT NULL,
  text TEXT NOT NULL,
  extras TEXT NOT NULL,
  sensitive BOOLEAN NOT NULL,
  status INTEGER NOT NULL,
  create_time BIGINT NOT NULL,
  deliver_time BIGINT NOT NULL DEFAULT 0,
  read_time BIGINT NOT NULL DEFAULT 0,
  read_by TEXT NOT NULL DEFAULT '',
  request_id TEXT NOT NULL,
  content_hash TEXT NOT NULL,
  PRIMARY KEY (practice, conversation_id, seq)
);
CREATE UNIQUE INDEX messages_by_request ON messages (practice, sender, request_id);

CREATE TABLE outbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  subject TEXT NOT NULL,
  payload BLOB NOT NULL,
  created_at BIGINT NOT NULL
);
