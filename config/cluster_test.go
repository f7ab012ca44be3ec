package config_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/config"
)

func TestLoadCluster(t *testing.T) {
	dir := t.TempDir()
	ok := `
functions: {fn: {url: "http://127.0.0.1:8080/invoke"}}
brokers:
  main: {kafka: {seeds: ["127.0.0.1:9092"]}}
  bus: {nats: {url: "nats://127.0.0.1:4222"}}
cluster: {name: prod, broker: bus}
`
	c, err := config.Load([]string{write(t, dir, "ok.yaml", ok)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster == nil || c.Cluster.Name != "prod" || c.Cluster.Broker != "bus" || c.Cluster.Lease != 10*time.Second {
		t.Errorf("cluster = %+v, want prod on bus with the default lease 10s", c.Cluster)
	}
	// Without brokers the embedded NATS is the one broker, and cluster's.
	c, err = config.Load([]string{write(t, dir, "embedded.yaml", "cluster: {name: prod}\n")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster.Broker == "" {
		t.Error("cluster.broker should default to the one (embedded) broker")
	}
	// A Kafka broker holds the shared state in compacted topics.
	c, err = config.Load([]string{write(t, dir, "kafka.yaml", strings.Replace(ok, "broker: bus}", "broker: main}", 1))}, nil)
	if err != nil || c.Cluster == nil || c.Cluster.Broker != "main" {
		t.Errorf("cluster on the Kafka broker main: cluster = %+v, err %v", c.Cluster, err)
	}
	c, err = config.Load([]string{write(t, dir, "none.yaml", ok[:len(ok)-len("cluster: {name: prod, broker: bus}\n")])}, nil)
	if err != nil || c.Cluster != nil {
		t.Errorf("no cluster section: cluster = %+v, err %v; want nil", c.Cluster, err)
	}

	for _, tc := range []struct{ overlay, want string }{
		{"cluster: {name: prod, broker: nope}", `cluster.broker: undefined broker "nope" (brokers: bus, main)`},
		{"cluster: {name: prod}", `cluster.broker: required when several brokers are defined (brokers: bus, main)`},
		{"cluster: {name: 'a b', broker: bus}", `cluster.name: "a b" must be 1 to 64 letters, digits, '-' or '_'`},
		{"cluster: {name: prod, broker: bus, lease: 1s}", `cluster.lease: 1s is out of range (2s..5m)`},
		{"cluster: {name: prod, broker: bus, leases: 1s}", `cluster.leases: unknown key; did you mean lease? (allowed: broker, lease, name)`},
	} {
		base := ok[:len(ok)-len("cluster: {name: prod, broker: bus}\n")]
		_, err := config.Load([]string{write(t, dir, "base.yaml", base), write(t, dir, "overlay.yaml", tc.overlay)}, nil)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s:\n got: %v\nwant: %s", tc.overlay, err, tc.want)
		}
		if err != nil && !errors.Is(err, config.ErrInvalid) {
			t.Errorf("%s: error does not match config.ErrInvalid", tc.overlay)
		}
	}
}
