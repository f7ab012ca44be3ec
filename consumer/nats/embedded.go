package nats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Defaults of the embedded nats-server.
const (
	// DefaultEmbeddedHost is where the embedded server listens: loopback
	// only, so that `nats pub` on the same machine can feed it and nothing
	// else can.
	DefaultEmbeddedHost = "127.0.0.1"
	// DefaultEmbeddedPort is NATS's usual port, so the nats CLI reaches the
	// embedded server without flags.
	DefaultEmbeddedPort = 4222
	// embeddedReadyTimeout bounds the wait for the server to accept
	// connections (JetStream recovers its streams from disk first).
	embeddedReadyTimeout = 30 * time.Second
)

// Embedded is an in-process nats-server with JetStream: sluice's broker when
// the config names none. Its streams live under the directory it was
// started with, so they survive a restart of sluice.
type Embedded struct {
	srv *server.Server
	log *slog.Logger
}

// EmbeddedOption configures StartEmbedded.
type EmbeddedOption func(*embeddedConfig)

type embeddedConfig struct {
	host   string
	port   int
	name   string
	logger *slog.Logger

	token, user, password string // the credentials every client must give; none when all empty
	cert, key, clientCA   string // TLS: the server's certificate and key; clientCA requires client certificates
}

// WithToken makes the server require token of every client.
func WithToken(token string) EmbeddedOption { return func(c *embeddedConfig) { c.token = token } }

// WithUser makes the server require user and password of every client.
func WithUser(user, password string) EmbeddedOption {
	return func(c *embeddedConfig) { c.user, c.password = user, password }
}

// WithTLS makes the server require TLS of its network clients, with the
// certificate and key in the PEM files cert and key; with clientCA (a PEM
// file of CAs, optional) it also requires client certificates signed by
// them. In-process connections (InProcessConn) need no TLS.
func WithTLS(cert, key, clientCA string) EmbeddedOption {
	return func(c *embeddedConfig) { c.cert, c.key, c.clientCA = cert, key, clientCA }
}

// WithPort sets the client port (default 4222); -1 picks a free one (tests).
func WithPort(port int) EmbeddedOption { return func(c *embeddedConfig) { c.port = port } }

// WithHost sets the listen address (default 127.0.0.1).
func WithHost(host string) EmbeddedOption { return func(c *embeddedConfig) { c.host = host } }

// WithEmbeddedLogger sends the server's warnings and errors to l (its
// notices at debug level); default: discarded.
func WithEmbeddedLogger(l *slog.Logger) EmbeddedOption {
	return func(c *embeddedConfig) { c.logger = l }
}

// StartEmbedded starts a nats-server with JetStream storing under dir and
// waits until it accepts connections. The server installs no signal
// handlers: the caller stops it with Shutdown.
func StartEmbedded(dir string, opts ...EmbeddedOption) (*Embedded, error) {
	if dir == "" {
		return nil, errors.New("nats: embedded server: empty store directory")
	}
	c := embeddedConfig{host: DefaultEmbeddedHost, port: DefaultEmbeddedPort, name: "sluice-embedded"}
	for _, o := range opts {
		o(&c)
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	if c.port > 0 {
		// The server reports a busy port only through its logger, after
		// Start returned; a probe gives the operator a message that says
		// what to do. (A race with another process remains; the fatal log
		// below catches it.)
		addr := net.JoinHostPort(c.host, strconv.Itoa(c.port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("nats: embedded server: cannot listen on %s (is another nats-server running there? "+
				"then name it under brokers with its url): %w", addr, err)
		}
		_ = ln.Close()
	}
	so := &server.Options{
		ServerName: c.name,
		Host:       c.host,
		Port:       c.port,
		JetStream:  true,
		StoreDir:   dir,
		NoSigs:     true,
		// No HTTP monitoring, cluster, gateway or leafnode listeners: the
		// embedded server is a local broker, nothing more.
		Authorization: c.token,
		Username:      c.user,
		Password:      c.password,
	}
	if c.cert != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: c.cert, KeyFile: c.key, CaFile: c.clientCA, Verify: c.clientCA != ""})
		if err != nil {
			return nil, fmt.Errorf("nats: embedded server: TLS: %w", err)
		}
		so.TLSConfig, so.TLS, so.TLSVerify = tc, true, c.clientCA != ""
	}
	srv, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("nats: embedded server: %w", err)
	}
	lg := &serverLogger{l: c.logger, fatal: make(chan string, 1)}
	srv.SetLoggerV2(lg, false, false, false)
	srv.Start()
	ctx, cancel := context.WithTimeout(context.Background(), embeddedReadyTimeout)
	defer cancel()
	for !srv.ReadyForConnections(100 * time.Millisecond) {
		select {
		case msg := <-lg.fatal:
			srv.Shutdown()
			srv.WaitForShutdown()
			return nil, fmt.Errorf("nats: embedded server: %s", msg)
		case <-ctx.Done():
			srv.Shutdown()
			srv.WaitForShutdown()
			return nil, fmt.Errorf("nats: embedded server: not ready within %s", embeddedReadyTimeout)
		default:
		}
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, errors.New("nats: embedded server: JetStream did not start")
	}
	e := &Embedded{srv: srv, log: c.logger}
	e.log.Info("embedded nats-server started", "url", e.ClientURL(), "store", dir)
	return e, nil
}

// ClientURL is the URL clients connect to, e.g. nats://127.0.0.1:4222.
func (e *Embedded) ClientURL() string { return e.srv.ClientURL() }

// InProcessConn returns a connection to the server that does not go
// through the network (nats.go's InProcessServer option takes e), so that
// sluice reaches its own server without TLS even when network clients must
// use it. Credentials are still required.
func (e *Embedded) InProcessConn() (net.Conn, error) { return e.srv.InProcessConn() }

// Shutdown stops the server and waits until it has stopped and flushed its
// streams to disk.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}

// serverLogger adapts nats-server's logger to slog. Notices are chatty (a
// banner at start-up), so they go to debug; fatal messages are also handed to
// StartEmbedded, which would otherwise only see the server never get ready.
type serverLogger struct {
	l     *slog.Logger
	fatal chan string // capacity 1: the first fatal message; later ones only logged
}

func (s *serverLogger) Noticef(format string, v ...any) {
	s.l.Debug("nats-server: " + fmt.Sprintf(format, v...))
}

func (s *serverLogger) Warnf(format string, v ...any) {
	s.l.Warn("nats-server: " + fmt.Sprintf(format, v...))
}

func (s *serverLogger) Errorf(format string, v ...any) {
	s.l.Error("nats-server: " + fmt.Sprintf(format, v...))
}

func (s *serverLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	s.l.Error("nats-server: " + msg)
	select {
	case s.fatal <- msg:
	default:
	}
}

func (s *serverLogger) Debugf(string, ...any) {}
func (s *serverLogger) Tracef(string, ...any) {}
