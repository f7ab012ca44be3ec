package retention

// Fuzz targets for the dead-letter envelope (issue 7). Their seed corpora
// (the f.Add calls and testdata/fuzz/<Target>) run as ordinary tests; `make
// fuzz` (or go test -run '^$' -fuzz FuzzX ./retention/) explores more.

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sluicehq/sluice/event"
)

// FuzzDecodeEnvelope decodes arbitrary bytes as a dead letter. It must never
// panic; what it accepts has version 1, an id, a source and a condition, and
// survives encoding and decoding again unchanged (`sluice dlq show --json`
// and replays re-encode what they read).
func FuzzDecodeEnvelope(f *testing.F) {
	at := time.Date(2026, 5, 1, 12, 0, 0, 123456789, time.UTC)
	valid, err := json.Marshal(NewEnvelope(event.DeadLetter{
		Source: "orders", Function: "thumbnail", Mode: "stream", Condition: event.RetryAttemptsExhausted,
		Attempts: 3, FirstAttemptAt: at, LastAttemptAt: at.Add(time.Second),
		LastError: event.ErrorInfo{Kind: "status", Status: 500, Message: "boom"},
		Record: event.Record{Topic: "orders", Partition: 2, Offset: 1234, Timestamp: at,
			Key: []byte("k"), Value: []byte("v\x00\xff"), Headers: []event.Header{{Key: "h", Value: []byte{0xfe}}}},
	}))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		string(valid),
		``,
		`null`,
		`[]`,
		`{}`,
		`{"version":1}`,
		`{"version":2,"id":"x","source":"s","condition":"PermanentError"}`,
		`{"version":1,"id":"x","source":"s","condition":"PermanentError"}`,
		`{"version":1,"id":"x","source":"s","condition":"PermanentError","record":{"value":"not base64!"}}`,
		`{"version":1,"id":"x","source":"s","condition":"PermanentError","record":{"timestamp":"2026-13-01T00:00:00Z"}}`,
		`{"version":1,"id":"x","source":"s","condition":"PermanentError","firstAttemptAt":"0001-01-01T00:00:00Z"}`,
		`{"version":1,"id":"x","source":"s","condition":"PermanentError","lastAttemptAt":"2026-05-01T12:00:00+23:59"}`,
		`{"version":1,"id":"x","source":"s","condition":"PermanentError","record":{"partition":2147483648}}`,
		`{"version":1,"id":"x","source":"s","condition":"PermanentError","attempts":1e3}`,
		`{"version":1.0,"id":"x","source":"s","condition":"PermanentError","replays":-1}`,
		`{"version":1,"id":"x","source":"s","condition":"PermanentError","lastError":{"kind":"status","status":"500"}}`,
		`{"version":1,"id":"\ud800","source":"\u0000","condition":"é","record":{"headers":[{"key":"a","value":null}]}}`,
		`{"version":1,"id":"x","ID":"y","source":"s","condition":"c"}`,
		`{"version":1,"id":"x","source":"s","condition":"c"} trailing`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeEnvelope(b)
		if err != nil {
			if e != nil {
				t.Fatalf("DecodeEnvelope returned an envelope and an error: %v", err)
			}
			if !strings.HasPrefix(err.Error(), "retention: ") {
				t.Fatalf("error %q lacks the package prefix", err)
			}
			return
		}
		if e.Version != EnvelopeVersion || e.ID == "" || e.Source == "" || e.Condition == "" {
			t.Fatalf("accepted an envelope with version %d, id %q, source %q, condition %q", e.Version, e.ID, e.Source, e.Condition)
		}
		again := roundTrip(t, e)
		// Byte-compare the encodings: time.Time values that are equal may
		// differ in their *Location, which reflect.DeepEqual would see.
		if a, b := mustJSON(t, e), mustJSON(t, again); !bytes.Equal(a, b) {
			t.Fatalf("re-encoding changed the envelope:\nfirst  %s\nsecond %s", a, b)
		}
	})
}

