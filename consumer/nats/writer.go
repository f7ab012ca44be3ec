package nats

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// DefaultWriteTimeout bounds one Writer.Append: a stream that is missing or
// a server that is unreachable fails the call after this long instead of
// hanging.
const DefaultWriteTimeout = 10 * time.Second

// Writer publishes records to one JetStream stream and waits until the
// stream acknowledged every one of them. The dead-letter store writes through
// it (it implements retention.Appender): a letter counts as stored only once
// Append returned nil.
//
// A record is published to its Subject when it has one (it must be one of the
// stream's subjects: a replay to a source), else to "<prefix>.<key>", the key
// made a valid subject token (dots, wildcards and white space become "_"; no
// key is "_"), so a stream over "<prefix>.>" holds them all and a dead
// letter is found by its id. Its headers become NATS headers.
//
// MaxRecordBytes is the largest record the stream takes: its max_msg_size
// and the server's max_payload, whichever is lower.
type Writer struct {
	js      jetstream.JetStream
	stream  string
	prefix  string
	timeout time.Duration

	mu    sync.Mutex
	limit int // learned by MaxRecordBytes; 0 until then, and after a refusal
	// ceiling (> 0) caps the limit after the stream refused records as too
	// large that were within it (consumer.LowerLimit); dropped when the
	// server reports a limit other than the one it capped (asked).
	ceiling int
	asked   int
}

// MaxRecordBytes returns the largest message (data and headers) the
// stream accepts: its max_msg_size (when set) and the server's max_payload,
// the lower of the two. It asks the server once, and again after the stream
// refused a record as too large (its max_msg_size went down).
func (w *Writer) MaxRecordBytes(ctx context.Context) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.limit > 0 {
		return w.limit, nil
	}
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	st, err := w.js.Stream(ctx, w.stream)
	if err != nil {
		return 0, fmt.Errorf("nats: stream %s: %w", w.stream, err)
	}
	limit := int(w.js.Conn().MaxPayload())
	if m := int(st.CachedInfo().Config.MaxMsgSize); m > 0 && (limit <= 0 || m < limit) {
		limit = m
	}
	if limit <= 0 {
		return 0, fmt.Errorf("nats: stream %s: the server reports no max_payload", w.stream)
	}
	if w.asked != 0 && limit != w.asked {
		w.ceiling = 0 // the limit changed: what was refused says nothing of it
	}
	w.asked = limit
	if w.ceiling > 0 {
		limit = min(limit, w.ceiling)
	}
	w.limit = limit
	return limit, nil
}

// refused makes MaxRecordBytes ask the server again after n records, the
// biggest of largest bytes, were refused as too large, and caps what it
// learns below them (consumer.LowerLimit) in case the server still reports
// a limit they were within.
func (w *Writer) refused(largest, n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.limit > 0 {
		w.ceiling = consumer.LowerLimit(w.limit, largest, n)
	}
	w.limit = 0
}

// tooLarge reports whether err is a refusal of a message as too large: by
// the stream (max_msg_size) or by the connection (the server's
// max_payload).
func tooLarge(err error) bool {
	var ae *jetstream.APIError
	return errors.Is(err, natsgo.ErrMaxPayload) ||
		(errors.As(err, &ae) && ae.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum)
}

// WriterOption configures a Writer.
type WriterOption func(*Writer)

// WithWriteTimeout sets how long one Append may take (default
// DefaultWriteTimeout).
func WithWriteTimeout(d time.Duration) WriterOption { return func(w *Writer) { w.timeout = d } }

// NewWriter returns a Writer to stream over nc, publishing keyed records
// under subjectPrefix (e.g. "sluice.dead" for a stream holding
// "sluice.dead.>"). It does not contact the server.
func NewWriter(nc *natsgo.Conn, stream, subjectPrefix string, opts ...WriterOption) (*Writer, error) {
	switch {
	case nc == nil:
		return nil, errors.New("nats: writer: no connection")
	case stream == "":
		return nil, errors.New("nats: writer: empty stream name")
	case subjectPrefix == "" || strings.ContainsAny(subjectPrefix, "*> \t\r\n") ||
		strings.HasPrefix(subjectPrefix, ".") || strings.HasSuffix(subjectPrefix, ".") || strings.Contains(subjectPrefix, ".."):
		return nil, fmt.Errorf("nats: writer: %q is not a subject prefix (literal dot-separated tokens, e.g. \"sluice.dead\")", subjectPrefix)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("nats: writer: %w", err)
	}
	w := &Writer{js: js, stream: stream, prefix: subjectPrefix, timeout: DefaultWriteTimeout}
	for _, o := range opts {
		o(w)
	}
	return w, nil
}

// Append publishes recs, in order, and returns nil once the stream
// acknowledged every one. On error some may have been stored: the caller
// retries the whole batch (at-least-once; a dead letter carries an id for
// duplicates).
func (w *Writer) Append(ctx context.Context, recs []event.Record) error {
	if len(recs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	futs := make([]jetstream.PubAckFuture, 0, len(recs))
	var errs []error
	largest, nLarge := 0, 0
	refusedAs := func(err error, r *event.Record) {
		if tooLarge(err) {
			largest = max(largest, recordBytes(r))
			nLarge++
		}
	}
	defer func() {
		if nLarge > 0 {
			w.refused(largest, nLarge)
		}
	}()
	for i := range recs {
		r := &recs[i]
		msg := &natsgo.Msg{Subject: w.subject(r), Data: r.Value, Header: natsHeaders(r.Headers)}
		f, err := w.js.PublishMsgAsync(msg, jetstream.WithExpectStream(w.stream))
		if err != nil {
			refusedAs(err, r)
			errs = append(errs, fmt.Errorf("publish to %s: %w", msg.Subject, err))
			break
		}
		futs = append(futs, f)
	}
	for i, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			refusedAs(err, &recs[i])
			errs = append(errs, fmt.Errorf("publish to %s: %w", f.Msg().Subject, err))
		case <-ctx.Done():
			return fmt.Errorf("nats: write to stream %s: %d of %d records not acknowledged: %w", w.stream, len(recs)-len(futs)+countPending(futs), len(recs), ctx.Err())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("nats: write to stream %s: %w", w.stream, errors.Join(errs...))
	}
	return nil
}

