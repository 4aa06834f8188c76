package rig

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"testing"
)

// Names carry the test process's pid: "crig<pid>-<host>" namespaces,
// "cr<pid>b" the bridge, "cr<pid>v<n>" the root ends of the veth links. A
// run that crashed leaves them behind; the next run deletes those whose pid
// is gone (cleanStale).
const nsPrefix = "crig"

type network struct {
	pid    int
	subnet string // "10.231.7"
	bridge string
	hosts  map[string]*host
	n      int
}

type host struct {
	name, ns, ip string
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// canRun says why the rig cannot run here ("" if it can).
func canRun() string {
	if os.Geteuid() != 0 {
		return "the fault rig needs root (network namespaces); CI runs it as root"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "the fault rig needs iproute2's ip"
	}
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		return fmt.Sprintf("ip netns is unavailable here: %v: %s", err, bytes.TrimSpace(out))
	}
	for _, bin := range []string{"initdb", "postgres", "setpriv", "runuser"} {
		if _, err := exec.LookPath(bin); err != nil {
			return "the fault rig needs " + bin + " on PATH (PostgreSQL's own instance)"
		}
	}
	if _, err := user.Lookup("postgres"); err != nil {
		return "the fault rig runs its PostgreSQL as the postgres user, which this machine lacks"
	}
	return ""
}

func pidAlive(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}

// ownerPID reads the pid out of one of our names, after prefix.
func ownerPID(name, prefix string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return 0, false
	}
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	if end == 0 {
		return 0, false
	}
	pid, err := strconv.Atoi(rest[:end])
	return pid, err == nil
}

// cleanStale deletes namespaces and links an earlier run left behind (its
// process is gone).
func cleanStale(t *testing.T) {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if pid, ok := ownerPID(name, nsPrefix); ok && !pidAlive(pid) {
			t.Logf("deleting the stale namespace %s", name)
			_ = ipCmd("netns", "del", name)
		}
	}
	out, _ = exec.Command("ip", "-o", "link", "show").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if pid, ok := ownerPID(name, "cr"); ok && !pidAlive(pid) {
			t.Logf("deleting the stale link %s", name)
			_ = ipCmd("link", "del", name)
		}
	}
}

// newNetwork makes the bridge, with the test process (root namespace) at
// <subnet>.1, and registers its teardown.
func newNetwork(t *testing.T) *network {
	cleanStale(t)
	pid := os.Getpid()
	nw := &network{pid: pid, subnet: fmt.Sprintf("10.231.%d", pid%250+1), bridge: fmt.Sprintf("cr%db", pid), hosts: map[string]*host{}}
	t.Cleanup(nw.teardown)
	for _, args := range [][]string{
		{"link", "add", nw.bridge, "type", "bridge"},
		{"addr", "add", nw.subnet + ".1/24", "dev", nw.bridge},
		{"link", "set", nw.bridge, "up"},
	} {
		if err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	return nw
}

// addHost makes a namespace with one veth link to the bridge at <subnet>.<octet>.
func (nw *network) addHost(t *testing.T, name string, octet int) *host {
	nw.n++
	h := &host{name: name, ns: fmt.Sprintf("%s%d-%s", nsPrefix, nw.pid, name), ip: fmt.Sprintf("%s.%d", nw.subnet, octet)}
	outer, inner := fmt.Sprintf("cr%dv%d", nw.pid, nw.n), fmt.Sprintf("cr%dp%d", nw.pid, nw.n)
	for _, args := range [][]string{
		{"netns", "add", h.ns},
		{"link", "add", outer, "type", "veth", "peer", "name", inner},
		{"link", "set", inner, "netns", h.ns},
		{"link", "set", outer, "master", nw.bridge, "up"},
		{"-n", h.ns, "link", "set", inner, "name", "eth0"},
		{"-n", h.ns, "addr", "add", h.ip + "/24", "dev", "eth0"},
		{"-n", h.ns, "link", "set", "eth0", "up"},
		{"-n", h.ns, "link", "set", "lo", "up"},
	} {
		if err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	nw.hosts[name] = h
	return h
}

// cut takes a host's link down (true) or up again (false): the host can
// reach nothing and nothing can reach it.
func (h *host) cut(down bool) error {
	state := "up"
	if down {
		state = "down"
	}
	return ipCmd("-n", h.ns, "link", "set", "eth0", state)
}

func (nw *network) teardown() {
	for _, h := range nw.hosts {
		_ = ipCmd("netns", "del", h.ns) // its veth goes with it
	}
	_ = ipCmd("link", "del", nw.bridge)
}
