package allinone

import "github.com/nats-io/nats-server/v2/server"

// EmbeddedNATS is the instance's NATS server (for in-process test clients).
func EmbeddedNATS(in *Instance) *server.Server { return in.ns }
