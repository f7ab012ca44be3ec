package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/netutil"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/dispatch"
)

// The admin listener's time limits around admin.read_timeout.
const (
	// maxHeaderTimeout bounds reading a request's headers, and how long a
	// new connection may stay silent before its first request.
	maxHeaderTimeout = 10 * time.Second
	// writeMargin is added to the longest function timeout in the write
	// time limit: a synchronous invocation answers after its function did.
	writeMargin = 10 * time.Second
)

// adminServer is the admin API's listener and server, hardened (see
// admin.Harden and docs in README "Admin API"): a cap on open connections,
// header, body, write and idle time limits, Host/Origin/Content-Type
// checks, and HTTPS when admin.tls is set.
type adminServer struct {
	ln  net.Listener
	srv *http.Server
	tls *config.ServerTLS // nil without admin.tls
}

// listenAdmin opens the admin listener of a.cfg for handler.
func (a *app) listenAdmin(handler http.Handler) (*adminServer, error) {
	ac := a.cfg.Admin
	s := &adminServer{tls: a.adminTLS}
	ln, err := net.Listen("tcp", ac.Listen)
	if err != nil {
		return nil, fmt.Errorf("run: admin API: %w", err)
	}
	// Past the cap, connections wait in the kernel's accept queue: they
	// cost sluice nothing until one of the open ones closes.
	s.ln = netutil.LimitListener(ln, ac.MaxConnections)
	hosts := append([]string(nil), ac.Hosts...)
	if h, _, err := net.SplitHostPort(ac.Listen); err == nil && net.ParseIP(h) == nil && h != "" {
		hosts = append(hosts, h) // a listen on a name accepts that name
	}
	s.srv = &http.Server{
		Handler:           admin.Harden(handler, admin.HardenOptions{Hosts: hosts}),
		ReadHeaderTimeout: min(maxHeaderTimeout, ac.ReadTimeout),
		// ReadTimeout bounds headers and body together. It does not cut a
		// long synchronous invocation: net/http lifts the read deadline
		// once the body has been read (its background read).
		ReadTimeout:    ac.ReadTimeout,
		WriteTimeout:   adminWriteTimeout(a.cfg),
		IdleTimeout:    ac.IdleTimeout,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	if s.tls != nil {
		s.srv.TLSConfig = s.tls.Config
	}
	return s, nil
}

// serve serves until the server is shut down.
func (s *adminServer) serve() error {
	if s.tls != nil {
		return s.srv.ServeTLS(s.ln, "", "") // the certificate comes from TLSConfig.GetCertificate
	}
	return s.srv.Serve(s.ln)
}

// loadAdminTLS reads the admin API's certificate (wire calls it, so that
// SIGHUP may re-read it from then on).
func (a *app) loadAdminTLS() error {
	if a.cfg.Admin.TLS == nil {
		return nil
	}
	st, err := config.LoadServerTLS(*a.cfg.Admin.TLS)
	if err != nil {
		return fmt.Errorf("%w: admin.tls: %w", config.ErrInvalid, err)
	}
	a.adminTLS = st
	return nil
}

// adminWriteTimeout is the write time limit of the admin API: the time to
// read a request, plus the longest function timeout (the synchronous
// ingress answers when the function has), plus a margin.
func adminWriteTimeout(cfg *config.Config) time.Duration {
	longest := dispatch.DefaultTimeout
	for _, f := range cfg.Functions {
		longest = max(longest, f.Timeout)
	}
	return cfg.Admin.ReadTimeout + longest + writeMargin
}
