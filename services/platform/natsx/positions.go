package natsx

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// Positions keeps, in a consuming service's own SQLite database, where each
// of its ConsumeBatch durables on a SoleConsumer is: the stream sequence up
// to which every event the durable was delivered is handled (its ack
// floor). With it (ConsumerSpec.Positions), the durable is stored in the
// server's memory (ConsumerConfig.MemoryStorage) instead of a state file
// that nats-server rewrites ~10 times a second while the durable is busy
// (create, write, rename: issue 10, cons22), and is created again at every
// start from the recorded position + 1.
//
// A position is recorded after the commit of what it covers, joining the
// database's next commit (sqldb.DB.WriteDeferred: no commit of its own
// while the service writes), at most once per PositionInterval while the
// durable is busy, and once more at a clean stop. A crash (kill -9) hands
// again what was handled since the last recorded position (about one
// interval's events and a commit's wait); the handlers are idempotent, as
// for a file-stored durable, whose state file is written as often and never
// fsynced. Nothing is skipped: a position is only ever an ack floor.
//
// The table, consumer_positions (durable TEXT PRIMARY KEY, stream_seq
// INTEGER NOT NULL, stream_created INTEGER NOT NULL: the stream's creation
// time in Unix nanoseconds, to tell a stream made again), is the service's
// migration's.
type Positions struct {
	db *sqldb.DB
}

// DBPositions returns db's Positions; nil unless db is SQLite (only the
// all-in-one's databases hold positions: the distributed stack's durables,
// shared by replicas, stay file-stored).
func DBPositions(db *sqldb.DB) *Positions {
	if db == nil || db.Dialect() != sqldb.SQLite {
		return nil
	}
	return &Positions{db: db}
}

// PositionInterval is the least time between two positions recorded for a
// busy durable (as nats-server's consumer state files: ~10 a second).
var PositionInterval = 100 * time.Millisecond

// positionDelay is how long a recorded position waits for another write's
// commit to join before it commits alone (the durable has gone quiet).
const positionDelay = 200 * time.Millisecond

// Position returns durable's recorded position (ok: one is recorded) and
// the creation time (Unix nanoseconds) of the stream it is a position in.
func (p *Positions) Position(ctx context.Context, durable string) (seq uint64, created int64, ok bool, err error) {
	var s int64
	err = p.db.QueryRow(ctx, `SELECT stream_seq, stream_created FROM consumer_positions WHERE durable = ?`, durable).Scan(&s, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, 0, false, nil
	}
	if err != nil {
		return 0, 0, false, fmt.Errorf("position of %s: %w", durable, err)
	}
	return uint64(s), created, true, nil
}

// save records seq as durable's position in the stream created at created
// unless a higher one is recorded; it returns once that is committed. With
// wait > 0 it joins another write's commit, or commits alone after wait.
func (p *Positions) save(ctx context.Context, durable string, seq uint64, created int64, wait time.Duration) error {
	fn := func(tx *sqldb.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO consumer_positions (durable, stream_seq, stream_created) VALUES (?, ?, ?)
ON CONFLICT (durable) DO UPDATE SET stream_seq = excluded.stream_seq WHERE excluded.stream_seq > consumer_positions.stream_seq`,
			durable, int64(seq), created)
		return err
	}
	if wait > 0 {
		return p.db.WriteDeferred(ctx, wait, fn)
	}
	return p.db.Write(ctx, fn)
}

// reset records seq as durable's position in the stream created at
// created, lower or not (the stream was made again: a position in the old
// one would skip the new one's events).
func (p *Positions) reset(ctx context.Context, durable string, seq uint64, created int64) error {
	return p.db.Write(ctx, func(tx *sqldb.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO consumer_positions (durable, stream_seq, stream_created) VALUES (?, ?, ?)
ON CONFLICT (durable) DO UPDATE SET stream_seq = excluded.stream_seq, stream_created = excluded.stream_created`,
			durable, int64(seq), created)
		return err
	})
}

