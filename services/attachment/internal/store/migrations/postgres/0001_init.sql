-- Uploaded files' metadata. The bytes live under --blob-dir, named by id.
-- filename is PHI. Rows are never deleted.
CREATE TABLE attachments (
  practice TEXT NOT NULL,
  id TEXT NOT NULL,
  conversation_id TEXT NOT NULL,
  uploader TEXT NOT NULL,
  uploader_role TEXT NOT NULL,
  filename TEXT NOT NULL,
  content_type TEXT NOT NULL,
  size_bytes BIGINT NOT NULL,
  sha256 TEXT NOT NULL,
  create_time BIGINT NOT NULL,
  PRIMARY KEY (practice, id)
);

-- Messages that carry an attachment, from delivery's MessageCreated events.
-- An attachment on a sensitive message needs a recent sign-in for the patient.
CREATE TABLE attachment_links (
  practice TEXT NOT NULL,
  attachment_id TEXT NOT NULL,
  message TEXT NOT NULL,
  sender TEXT NOT NULL,
  sensitive BOOLEAN NOT NULL,
  create_time BIGINT NOT NULL,
  PRIMARY KEY (practice, attachment_id, message)
);

CREATE TABLE outbox (
  seq BIGSERIAL PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  subject TEXT NOT NULL,
  payload BYTEA NOT NULL,
  created_at BIGINT NOT NULL
);
