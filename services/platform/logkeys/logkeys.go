// Package logkeys names the structured log fields every service uses. Logs
// carry ids only: never message text, file names, patient names or other PHI.
package logkeys

const (
	Service      = "service"
	Method       = "method"
	Code         = "code"
	ErrorID      = "error_id"
	Practice     = "practice"
	Actor        = "actor"
	Conversation = "conversation"
	Message      = "message"
	EventID      = "event_id"
	Subject      = "subject"
	Stream       = "stream"
	Consumer     = "consumer"
	Addr         = "addr"
	DurationMS   = "duration_ms"
	Count        = "count"
)
