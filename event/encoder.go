package event

// Encoder builds the request body of a batch of records in its source's
// event format (Lambda's self-managed Kafka event, sluice's JetStream
// event). Each source package provides its own; the dispatcher's stream
// deliverer calls it.
type Encoder interface {
	Encode(recs []Record) ([]byte, error)
}

// EncoderFunc adapts a function to Encoder.
type EncoderFunc func(recs []Record) ([]byte, error)

// Encode calls f.
func (f EncoderFunc) Encode(recs []Record) ([]byte, error) { return f(recs) }

// AppendEncoder is an Encoder that also appends the body to a buffer of
// the caller's, so that the stream deliverer can encode into a pooled
// buffer instead of allocating one per batch. AppendEncode must append
// exactly what Encode returns.
type AppendEncoder interface {
	Encoder
	AppendEncode(dst []byte, recs []Record) ([]byte, error)
}
