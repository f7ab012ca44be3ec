package retention

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/shard"
)

func TestConfigValidate(t *testing.T) {
	kafka := func(edit func(*Config)) Config {
		c := DefaultConfig()
		c.Topic = "sluice.dead-letters"
		edit(&c)
		return c
	}
	for _, tc := range []struct {
		name string
		c    Config
		want string
	}{
		{"kafka defaults", kafka(func(*Config) {}), ""},
		{"jetstream kept forever, capped", Config{Stream: "DEAD", Subject: "sluice.dead.>", Retention: shard.Infinite, MaxBytes: shard.GiB}, ""},
		{"nowhere", DefaultConfig(), "d: one of topic (Kafka) or stream and subject (NATS JetStream) is required"},
		{"both", kafka(func(c *Config) { c.Stream = "DEAD" }), "d: topic (Kafka) and stream (NATS JetStream) are both set; use one"},
		{"kafka with subject", kafka(func(c *Config) { c.Subject = "x" }), "d.subject: not allowed with topic (subject goes with stream, on NATS JetStream)"},
		{"stream without subject", Config{Stream: "DEAD", Retention: DefaultRetention}, `d.subject: required with stream (the subjects the stream holds, e.g. "sluice.dead.>")`},
		{"bad names", Config{Stream: "DE AD", Subject: "a.>.b", Retention: DefaultRetention},
			`d.stream: "DE AD" is not a valid stream name (no spaces, ".", "*", ">", "/" or "\")` + "\n" +
				`d.subject: "a.>.b" is not a valid subject (dot-separated tokens without spaces; "*" stands for one token, ">" for the rest and only last)`},
		{"short retention, negative size", kafka(func(c *Config) { c.Retention, c.MaxBytes = shard.Age(30*time.Second), -1 }),
			"d.retention: 30s is out of range (-1 or 1m or more)\n" +
				"d.max_bytes: -1B is out of range (0 for no cap, or more)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate("d")
			got := ""
			if err != nil {
				got = strings.ReplaceAll(err.Error(), "invalid configuration: ", "")
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("error does not wrap ErrInvalid")
				}
			}
			if got != tc.want {
				t.Errorf("Validate:\n got: %s\nwant: %s", got, tc.want)
			}
		})
	}
	if DefaultConfig().Retention != shard.Age(14*24*time.Hour) {
		t.Errorf("default retention = %v, want 14 days", DefaultConfig().Retention)
	}
}
