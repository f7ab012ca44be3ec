package dispatch

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// Request is one invocation of a function: a stream batch, an async event or a
// direct call.
type Request struct {
	Function     string
	InvocationID string
	Attempt      int       // 1 for the first try
	Deadline     time.Time // set by the Dispatcher from the function's timeout
	Scope        string    // the invocation's scope, sent as Sluice-Scope; empty for none
	// Scopes lists every distinct scope of a stream batch whose records carry
	// several; the Dispatcher takes one slot in each, all or none. When empty,
	// Scope alone is used.
	Scopes         []string
	IdempotencyKey string
	TraceParent    string      // W3C traceparent carried by the record, if any; with a tracer, the invocation span's
	TraceState     string      // W3C tracestate going with TraceParent, if any
	Shard          string      // the shard of a stream batch ("orders/2"), for the invocation's span; empty otherwise
	Header         http.Header // further headers, e.g. Sluice-Source and Sluice-Event-Time
	ContentType    string      // default application/json
	// Body is the request body. A stream batch's body is in a pooled buffer
	// that is reused once Invoke returned: a Handler that keeps the body
	// past its Invoke must copy it.
	Body []byte
	// pooled, if set, holds Body (the stream deliverer's pooled buffer):
	// the HTTP function reads Body through a reference to it.
	pooled *pooledBody

	// Items are the identifiers of a batch's records (offsets or sequences),
	// in order. With ReportItemFailures, the function may answer a partial
	// failure that names some of them.
	Items              []string
	ReportItemFailures bool
	// Count is how many records the request carries (spans); when 0,
	// len(Items), at least 1.
	Count int

	// MaxWait, if > 0, bounds how long Invoke waits in line for a slot: past
	// it, Invoke gives up with the *ThrottledError of the wait, as if the
	// limit had refused at once. An async event uses it so that a full limit
	// sends it back to its source's durable redelivery (a retry topic, a
	// NakWithDelay) instead of holding its offset and memory for hours.
	MaxWait time.Duration
	// WaitUntil, if not zero, also bounds the wait in line for a slot, as
	// MaxWait does, by a point in time: a stream batch passes the expiry of
	// its oldest record (max_record_age), an async event its own
	// (max_event_age). It bounds only the wait: an invocation that started
	// runs to its answer or the function's timeout, however old its records
	// grow meanwhile (a record that aged while its function ran was still
	// handled).
	WaitUntil time.Time
}

// Response is what a function answered on success.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Handler is a function sluice can invoke. It returns a nil error on success,
// or one of the outcome errors of this package: *ThrottledError (with
// ReasonFunction), *FunctionError, *PermanentError or *PartialBatchError. Any
// other error counts as a function error.
//
// Invoke must honour ctx: the Dispatcher sets its deadline from the function's
// timeout.
type Handler interface {
	Invoke(ctx context.Context, req *Request) (*Response, error)
}

// HandlerFunc adapts an ordinary function to Handler, as http.HandlerFunc does.
type HandlerFunc func(ctx context.Context, req *Request) (*Response, error)

// Invoke calls f(ctx, req).
func (f HandlerFunc) Invoke(ctx context.Context, req *Request) (*Response, error) { return f(ctx, req) }

// batchResponse is the partial-batch body of SPEC §3, as Lambda defines it.
type batchResponse struct {
	BatchItemFailures []struct {
		// Raw, so that a number (an offset written as one) is read too.
		ItemIdentifier json.RawMessage `json:"itemIdentifier"`
	} `json:"batchItemFailures"`
}

// ParseBatchItemFailures reads a success body under report_batch_item_failures.
// It returns nil when no item failed (an empty body, an empty list, or a body
// without batchItemFailures), a *PartialBatchError naming the failed items in
// batch order, or a *FunctionError (KindResponse) when the body is not valid
// JSON, names an empty, null or unknown item: then the whole batch failed.
func ParseBatchItemFailures(body []byte, items []string) error {
	body = bytes.TrimSpace(body) // many frameworks answer "\n" for "nothing"
	if len(body) == 0 {
		return nil
	}
	var r batchResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return &FunctionError{Kind: KindResponse, Message: "invalid batchItemFailures body: " + err.Error(), Err: err}
	}
	if len(r.BatchItemFailures) == 0 {
		return nil
	}
	failed := make([]string, 0, len(r.BatchItemFailures))
	for _, f := range r.BatchItemFailures {
		id := itemID(f.ItemIdentifier)
		if id == "" {
			return &FunctionError{Kind: KindResponse, Message: "batchItemFailures names an empty or null itemIdentifier"}
		}
		failed = append(failed, id)
	}
	return checkPartial(failed, items)
}

// itemID reads an itemIdentifier given as a string or a number; anything
// else (null, empty, an object) is "".
func itemID(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String()
	}
	return ""
}

// checkPartial validates failed against the batch's items and returns a
// *PartialBatchError in batch order, or a whole-batch *FunctionError when an
// identifier is unknown.
func checkPartial(failed, items []string) error {
	pos := make(map[string]int, len(items))
	for i, id := range items {
		pos[id] = i
	}
	isFailed := make([]bool, len(items))
	for _, id := range failed {
		i, ok := pos[id]
		if !ok {
			return &FunctionError{Kind: KindResponse, Message: fmt.Sprintf("batchItemFailures names unknown itemIdentifier %q", id)}
		}
		isFailed[i] = true
	}
	ordered := make([]string, 0, len(failed))
	for i, f := range isFailed {
		if f {
			ordered = append(ordered, items[i])
		}
	}
	return &PartialBatchError{Failed: ordered}
}
