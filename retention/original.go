package retention

import "github.com/sluicehq/sluice/event"

// Original is the record the letter carries, as its source read it: what a
// replay delivers to the function again or appends to the source again.
func (e *Envelope) Original() event.Record {
	r := e.Record
	rec := event.Record{Topic: r.Topic, Subject: r.Subject, Partition: r.Partition, Offset: r.Offset,
		Timestamp: r.Timestamp, Key: r.Key, Value: r.Value}
	for _, h := range r.Headers {
		rec.Headers = append(rec.Headers, event.Header{Key: h.Key, Value: h.Value})
	}
	return rec
}
