package retention

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sluicehq/sluice/event"
)

// HeaderResolved marks a resolution record: a small record appended to a
// dead-letter destination once a replay delivered the letter whose id it
// names. Readers of the destination that are not sluice can tell the two
// kinds of record apart by this header alone.
const HeaderResolved = "sluice-resolved"

// Reader reads every record of a dead-letter destination, oldest first per
// key, from the first record kept to the last one present when Scan began;
// it returns when it reached that end, when fn returns an error (which it
// returns), or when ctx ends. consumer/kafka.Reader and consumer/nats.Reader
// implement it.
type Reader interface {
	Scan(ctx context.Context, fn func(event.Record) error) error
}

// Letter is one dead letter as the destination holds it now: the latest of
// its envelopes (a failed replay appends the envelope again with replays+1)
// and whether a replay resolved it.
type Letter struct {
	Destination string
	Envelope    *Envelope
	// DeadLetteredAt is when its first envelope was written (the broker's
	// timestamp); --since and --until select on it.
	DeadLetteredAt time.Time
	// Resolved is set once a replay delivered it; ResolvedAt is when.
	Resolved   bool
	ResolvedAt time.Time
}

// Index is the state of one destination: every letter in the order it was
// first written.
type Index struct {
	Destination string
	Letters     []*Letter
	// Malformed counts the records that are neither an envelope nor a
	// resolution (written by someone else, or by a newer sluice); they are
	// left alone.
	Malformed int
}

// resolution is the body of a resolution record.
type resolution struct {
	Version  int       `json:"version"`
	Resolved string    `json:"resolved"`
	At       time.Time `json:"at"`
	To       string    `json:"to"` // function or source
}

// Load reads destination dest through r and folds its records into the state
// of each letter: for an id, the newest envelope wins, and a resolution
// covers the failures before it: a letter written again after it was
// resolved stays resolved when it is a late copy of an earlier write (a
// duplicate of a retried Append: its last attempt is older than the
// resolution), and is pending again when it is a new failure of the same
// record (its last attempt is newer: the source read it again after an
// offset reset, or a crash re-dead-lettered it after the replay), since no
// replay would ever deliver it otherwise.
//
// Records of one id are in write order because they share a key: Kafka
// writes them to one partition, JetStream to one subject of one stream.
func Load(ctx context.Context, dest string, r Reader) (*Index, error) {
	idx := &Index{Destination: dest}
	byID := map[string]*Letter{}
	err := r.Scan(ctx, func(rec event.Record) error {
		if id := headerValue(rec.Headers, HeaderResolved); id != "" {
			var res resolution
			at := rec.Timestamp
			if json.Unmarshal(rec.Value, &res) == nil && !res.At.IsZero() {
				at = res.At
			}
			l := byID[id]
			if l == nil {
				// Resolution of a letter whose envelope expired first
				// (retention removes the oldest records first): keep it,
				// so a late duplicate of the envelope stays resolved.
				l = &Letter{Destination: dest}
				byID[id] = l
			}
			if !l.Resolved {
				l.Resolved, l.ResolvedAt = true, at
			}
			return nil
		}
		e, err := DecodeEnvelope(rec.Value)
		if err != nil {
			idx.Malformed++
			return nil //nolint:nilerr // a foreign record is counted and skipped, not a reason to stop reading
		}
		l := byID[e.ID]
		if l == nil {
			l = &Letter{Destination: dest}
			byID[e.ID] = l
		}
		if l.Envelope == nil {
			l.DeadLetteredAt = rec.Timestamp
			idx.Letters = append(idx.Letters, l)
		}
		l.Envelope = e
		if l.Resolved && e.LastAttemptAt.After(l.ResolvedAt) {
			l.Resolved, l.ResolvedAt = false, time.Time{}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("retention: read dead-letter destination %s: %w", dest, err)
	}
	return idx, nil
}

// Find returns the letter with id, or nil.
func (idx *Index) Find(id string) *Letter {
	for _, l := range idx.Letters {
		if l.Envelope.ID == id {
			return l
		}
	}
	return nil
}

// Filter selects dead letters; a zero field selects everything.
type Filter struct {
	Source    string
	Function  string
	Condition event.Condition
	// Since and Until bound DeadLetteredAt: Since ≤ t < Until.
	Since, Until time.Time
}

// Match reports whether l passes every set field of f.
func (f Filter) Match(l *Letter) bool {
	e := l.Envelope
	switch {
	case f.Source != "" && e.Source != f.Source,
		f.Function != "" && e.Function != f.Function,
		f.Condition != "" && e.Condition != f.Condition,
		!f.Since.IsZero() && l.DeadLetteredAt.Before(f.Since),
		!f.Until.IsZero() && !l.DeadLetteredAt.Before(f.Until):
		return false
	}
	return true
}

// Select returns the letters of idx that match f, split into those still
// to replay and those a replay already resolved, each in write order.
func (idx *Index) Select(f Filter) (pending, resolved []*Letter) {
	for _, l := range idx.Letters {
		if !f.Match(l) {
			continue
		}
		if l.Resolved {
			resolved = append(resolved, l)
		} else {
			pending = append(pending, l)
		}
	}
	return pending, resolved
}

// Conditions are the dead-letter conditions, for flag checks and help.
var Conditions = []event.Condition{
	event.RetryAttemptsExhausted, event.RecordAgeExceeded, event.EventAgeExceeded,
	event.PermanentError, event.RecordTooLarge, event.InvalidRecord, event.RetryTooLarge,
}

// IsCondition reports whether c is one of Conditions.
func IsCondition(c event.Condition) bool { return slices.Contains(Conditions, c) }

// letterRecord is the record that stores envelope e: its id as the key (so
// every record of a letter lands in one partition or subject) and the SPEC §4
// broker headers.
func letterRecord(e *Envelope) (event.Record, error) {
	body, err := json.Marshal(e)
	if err != nil {
		return event.Record{}, fmt.Errorf("retention: encode dead letter: %w", err)
	}
	return event.Record{
		Key:   []byte(e.ID),
		Value: body,
		Headers: []event.Header{
			{Key: HeaderCondition, Value: []byte(e.Condition)},
			{Key: HeaderSource, Value: []byte(e.Source)},
			{Key: HeaderFunction, Value: []byte(e.Function)},
		},
	}, nil
}

// resolutionRecord is the record that marks e resolved by a replay to to.
func resolutionRecord(e *Envelope, to string, at time.Time) event.Record {
	body, _ := json.Marshal(resolution{Version: EnvelopeVersion, Resolved: e.ID, At: at.UTC(), To: to}) // plain strings and a time: cannot fail
	return event.Record{
		Key:   []byte(e.ID),
		Value: body,
		Headers: []event.Header{
			{Key: HeaderResolved, Value: []byte(e.ID)},
			{Key: HeaderCondition, Value: []byte(e.Condition)},
			{Key: HeaderSource, Value: []byte(e.Source)},
			{Key: HeaderFunction, Value: []byte(e.Function)},
		},
	}
}

func headerValue(hs []event.Header, key string) string {
	for _, h := range hs {
		// Case-insensitive: a broker's client may canonicalize header names.
		if strings.EqualFold(h.Key, key) {
			return string(h.Value)
		}
	}
	return ""
}
