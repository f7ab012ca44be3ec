package retention

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/internal/lograte"
)

// EnvelopeVersion is the version of the dead-letter envelope this package
// writes.
const EnvelopeVersion = 1

// Broker headers of every dead letter (SPEC §4), so that a topic or stream
// can be filtered without decoding the envelope.
const (
	HeaderCondition = "sluice-condition"
	HeaderSource    = "sluice-source"
	HeaderFunction  = "sluice-function"
)

// Envelope is the JSON body of a dead letter (SPEC §4).
type Envelope struct {
	Version        int             `json:"version"`
	ID             string          `json:"id"`
	Source         string          `json:"source"`
	Function       string          `json:"function"`
	Mode           string          `json:"mode"`
	Condition      event.Condition `json:"condition"`
	Attempts       int             `json:"attempts"`
	FirstAttemptAt time.Time       `json:"firstAttemptAt"`
	LastAttemptAt  time.Time       `json:"lastAttemptAt"`
	LastError      event.ErrorInfo `json:"lastError"`
	Record         EnvelopeRecord  `json:"record"`
	Replays        int             `json:"replays"`
}

// EnvelopeRecord is the original record: its coordinates, key, value and
// headers. Key and value are base64 in JSON ([]byte).
type EnvelopeRecord struct {
	Topic     string           `json:"topic,omitempty"`   // Kafka topic or JetStream stream
	Subject   string           `json:"subject,omitempty"` // JetStream only
	Partition int32            `json:"partition"`
	Offset    int64            `json:"offset"` // Kafka offset or JetStream sequence
	Timestamp time.Time        `json:"timestamp"`
	Key       []byte           `json:"key,omitempty"`
	Value     []byte           `json:"value"`
	Headers   []EnvelopeHeader `json:"headers,omitempty"`
	// PayloadOmitted: the envelope with the record's value and headers
	// would not fit its destination, so they were left out (and the key
	// too, if it alone was too large); the coordinates above name the
	// original, which `dlq replay` fetches from the source while the source
	// still retains it, and checks against OriginalSize and Timestamp.
	PayloadOmitted bool `json:"payloadOmitted,omitempty"`
	// OriginalSize is the bytes of the record's key, value and headers
	// (set with PayloadOmitted).
	OriginalSize int `json:"originalSize,omitempty"`
}

// EnvelopeHeader is one header of the original record.
type EnvelopeHeader struct {
	Key   string `json:"key"`
	Value []byte `json:"value"`
}

// NewEnvelope wraps a dead letter. Its ID is derived from the record's
// coordinates and the condition, so the same record dead-lettered twice (a
// redelivery after a crash) carries the same ID and a replay can skip it.
func NewEnvelope(dl event.DeadLetter) Envelope {
	r := dl.Record
	e := Envelope{
		Version: EnvelopeVersion, Source: dl.Source, Function: dl.Function, Mode: dl.Mode,
		Condition: dl.Condition, Attempts: dl.Attempts,
		FirstAttemptAt: dl.FirstAttemptAt.UTC(), LastAttemptAt: dl.LastAttemptAt.UTC(), LastError: dl.LastError,
		Record: EnvelopeRecord{Topic: r.Topic, Subject: r.Subject, Partition: r.Partition, Offset: r.Offset,
			Timestamp: r.Timestamp.UTC(), Key: r.Key, Value: r.Value},
	}
	for _, h := range r.Headers {
		e.Record.Headers = append(e.Record.Headers, EnvelopeHeader{Key: h.Key, Value: h.Value})
	}
	sum := sha256.Sum256([]byte(dl.Source + "\x00" + r.Topic + "\x00" + r.Subject + "\x00" +
		strconv.Itoa(int(r.Partition)) + "\x00" + strconv.FormatInt(r.Offset, 10) + "\x00" + string(dl.Condition)))
	e.ID = hex.EncodeToString(sum[:12])
	return e
}

