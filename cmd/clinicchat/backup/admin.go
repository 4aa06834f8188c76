package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
)

// The admin endpoint: the running all-in-one serves POST /v1/backup on a
// Unix socket in its data dir (mode 0600 in a 0700 directory: only the
// operator's account, or root, can connect; it is never on a network). The
// archive is the response body; its SHA-256, or what went wrong, comes in
// a trailer, since the status is sent before the snapshot ends.
const (
	BackupPath       = "/v1/backup"
	TrailerError     = "Clinicchat-Backup-Error"
	TrailerSHA256    = "Clinicchat-Backup-Sha256"
	SocketName       = "admin.sock"
	adminIdleTimeout = time.Minute
)

// Admin is the running admin listener.
type Admin struct {
	srv  *http.Server
	lis  net.Listener
	path string
	done chan error
}

// ListenAdmin serves the admin endpoint on the Unix socket at path. A stale
// socket left by a crash is replaced; a live one (another instance on the
// same data dir) is an error.
func ListenAdmin(path string, src func() Source, log *zap.Logger) (*Admin, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		_ = c.Close()
		return nil, fmt.Errorf("admin socket %s: another clinicchat serves this data dir", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	a := &Admin{lis: lis, path: path, done: make(chan error, 1)}
	a.srv = &http.Server{Handler: Handler(src, log), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: adminIdleTimeout}
	go func() {
		err := a.srv.Serve(lis)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		a.done <- err
	}()
	return a, nil
}

// Close stops the listener (a backup in progress is cut off) and removes
// the socket.
func (a *Admin) Close() error {
	if a == nil {
		return nil
	}
	err := a.srv.Close()
	<-a.done
	_ = os.Remove(a.path)
	return err
}

// Handler serves POST /v1/backup[?keys=true]: one backup at a time.
func Handler(src func() Source, log *zap.Logger) http.Handler {
	var running sync.Mutex
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+BackupPath, func(w http.ResponseWriter, r *http.Request) {
		keys, _ := strconv.ParseBool(r.URL.Query().Get("keys"))
		if !running.TryLock() {
			http.Error(w, "a backup is running", http.StatusConflict)
			return
		}
		defer running.Unlock()
		w.Header().Set("Trailer", TrailerError+", "+TrailerSHA256)
		w.Header().Set("Content-Type", "application/gzip")
		w.WriteHeader(http.StatusOK)
		h := sha256.New()
		start := time.Now()
		m, err := Write(r.Context(), src(), Options{IncludeKeys: keys}, io.MultiWriter(w, h))
		if err != nil {
			log.Error("backup failed", zap.Error(err))
			w.Header().Set(TrailerError, err.Error())
			return
		}
		w.Header().Set(TrailerSHA256, hex.EncodeToString(h.Sum(nil)))
		log.Info("backup taken", zap.Int("files", len(m.Files)), zap.Int("blobs", m.Blobs), zap.Float64("cut_ms", m.CutMillis),
			zap.Duration("took", time.Since(start)), zap.Bool("keys", keys))
	})
	return mux
}

// Fetch asks the instance behind the admin socket for a backup and writes
// it to out, which must not exist: first to out.partial, then verified
// against its manifest, then renamed.
func Fetch(ctx context.Context, socket, out string, keys bool) (*Manifest, error) {
	if _, err := os.Stat(out); err == nil {
		return nil, fmt.Errorf("%s exists: choose a new file", out)
	}
	partial := out + ".partial"
	f, err := os.OpenFile(partial, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(partial)
		}
	}()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://clinicchat"+BackupPath+"?keys="+strconv.FormatBool(keys), nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s (is clinicchat running with this --data-dir?): %w", socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("backup refused: %s: %s", resp.Status, body)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), resp.Body); err != nil {
		return nil, fmt.Errorf("backup cut off: %w", err)
	}
	if msg := resp.Trailer.Get(TrailerError); msg != "" {
		return nil, fmt.Errorf("backup failed: %s", msg)
	}
	if sum := resp.Trailer.Get(TrailerSHA256); sum != hex.EncodeToString(h.Sum(nil)) {
		return nil, errors.New("backup cut off: the archive is not what the instance sent")
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	m, err := Verify(partial)
	if err != nil {
		return nil, err
	}
	if err := os.Rename(partial, out); err != nil {
		return nil, err
	}
	ok = true
	return m, nil
}
