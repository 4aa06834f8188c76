// Package standalone holds tests of the distributed composition: every
// service built as its own binary builds it (New, Register, Run), each with
// its own PostgreSQL database, against one NATS server.
package standalone
