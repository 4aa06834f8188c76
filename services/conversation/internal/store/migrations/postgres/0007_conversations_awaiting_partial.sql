-- conversations_awaiting holds only the threads awaiting a reply (issue 10,
-- sqlite12): the needs-reply list is its only reader and asks for
-- "awaiting_reply_since > 0" (and repeats it so the planner may use this
-- index). The projection's UPDATE sets state and awaiting_reply_since for
-- every thread it touches, and a database rewrites the index entry of every
-- index holding a column the SET names even when its value stays the same:
-- a thread whose last message is staff's (awaiting 0) was one index entry
-- deleted and inserted again per message; now it has none.
DROP INDEX conversations_awaiting;
CREATE INDEX conversations_awaiting ON conversations (practice, state, awaiting_reply_since) WHERE awaiting_reply_since > 0;
