-- messages_unadvanced holds only the messages a receipt can still advance
-- (status below Read, 3), not every message ever read (issue 10): a read
-- message leaves the index instead of moving to the end of its thread's read
-- entries, and the index stays as small as the unread messages. Advance
-- repeats the predicate ("status < 3") so the planner may use it.
DROP INDEX messages_unadvanced;
CREATE INDEX messages_unadvanced ON messages (practice, conversation_id, from_patient, status, seq) WHERE status < 3;