// FuzzEnvelopeRoundTrip builds envelopes from arbitrary dead letters and
// checks that encoding and decoding keep every field, and that the id
// depends on the record's coordinates and condition only.
func FuzzEnvelopeRoundTrip(f *testing.F) {
	f.Add("orders", "fn", "stream", "RetryAttemptsExhausted", 3, int64(1714564800123456789), "status", 500, "boom",
		"orders", "", int32(2), int64(1234), []byte("k"), []byte("v"), "h", []byte{0xff})
	f.Add("s", "f", "async", "PermanentError", 0, int64(0), "", 0, "", "STREAM", "a.b.c", int32(-1), int64(-5), []byte(nil), []byte{}, "", []byte(nil))
	f.Add("\x00", "\xff", "", "EventAgeExceeded", -1, int64(-62135596800000000), "timeout", -7, "\xed\xa0\x80", "", "", int32(0), int64(1<<62), []byte{0}, []byte("\x00\xff"), "k\x00", []byte("v"))
	f.Fuzz(func(t *testing.T, source, function, mode, condition string, attempts int, nanos int64,
		kind string, status int, message, topic, subject string, partition int32, offset int64,
		key, value []byte, hkey string, hval []byte,
	) {
		if source == "" || condition == "" {
			return // never dead-lettered without them
		}
		at := time.Unix(0, nanos).UTC()
		dl := event.DeadLetter{Source: source, Function: function, Mode: mode, Condition: event.Condition(condition),
			Attempts: attempts, FirstAttemptAt: at, LastAttemptAt: at.Add(time.Second),
			LastError: event.ErrorInfo{Kind: event.ErrorKind(kind), Status: status, Message: message},
			Record: event.Record{Topic: topic, Subject: subject, Partition: partition, Offset: offset, Timestamp: at,
				Key: key, Value: value}}
		if hkey != "" {
			dl.Record.Headers = []event.Header{{Key: hkey, Value: hval}}
		}
		e := NewEnvelope(dl)
		if e.ID == "" || len(e.ID) != 24 {
			t.Fatalf("id %q, want 24 hex digits", e.ID)
		}
		other := dl
		other.Attempts, other.LastError, other.Record.Value = attempts+1, event.ErrorInfo{Kind: "other"}, append(value, 'x')
		if NewEnvelope(other).ID != e.ID {
			t.Fatalf("the id changed with the attempts, the error or the value")
		}
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		got, err := DecodeEnvelope(b)
		if err != nil {
			t.Fatalf("decode what NewEnvelope wrote: %v\n%s", err, b)
		}
		// JSON strings carry valid UTF-8 only: each invalid byte of a text
		// field comes back as U+FFFD. Key, value and header values are
		// base64 and come back byte for byte.
		want := e
		for _, s := range []*string{&want.Source, &want.Function, &want.Mode, &want.LastError.Message,
			&want.Record.Topic, &want.Record.Subject} {
			*s = validUTF8(*s)
		}
		want.Condition = event.Condition(validUTF8(string(want.Condition)))
		want.LastError.Kind = event.ErrorKind(validUTF8(string(want.LastError.Kind)))
		for i := range want.Record.Headers {
			want.Record.Headers[i].Key = validUTF8(want.Record.Headers[i].Key)
		}
		if a, b := mustJSON(t, &want), mustJSON(t, got); !bytes.Equal(a, b) {
			t.Fatalf("round trip changed the envelope:\nwrote %s\nread  %s", a, b)
		}
		if !bytes.Equal(got.Record.Key, key) || !bytes.Equal(got.Record.Value, value) {
			t.Fatalf("key/value %q/%q came back as %q/%q", key, value, got.Record.Key, got.Record.Value)
		}
		if !got.Record.Timestamp.Equal(at) || !got.FirstAttemptAt.Equal(at) {
			t.Fatalf("timestamps %s/%s came back as %s/%s", at, at, got.Record.Timestamp, got.FirstAttemptAt)
		}
	})
}

// validUTF8 replaces each byte of s that is not part of valid UTF-8 with
// U+FFFD, as encoding/json does.
func validUTF8(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func roundTrip(t *testing.T, e *Envelope) *Envelope {
	t.Helper()
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatalf("DecodeEnvelope accepted an envelope that does not encode again: %v", err)
	}
	again, err := DecodeEnvelope(b)
	if err != nil {
		t.Fatalf("an envelope DecodeEnvelope accepted, encoded again, does not decode: %v\n%s", err, b)
	}
	return again
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
