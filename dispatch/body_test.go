package dispatch

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// offsetsEncoder encodes a batch as its offsets, each padded to pad bytes,
// so a body can be checked against the Idempotency-Key that names its
// first and last offsets. It counts its appends.
type offsetsEncoder struct {
	pad     int
	appends atomic.Int64
}

func (e *offsetsEncoder) Encode(recs []event.Record) ([]byte, error) { return e.encode(nil, recs), nil }

func (e *offsetsEncoder) AppendEncode(dst []byte, recs []event.Record) ([]byte, error) {
	e.appends.Add(1)
	return e.encode(dst, recs), nil
}

func (e *offsetsEncoder) encode(dst []byte, recs []event.Record) []byte {
	for _, r := range recs {
		n := len(dst)
		dst = strconv.AppendInt(dst, r.Offset, 10)
		for len(dst)-n < e.pad-1 {
			dst = append(dst, '.')
		}
		dst = append(dst, ',')
	}
	return dst
}

// Pooled batch bodies are reused only once nothing reads them: many
// concurrent deliveries over HTTP, some answered before their body was
// read (net/http may still be writing it then), each body the function
// reads whole is the batch's own.
func TestStreamDelivererPooledBodiesStayWhole(t *testing.T) {
	enc := &offsetsEncoder{pad: 64}
	var bad atomic.Int64
	var checked atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var src string
		var part, first, last int64
		key := r.Header.Get("Idempotency-Key")
		if _, err := fmt.Sscanf(strings.ReplaceAll(key, "-", " "), "%s %d %d %d", &src, &part, &first, &last); err != nil {
			t.Errorf("idempotency key %q: %v", key, err)
			return
		}
		if first%5 == 0 {
			w.WriteHeader(200) // answer before reading the body
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return // the client gave up on this request
		}
		recs := make([]event.Record, 0, last-first+1)
		for o := first; o <= last; o++ {
			recs = append(recs, event.Record{Offset: o})
		}
		if want := enc.encode(nil, recs); !bytes.Equal(body, want) {
			bad.Add(1)
		}
		checked.Add(1)
	}))
	defer srv.Close()
	d, _ := newTestDispatcher(t, Config{
		Account:   AccountConfig{Concurrency: 64, MinUnreserved: 1},
		Functions: map[string]FunctionConfig{"fn": {URL: srv.URL, Timeout: 10 * time.Second}},
	})
	sd := &StreamDeliverer{D: d, Source: "s", Function: "fn", Encode: enc}

	const workers, batches = 8, 60
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for b := range batches {
				// Batches of different sizes, so reused buffers hold the
				// tail of a longer body.
				n := 50 + (b*7+w*13)%400
				recs := make([]event.Record, n)
				base := int64((w*batches + b) * 1000)
				for i := range recs {
					recs[i] = event.Record{Topic: "t", Partition: int32(w), Offset: base + int64(i) + int64(b%5)}
				}
				if res := sd.Deliver(context.Background(), shard.Delivery{Records: recs, Attempt: 1}); res.Outcome != event.Delivered {
					t.Errorf("batch %d/%d: %+v", w, b, res)
				}
			}
		})
	}
	wg.Wait()
	if enc.appends.Load() != workers*batches {
		t.Fatalf("%d bodies encoded into pooled buffers, want %d", enc.appends.Load(), workers*batches)
	}
	if checked.Load() == 0 {
		t.Fatal("the function read no body")
	}
	if bad.Load() > 0 {
		t.Fatalf("%d of %d bodies read were not their batch's", bad.Load(), checked.Load())
	}
}

func TestPooledBodyReferences(t *testing.T) {
	p := getBody()
	p.b = append(p.b, "hello"...)
	r := newBodyReader(p)
	if got := p.refs.Load(); got != 2 {
		t.Fatalf("refs %d with the deliverer and one reader, want 2", got)
	}
	p.release() // the deliverer is done; the reader still holds the buffer
	b, err := io.ReadAll(r)
	if err != nil || string(b) != "hello" {
		t.Fatalf("read %q, %v", b, err)
	}
	_ = r.Close()
	_ = r.Close() // net/http may close twice: one release only
	if got := p.refs.Load(); got != 0 {
		t.Fatalf("refs %d after the last holder let go, want 0", got)
	}
	if _, err := r.Read(make([]byte, 1)); err == nil {
		t.Fatal("a read after Close succeeded")
	}
}

// The HTTP request of a pooled body reads it through references of its own
// (the body and every GetBody copy), so the deliverer letting go of the
// buffer does not free it while net/http may still send it.
func TestHTTPRequestHoldsPooledBody(t *testing.T) {
	p := getBody()
	p.b = append(p.b, "batch"...)
	hreq, err := newHTTPRequest(context.Background(), "http://127.0.0.1:1/", &Request{Body: p.b, pooled: p})
	if err != nil {
		t.Fatal(err)
	}
	if hreq.ContentLength != 5 || p.refs.Load() != 2 {
		t.Fatalf("content length %d, refs %d; want 5 and 2 (deliverer, body)", hreq.ContentLength, p.refs.Load())
	}
	again, err := hreq.GetBody()
	if err != nil {
		t.Fatal(err)
	}
	p.release() // the deliverer is done
	_ = hreq.Body.Close()
	if p.refs.Load() != 1 {
		t.Fatalf("refs %d with only GetBody's copy open, want 1", p.refs.Load())
	}
	if b, err := io.ReadAll(again); err != nil || string(b) != "batch" {
		t.Fatalf("GetBody's copy read %q, %v", b, err)
	}
	_ = again.Close()
	if p.refs.Load() != 0 {
		t.Fatalf("refs %d after every reader closed, want 0", p.refs.Load())
	}
}