// DecodeEnvelope reads a dead letter's body, refusing versions it does not
// know.
func DecodeEnvelope(b []byte) (*Envelope, error) {
	var e Envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("retention: not a dead-letter envelope: %w", err)
	}
	if e.Version != EnvelopeVersion {
		return nil, fmt.Errorf("retention: dead-letter envelope version %d is not supported (want %d)", e.Version, EnvelopeVersion)
	}
	if e.ID == "" || e.Source == "" || e.Condition == "" {
		return nil, errors.New("retention: dead-letter envelope without id, source or condition")
	}
	return &e, nil
}

// Limited is an Appender whose destination bounds the size of one record
// (kafka.Writer: the topic's max.message.bytes; nats.Writer: the stream's
// max_msg_size and the server's max_payload). Store leaves the payload out
// of an envelope that would not fit.
type Limited interface {
	// MaxRecordBytes returns the largest record (key, value and headers)
	// the destination accepts.
	MaxRecordBytes(ctx context.Context) (int, error)
}

// recordOverhead is what a destination counts on top of a record's key,
// value and headers (Kafka's batch and record framing, a NATS subject and
// header framing), with a margin.
const recordOverhead = 1024

// Appender writes records durably to a destination (a Kafka topic, a
// JetStream stream): Append returns nil only once every record is
// acknowledged by the broker. consumer/kafka.Writer implements it.
type Appender interface {
	Append(ctx context.Context, recs []event.Record) error
}

// Store writes dead letters to one destination. It implements
// event.DeadLetterer.
type Store struct {
	name    string
	app     Appender
	letters *prometheus.CounterVec
	errs    prometheus.Counter
	log     *lograte.Logger
}

// StoreOption configures a Store.
type StoreOption func(*Store)

// WithLogger logs every stored letter to l at Warn, at most
// lograte.DefaultBurst lines per shard per minute (then a count of those
// left out). The default is slog.Default().
func WithLogger(l *slog.Logger) StoreOption {
	return func(s *Store) { s.log = lograte.New(l, "dead letters", 0, 0) }
}

var _ event.DeadLetterer = (*Store)(nil)

// StoreMetrics are the dead-letter counters shared by every Store of a
// process.
type StoreMetrics struct {
	letters *prometheus.CounterVec
	errs    *prometheus.CounterVec
}

