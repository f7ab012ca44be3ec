package event

import "time"

// Header is one record header. Kafka headers may repeat a key, so headers are
// a slice, not a map.
type Header struct {
	Key   string
	Value []byte
}

// TimestampType is what a record's timestamp means (Kafka's distinction;
// a JetStream message's is always the time the stream stored it).
type TimestampType int8

// The timestamp types.
const (
	CreateTime    TimestampType = iota // set by the producer (Kafka's default)
	LogAppendTime                      // set by the broker when it stored the record
)

// String is the name Lambda's Kafka event gives the type.
func (t TimestampType) String() string {
	if t == LogAppendTime {
		return "LOG_APPEND_TIME"
	}
	return "CREATE_TIME"
}

// Record is one message of a shard, whatever the broker. It carries
// everything a source needs to settle it later (topic or stream, partition,
// offset or sequence, and Kafka's leader epoch), so no broker handle rides
// along with it.
type Record struct {
	Topic     string // Kafka topic or JetStream stream
	Subject   string // JetStream subject; empty for Kafka
	Partition int32
	// LeaderEpoch is the Kafka leader epoch the record was fetched at (a
	// commit carries it, for the broker's truncation checks); 0 elsewhere.
	LeaderEpoch   int32
	Offset        int64 // Kafka offset or JetStream stream sequence
	Timestamp     time.Time
	TimestampType TimestampType
	Key           []byte
	Value         []byte
	Headers       []Header

	size int64 // Size's estimate, once computed
}

// Size estimates the bytes the record adds to an encoded request body:
// base64 key and value, headers, and the JSON around them. It is computed
// on the first call and remembered in the record (the shard engine calls it
// as records arrive, before it shares them between goroutines); a record's
// key, value and headers must not change afterwards.
func (r *Record) Size() int64 {
	if r.size == 0 {
		n := 160 + len(r.Topic) + len(r.Subject) + (len(r.Key)+len(r.Value)+2)/3*4
		for _, h := range r.Headers {
			n += 16 + len(h.Key) + 5*len(h.Value) // header values are arrays of signed bytes
		}
		r.size = int64(n)
	}
	return r.size
}
