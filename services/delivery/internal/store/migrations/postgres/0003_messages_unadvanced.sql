-- Receipts advance only messages not yet at the target status: an index on
-- (side, status, seq) makes markDelivered/markRead touch only those rows
-- instead of scanning the thread from its first message.
CREATE INDEX messages_unadvanced ON messages (practice, conversation_id, from_patient, status, seq);
