package allinone_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
	"github.com/clinicchat/clinicchat/cmd/clinicchat/backup"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// loadSent is one acknowledged send of the load.
type loadSent struct {
	conv, name, requestID string
	attachment, sha256    string // when it carried a file
}

// sendRaw is a send that reports instead of failing the test (it runs in
// load goroutines).
func sendRaw(c *client, conv string, body map[string]any) (int, message, error) {
	raw, err := json.Marshal(body)
	if err != nil {
		return 0, message{}, err
	}
	req, err := http.NewRequest("POST", c.base+"/v1/"+conv+"/messages", bytes.NewReader(raw))
	if err != nil {
		return 0, message{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, message{}, err
	}
	defer resp.Body.Close()
	var m message
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, message{}, err
	}
	if resp.StatusCode == 200 {
		err = json.Unmarshal(out, &m)
	}
	return resp.StatusCode, m, err
}

// uploadRaw uploads a file and returns the attachment name ("" on failure).
func uploadRaw(c *client, conv, filename string, body []byte) string {
	q := url.Values{"conversation": {conv}, "filename": {filename}}
	req, err := http.NewRequest("POST", c.base+"/v1/attachments?"+q.Encode(), bytes.NewReader(body))
	if err != nil {
		return ""
	}
	req.Header.Set("Content-Type", "application/pdf")
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var out struct{ Name string }
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&out) != nil {
		return ""
	}
	return out.Name
}

// pdfWith is a small PDF whose bytes differ by n.
func pdfWith(n int) []byte {
	return []byte(fmt.Sprintf("%%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\n%% load file %d\ntrailer<</Root 1 0 R>>\n%%%%EOF\n", n))
}

func (c *client) allMessages(conv string) []struct {
	message
	Attachments []struct{ Attachment string } `json:"attachments"`
} {
	c.t.Helper()
	type msg = struct {
		message
		Attachments []struct{ Attachment string } `json:"attachments"`
	}
	var all []msg
	token := ""
	for range 1000 { // bounded: 200 a page
		var page struct {
			Messages      []msg  `json:"messages"`
			NextPageToken string `json:"nextPageToken"`
		}
		require.Equal(c.t, 200, c.do("GET", "/v1/"+conv+"/messages?pageSize=200&pageToken="+url.QueryEscape(token), nil, &page))
		all = append(all, page.Messages...)
		if token = page.NextPageToken; token == "" {
			return all
		}
	}
	c.t.Fatal("more than 1000 pages")
	return nil
}

func (c *client) download(name string) (int, string) {
	c.t.Helper()
	req, err := http.NewRequest("GET", c.base+"/v1/"+name+":download", nil)
	require.NoError(c.t, err)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	h := sha256.New()
	_, err = io.Copy(h, resp.Body)
	require.NoError(c.t, err)
	return resp.StatusCode, hex.EncodeToString(h.Sum(nil))
}

