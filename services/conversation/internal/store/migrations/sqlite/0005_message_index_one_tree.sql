-- message_index as one b-tree keyed by side (issue 10): a rowid table, its
-- primary key index and message_index_by_side were three b-trees written per
-- message; WITHOUT ROWID with the key (practice, conversation_id, from_patient,
-- seq) is the table and the index the unread count and needs reply read.
-- A sequence number is unique within a thread (delivery assigns it), so the
-- side in the key does not weaken the replay check.
CREATE TABLE message_index_new (
  practice TEXT NOT NULL,
  conversation_id TEXT NOT NULL,
  from_patient BOOLEAN NOT NULL,
  seq BIGINT NOT NULL,
  create_time BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (practice, conversation_id, from_patient, seq)
) WITHOUT ROWID;
INSERT INTO message_index_new (practice, conversation_id, from_patient, seq, create_time)
  SELECT practice, conversation_id, from_patient, seq, create_time FROM message_index;
DROP TABLE message_index;
ALTER TABLE message_index_new RENAME TO message_index;
