-- SQLite takes a message's seq from its thread's highest (issue 10): one
-- writer at a time, and messages are never deleted, so MAX(seq) is the
-- counter, found in the primary key. The counter table was one more row
-- written per send. (PostgreSQL keeps it: its row lock orders a thread's
-- concurrent sends.) A binary from before this migration refuses the
-- database (a version above its files), so none takes a seq from a stale
-- counter.
DROP TABLE conversation_seq;
