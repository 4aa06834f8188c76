// Package eventtype holds the one type a domain needs to describe an event it
// produces: what to publish, not how. It depends on nothing but the protobuf
// message interface, so domain packages can name events without linking an
// adapter (the outbox, NATS, a database driver). The outbox writes these
// (outbox.Event is this type).
package eventtype

import "google.golang.org/protobuf/proto"

// Event is one event to write with a change: its id (EventMeta.id, also the
// Nats-Msg-Id), its subject and its payload.
type Event struct {
	ID      string
	Subject string
	Msg     proto.Message
}
