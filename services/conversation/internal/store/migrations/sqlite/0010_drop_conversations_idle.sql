-- The idle sweep finds each practice's idle threads through
-- conversations_by_activity (store.go, idlePractices): the index on
-- (state, last_activity) had no other reader, and every message projected
-- into a thread deleted and inserted again the thread's entry in it, a page
-- written per thread in each commit (issue 10, wal16).
DROP INDEX conversations_idle;
