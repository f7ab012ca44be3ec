package dispatch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// StreamDeliverer invokes a source's function with stream batches: it is the
// shard engine's shard.Deliverer, going through the Dispatcher's limits.
type StreamDeliverer struct {
	D        *Dispatcher
	Source   string
	Function string
	// Encode builds the request body of a batch: the source package's
	// own Encoder (kafka.Encoder, nats.Encoder).
	Encode event.Encoder
	// Scope returns a record's scope, "" for none; nil means no scopes.
	Scope              func(r *event.Record) string
	ReportItemFailures bool
}

var _ shard.Deliverer = (*StreamDeliverer)(nil)

// Deliver invokes the function with d's records and maps the outcome for the
// shard engine.
func (s *StreamDeliverer) Deliver(ctx context.Context, d shard.Delivery) event.Result {
	// The body goes into a pooled buffer when the encoder can append
	// (a batch body was most of the hot path's allocated bytes); it is
	// reused once this invocation and every HTTP request reading it ended.
	var (
		body   []byte
		pooled *pooledBody
		err    error
	)
	if ae, ok := s.Encode.(event.AppendEncoder); ok {
		pooled = getBody()
		defer pooled.release()
		pooled.b, err = ae.AppendEncode(pooled.b, d.Records)
		body = pooled.b
	} else {
		body, err = s.Encode.Encode(d.Records)
	}
	if err != nil {
		return event.Result{Outcome: event.Invalid, Error: event.ErrorInfo{Kind: event.KindEncode, Message: err.Error()}}
	}
	first, last := d.Records[0], d.Records[len(d.Records)-1]
	traceParent, traceState := traceHeaders(&first)
	// Item ids are read only from a partial answer, which needs
	// report_batch_item_failures: formatted only then (one string per
	// record was most of the hot path's allocations).
	var items []string
	if s.ReportItemFailures {
		items = make([]string, len(d.Records))
		for i := range d.Records {
			items[i] = strconv.FormatInt(d.Records[i].Offset, 10)
		}
	}
	req := &Request{
		Function:     s.Function,
		InvocationID: newID(),
		Attempt:      d.Attempt,
		// The same batch keeps its key across retries and redeliveries, so
		// a function can drop a batch it already handled.
		IdempotencyKey:     idempotencyKey(s.Source, first.Partition, first.Offset, last.Offset),
		TraceParent:        traceParent,
		TraceState:         traceState,
		Shard:              s.Source + "/" + strconv.FormatInt(int64(first.Partition), 10),
		Header:             http.Header{"Sluice-Source": {s.Source}},
		Body:               body,
		pooled:             pooled,
		Items:              items,
		Count:              len(d.Records),
		ReportItemFailures: s.ReportItemFailures,
		WaitUntil:          d.WaitUntil,
	}
	if s.Scope != nil {
		req.Scopes = scopesOfBatch(d.Records, s.Scope)
		if len(req.Scopes) == 1 {
			req.Scope = req.Scopes[0]
		}
	}
	_, err = s.D.Invoke(ctx, req, func(r Reason) {
		if d.OnWait != nil {
			d.OnWait(string(r))
		}
	})
	return resultOf(err, items)
}

// idempotencyKey is "<source>-<partition>-<first offset>-<last offset>",
// built with one allocation (fmt.Sprintf took five per batch).
func idempotencyKey(source string, partition int32, first, last int64) string {
	var num [20]byte
	var b strings.Builder
	b.Grow(len(source) + 3*21)
	b.WriteString(source)
	b.WriteByte('-')
	b.Write(strconv.AppendInt(num[:0], int64(partition), 10))
	b.WriteByte('-')
	b.Write(strconv.AppendInt(num[:0], first, 10))
	b.WriteByte('-')
	b.Write(strconv.AppendInt(num[:0], last, 10))
	return b.String()
}

// resultOf maps an invocation's error to the shard engine's Result.
func resultOf(err error, items []string) event.Result {
	if err == nil {
		return event.Result{Outcome: event.Delivered}
	}
	// Declared past the common case: errors.As takes their addresses, so
	// they live on the heap (four allocations per delivered batch before).
	var (
		pb *PartialBatchError
		fe *FunctionError
		pe *PermanentError
		iv *InvalidRequestError
	)
	if t, ok := AsThrottled(err); ok {
		return event.Result{Outcome: event.Throttled, Reason: string(t.Reason), RetryAfter: t.RetryAfter,
			Error: event.ErrorInfo{Kind: event.KindThrottled, Status: t.Status, Message: t.Error()}}
	}
	switch {
	case errors.As(err, &pb):
		return event.Result{Outcome: event.Partial, FailedFrom: slices.Index(items, pb.Failed[0]),
			Error: event.ErrorInfo{Kind: event.KindPartial, Message: pb.Error()}}
	case errors.As(err, &iv):
		return event.Result{Outcome: event.Invalid, Error: event.ErrorInfo{Kind: event.KindInvalid, Message: iv.Message}}
	case errors.As(err, &pe):
		return event.Result{Outcome: event.Permanent, Error: event.ErrorInfo{Kind: event.KindStatus, Status: pe.Status, Message: pe.Message}}
	case errors.As(err, &fe):
		return event.Result{Outcome: event.Failed, Error: event.ErrorInfo{Kind: event.ErrorKind(fe.Kind), Status: fe.Status, Message: fe.Message}}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded), errors.Is(err, ErrClosed):
		// The caller is stopping, or the dispatcher closed: nothing ran,
		// so nothing is consumed.
		return event.Result{Outcome: event.Throttled, Error: event.ErrorInfo{Kind: event.KindCancelled, Message: err.Error()}}
	default:
		return event.Result{Outcome: event.Failed, Error: event.ErrorInfo{Kind: event.ErrorKind(KindHandler), Message: err.Error()}}
	}
}

// scopesOfBatch returns the distinct scopes of recs in first-seen order.
func scopesOfBatch(recs []event.Record, scope func(*event.Record) string) []string {
	var out []string
	seen := make(map[string]struct{})
	for i := range recs {
		sc := scope(&recs[i])
		if _, dup := seen[sc]; sc == "" || dup {
			continue
		}
		seen[sc] = struct{}{}
		out = append(out, sc)
	}
	return out
}

func header(r *event.Record, name string) string {
	for _, h := range r.Headers {
		if h.Key == name {
			return string(h.Value)
		}
	}
	return ""
}

// newID returns a random invocation id (128 bits, hex).
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}
