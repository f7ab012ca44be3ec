package dispatch

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
)

// maxPooledBody is the largest body buffer kept for reuse: a batch body is
// at most a few MiB (Lambda's payload limit is 6 MB); a larger one is left
// to the garbage collector rather than held by the pool.
const maxPooledBody = 8 << 20

// pooledBody is a stream batch's request body in a buffer taken from
// bodyPool. Each holder counts as a reference: the stream deliverer while
// it invokes, and every HTTP request body reading it (net/http may read a
// request body after Client.Do returned and closes it when done). The
// buffer goes back to the pool when the last one lets go.
type pooledBody struct {
	b    []byte
	refs atomic.Int32
}

var bodyPool = sync.Pool{New: func() any { return new(pooledBody) }}

// getBody returns a pooled body buffer, empty, with one reference.
func getBody() *pooledBody {
	p := bodyPool.Get().(*pooledBody)
	p.b = p.b[:0]
	p.refs.Store(1)
	return p
}

func (p *pooledBody) retain() { p.refs.Add(1) }

// release drops a reference; the last one returns the buffer to the pool.
func (p *pooledBody) release() {
	switch n := p.refs.Add(-1); {
	case n > 0:
	case n < 0:
		panic("dispatch: pooled body released more often than retained")
	case cap(p.b) <= maxPooledBody:
		bodyPool.Put(p)
	}
}

// bodyReader is an HTTP request body over a pooled body: it holds a
// reference until closed. Read and Close exclude each other, so a Close
// from another goroutine (net/http closes a body to abort a write) never
// hands the buffer back while a Read copies from it.
type bodyReader struct {
	mu  sync.Mutex
	p   *pooledBody // nil once closed
	off int
}

func newBodyReader(p *pooledBody) *bodyReader {
	p.retain()
	return &bodyReader{p: p}
}

func (r *bodyReader) Read(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.p == nil {
		return 0, io.ErrClosedPipe
	}
	if r.off >= len(r.p.b) {
		return 0, io.EOF
	}
	n := copy(b, r.p.b[r.off:])
	r.off += n
	return n, nil
}

func (r *bodyReader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.p != nil {
		r.p.release()
		r.p = nil
	}
	return nil
}

// newHTTPRequest returns the POST of req's body to url. A pooled body is
// read through a reference of its own (also for GetBody, which net/http
// calls within Client.Do to send the body again on a new connection), so
// the buffer is reused only once net/http closed every reader of it.
func newHTTPRequest(ctx context.Context, url string, req *Request) (*http.Request, error) {
	if req.pooled == nil {
		return http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(req.Body))
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return nil, err
	}
	p := req.pooled
	hreq.ContentLength = int64(len(p.b))
	hreq.Body = newBodyReader(p)
	hreq.GetBody = func() (io.ReadCloser, error) { return newBodyReader(p), nil }
	return hreq, nil
}
