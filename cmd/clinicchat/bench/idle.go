package bench

import (
	"context"
	"fmt"

	"golang.org/x/sync/errgroup"
)

// IdleStreamsPerUser is how many of the idle streams one staff user holds
// (five browser tabs; under the gateway's default of 10 per identity).
const IdleStreamsPerUser = 5

// MaxIdleStreams bounds --idle-streams (each is a connection of this
// process and of the server).
const MaxIdleStreams = 20000

// idleOpeners is how many idle streams are being opened at once.
const idleOpeners = 32

// openIdle opens n /v1/events streams of staff users of practice (none of
// the run's: they see none of its events), IdleStreamsPerUser each, and
// returns them; they are only read (keep-alives) until closed. On an error
// it returns the streams it opened, for the caller to close.
func openIdle(ctx context.Context, base *client, practice string, n int) ([]*stream, error) {
	if n == 0 {
		return nil, nil
	}
	users := (n + IdleStreamsPerUser - 1) / IdleStreamsPerUser
	streams := make([]*stream, n)
	// Not errgroup.WithContext: a stream opened with a context lives only
	// as long as it, and these must outlive the opening.
	var g errgroup.Group
	g.SetLimit(idleOpeners)
	for u := range users {
		g.Go(func() error {
			staff, err := base.as(ctx, fmt.Sprintf("bench-idle-staff-%d", u), "dentist", practice)
			if err != nil {
				return fmt.Errorf("idle streams: dev token: %w", err)
			}
			for i := u * IdleStreamsPerUser; i < min(n, (u+1)*IdleStreamsPerUser); i++ {
				s, err := staff.openStream(ctx, nil, 0)
				if err != nil {
					return fmt.Errorf("idle streams: open %d of %d: %w", i+1, n, err)
				}
				streams[i] = s
			}
			return nil
		})
	}
	err := g.Wait()
	opened := streams[:0]
	for _, s := range streams {
		if s != nil {
			opened = append(opened, s)
		}
	}
	return opened, err
}

// closeAll closes streams.
func closeAll(streams []*stream) {
	for _, s := range streams {
		s.close()
	}
}
