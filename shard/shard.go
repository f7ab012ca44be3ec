package shard

import (
	"fmt"
	"time"
)

// ID names one shard: a Kafka partition or a JetStream partition subject.
type ID struct {
	Source    string // the sluice source name from the config
	Partition int32
}

func (id ID) String() string { return fmt.Sprintf("%s/%d", id.Source, id.Partition) }

// Header is one record header. Kafka headers may repeat a key, so headers are
// a slice, not a map.
type Header struct {
	Key   string
	Value []byte
}

// Record is one message of a shard, whatever the broker.
type Record struct {
	Topic     string // Kafka topic or JetStream stream
	Subject   string // JetStream subject; empty for Kafka
	Partition int32
	Offset    int64 // Kafka offset or JetStream stream sequence
	Timestamp time.Time
	Key       []byte
	Value     []byte
	Headers   []Header
	// Ref is the source's own handle on the record (a *kgo.Record, a
	// jetstream.Msg), opaque to everyone else: the source uses it to commit
	// or acknowledge.
	Ref any
}

// Size estimates the bytes the record adds to an encoded request body:
// base64 key and value, headers, and the JSON around them.
func (r *Record) Size() int64 {
	n := 160 + len(r.Topic) + len(r.Subject) + (len(r.Key)+len(r.Value)+2)/3*4
	for _, h := range r.Headers {
		n += 16 + len(h.Key) + 5*len(h.Value) // header values are arrays of signed bytes
	}
	return int64(n)
}

// Batch is a run of consecutive records of one shard, in order.
type Batch struct {
	Shard   ID
	Records []Record
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