// NewStoreMetrics registers the dead-letter counters with reg (nil: none).
func NewStoreMetrics(reg prometheus.Registerer) (*StoreMetrics, error) {
	m := &StoreMetrics{
		letters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_dead_letters_total",
			Help: "Records and events dead-lettered (durably written), by source and condition.",
		}, []string{"source", "condition"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_dead_letter_errors_total",
			Help: "Failed writes to a dead-letter destination; the shard blocks until a write succeeds.",
		}, []string{"destination"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.letters, m.errs} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// Init creates the sluice_dead_letters_total series of source at zero, one
// per condition, so that an alert on their rate has series before the first
// dead letter.
func (m *StoreMetrics) Init(source string, conds ...event.Condition) {
	for _, c := range conds {
		m.letters.WithLabelValues(source, string(c))
	}
}

// NewStore returns a Store writing to destination name through app.
func NewStore(name string, app Appender, m *StoreMetrics, opts ...StoreOption) *Store {
	s := &Store{name: name, app: app, letters: m.letters, errs: m.errs.WithLabelValues(name)}
	for _, o := range opts {
		o(s)
	}
	if s.log == nil {
		s.log = lograte.New(nil, "dead letters", 0, 0)
	}
	return s
}

// logLetter writes the line of one stored letter.
func (s *Store) logLetter(dl *event.DeadLetter, omitted bool) {
	r := &dl.Record
	shardKey := dl.Source
	if dl.Mode != "async" {
		shardKey += "/" + strconv.Itoa(int(r.Partition))
	}
	at := "offset"
	if r.Subject != "" {
		at = "sequence"
	}
	args := []any{"source", dl.Source, "function", dl.Function, "mode", dl.Mode, "shard", shardKey,
		"topic", r.Topic, "partition", r.Partition, at, r.Offset,
		"condition", string(dl.Condition), "attempts", dl.Attempts,
		"error_kind", string(dl.LastError.Kind), "error", dl.LastError.Message, "destination", s.name}
	if dl.LastError.Status != 0 {
		args = append(args, "status", dl.LastError.Status)
	}
	if omitted {
		args = append(args, "payload_omitted", true, "record_bytes", recordBytes(r))
	}
	s.log.Log(slog.LevelWarn, shardKey, "record dead-lettered", args...)
}

// DeadLetter writes one envelope per letter and returns nil once all are
// acknowledged. An envelope that would not fit the destination (Limited)
// is written without the record's payload (PayloadOmitted), so that a
// letter never blocks its shard for its size. Each stored letter is
// logged (rate-limited per shard, see WithLogger).
func (s *Store) DeadLetter(ctx context.Context, letters []event.DeadLetter) error {
	limit := 0
	if l, ok := s.app.(Limited); ok {
		n, err := l.MaxRecordBytes(ctx)
		if err != nil {
			s.errs.Inc()
			return fmt.Errorf("retention: dead-letter destination %s: learn its record size limit: %w", s.name, err)
		}
		limit = n
	}
	recs := make([]event.Record, len(letters))
	omitted := make([]bool, len(letters))
	for i, dl := range letters {
		rec, om, err := letterOf(dl, limit)
		if err != nil {
			return fmt.Errorf("retention: dead-letter destination %s: %w", s.name, err)
		}
		recs[i], omitted[i] = rec, om
		if om && dl.Keep != nil {
			// The source would delete the record once settled: it keeps
			// a copy first, so that the letter can still be replayed.
			if err := dl.Keep(ctx); err != nil {
				s.errs.Inc()
				return fmt.Errorf("retention: dead-letter destination %s: keep the record whose payload the letter omits: %w", s.name, err)
			}
		}
	}
	if err := s.app.Append(ctx, recs); err != nil {
		s.errs.Inc()
		return fmt.Errorf("retention: write to dead-letter destination %s: %w", s.name, err)
	}
	for i, dl := range letters {
		s.letters.WithLabelValues(dl.Source, string(dl.Condition)).Inc()
		s.logLetter(&dl, omitted[i])
	}
	return nil
}

// letterOf encodes dl as the record of its envelope; with a limit > 0, an
// envelope that would not fit is made again without the payload (omitted).
func letterOf(dl event.DeadLetter, limit int) (rec event.Record, omitted bool, err error) {
	e := NewEnvelope(dl)
	body, err := json.Marshal(e)
	if err != nil {
		return rec, false, fmt.Errorf("encode dead letter: %w", err)
	}
	headers := []event.Header{
		{Key: HeaderCondition, Value: []byte(dl.Condition)},
		{Key: HeaderSource, Value: []byte(dl.Source)},
		{Key: HeaderFunction, Value: []byte(dl.Function)},
	}
	frame := len(e.ID) + recordOverhead
	for _, h := range headers {
		frame += len(h.Key) + len(h.Value)
	}
	if limit > 0 && frame+len(body) > limit {
		omitted = true
		e.Record.OriginalSize = recordBytes(&dl.Record)
		e.Record.Value, e.Record.Headers = nil, nil
		e.Record.PayloadOmitted = true
		// The key stays (a replay from a JetStream stream source takes it
		// from the letter: it is the subject's key token), unless it is
		// what does not fit.
		if body, err = json.Marshal(e); err != nil {
			return rec, false, fmt.Errorf("encode dead letter: %w", err)
		}
		if frame+len(body) > limit && e.Record.Key != nil {
			e.Record.Key = nil
			if body, err = json.Marshal(e); err != nil {
				return rec, false, fmt.Errorf("encode dead letter: %w", err)
			}
		}
		if frame+len(body) > limit {
			return rec, false, fmt.Errorf("a dead letter of %d bytes without its payload is over the destination's limit of %d bytes", frame+len(body), limit)
		}
	}
	return event.Record{Key: []byte(e.ID), Value: body, Headers: headers}, omitted, nil
}

// recordBytes is the bytes of r's key, value and headers.
func recordBytes(r *event.Record) int {
	n := len(r.Key) + len(r.Value)
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}
