package dispatch

import (
	"context"
	"errors"
	"slices"
	"testing"
)

func TestParseBatchItemFailures(t *testing.T) {
	items := []string{"10", "11", "12", "13"}
	tests := []struct {
		name       string
		body       string
		wantFailed []string // a *PartialBatchError with these items, in batch order
		wantWhole  bool     // a whole-batch *FunctionError (KindResponse)
		wantCause  bool     // ... that wraps the JSON decoder's error
	}{
		{name: "empty body", body: ""},
		{name: "null body", body: "null"},
		{name: "empty object", body: "{}"},
		{name: "empty list", body: `{"batchItemFailures":[]}`},
		{name: "null list", body: `{"batchItemFailures":null}`},
		{name: "other fields only", body: `{"status":"ok"}`},
		{name: "one failure", body: `{"batchItemFailures":[{"itemIdentifier":"12"}]}`, wantFailed: []string{"12"}},
		{name: "order normalised to batch order", body: `{"batchItemFailures":[{"itemIdentifier":"13"},{"itemIdentifier":"11"}]}`, wantFailed: []string{"11", "13"}},
		{name: "duplicates counted once", body: `{"batchItemFailures":[{"itemIdentifier":"11"},{"itemIdentifier":"11"}]}`, wantFailed: []string{"11"}},
		{name: "every item", body: `{"batchItemFailures":[{"itemIdentifier":"13"},{"itemIdentifier":"12"},{"itemIdentifier":"11"},{"itemIdentifier":"10"}]}`, wantFailed: items},
		{name: "extra fields ignored", body: `{"batchItemFailures":[{"itemIdentifier":"10","reason":"x"}],"other":1}`, wantFailed: []string{"10"}},
		{name: "invalid JSON", body: `{"batchItemFailures":[`, wantWhole: true, wantCause: true},
		{name: "not JSON at all", body: "OK", wantWhole: true, wantCause: true},
		{name: "JSON array", body: `[]`, wantWhole: true, wantCause: true},
		{name: "identifier is a number", body: `{"batchItemFailures":[{"itemIdentifier":12}]}`, wantFailed: []string{"12"}},
		{name: "identifier is an object", body: `{"batchItemFailures":[{"itemIdentifier":{"offset":12}}]}`, wantWhole: true},
		{name: "whitespace body is success", body: " \n"},
		{name: "unknown identifier", body: `{"batchItemFailures":[{"itemIdentifier":"11"},{"itemIdentifier":"99"}]}`, wantWhole: true},
		{name: "null identifier", body: `{"batchItemFailures":[{"itemIdentifier":null}]}`, wantWhole: true},
		{name: "empty identifier", body: `{"batchItemFailures":[{"itemIdentifier":""}]}`, wantWhole: true},
		{name: "missing identifier", body: `{"batchItemFailures":[{}]}`, wantWhole: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ParseBatchItemFailures([]byte(tt.body), items)
			var (
				pe *PartialBatchError
				fe *FunctionError
			)
			switch {
			case tt.wantWhole:
				if !errors.As(err, &fe) || fe.Kind != KindResponse {
					t.Fatalf("err = %v, want a whole-batch *FunctionError of kind %q", err, KindResponse)
				}
				if tt.wantCause && fe.Err == nil {
					t.Errorf("FunctionError.Err = nil, want the decoding error")
				}
				if errors.As(err, &pe) {
					t.Errorf("err is also a *PartialBatchError %v", pe)
				}
			case tt.wantFailed != nil:
				if !errors.As(err, &pe) {
					t.Fatalf("err = %v, want *PartialBatchError", err)
				}
				if !slices.Equal(pe.Failed, tt.wantFailed) {
					t.Errorf("Failed = %q, want %q", pe.Failed, tt.wantFailed)
				}
				if OutcomeOf(err) != OutcomePartial {
					t.Errorf("OutcomeOf = %q, want %q", OutcomeOf(err), OutcomePartial)
				}
			default:
				if err != nil {
					t.Fatalf("err = %v, want nil (no item failed)", err)
				}
			}
		})
	}
}

// Identifiers are compared as strings, exactly: "012" is not item "12".
func TestParseBatchItemFailuresExactIdentifiers(t *testing.T) {
	err := ParseBatchItemFailures([]byte(`{"batchItemFailures":[{"itemIdentifier":"012"}]}`), []string{"12"})
	var fe *FunctionError
	if !errors.As(err, &fe) || fe.Kind != KindResponse {
		t.Fatalf("err = %v, want a whole-batch *FunctionError", err)
	}
}

func TestHandlerFunc(t *testing.T) {
	want := &Response{Status: 200, Body: []byte("ok")}
	wantErr := &FunctionError{Kind: KindHandler, Message: "boom"}
	var got *Request
	var h Handler = HandlerFunc(func(_ context.Context, req *Request) (*Response, error) {
		got = req
		return want, wantErr
	})
	req := &Request{InvocationID: "inv-1"}
	resp, err := h.Invoke(context.Background(), req)
	if got != req || resp != want || !errors.Is(err, wantErr) {
		t.Errorf("HandlerFunc passed req %p (want %p), returned (%v, %v), want (%v, %v)", got, req, resp, err, want, wantErr)
	}
}
