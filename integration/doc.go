// Package integration holds sluice's end-to-end tests against real brokers:
// a real Apache Kafka broker and a real nats-server with JetStream, each in its
// own process, talking their real protocols (no mocks of clients).
//
// The tests always compile. They find the brokers through the environment:
//
//	SLUICE_TEST_KAFKA            host:port of a Kafka broker
//	SLUICE_TEST_NATS             nats://host:port of a nats-server with JetStream
//	SLUICE_TEST_NATS_SERVER_BIN  the nats-server binary (to start more servers)
//	SLUICE_TEST_BROKERS_DIR      the run dir of scripts/brokers/up.sh, so a test
//	                             can stop and restart a broker:
//	                             scripts/brokers/down.sh "$dir" kafka; scripts/brokers/up.sh "$dir" kafka
//
// A test skips, saying how to run it, when its broker's variable is unset, and
// fails when the variable is set but the broker does not answer within ~10 s:
// CI sets them, so CI never passes by skipping. SLUICE_REQUIRE_BROKERS=1 (set
// by .ci/run) turns every skip for a missing broker into a failure.
//
// `make test-all` (scripts/brokers/with-brokers.sh) fetches, starts and stops
// both brokers on free loopback ports and sets the variables; to run only this
// package:
//
//	scripts/brokers/with-brokers.sh go test -race -count=1 -v ./integration/...
//
// Every test makes its own uniquely named topics, streams and groups and
// removes them in t.Cleanup, so tests may share one broker and run in any order.
//
// Nothing imports this package; it imports whatever sluice packages it tests.
package integration
