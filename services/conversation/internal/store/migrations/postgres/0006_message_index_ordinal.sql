-- The unread count in two index lookups (issue 10): ordinal is the row's
-- place among its thread's messages of its side (1 for the side's oldest),
-- so the messages of a side after read_seq number the ordinal of the side's
-- newest row less that of its newest row at or below read_seq. The
-- projection keeps it exact when messages arrive out of order (it numbers
-- the side again from the oldest row it inserted out of order).
ALTER TABLE message_index ADD COLUMN ordinal BIGINT NOT NULL DEFAULT 0;
UPDATE message_index SET ordinal = r.n FROM (SELECT practice, conversation_id, from_patient, seq,
  ROW_NUMBER() OVER (PARTITION BY practice, conversation_id, from_patient ORDER BY seq) AS n FROM message_index) r
  WHERE message_index.practice = r.practice AND message_index.conversation_id = r.conversation_id
  AND message_index.from_patient = r.from_patient AND message_index.seq = r.seq;
