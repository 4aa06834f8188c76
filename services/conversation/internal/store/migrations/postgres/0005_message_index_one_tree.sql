-- message_index keyed by side (issue 10): the primary key serves the unread
-- count and needs reply, so message_index_by_side is one index fewer written
-- per message. A sequence number is unique within a thread (delivery assigns
-- it), so the side in the key does not weaken the replay check.
ALTER TABLE message_index DROP CONSTRAINT message_index_pkey;
ALTER TABLE message_index ADD PRIMARY KEY (practice, conversation_id, from_patient, seq);
DROP INDEX message_index_by_side;