// Patients send (some with files) while the all-in-one is backed up, with
// the audit service behind on their events (its consumer paused); the
// archive restores into a fresh data dir where an all-in-one finds every
// message acknowledged before the backup began — once —, every file
// downloadable with its bytes, each send audited once, and the audit log
// verifying. A restore refuses a damaged archive and a used data dir,
// writing nothing.
func TestBackupRestoreUnderLoad(t *testing.T) {
	root := t.TempDir()
	natsAddr := freeLoopback(t)
	live := startWith(t, filepath.Join(root, "live"), func(c *allinone.Config) {
		c.NATSListen = natsAddr
		c.Limits.SendsPerSecond, c.Limits.SendBurst = 1e6, 1e6 // load, not people: never 429
	})
	h := harness{t: t, in: live}
	staff := h.as("dr-lee", "dentist")
	patients := []string{"alice", "jose", "emma", "john-smith-1"}
	convs := map[string]string{}
	for _, p := range patients {
		convs[p] = staff.startConversation(p).Name
	}

	// The audit service falls behind on the delivery stream (its consumer
	// paused), so at the backup the sends' events live only in JetStream:
	// published, gone from delivery's outbox, not yet in the audit log.
	nc, err := nats.Connect("nats://" + natsAddr)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	const auditDurable = "audit-delivery" + natsx.AckAllSuffix // the all-in-one's durables are AckAll
	_, err = js.PauseConsumer(context.Background(), natsx.StreamDelivery, auditDurable, time.Now().Add(10*time.Minute))
	require.NoError(t, err, "the audit service's consumer of the delivery stream")

	var (
		mu       sync.Mutex
		acked    []loadSent
		failures []string
	)
	progress := make(chan struct{}, 4096)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range patients {
		c := h.as(p, "patient")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				s := loadSent{conv: convs[p], requestID: fmt.Sprintf("load-%s-%d", p, i)}
				body := map[string]any{"text": fmt.Sprintf("message %d from %s", i, p), "requestId": s.requestID}
				if i%5 == 0 {
					file := pdfWith(i)
					if s.attachment = uploadRaw(c, s.conv, fmt.Sprintf("scan-%d.pdf", i), file); s.attachment == "" {
						mu.Lock()
						failures = append(failures, "upload failed")
						mu.Unlock()
						continue
					}
					sum := sha256.Sum256(file)
					s.sha256 = hex.EncodeToString(sum[:])
					body["attachments"] = []string{s.attachment}
				}
				code, m, err := sendRaw(c, s.conv, body)
				mu.Lock()
				if code == 200 && err == nil {
					s.name = m.Name
					acked = append(acked, s)
				} else {
					failures = append(failures, fmt.Sprintf("send: %d %v", code, err))
				}
				mu.Unlock()
				select {
				case progress <- struct{}{}:
				default:
				}
			}
		}()
	}
	stopLoad := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}
	t.Cleanup(stopLoad)
	waitSends := func(n int) {
		deadline := time.After(60 * time.Second)
		for range n {
			select {
			case <-progress:
			case <-deadline:
				t.Fatalf("the load made no progress")
			}
		}
	}

	waitSends(150)
	deliveryDB, err := sql.Open("sqlite", "file:"+filepath.Join(root, "live", "delivery.db")+"?_pragma=query_only(1)")
	require.NoError(t, err)
	defer deliveryDB.Close()
	var onlyInJetStream uint64
	require.Eventually(t, func() bool { // no event to wait on: the relay deletes published rows once a second
		var rows uint64
		if deliveryDB.QueryRow("SELECT count(*) FROM outbox").Scan(&rows) != nil {
			return false
		}
		ci, err := js.Consumer(context.Background(), natsx.StreamDelivery, auditDurable)
		if err != nil {
			return false
		}
		info, err := ci.Info(context.Background())
		if err != nil {
			return false
		}
		unread := info.NumPending + uint64(info.NumAckPending)
		onlyInJetStream = unread - min(rows, unread)
		return onlyInJetStream >= 50
	}, 30*time.Second, 20*time.Millisecond, "events the audit service has not read are gone from delivery's outbox")
	mu.Lock()
	before := append([]loadSent(nil), acked...) // acknowledged before the backup began
	mu.Unlock()
	archive := filepath.Join(root, "clinicchat.tar.gz")
	m, err := backup.Fetch(context.Background(), live.AdminSocket(), archive, true)
	require.NoError(t, err)
	waitSends(50) // the load went on during and after the backup
	stopLoad()
	mu.Lock()
	t.Logf("acknowledged: %d before the backup, %d in all; refused: %d; backup held writes %.1f ms, %d events in flight, %d blobs",
		len(before), len(acked), len(failures), m.CutMillis, eventCountOf(m), m.Blobs)
	require.Empty(t, failures, "no send fails because of a backup")
	mu.Unlock()
	require.Empty(t, m.MissingBlobs)
	for _, st := range m.Streams {
		if st.Name == natsx.StreamDelivery {
			require.GreaterOrEqual(t, uint64(st.Events), onlyInJetStream, "the archive carries the events only JetStream held")
		}
	}
	require.True(t, m.KeysIncluded)
	require.True(t, m.Witness)
	require.Len(t, m.Databases, 5)
	require.NoError(t, live.Stop())

	// A damaged archive, a used data dir: refused, nothing written.
	raw, err := os.ReadFile(archive)
	require.NoError(t, err)
	damaged := filepath.Join(root, "damaged.tar.gz")
	bad := bytes.Clone(raw)
	bad[len(bad)/2] ^= 0xff
	require.NoError(t, os.WriteFile(damaged, bad, 0o600))
	_, err = backup.Restore(context.Background(), damaged, backup.Target{DataDir: filepath.Join(root, "from-damaged")}, testkit.Logger(t))
	require.Error(t, err)
	require.NoDirExists(t, filepath.Join(root, "from-damaged"))
	require.NoDirExists(t, filepath.Join(root, "from-damaged-keys"))
	_, err = backup.Restore(context.Background(), archive, backup.Target{DataDir: filepath.Join(root, "live")}, testkit.Logger(t))
	require.ErrorContains(t, err, "not empty")
	entries, err := os.ReadDir(root)
	require.NoError(t, err)
	for _, e := range entries {
		require.NotContains(t, e.Name(), ".restore-", "no staging dir is left behind")
	}

	// The restore, and an all-in-one on it.
	restoredDir := filepath.Join(root, "restored")
	_, err = backup.Restore(context.Background(), archive, backup.Target{DataDir: restoredDir}, testkit.Logger(t))
	require.NoError(t, err)
	restored := startWith(t, restoredDir, nil)
	h2 := harness{t: t, in: restored}
	staff2 := h2.as("dr-lee", "dentist")
	admin := h2.as("adam", "practice_admin")

	byName := map[string]bool{}
	for _, conv := range convs {
		msgs := staff2.allMessages(conv)
		reqs := map[string]bool{}
		for _, msg := range msgs {
			require.False(t, byName[msg.Name], "message %s twice", msg.Name)
			require.False(t, reqs[msg.RequestID], "request %s twice", msg.RequestID)
			byName[msg.Name], reqs[msg.RequestID] = true, true
		}
	}
	for _, s := range before {
		require.True(t, byName[s.name], "message %s was acknowledged before the backup began", s.name)
	}
	require.GreaterOrEqual(t, len(byName), len(before))

	// Files: the staff recipient downloads each one with its bytes (the
	// restored instance may still be replaying the links).
	for _, s := range before {
		if s.attachment == "" {
			continue
		}
		require.Eventually(t, func() bool {
			code, sum := staff2.download(s.attachment)
			return code == 200 && sum == s.sha256
		}, 30*time.Second, 20*time.Millisecond, "attachment %s", s.attachment)
	}

	// The audit log: every send before the backup recorded once, and the
	// log verifies.
	var sends []auditEvent
	require.Eventually(t, func() bool {
		sends = admin.auditEvents(`action="message.send"`)
		seen := map[string]bool{}
		for _, e := range sends {
			seen[e.Resource] = true
		}
		for _, s := range before {
			if !seen[s.name] {
				return false
			}
		}
		return true
	}, 30*time.Second, 50*time.Millisecond, "every send before the backup is in the restored audit log")
	count := map[string]int{}
	for _, e := range sends {
		count[e.Resource]++
		require.Equal(t, 1, count[e.Resource], "send %s audited twice", e.Resource)
	}
	var verify struct {
		Valid    bool `json:"valid"`
		TreeSize int  `json:"treeSize"`
	}
	require.Equal(t, 200, admin.do("GET", "/v1/auditEvents:verify", nil, &verify))
	require.True(t, verify.Valid, "the restored audit log verifies")
	require.Positive(t, verify.TreeSize)

	// And it goes on: a new send in every thread.
	for p, conv := range convs {
		staff2.send(conv, "after the restore, to "+p, reqID("after", 0))
	}
}

func eventCountOf(m *backup.Manifest) int {
	n := 0
	for _, s := range m.Streams {
		n += s.Events
	}
	return n
}

// freeLoopback is a loopback address no one listens on (for --nats-listen).
func freeLoopback(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	return addr
}
