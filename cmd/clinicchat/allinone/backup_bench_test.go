package allinone_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
	"github.com/clinicchat/clinicchat/cmd/clinicchat/backup"
)

// BenchmarkBackup backs up an idle all-in-one holding 3,000 messages and 40
// files of 256 KiB, and reports how long every database's writes were held
// for the cut, the archive's size and the process's CPU per backup.
//
//	go test ./cmd/clinicchat/allinone -run '^$' -bench BenchmarkBackup -benchtime 5x
func BenchmarkBackup(b *testing.B) {
	env := startBench(b)
	staff := env.as(b, "dr-lee", "dentist", allinone.DemoPractice)
	const senders, perSender, files = 6, 500, 40
	convs := make([]string, senders)
	for i, p := range []string{"alice", "jose", "emma", "john-smith-1", "john-smith-2", "alice"}[:senders] {
		convs[i] = staff.startConversation(b, p)
	}
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for i := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range perSender {
				if _, err := staff.send(convs[i], fmt.Sprintf("message %d", j), fmt.Sprintf("bb-%d-%d", i, j)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	body := bytes.Repeat([]byte("0123456789abcdef"), 256<<10/16)
	for i := range files {
		pdf := append(pdfWith(i), body...)
		q := url.Values{"conversation": {convs[0]}, "filename": {fmt.Sprintf("scan-%d.pdf", i)}}
		req, err := http.NewRequest("POST", "http://"+env.in.HTTPAddr+"/v1/attachments?"+q.Encode(), bytes.NewReader(pdf))
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/pdf")
		req.Header.Set("Authorization", "Bearer "+staff.token)
		resp, err := env.hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("upload: HTTP %d", resp.StatusCode)
		}
	}

	dir := b.TempDir()
	var held float64
	var size int64
	n := 0
	cpu := processCPU()
	for b.Loop() {
		out := filepath.Join(dir, fmt.Sprintf("b%d.tar.gz", n))
		m, err := backup.Fetch(context.Background(), env.in.AdminSocket(), out, false)
		if err != nil {
			b.Fatal(err)
		}
		st, err := os.Stat(out)
		if err != nil {
			b.Fatal(err)
		}
		held += m.CutMillis
		size += st.Size()
		n++
		_ = os.Remove(out)
	}
	cpu = processCPU() - cpu
	b.ReportMetric(held/float64(n), "cut-ms/op")
	b.ReportMetric(float64(size)/float64(n)/(1<<20), "archive-MiB/op")
	b.ReportMetric(float64(cpu.Milliseconds())/float64(n), "cpu-ms/op")
}
