package integration

// faultProxy is a TCP proxy on loopback between sluice and a broker, for
// faults a whole-broker restart does not make: every connection cut at once
// (as a network reset does) and, for a while, every new connection refused
// right after it is accepted, while the broker itself stays up. sluice is
// configured with the proxy's address; the test's own clients talk to the
// broker directly. (Shopify's toxiproxy is not served by the module proxy
// here; this does the two faults the chaos tests need, nothing more.)
//
// It suits nats-server (clients keep the URL they were given). It does not
// suit Kafka: a Kafka client reconnects to the advertised listener from the
// broker's metadata, bypassing the proxy.

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

type faultProxy struct {
	t      testing.TB
	ln     net.Listener
	target string

	mu      sync.Mutex
	conns   map[net.Conn]bool
	refuse  bool
	cut     int // connections cut by reset
	refused int // connections refused while down
	wg      sync.WaitGroup
}

// newFaultProxy listens on a free loopback port and forwards to target
// (host:port) until the test ends.
func newFaultProxy(t testing.TB, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{t: t, ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		_ = ln.Close()
		p.reset()
		p.wg.Wait()
	})
	return p
}

// Addr is the address sluice connects to.
func (p *faultProxy) Addr() string { return p.ln.Addr().String() }

func (p *faultProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.mu.Lock()
		if p.refuse {
			p.refused++
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.mu.Unlock()
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		p.wg.Go(func() { p.pipe(c, up) })
		p.wg.Go(func() { p.pipe(up, c) })
	}
}

// pipe copies from src to dst; when either side ends, both are closed.
func (p *faultProxy) pipe(dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	_ = dst.Close()
	_ = src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// reset cuts every open connection and returns how many it cut.
func (p *faultProxy) reset() int {
	p.mu.Lock()
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.cut += len(conns) / 2
	p.mu.Unlock()
	for _, c := range conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST, not FIN
		}
		_ = c.Close()
	}
	return len(conns) / 2
}

// down cuts every connection and refuses new ones for d; it returns how
// many connections it cut and refused.
func (p *faultProxy) down(d time.Duration) (cut, refused int) {
	p.mu.Lock()
	p.refuse = true
	before := p.refused
	p.mu.Unlock()
	cut = p.reset()
	time.Sleep(d) // the outage lasts d: that is the fault, not a wait for an event
	p.mu.Lock()
	p.refuse = false
	refused = p.refused - before
	p.mu.Unlock()
	return cut, refused
}
