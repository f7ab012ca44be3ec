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
