package integration

import "time"

// Broker settings of the kill -9 tests: a dead process's partitions move
// after seconds instead of the defaults' 45 s (Kafka's session timeout) or
// 60 s (the JetStream pin TTL, 2 × ack_wait 30s), which was most of those
// tests' run time. What they assert does not depend on how long failover
// takes; only their bound on it does.
var (
	// kafkaFastFailover: the group gives up on a dead member after 6 s
	// (the brokers' default group.min.session.timeout.ms).
	kafkaFastFailover = map[string]any{"session_timeout": "6s"}
	// natsFastFailover: a dead process's messages come back after 10 s, its
	// stream-mode partitions move after 20 s.
	natsFastFailover = map[string]any{"ack_wait": "10s"}
)

// The failover the settings above promise after a kill -9: when the
// restarted process may deliver again at the latest, the slack is for its
// start-up, the rebalance, the JetStream pull and recovery on a busy CI
// machine. With the defaults' 45 s / 60 s it would fail, so a bound this
// generous still shows the setting took effect.
const (
	kafkaFastFailoverTime = 6 * time.Second
	natsFastFailoverTime  = 20 * time.Second
	failoverSlack         = 30 * time.Second
)
