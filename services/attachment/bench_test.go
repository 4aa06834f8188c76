package attachment_test

import (
	"bytes"
	"crypto/rand"
	"runtime"
	"testing"
	"time"

	tf "github.com/clinicchat/clinicchat/services/attachment/internal/testfiles"
)

func heapMiB() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc) / (1 << 20)
}

// BenchmarkUploadDownload25MiB streams a 25 MiB PDF up and down through the
// real service over gRPC (bufconn), with the blob directory on disk, and
// prints throughput and the heap held after each.
//
//	go test ./services/attachment/ -run '^$' -bench UploadDownload25MiB -benchtime 5x
func BenchmarkUploadDownload25MiB(b *testing.B) {
	e := newEnv(b)
	head := tf.PDF()
	data := make([]byte, 25<<20)
	copy(data, head)
	_, _ = rand.Read(data[len(head) : len(data)-16])
	copy(data[len(data)-16:], "\n%%EOF\n         ")
	base := heapMiB()
	var up, down time.Duration
	var upHeap, downHeap float64
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		att, err := e.upload(e.staff(b), "conversations/c1", "scan.pdf", "application/pdf", bytes.NewReader(data))
		up += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		upHeap = max(upHeap, heapMiB()-base)
		start = time.Now()
		_, got, err := e.download(e.staff(b), att.GetName())
		down += time.Since(start)
		if err != nil || len(got) != len(data) {
			b.Fatal(err, len(got))
		}
		got = nil
		downHeap = max(downHeap, heapMiB()-base)
	}
	b.StopTimer()
	n := float64(b.N)
	mib := float64(len(data)) / (1 << 20)
	b.ReportMetric(float64(up.Milliseconds())/n, "upload-ms")
	b.ReportMetric(mib*n/up.Seconds(), "upload-MiB/s")
	b.ReportMetric(float64(down.Milliseconds())/n, "download-ms")
	b.ReportMetric(mib*n/down.Seconds(), "download-MiB/s")
	b.ReportMetric(upHeap, "heap-after-upload-MiB")
	b.ReportMetric(downHeap, "heap-after-download-MiB")
}