// memoryDurable creates spec's AckAll durable (spec.Durable + AckAllSuffix)
// in the server's memory at its recorded position + 1 (ConsumeBatch of a
// SoleConsumer with spec.Positions). Where no position is recorded, the
// position is the ack floor of the file-stored durable a previous version
// left (the AckAll one, else the explicitly acked one), recorded before
// that durable is deleted; the higher of the two when both are there (a
// crash in between). A memory durable an earlier run in this process left
// is replaced. A position in another stream of that name (made again
// since: its creation time differs) starts at the stream's first event; one
// past the stream's last event (a stream that lost its tail) after it.
//
// It returns the durable, how it was started, its position and the
// stream's creation time.
func memoryDurable(ctx context.Context, js jetstream.JetStream, spec ConsumerSpec, pos *Positions, log *zap.Logger) (jetstream.Consumer, catchUp, uint64, int64, error) {
	if spec.MaxAckPending == 0 {
		spec.MaxAckPending = 256
	}
	name := spec.Durable + AckAllSuffix
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	seq, created, recorded, err := pos.Position(pctx, spec.Durable)
	if err != nil {
		return nil, catchUp{}, 0, 0, ctxOr(ctx, err)
	}
	// What a previous version (or an earlier run in this process) left.
	var files []string
	fileFloor, fromFile := uint64(0), false
	for _, d := range []string{name, spec.Durable} {
		c, err := js.Consumer(pctx, spec.Stream, d)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			continue
		}
		if err != nil {
			return nil, catchUp{}, 0, 0, ctxOr(ctx, fmt.Errorf("consumer %s on %s: %w", d, spec.Stream, err))
		}
		ci := c.CachedInfo()
		if ci.Config.MemoryStorage {
			// This process's: its position is recorded already.
			if err := js.DeleteConsumer(pctx, spec.Stream, d); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				return nil, catchUp{}, 0, 0, ctxOr(ctx, fmt.Errorf("consumer %s on %s not replaced: %w", d, spec.Stream, err))
			}
			continue
		}
		files = append(files, d)
		f := ci.AckFloor.Stream
		if ci.Config.DeliverPolicy == jetstream.DeliverByStartSequencePolicy && ci.Config.OptStartSeq > 0 {
			f = max(f, ci.Config.OptStartSeq-1)
		}
		if !fromFile {
			// The AckAll durable, when there is one, replaced the other.
			fileFloor, fromFile = f, true
		}
	}
	st, err := js.Stream(pctx, spec.Stream)
	if err != nil {
		return nil, catchUp{}, 0, 0, ctxOr(ctx, fmt.Errorf("stream %s: %w", spec.Stream, err))
	}
	state, streamCreated := st.CachedInfo().State, st.CachedInfo().Created.UnixNano()
	if recorded && created != streamCreated {
		// Not this stream's position: its events are all new to the durable.
		log.Warn("recorded position is in a stream made again since: starting at its first event",
			zap.Uint64("position", seq), zap.Uint64("last_seq", state.LastSeq))
		seq = 0
		if err := pos.reset(pctx, spec.Durable, 0, streamCreated); err != nil {
			return nil, catchUp{}, 0, 0, ctxOr(ctx, err)
		}
	}
	if fromFile && (!recorded || fileFloor > seq) {
		seq = fileFloor
		if err := pos.save(pctx, spec.Durable, seq, streamCreated, 0); err != nil {
			return nil, catchUp{}, 0, 0, ctxOr(ctx, fmt.Errorf("position of %s from its file-stored durable: %w", spec.Durable, err))
		}
		log.Info("durable's position taken from its file-stored durable", zap.Uint64("stream_seq", seq))
	}
	if seq > state.LastSeq {
		// The stream lost its tail (its files are not fsynced at every
		// write: a power loss) or was made again: the events it numbers
		// from here on are new to the durable.
		log.Warn("recorded position past the stream's last event: going on from that event",
			zap.Uint64("position", seq), zap.Uint64("last_seq", state.LastSeq))
		seq = state.LastSeq
		if err := pos.reset(pctx, spec.Durable, seq, streamCreated); err != nil {
			return nil, catchUp{}, 0, 0, ctxOr(ctx, err)
		}
	}
	// Recorded: the file-stored durables can go (a crash before this
	// point finds them again, and takes the higher position).
	for _, d := range files {
		if err := js.DeleteConsumer(pctx, spec.Stream, d); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, catchUp{}, 0, 0, ctxOr(ctx, fmt.Errorf("file-stored consumer %s on %s not deleted: %w", d, spec.Stream, err))
		}
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       name,
		AckPolicy:     jetstream.AckAllPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    -1,
		MaxAckPending: spec.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MemoryStorage: true,
	}
	if seq > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, seq+1
	}
	cu := catchUp{filter: Narrow(pctx, js, spec.Stream, spec.FilterSubjects, seq)}
	cfg.FilterSubjects = cu.filter
	cons, err := js.CreateConsumer(ctx, spec.Stream, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return nil, cu, 0, 0, nil
		}
		return nil, cu, 0, 0, fmt.Errorf("consumer %s on %s: %w", name, spec.Stream, err)
	}
	// Far behind on several subjects: unfiltered until caught up (durable).
	if len(cu.filter) > 1 && cons.CachedInfo().NumPending > CatchUpPending {
		cfg.FilterSubjects = nil
		if wide, err := js.UpdateConsumer(ctx, spec.Stream, cfg); err == nil {
			cons, cu.wide = wide, true
		} else if ctx.Err() != nil {
			return nil, cu, 0, 0, nil
		}
	}
	return cons, cu, seq, streamCreated, nil
}

