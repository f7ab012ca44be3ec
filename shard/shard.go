package shard

import (
	"fmt"

	"github.com/sluicehq/sluice/event"
)

// ID names one shard: a Kafka partition or a JetStream partition subject.
type ID struct {
	Source    string // the sluice source name from the config
	Partition int32
}

func (id ID) String() string { return fmt.Sprintf("%s/%d", id.Source, id.Partition) }

// Batch is a run of consecutive records of one shard, in order.
type Batch struct {
	Shard   ID
	Records []event.Record
}

// State is what a shard is doing, as GET /v1/shards reports it.
type State string

// The shard states of SPEC §6.
const (
	StateRunning   State = "running"   // delivering batches
	StateIdle      State = "idle"      // nothing to deliver
	StateThrottled State = "throttled" // holding a batch until a slot frees or the function stops answering 429/503
	StateRetrying  State = "retrying"  // backing off after a function error
	StateBlocked   State = "blocked"   // cannot move on, e.g. the dead-letter store is unreachable
)
