package kafka

import (
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
)

// brokers.<name>.kafka.session_timeout reaches the group clients of both
// modes, with the heartbeat interval derived from it; without it (a
// KafkaConfig built in code) franz-go's defaults apply. (Options.ClientOpts,
// which tests use, still override both.)
func TestSessionTimeoutReachesClients(t *testing.T) {
	for _, tc := range []struct {
		session, wantSession, wantHeartbeat time.Duration
	}{
		{6 * time.Second, 6 * time.Second, 2 * time.Second},
		{120 * time.Second, 120 * time.Second, 3 * time.Second},
		{0, 45 * time.Second, 3 * time.Second}, // franz-go's defaults
	} {
		broker := consumer.KafkaConfig{Seeds: []string{"127.0.0.1:1"}, SessionTimeout: tc.session}
		s, err := New("orders", broker, sourceConfig("orders"), Options{Deliverer: newFakeDeliverer(nil), Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		f := newAsyncFake(func(event.Record, int) event.Result { return event.Result{Outcome: event.Delivered} })
		a, err := NewAsync("orders", broker, asyncSourceConfig("orders", 2, time.Hour), AsyncOptions{Deliverer: f, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		for mode, opts := range map[string][]kgo.Opt{"stream": s.kopts, "async": a.kopts} {
			cl, err := kgo.NewClient(opts...) // does not dial yet
			if err != nil {
				t.Fatal(err)
			}
			gotSession := cl.OptValue(kgo.SessionTimeout).(time.Duration)
			gotHeartbeat := cl.OptValue(kgo.HeartbeatInterval).(time.Duration)
			cl.Close()
			if gotSession != tc.wantSession || gotHeartbeat != tc.wantHeartbeat {
				t.Errorf("%s, session_timeout %s: client has session timeout %s and heartbeat %s, want %s and %s",
					mode, tc.session, gotSession, gotHeartbeat, tc.wantSession, tc.wantHeartbeat)
			}
		}
	}
}
