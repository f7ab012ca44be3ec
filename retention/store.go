package retention

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/event"
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
func NewStore(name string, app Appender, m *StoreMetrics) *Store {
	return &Store{name: name, app: app, letters: m.letters, errs: m.errs.WithLabelValues(name)}
}

// DeadLetter writes one envelope per letter and returns nil once all are
// acknowledged.
func (s *Store) DeadLetter(ctx context.Context, letters []event.DeadLetter) error {
	recs := make([]event.Record, len(letters))
	for i, dl := range letters {
		e := NewEnvelope(dl)
		body, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("retention: encode dead letter: %w", err)
		}
		recs[i] = event.Record{
			Key:   []byte(e.ID),
			Value: body,
			Headers: []event.Header{
				{Key: HeaderCondition, Value: []byte(dl.Condition)},
				{Key: HeaderSource, Value: []byte(dl.Source)},
				{Key: HeaderFunction, Value: []byte(dl.Function)},
			},
		}
	}
	if err := s.app.Append(ctx, recs); err != nil {
		s.errs.Inc()
		return fmt.Errorf("retention: write to dead-letter destination %s: %w", s.name, err)
	}
	for _, dl := range letters {
		s.letters.WithLabelValues(dl.Source, string(dl.Condition)).Inc()
	}
	return nil
}
