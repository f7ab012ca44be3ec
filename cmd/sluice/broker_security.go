package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/sluicehq/sluice/consumer/kafka"
	natssrc "github.com/sluicehq/sluice/consumer/nats"
)

// connectNATS connects to NATS broker name at url as client, with the
// broker's security settings (natssrc.Connect: TLS, credentials). sluice
// reaches an embedded server with TLS in process, so that it need not trust
// the server's own certificate.
func (a *app) connectNATS(name, url, client string, opts ...natsgo.Option) (*natsgo.Conn, error) {
	nb := *a.cfg.Brokers[name].NATS
	opts = append([]natsgo.Option{natsgo.Name(client)}, opts...)
	if e := a.embedded[name]; e != nil && nb.Embedded() && nb.TLS.On() {
		opts = append(opts, natsgo.InProcessServer(e))
		// The server's URL says tls://, which would make nats.go start a
		// handshake that the in-process connection does not need.
		url = strings.Replace(url, "tls://", "nats://", 1)
	}
	nc, err := natssrc.Connect(url, nb, opts...)
	if err != nil {
		return nil, fmt.Errorf("brokers.%s: %w", name, err)
	}
	return nc, nil
}

// embeddedSecurity returns the options that give the embedded server of
// NATS broker name the credentials and TLS its config names.
func (a *app) embeddedSecurity(name string) ([]natssrc.EmbeddedOption, error) {
	nb := a.cfg.Brokers[name].NATS
	key := "brokers." + name + ".nats"
	var opts []natssrc.EmbeddedOption
	switch {
	case nb.TokenFile != "" || nb.TokenEnv != "":
		tok, err := nb.Token(key)
		if err != nil {
			return nil, err
		}
		opts = append(opts, natssrc.WithToken(tok))
	case nb.User != "":
		pw, err := nb.Password(key)
		if err != nil {
			return nil, err
		}
		opts = append(opts, natssrc.WithUser(nb.User, pw))
	}
	if nb.TLS.On() {
		opts = append(opts, natssrc.WithTLS(nb.TLS.CertFile, nb.TLS.KeyFile, nb.TLS.CAFile))
	}
	return opts, nil
}

// kafkaCheckTimeout bounds the start-up check of one Kafka broker.
const kafkaCheckTimeout = 15 * time.Second

// checkKafka tries the security settings of every Kafka broker the config
// names, once, so that a wrong password, a wrong CA or a missing tls fails
// start-up with a message naming the broker instead of leaving the sources
// retrying forever. A broker that is merely unreachable passes (its
// clients keep trying, as they always do).
func (a *app) checkKafka(ctx context.Context, prefix string) error {
	for _, name := range slices.Sorted(maps.Keys(a.cfg.Brokers)) {
		if err := a.checkKafkaBroker(ctx, prefix, name); err != nil {
			return err
		}
	}
	return nil
}

// checkKafkaBroker is checkKafka for broker name alone, once per app.
func (a *app) checkKafkaBroker(ctx context.Context, prefix, name string) error {
	b := a.cfg.Brokers[name]
	if b.Kafka == nil || a.kafkaChecked[name] {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, kafkaCheckTimeout)
	err := kafka.Check(cctx, *b.Kafka)
	cancel()
	if err != nil {
		return fmt.Errorf("%s: brokers.%s: %w", prefix, name, err)
	}
	if a.kafkaChecked == nil {
		a.kafkaChecked = map[string]bool{}
	}
	a.kafkaChecked[name] = true
	return nil
}
