-- Needs reply: each projected message's time, so the wait can be computed
-- whatever order messages are applied in. Rows projected before this migration
-- take their thread's last message time (an upper bound of theirs).
ALTER TABLE message_index ADD COLUMN create_time BIGINT NOT NULL DEFAULT 0;
UPDATE message_index SET create_time = (SELECT c.last_message_time FROM conversations c
  WHERE c.practice = message_index.practice AND c.id = message_index.conversation_id);
CREATE INDEX message_index_by_side ON message_index (practice, conversation_id, from_patient, seq);

-- awaiting_reply_since: the patient's oldest message that no staff message has
-- followed (0: none). assignee: "users/{u}" or ''.
ALTER TABLE conversations ADD COLUMN awaiting_reply_since BIGINT NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN assignee TEXT NOT NULL DEFAULT '';
UPDATE conversations SET awaiting_reply_since = last_message_time
  WHERE EXISTS (SELECT 1 FROM message_index m WHERE m.practice = conversations.practice
    AND m.conversation_id = conversations.id AND m.seq = conversations.last_message_seq AND m.from_patient);
CREATE INDEX conversations_awaiting ON conversations (practice, state, awaiting_reply_since);
CREATE INDEX conversations_by_assignee ON conversations (practice, assignee);

-- Staff the practice has seen, from the tokens of those who used it.
CREATE TABLE staff (
  practice TEXT NOT NULL,
  user_name TEXT NOT NULL, -- "users/{u}"
  display_name TEXT NOT NULL,
  role TEXT NOT NULL,
  update_time BIGINT NOT NULL,
  PRIMARY KEY (practice, user_name)
);
