package nats

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
)

// Kind is the JetStream broker kind (brokers.<name>.nats).
type Kind struct{}

var _ consumer.Kind = Kind{}

// Open connects to cfg.NATS's server; without a URL it first starts the
// embedded nats-server, storing under env.StateDir/nats.
func (Kind) Open(_ context.Context, name string, cfg consumer.BrokerConfig, env consumer.Env) (consumer.Broker, error) {
	nb := cfg.NATS
	if nb == nil {
		return nil, fmt.Errorf("nats: broker %s has no nats settings", name)
	}
	b := &Broker{cfg: *nb, url: nb.URL}
	url := nb.URL
	opts := []natsgo.Option{natsgo.Name(env.ClientName), natsgo.MaxReconnects(-1)}
	if nb.Embedded() {
		e, err := startEmbedded(name, *nb, env)
		if err != nil {
			return nil, err
		}
		b.closers.Add(e.Shutdown)
		b.url = e.ClientURL()
		url = b.url
		if nb.TLS.On() {
			// sluice reaches its own server in process, so that it need not
			// trust the server's certificate; the URL says tls://, which
			// would make nats.go start a handshake this connection does
			// not need.
			opts = append(opts, natsgo.InProcessServer(e))
			url = strings.Replace(url, "tls://", "nats://", 1)
		}
	}
	nc, err := Connect(url, *nb, opts...) // TLS and credentials; errors redact the URL
	if err != nil {
		b.Close()
		return nil, err
	}
	b.nc = nc
	b.closers.Add(nc.Close)
	return b, nil
}

// startEmbedded starts the in-process nats-server of broker name.
func startEmbedded(name string, nb consumer.NATSConfig, env consumer.Env) (*Embedded, error) {
	listen := nb.Listen
	if listen == "" {
		listen = consumer.DefaultEmbeddedListen
	}
	host, portText, _ := net.SplitHostPort(listen) // validated by config
	port, _ := strconv.Atoi(portText)
	if port == 0 {
		port = -1 // any free port
	}
	dir := filepath.Join(env.StateDir, "nats")
	security, err := embeddedSecurity("brokers."+name+".nats", nb)
	if err != nil {
		return nil, err
	}
	e, err := StartEmbedded(dir, append([]EmbeddedOption{WithHost(host), WithPort(port), WithEmbeddedLogger(env.Logger)}, security...)...)
	if err != nil {
		// One process at a time may serve a state directory's store: the
		// usual cause is `sluice dlq` beside a running `sluice run`.
		return nil, fmt.Errorf("embedded nats-server: %w (with the embedded NATS, stop 'sluice run' on this state directory first)", err)
	}
	if env.Logger != nil {
		env.Logger.Info("embedded nats-server started", "broker", name, "url", e.ClientURL(), "store", dir)
	}
	return e, nil
}

// embeddedSecurity returns the options that give the embedded server the
// credentials and TLS its settings (under key) name.
func embeddedSecurity(key string, nb consumer.NATSConfig) ([]EmbeddedOption, error) {
	var opts []EmbeddedOption
	switch {
	case nb.TokenFile != "" || nb.TokenEnv != "":
		tok, err := nb.Token(key)
		if err != nil {
			return nil, err
		}
		opts = append(opts, WithToken(tok))
	case nb.User != "":
		pw, err := nb.Password(key)
		if err != nil {
			return nil, err
		}
		opts = append(opts, WithUser(nb.User, pw))
	}
	if nb.TLS.On() {
		opts = append(opts, WithTLS(nb.TLS.CertFile, nb.TLS.KeyFile, nb.TLS.CAFile))
	}
	return opts, nil
}

// Broker is one NATS server (or cluster) with JetStream as sluice uses it
// (consumer.Broker): one connection, shared by its sources and writers.
type Broker struct {
	cfg consumer.NATSConfig
	url string // the URL connected to: the embedded server's, when embedded
	nc  *natsgo.Conn

	closers consumer.Closers
}

var _ consumer.Broker = (*Broker)(nil)

// URL is the URL the Broker connected to (the embedded server's, when it
// started one).
func (b *Broker) URL() string { return b.url }

