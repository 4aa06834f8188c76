package gateway

import (
	"net/http"
	"testing"
)

// CaptureServers gives f every Server that New makes until t ends.
func CaptureServers(t testing.TB, f func(*Server)) {
	onNew = f
	t.Cleanup(func() { onNew = nil })
}

// SetHotPath turns hotpath.go's handlers on (the default) or off (every send
// and markRead then goes to grpc-gateway's generated handlers).
func (s *Server) SetHotPath(on bool) { s.noHotPath.Store(!on) }

// HotServes says whether hotpath.go's handlers serve a request like r (as
// httptest.NewRequest makes it) when they are on.
func HotServes(r *http.Request) bool {
	_, ok := hotRoute(r)
	return isAPIPath(r) && r.Method == http.MethodPost && ok
}
