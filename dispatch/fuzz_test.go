package dispatch

// Fuzz targets for what sluice reads from a function's answer (issue 7): the
// partial-batch body and the classification of an HTTP response. Their seed
// corpora (the f.Add calls and testdata/fuzz/<Target>) run as ordinary tests;
// `make fuzz` (or go test -run '^$' -fuzz FuzzX ./dispatch/) explores more.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzParseBatchItemFailures feeds arbitrary bodies and batches to the
// partial-batch parser. It must never panic, and it returns exactly one of:
// nil, a *PartialBatchError naming distinct items of the batch in batch
// order, or a whole-batch *FunctionError of kind response. A well-formed body
// naming a subset of the batch (chosen by mask) must give that subset.
func FuzzParseBatchItemFailures(f *testing.F) {
	for _, s := range []struct {
		body, items string
		mask        uint64
	}{
		{``, "0,1,2", 0},
		{"\n", "0", 1},
		{`{}`, "10,11", 3},
		{`{"batchItemFailures":[]}`, "1", 1},
		{`{"batchItemFailures":[{"itemIdentifier":"11"}]}`, "10,11,12", 5},
		{`{"batchItemFailures":[{"itemIdentifier":11}]}`, "10,11,12", 2},
		{`{"batchItemFailures":[{"itemIdentifier":"12"},{"itemIdentifier":"10"}]}`, "10,11,12", 7},
		{`{"batchItemFailures":[{"itemIdentifier":null}]}`, "1", 1},
		{`{"batchItemFailures":[{"itemIdentifier":""}]}`, ",1", 1},
		{`{"batchItemFailures":[{"itemIdentifier":"99"}]}`, "1,2", 2},
		{`{"batchItemFailures":[{"itemIdentifier":{"a":1}}]}`, "1", 1},
		{`{"batchItemFailures":[{"itemIdentifier":1e3}]}`, "1000,1e3", 3},
		{`{"batchItemFailures":[{"itemIdentifier":"1"},{"itemIdentifier":"1"}]}`, "1,1,2", 6},
		{`{"batchItemFailures":{"itemIdentifier":"1"}}`, "1", 1},
		{`[{"itemIdentifier":"1"}]`, "1", 1},
		{`{"batchItemFailures":[{"itemIdentifier":"\u00e9\ud800"}]}`, "é", 1},
		{`{"batchItemFailures":[` + strings.Repeat(`{"itemIdentifier":"5"},`, 50) + `{"itemIdentifier":"5"}]}`, "4,5", 1},
		{`null`, "1", 0},
		{`"batchItemFailures"`, "1", 0},
		{`{"batchItemFailures":null}`, "1", 1},
		{`{"BATCHITEMFAILURES":[{"ITEMIDENTIFIER":"1"}]}`, "1", 1},
	} {
		f.Add([]byte(s.body), s.items, s.mask)
	}
	f.Fuzz(func(t *testing.T, body []byte, itemList string, mask uint64) {
		items := strings.Split(itemList, ",")
		err := ParseBatchItemFailures(body, items)
		checkPartialResult(t, err, items)

		// A body the parser must understand: the items picked by mask,
		// named in reverse order (the order must not matter), as strings.
		var picked []string
		seen := map[string]bool{}
		for i, id := range items {
			if i < 64 && mask&(1<<i) != 0 && id != "" && !seen[id] {
				picked = append(picked, id)
				seen[id] = true
			}
		}
		type item struct {
			ItemIdentifier string `json:"itemIdentifier"`
		}
		var resp struct {
			BatchItemFailures []item `json:"batchItemFailures"`
		}
		for _, id := range slices.Backward(picked) {
			resp.BatchItemFailures = append(resp.BatchItemFailures, item{id})
		}
		good, merr := json.Marshal(resp)
		if merr != nil {
			t.Fatal(merr)
		}
		err = ParseBatchItemFailures(good, items)
		if slices.ContainsFunc(picked, func(id string) bool { return !utf8.ValidString(id) }) {
			// json.Marshal replaced invalid UTF-8 with U+FFFD, so the ids
			// no longer match: any outcome but a panic is fine. Each id is
			// checked on its own: two invalid ids can join into a valid
			// string ("\xdb" + "\xb3..." is U+06F3).
			checkPartialResult(t, err, items)
			return
		}
		if len(picked) == 0 {
			if err != nil {
				t.Fatalf("a body naming no items (%s) gave %v, want nil", good, err)
			}
			return
		}
		var pb *PartialBatchError
		if !errors.As(err, &pb) {
			t.Fatalf("body %s for items %q gave %v, want a partial batch error", good, items, err)
		}
		// The failed items in batch order: the first position of each id.
		var want []string
		done := map[string]bool{}
		for _, id := range items {
			if seen[id] && !done[id] {
				want = append(want, id)
				done[id] = true
			}
		}
		if !slices.Equal(pb.Failed, want) && !hasDuplicates(items) {
			t.Fatalf("body %s for items %q: failed %q, want %q", good, items, pb.Failed, want)
		}
	})
}

