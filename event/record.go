package event

import "time"

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
