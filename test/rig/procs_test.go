package rig

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is one process on a host: started with `ip netns exec`, which execs
// it in the host's namespace (so its pid is the process's own).
type proc struct {
	name string
	host *host
	argv []string
	env  []string
	log  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

type procs struct {
	t      *testing.T
	logDir string
	mu     sync.Mutex
	all    []*proc
}

func newProcs(t *testing.T, logDir string) *procs {
	ps := &procs{t: t, logDir: logDir}
	t.Cleanup(ps.stopAll)
	return ps
}

// add declares and starts a process.
func (ps *procs) add(name string, h *host, env []string, argv ...string) *proc {
	p := &proc{name: name, host: h, argv: argv, env: env, log: filepath.Join(ps.logDir, name+".log")}
	ps.mu.Lock()
	ps.all = append(ps.all, p)
	ps.mu.Unlock()
	if err := p.start(); err != nil {
		ps.t.Fatal(err)
	}
	return p
}

// childEnv is the environment without CLINICCHAT_* settings, plus env.
func childEnv(env []string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CLINICCHAT_") {
			out = append(out, kv)
		}
	}
	return append(out, env...)
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "\n==== %s start %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(p.argv, " "))
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.host.ns}, p.argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = childEnv(p.env)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

func (p *proc) running() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd, p.done
}

// signal sends sig and waits (up to grace) for the exit; then the whole
// process group is killed.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	cmd, done := p.running()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(grace):
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// exited reports whether the process has ended, and how.
func (p *proc) exited() (bool, error) {
	_, done := p.running()
	select {
	case <-done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.err
	default:
		return false, nil
	}
}

func (ps *procs) stopAll() {
	ps.mu.Lock()
	all := append([]*proc(nil), ps.all...)
	ps.mu.Unlock()
	var wg sync.WaitGroup
	for i := len(all) - 1; i >= 0; i-- {
		wg.Add(1)
		go func() { defer wg.Done(); all[i].stop(syscall.SIGINT, 5*time.Second) }()
	}
	wg.Wait()
}

// dead names the processes that exited without being asked to (for the
// test's failure message).
func (ps *procs) check() error {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var bad []string
	for _, p := range ps.all {
		if ok, err := p.exited(); ok {
			bad = append(bad, fmt.Sprintf("%s exited: %v (log %s)", p.name, err, p.log))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%s", strings.Join(bad, "; "))
	}
	return nil
}

// waitTCP waits until addr accepts connections (from the root namespace,
// across the bridge).
func waitTCP(ctx context.Context, addr string, p *proc) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		if p != nil {
			if ok, perr := p.exited(); ok {
				return fmt.Errorf("%s exited: %v (log %s)", p.name, perr, p.log)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", addr, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