func hasDuplicates(items []string) bool {
	seen := map[string]bool{}
	for _, id := range items {
		if seen[id] {
			return true
		}
		seen[id] = true
	}
	return false
}

// checkPartialResult checks the shape of ParseBatchItemFailures' result.
func checkPartialResult(t *testing.T, err error, items []string) {
	t.Helper()
	var (
		pb *PartialBatchError
		fe *FunctionError
	)
	switch {
	case err == nil:
	case errors.As(err, &pb):
		if len(pb.Failed) == 0 {
			t.Fatalf("a partial batch error naming no item")
		}
		last := -1
		for _, id := range pb.Failed {
			i := slices.Index(items, id)
			if i < 0 {
				t.Fatalf("partial batch error names %q, not an item of %q", id, items)
			}
			if i <= last {
				t.Fatalf("partial batch error %q is not in batch order %q (or names an item twice)", pb.Failed, items)
			}
			last = i
		}
		if OutcomeOf(err) != OutcomePartial {
			t.Fatalf("outcome of %v = %s, want partial", err, OutcomeOf(err))
		}
	case errors.As(err, &fe):
		if fe.Kind != KindResponse {
			t.Fatalf("function error of kind %q, want %q: %v", fe.Kind, KindResponse, err)
		}
		if OutcomeOf(err) != OutcomeError {
			t.Fatalf("outcome of %v = %s, want error", err, OutcomeOf(err))
		}
	default:
		t.Fatalf("ParseBatchItemFailures returned %T %v, want nil, *PartialBatchError or *FunctionError", err, err)
	}
}

// roundTrip answers every request with a response built by the fuzz input,
// without a network.
type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// FuzzHTTPResponse classifies arbitrary answers of an HTTP function (status,
// Retry-After, Location, body, with and without report_batch_item_failures)
// and checks the table of SPEC §3: 2xx success (or a partial / whole-batch
// failure from the body), 429 and 503 throttled with a Retry-After within
// [0, MaxRetryAfter], 408, 409 and 5xx function errors, any other status a
// permanent error; messages are valid UTF-8 and bounded; nothing panics.
func FuzzHTTPResponse(f *testing.F) {
	for _, s := range []struct {
		status                  int
		retryAfter, location    string
		body                    string
		reportItems, bodyErrors bool
	}{
		{200, "", "", "", false, false},
		{200, "", "", `{"batchItemFailures":[{"itemIdentifier":"2"}]}`, true, false},
		{204, "", "", `not json`, true, false},
		{299, "", "", "ok", false, true},
		{429, "1", "", "slow down", false, false},
		{429, "Wed, 21 Oct 2015 07:28:00 GMT", "", "", false, false},
		{503, "99999999999999999999999", "", "", false, false},
		{503, "-1", "", "", false, false},
		{503, " 120 ", "", "", false, false},
		{408, "", "", "request timeout", false, false},
		{409, "", "", "", false, false},
		{500, "", "", strings.Repeat("é", 400), false, false},
		{599, "", "", "\xff\xfe broken utf-8", false, false},
		{400, "", "", "bad request", false, false},
		{404, "", "", "", false, true},
		{499, "", "", "", false, false},
		{301, "", "https://user:pass@example.com/x?token=secret#frag", "", false, false},
		{399, "", "%zz", "", false, false},
		{101, "", "", "", false, false},
		{100, "", "", "", false, false},
		{0, "", "", "", false, false},
		{-1, "", "", "", false, false},
		{600, "", "", "", false, false},
		{999, "", "", "", false, false},
	} {
		f.Add(s.status, s.retryAfter, s.location, []byte(s.body), s.reportItems, s.bodyErrors)
	}
	items := []string{"1", "2", "3"}
	f.Fuzz(func(t *testing.T, status int, retryAfter, location string, body []byte, reportItems, bodyErrors bool) {
		if status < -1000 || status > 10000 {
			status %= 1000
		}
		h := http.Header{}
		if retryAfter != "" {
			h.Set("Retry-After", retryAfter)
		}
		if location != "" {
			h.Set("Location", location)
		}
		client := &http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
			_, _ = io.Copy(io.Discard, r.Body)
			var rd io.Reader = bytes.NewReader(body)
			if bodyErrors {
				// The connection breaks half-way through the body.
				rd = io.MultiReader(bytes.NewReader(body[:len(body)/2]), errReader{})
			}
			return &http.Response{StatusCode: status, Status: strconv.Itoa(status), Header: h,
				Body: io.NopCloser(rd), Request: r, ProtoMajor: 1, ProtoMinor: 1}, nil
		})}
		fn, err := NewHTTPFunction("fuzz", FunctionConfig{URL: "http://127.0.0.1:1/invoke", Timeout: 5 * time.Second}, WithHTTPClient(client))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := fn.Invoke(context.Background(), &Request{Body: []byte(`{}`), Attempt: 1, Items: items, ReportItemFailures: reportItems})
		if badRedirect(status, location) {
			// net/http's client parses the Location of a redirect it would
			// follow before it asks CheckRedirect, and fails the request:
			// sluice never sees the answer, so it is a connection error
			// (retried), not the permanent error of a readable redirect.
			var fe *FunctionError
			if !errors.As(err, &fe) || fe.Kind != KindConnection {
				t.Fatalf("status %d with Location %q: %T %v, want a connection error", status, location, err, err)
			}
			return
		}
		checkClassified(t, status, bodyErrors, reportItems, len(body), resp, err, items)
	})
}

