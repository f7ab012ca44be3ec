package config

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/sluicehq/sluice/cluster"
	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/retention"
	"github.com/sluicehq/sluice/telemetry"
)

// ErrInvalid is matched (errors.Is) by every error Load and Validate return:
// the configuration is wrong, as opposed to a failure to run it. The sluice
// command exits with status 2 for it.
var ErrInvalid = errors.New("invalid configuration")

// Error is what Load and Validate return: every problem found, so that an
// operator can fix them all in one go. Each problem names its key
// (`sources.orders.max_record_age: 30s is out of range (-1 or 60s..168h)`);
// they are sorted by message, hence by key.
//
// errors.Is(err, ErrInvalid) holds for an *Error, and each problem also
// matches the sentinel of the package that found it (consumer.ErrInvalid,
// dispatch.ErrInvalid, retention.ErrInvalid, telemetry.ErrInvalid,
// cluster.ErrInvalid or ErrInvalid).
type Error struct {
	Problems []error
}

// Error lists the problems, one per line, without the "invalid
// configuration: " prefix each of them carries.
func (e *Error) Error() string {
	return strings.Join(e.Messages(), "\n")
}

// Messages returns the problems' messages, one per problem, without the
// "invalid configuration: " prefix each of them carries.
func (e *Error) Messages() []string {
	out := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		out[i] = message(p)
	}
	return out
}

// Unwrap lets errors.Is and errors.As see ErrInvalid and every problem.
func (e *Error) Unwrap() []error { return append([]error{ErrInvalid}, e.Problems...) }

// sentinels are the configuration sentinels whose text prefixes problems.
var sentinels = []error{ErrInvalid, consumer.ErrInvalid, dispatch.ErrInvalid, retention.ErrInvalid, telemetry.ErrInvalid, cluster.ErrInvalid}

func message(err error) string {
	s := err.Error()
	for _, sentinel := range sentinels {
		if errors.Is(err, sentinel) {
			return strings.TrimPrefix(s, sentinel.Error()+": ")
		}
	}
	return s
}

// joinType is the type of errors.Join's errors: those are flattened, while
// an error wrapping two (fmt.Errorf("%w: %w")) is one problem.
var joinType = reflect.TypeOf(errors.Join(errors.New("")))

// newError flattens joined errors, drops nils and repeats, sorts by message,
// and returns nil when nothing is left.
func newError(errs ...error) error {
	var flat []error
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		var e *Error
		if errors.As(err, &e) {
			flat = append(flat, e.Problems...)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok && reflect.TypeOf(err) == joinType {
			for _, inner := range j.Unwrap() {
				walk(inner)
			}
			return
		}
		flat = append(flat, err)
	}
	for _, err := range errs {
		walk(err)
	}
	if len(flat) == 0 {
		return nil
	}
	slices.SortStableFunc(flat, func(a, b error) int { return strings.Compare(message(a), message(b)) })
	flat = slices.CompactFunc(flat, func(a, b error) bool { return message(a) == message(b) })
	return &Error{Problems: flat}
}

// problem returns a problem of this package: key and what is wrong with it.
func problem(key, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, key, fmt.Sprintf(format, args...))
}