// NewSource returns a Stream or an Async source, by sc.Mode.
func (b *Broker) NewSource(name string, sc consumer.SourceConfig, deps consumer.SourceDeps) (consumer.Source, error) {
	if sc.Mode == consumer.ModeStream {
		return NewStream(name, b.nc, sc, StreamOptions{Worker: sc.WorkerConfig(name), Deliverer: deps.Stream,
			AckWait:      b.cfg.AckWait, // and the pin TTL, 2 × AckWait
			DeadLetterer: deps.DeadLetterer, KeepFor: deps.KeepFor, Logger: deps.Logger, Registerer: deps.Registerer})
	}
	return NewAsync(name, b.nc, sc, AsyncOptions{Deliverer: deps.Async, AckWait: b.cfg.AckWait, KeepFor: deps.KeepFor,
		DeadLetterer: deps.DeadLetterer, Logger: deps.Logger, Registerer: deps.Registerer})
}

// Encoder encodes batches as sluice's JetStream event (event.go).
func (b *Broker) Encoder(sc consumer.SourceConfig) event.Encoder { return Encoder{Stream: sc.Stream} }

// EnsureDestination creates or reconciles d's stream over d.Subject.
func (b *Broker) EnsureDestination(ctx context.Context, d consumer.Destination) (bool, []string, error) {
	if _, err := subjectPrefix(d); err != nil {
		return false, nil, err
	}
	js, err := jetstream.New(b.nc)
	if err != nil {
		return false, nil, err
	}
	created, changed, err := EnsureStream(ctx, js, d.Stream, []string{d.Subject}, d.MaxAge, d.MaxBytes)
	if err != nil {
		return false, nil, fmt.Errorf("stream %s: %w", d.Stream, err)
	}
	return created, changed, nil
}

// subjectPrefix is the prefix of d's subject "<prefix>.>", under which
// letters are published by key.
func subjectPrefix(d consumer.Destination) (string, error) {
	prefix, ok := strings.CutSuffix(d.Subject, ".>")
	if !ok {
		return "", fmt.Errorf("subject: %q must end in \".>\" (sluice publishes to <prefix>.<key>)", d.Subject)
	}
	return prefix, nil
}

// DeadLetterWriter returns a Writer to d's stream.
func (b *Broker) DeadLetterWriter(d consumer.Destination) (consumer.Appender, error) {
	prefix, err := subjectPrefix(d)
	if err != nil {
		return nil, err
	}
	return NewWriter(b.nc, d.Stream, prefix)
}

// DeadLetterReader returns a Reader of d's stream.
func (b *Broker) DeadLetterReader(d consumer.Destination) (consumer.DeadLetterReader, error) {
	return NewReader(b.nc, d.Stream)
}

// Where names d's stream.
func (b *Broker) Where(d consumer.Destination) (string, string) { return "stream", d.Stream }

// SourceWriter returns a Writer to sc's stream. Records keep their own
// subject (a replayed record's, or AddressEvent's), so the writer's prefix
// is never used. A missing stream fails each Append within the writer's
// timeout, so mustExist asks nothing more.
func (b *Broker) SourceWriter(_ context.Context, sc consumer.SourceConfig, _ bool) (consumer.Appender, error) {
	return NewWriter(b.nc, sc.Stream, "sluice.source")
}

// AddressEvent publishes rec to a subject of sc (its wildcards replaced by
// id) with id as its Nats-Msg-Id, so a publish retried within the stream's
// duplicate window is stored once.
func (b *Broker) AddressEvent(sc consumer.SourceConfig, rec *event.Record, id string) {
	rec.Subject = concreteSubject(sc.Subject, id)
	rec.Headers = append(rec.Headers, event.Header{Key: "Nats-Msg-Id", Value: []byte(id)})
}

// EventsHaveKeys is false: JetStream messages have no key.
func (b *Broker) EventsHaveKeys() bool { return false }

// Ping reports whether the connection is up.
func (b *Broker) Ping(context.Context) error {
	if st := b.nc.Status(); st != natsgo.CONNECTED {
		return fmt.Errorf("nats connection is %s", st)
	}
	return nil
}

// Close closes the connection, then stops the embedded server.
func (b *Broker) Close() { b.closers.Close() }

// concreteSubject turns an async source's subject (which may hold "*" and
// ">" wildcards) into one it matches, with token in place of each wildcard.
func concreteSubject(subject, token string) string {
	parts := strings.Split(subject, ".")
	for i, p := range parts {
		if p == "*" || p == ">" {
			parts[i] = token
		}
	}
	return strings.Join(parts, ".")
}
