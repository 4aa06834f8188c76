// Package rig is clinicchat's multi-host fault rig: a test that builds hosts
// as Linux network namespaces joined by veth links to a bridge, runs the
// production shape across them (three NATS servers in one JetStream cluster
// with R3 streams, over TLS with a user per process; PostgreSQL; two service
// hosts with one replica of every service each; two gateway hosts), puts it
// under a steady load with the bench package, and injects, heals and checks
// one fault after another. It needs root and iproute2 (CI runs it as root)
// and skips without them. RELIABILITY.md records its runs.
package rig
