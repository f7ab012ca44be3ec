package dispatch

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/sluicehq/sluice/event"
)

// How values that HTTP cannot carry unchanged reach a function (see
// docs/function-contract.md, "Header values"):
//
//   - A scope travels in Sluice-Scope as it is when every byte is visible
//     ASCII (0x21–0x7E) or an inner space. Any other scope — control bytes,
//     non-ASCII bytes (UTF-8 or not), leading or trailing spaces — is
//     percent-encoded (every byte outside 0x21–0x7E, and '%' itself, as %XX)
//     and Sluice-Scope-Encoding: percent says so. Decoding gives back the very
//     string the limiter matched rules against.
//   - traceparent is sent only when it is a well-formed W3C traceparent, and
//     tracestate only with it and when HTTP can carry it; a malformed one is
//     dropped, never sent and never an error.
//   - An async event's Content-Type header is used only when HTTP can carry
//     it; else the body goes as application/octet-stream.
//
// Anything else that still cannot be sent is an InvalidRequestError, a
// permanent outcome (InvalidRecord), never a connection error.

// HeaderScopeEncoding names the encoding of Sluice-Scope when it is not the
// scope's bytes as they are; its one value is ScopeEncodingPercent.
const (
	HeaderScopeEncoding  = "Sluice-Scope-Encoding"
	ScopeEncodingPercent = "percent"
)

// MaxScopeBytes bounds a scope a rule can name or the ingress accepts.
const MaxScopeBytes = 256

// CheckScope is the validity rule shared by rule patterns and the scopes of
// the HTTP ingress: 1 to MaxScopeBytes bytes of valid UTF-8 without control
// characters. A record's scope (a Kafka key, a header) may break it: it is
// still delivered (Sluice-Scope percent-encoded), and only the "*" rule can
// match it, since no rule can name it.
func CheckScope(scope string) error {
	switch {
	case scope == "":
		return errors.New("must not be empty")
	case len(scope) > MaxScopeBytes:
		return fmt.Errorf("must be at most %d bytes, got %d", MaxScopeBytes, len(scope))
	case !utf8.ValidString(scope):
		return fmt.Errorf("%q is not valid UTF-8", scope)
	}
	for _, r := range scope {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("%q has a control character", scope)
		}
	}
	return nil
}

// headerScope returns the Sluice-Scope value of scope and whether it is
// percent-encoded.
func headerScope(scope string) (string, bool) {
	if plainHeaderValue(scope) {
		return scope, false
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(scope) * 3)
	for i := 0; i < len(scope); i++ {
		c := scope[i]
		if c > 0x20 && c < 0x7f && c != '%' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String(), true
}

// plainHeaderValue reports whether v travels unchanged through any HTTP
// implementation: visible ASCII and inner spaces (a leading or trailing
// space would be trimmed by the receiver).
func plainHeaderValue(v string) bool {
	if v == "" || v[0] == ' ' || v[len(v)-1] == ' ' {
		return v == ""
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// validFieldValue reports whether net/http sends v as a header value (RFC
// 9110 field-value: no control bytes but HTAB).
func validFieldValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// traceHeaders returns the traceparent and tracestate of rec that may be
// sent: a traceparent that is not a well-formed W3C one is dropped, with its
// tracestate.
func traceHeaders(rec *event.Record) (parent, state string) {
	parent = header(rec, "traceparent")
	if !validTraceParent(parent) {
		return "", ""
	}
	state = header(rec, "tracestate")
	if !plainHeaderValue(state) || len(state) > 512 {
		state = ""
	}
	return parent, state
}

// validTraceParent checks the W3C form version-traceid-parentid-flags
// (lower-case hex, 2-32-16-2, version not ff; a future version may append
// fields after a dash).
func validTraceParent(tp string) bool {
	if len(tp) < 55 || (len(tp) > 55 && (tp[:2] == "00" || tp[55] != '-')) || tp[:2] == "ff" {
		return false
	}
	for i := 0; i < 55; i++ {
		c := tp[i]
		switch i {
		case 2, 35, 52:
			if c != '-' {
				return false
			}
		default:
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return false
			}
		}
	}
	return plainHeaderValue(tp) && tp[3:35] != strings.Repeat("0", 32) && tp[36:52] != strings.Repeat("0", 16)
}

// checkHeaders returns an *InvalidRequestError naming the first header of h
// that net/http would refuse to send.
func checkHeaders(h http.Header) error {
	for k, vs := range h {
		for _, v := range vs {
			if !validFieldValue(v) {
				return &InvalidRequestError{Message: fmt.Sprintf("header %s: %q cannot be sent over HTTP", k, v)}
			}
		}
	}
	return nil
}
