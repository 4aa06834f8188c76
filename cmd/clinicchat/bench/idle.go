package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

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
// returns them; they are never read after the response's head (the
// keep-alives wait in the socket's buffer) until closed. On an error it
// returns the streams it opened, for the caller to close.
func openIdle(ctx context.Context, base *client, practice string, n int) ([]io.Closer, error) {
	if n == 0 {
		return nil, nil
	}
	users := (n + IdleStreamsPerUser - 1) / IdleStreamsPerUser
	streams := make([]io.Closer, n)
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
				s, err := staff.openIdleStream(ctx)
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
func closeAll(streams []io.Closer) {
	for _, s := range streams {
		s.Close()
	}
}

// openIdleStream opens one /v1/events stream that is never read: over
// plain HTTP a bare connection (a request written, the response's head
// read, nothing else: no goroutine and no buffer of this process's per
// stream, so that holding thousands costs the machine's cores nothing
// during the run); over HTTPS a stream of the bench's client, read.
func (c *client) openIdleStream(ctx context.Context) (io.Closer, error) {
	u, err := url.Parse(c.url)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" {
		s, err := c.openStream(ctx, nil, 0)
		if err != nil {
			return nil, err
		}
		return closerFunc(s.close), nil
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	if err := idleHandshake(ctx, conn, u, c.token); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// idleHandshake writes a stream's request on conn and reads its response's
// head: an error unless it is 200 (with the SPEC reason of a refusal).
func idleHandshake(ctx context.Context, conn net.Conn, u *url.URL, token string) error {
	deadline := time.Now().Add(30 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	req, err := http.NewRequest(http.MethodGet, u.JoinPath("/v1/events").String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "text/event-stream")
	if err := req.Write(conn); err != nil {
		return err
	}
	// A small reader: what it reads past the head (the stream's first
	// bytes) goes with it.
	res, err := http.ReadResponse(bufio.NewReaderSize(conn, 1024), req)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
		return apiErrorOf(res.StatusCode, body)
	}
	return conn.SetDeadline(time.Time{})
}

// closerFunc is a function as an io.Closer.
type closerFunc func()

func (f closerFunc) Close() error { f(); return nil }