// recordBytes is the bytes of r's key, value and headers.
func recordBytes(r *event.Record) int {
	n := len(r.Key) + len(r.Value)
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

func countPending(futs []jetstream.PubAckFuture) int {
	n := 0
	for _, f := range futs {
		select {
		case <-f.Ok():
		default:
			n++
		}
	}
	return n
}

func (w *Writer) subject(r *event.Record) string {
	if r.Subject != "" {
		return r.Subject
	}
	return w.prefix + "." + subjectToken(string(r.Key))
}

// EnsureStream makes stream name exist with Limits retention over subjects:
// it creates it (file storage) when missing, and otherwise adds the subjects
// it lacks and sets MaxAge and MaxBytes to what is asked where they differ
// (other settings are left alone).
//
// maxAge < 0 keeps messages forever; it must not be 0. maxBytes ≤ 0 means no
// size limit. created reports a new stream; changed lists each reconciled
// setting as "name: old -> new", for the caller to log (SPEC §4). A stream
// created concurrently by another process is reconciled like an existing
// one.
func EnsureStream(ctx context.Context, js jetstream.JetStream, name string, subjects []string,
	maxAge time.Duration, maxBytes int64,
) (created bool, changed []string, err error) {
	if maxAge == 0 {
		return false, nil, fmt.Errorf("nats: ensure stream %q: max age 0 would mean forever to JetStream; use < 0 for forever", name)
	}
	lim := &streamLimits{maxAge: max(maxAge, 0), maxBytes: -1}
	if maxBytes > 0 {
		lim.maxBytes = maxBytes
	}
	_, created, changed, err = ensureStream(ctx, js, name, subjects, jetstream.LimitsPolicy, lim)
	return created, changed, err
}

// streamLimits are the limits ensureStream reconciles; maxAge 0 is forever,
// maxBytes -1 none (JetStream's own encoding).
type streamLimits struct {
	maxAge   time.Duration
	maxBytes int64
}

// ensureStream creates a stream over subjects with the given retention, or
// adds the subjects an existing one lacks (leaving its retention alone); with
// lim it also sets MaxAge and MaxBytes (at creation, and by reconciling).
func ensureStream(ctx context.Context, js jetstream.JetStream, name string, subjects []string,
	retention jetstream.RetentionPolicy, lim *streamLimits,
) (st jetstream.Stream, created bool, changed []string, err error) {
	if name == "" || len(subjects) == 0 {
		return nil, false, nil, errors.New("nats: ensure stream: a name and subjects are required")
	}
	st, err = js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		cfg := jetstream.StreamConfig{
			Name:      name,
			Subjects:  subjects,
			Retention: retention,
			Storage:   jetstream.FileStorage,
			Discard:   jetstream.DiscardOld,
		}
		if lim != nil {
			cfg.MaxAge, cfg.MaxBytes = lim.maxAge, lim.maxBytes
		}
		st, err = js.CreateStream(ctx, cfg)
		if err == nil {
			return st, true, nil, nil
		}
		if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, false, nil, fmt.Errorf("nats: create stream %s: %w", name, err)
		}
		st, err = js.Stream(ctx, name) // created by another process meanwhile
	}
	if err != nil {
		return nil, false, nil, fmt.Errorf("nats: stream %s: %w", name, err)
	}
	cfg := st.CachedInfo().Config
	for _, s := range subjects {
		if !slices.ContainsFunc(cfg.Subjects, func(have string) bool { return subsumes(have, s) }) {
			cfg.Subjects = append(cfg.Subjects, s)
			changed = append(changed, "subjects: +"+s)
		}
	}
	if lim != nil {
		if cfg.MaxAge != lim.maxAge {
			changed = append(changed, fmt.Sprintf("max_age: %s -> %s", fmtAge(cfg.MaxAge), fmtAge(lim.maxAge)))
			cfg.MaxAge = lim.maxAge
		}
		if norm := max(cfg.MaxBytes, -1); norm != lim.maxBytes {
			changed = append(changed, fmt.Sprintf("max_bytes: %s -> %s", fmtBytes(norm), fmtBytes(lim.maxBytes)))
			cfg.MaxBytes = lim.maxBytes
		}
	}
	if len(changed) == 0 {
		return st, false, nil, nil
	}
	if st, err = js.UpdateStream(ctx, cfg); err != nil {
		return nil, false, nil, fmt.Errorf("nats: update stream %s (%s): %w", name, strings.Join(changed, "; "), err)
	}
	return st, false, changed, nil
}

func fmtAge(d time.Duration) string {
	if d <= 0 {
		return "forever"
	}
	return shard.FormatDuration(d)
}

func fmtBytes(n int64) string {
	if n < 0 {
		return "none"
	}
	return shard.Bytes(n).String()
}