// badRedirect reports whether net/http's client refuses the answer before
// CheckRedirect: a status it follows with a Location it cannot parse.
func badRedirect(status int, location string) bool {
	switch status {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
	default:
		return false
	}
	base, _ := url.Parse("http://127.0.0.1:1/invoke")
	_, err := base.Parse(location)
	return location != "" && err != nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset by fuzz") }

func checkClassified(t *testing.T, status int, bodyErrors, reportItems bool, bodyLen int, resp *Response, err error, items []string) {
	t.Helper()
	var (
		th *ThrottledError
		fe *FunctionError
		pe *PermanentError
		pb *PartialBatchError
	)
	if err != nil {
		msg := err.Error()
		if !utf8.ValidString(msg) {
			t.Fatalf("error message is not valid UTF-8: %q", msg)
		}
		if len(msg) > 4096 {
			t.Fatalf("error message of %d bytes, want it bounded: %.200q...", len(msg), msg)
		}
	}
	switch {
	case status >= 200 && status <= 299:
		switch {
		case bodyErrors:
			// Reading the body failed: a connection error, unless the
			// half that arrived was already too long.
			if !errors.As(err, &fe) || (fe.Kind != KindConnection && fe.Kind != KindResponse) {
				t.Fatalf("status %d with a broken body: %T %v, want a connection error", status, err, err)
			}
		case bodyLen > MaxResponseBytes:
			if !errors.As(err, &fe) || fe.Kind != KindResponse {
				t.Fatalf("status %d with a %d-byte body: %T %v, want a response error", status, bodyLen, err, err)
			}
		case err == nil || errors.As(err, &pb):
			if resp == nil || resp.Status != status {
				t.Fatalf("status %d: response %+v", status, resp)
			}
			if pb != nil && !reportItems {
				t.Fatalf("status %d: a partial batch error without report_batch_item_failures", status)
			}
			if pb != nil {
				checkPartialResult(t, err, items)
			}
		case reportItems && errors.As(err, &fe) && fe.Kind == KindResponse:
		default:
			t.Fatalf("status %d: %T %v, want success", status, err, err)
		}
	case status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable:
		if !errors.As(err, &th) || th.Reason != ReasonFunction {
			t.Fatalf("status %d: %T %v, want throttled (FunctionThrottled)", status, err, err)
		}
		if th.RetryAfter < 0 || th.RetryAfter > MaxRetryAfter {
			t.Fatalf("status %d: Retry-After %s outside [0, %s]", status, th.RetryAfter, MaxRetryAfter)
		}
		if OutcomeOf(err) != OutcomeThrottled {
			t.Fatalf("outcome %s, want throttled", OutcomeOf(err))
		}
	case status == http.StatusRequestTimeout || status == http.StatusConflict || (status >= 500 && status <= 599):
		if !errors.As(err, &fe) || fe.Kind != KindStatus || fe.Status != status {
			t.Fatalf("status %d: %T %v, want a function error of kind status", status, err, err)
		}
		// The message is never empty (a status without a standard text,
		// e.g. 514, with an empty body says "HTTP 514") and at most
		// maxMessageBytes plus the ellipsis, also for invalid UTF-8 (each
		// bad byte becomes a 3-byte U+FFFD): both found by this fuzzer.
		if fe.Message == "" || len(fe.Message) > maxMessageBytes+len("…") {
			t.Fatalf("status %d: message of %d bytes (%q), want 1..%d", status, len(fe.Message), fe.Message, maxMessageBytes+len("…"))
		}
	default:
		if !errors.As(err, &pe) || pe.Status != status {
			t.Fatalf("status %d: %T %v, want a permanent error", status, err, err)
		}
		if OutcomeOf(err) != OutcomePermanent {
			t.Fatalf("outcome %s, want permanent", OutcomeOf(err))
		}
	}
	if err != nil && resp != nil && pb == nil && fe == nil {
		t.Fatalf("status %d: both a response and an error %v", status, err)
	}
}
