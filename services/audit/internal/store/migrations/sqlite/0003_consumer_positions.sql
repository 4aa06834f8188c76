-- Where each of this service's ConsumeBatch durables is in the all-in-one
-- (issue 10, cons22): the stream sequence up to which every event it was
-- delivered is handled, and the creation time (Unix ns) of the stream it
-- is a position in (natsx.Positions). The embedded server keeps those
-- durables in memory instead of a state file it rewrote ~10 times a second
-- while busy; each is created again at start at its position + 1. SQLite
-- only: the distributed stack's durables, shared by replicas, stay
-- file-stored in the NATS cluster.
CREATE TABLE consumer_positions (
  durable TEXT PRIMARY KEY,
  stream_seq INTEGER NOT NULL,
  stream_created INTEGER NOT NULL
) WITHOUT ROWID;