// positionSaver records a memory durable's ack floor (Positions): at
// the first ack PositionInterval or more after the last recorded one, each
// joining the database's next commit; no timer of its own. What is acked
// in the last interval before the durable goes quiet is recorded by the
// next ack, or at a clean stop (close).
type positionSaver struct {
	pos      *Positions
	durable  string
	created  int64 // the stream's creation time
	log      *zap.Logger
	interval time.Duration

	mu       sync.Mutex
	latest   uint64    // the highest ack floor acked
	saved    uint64    // the highest recorded
	lastKick time.Time // when a recording was last asked for
	kick     chan struct{}
	stop     chan struct{}
	done     chan struct{}
}

func newPositionSaver(pos *Positions, durable string, start uint64, created int64, log *zap.Logger) *positionSaver {
	s := &positionSaver{pos: pos, durable: durable, created: created, log: log, interval: PositionInterval,
		latest: start, saved: start,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	return s
}

// acked notes that every event up to seq is handled and acked.
func (s *positionSaver) acked(seq uint64) {
	now := time.Now()
	s.mu.Lock()
	if seq <= s.latest {
		s.mu.Unlock()
		return
	}
	s.latest = seq
	if now.Sub(s.lastKick) < s.interval {
		s.mu.Unlock()
		return
	}
	s.lastKick = now
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *positionSaver) pending() (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latest, s.latest > s.saved
}

func (s *positionSaver) record(seq uint64, wait time.Duration) {
	// Not the consumer's context: a stop must not lose the last one.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.pos.save(ctx, s.durable, seq, s.created, wait); err != nil {
		s.log.Warn("consumer position not recorded (a restart hands its events again)", zap.Uint64("stream_seq", seq), zap.Error(err))
		return
	}
	s.mu.Lock()
	s.saved = max(s.saved, seq)
	s.mu.Unlock()
}

func (s *positionSaver) run() {
	defer close(s.done)
	for {
		select {
		case <-s.kick:
		case <-s.stop:
			return
		}
		if seq, ok := s.pending(); ok {
			s.record(seq, positionDelay)
		}
	}
}

// close stops the saver and records the last ack floor (a clean stop).
func (s *positionSaver) close() {
	close(s.stop)
	<-s.done
	if seq, ok := s.pending(); ok {
		s.record(seq, 0)
	}
}
