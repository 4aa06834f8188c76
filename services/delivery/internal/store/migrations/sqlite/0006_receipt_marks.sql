-- Per thread and side (from_patient: whose messages), the seq up to which
-- every message is at least DELIVERED (delivered_seq) and READ (read_seq)
-- (issue 10). A receipt updates only the messages above the mark, found by
-- the primary key, instead of searching messages_unadvanced: that index held
-- status, so every receipt rewrote an index entry per message, and on
-- PostgreSQL its range walked the dead entries of every earlier receipt until
-- vacuum (280-1,690 buffers per call). Without it a receipt changes no
-- indexed column. A thread without a row has its marks at 0: its first
-- receipt looks at the whole thread once.
CREATE TABLE receipt_marks (
  practice TEXT NOT NULL,
  conversation_id TEXT NOT NULL,
  from_patient BOOLEAN NOT NULL,
  delivered_seq BIGINT NOT NULL DEFAULT 0,
  read_seq BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (practice, conversation_id, from_patient)
);
DROP INDEX messages_unadvanced;
