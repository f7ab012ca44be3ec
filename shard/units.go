package shard

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Bytes is a size in bytes, as the operator writes it in the config:
// a plain integer ("1048576") or an integer followed by a unit, decimal
// (B, KB, MB, GB, TB: powers of 1000) or binary (KiB, MiB, GiB, TiB: powers
// of 1024). Units are case-insensitive and may follow a space: "6MiB",
// "512 KB". Fractions ("1.5GiB") are not accepted: a size is exact.
type Bytes int64

// The binary and decimal units of Bytes.
const (
	KiB Bytes = 1 << 10
	MiB Bytes = 1 << 20
	GiB Bytes = 1 << 30
	TiB Bytes = 1 << 40
	KB  Bytes = 1000
	MB  Bytes = 1000 * KB
	GB  Bytes = 1000 * MB
	TB  Bytes = 1000 * GB
)

type byteUnit struct {
	name string
	size Bytes
}

// The units, largest first.
var (
	decimalUnits = []byteUnit{{"TB", TB}, {"GB", GB}, {"MB", MB}, {"KB", KB}}
	binaryUnits  = []byteUnit{{"TiB", TiB}, {"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB}}
	byteUnits    = append(append([]byteUnit{{"B", 1}}, decimalUnits...), binaryUnits...)
)

const bytesSyntax = "an integer with an optional unit: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"

// ParseBytes parses a size such as "6MiB", "1GiB", "512KB" or "1048576".
// A negative plain integer parses, so that a caller's range check can report
// it; a negative number with a unit does not.
//
// Its error describes the value only (`"6 MiBs" is not a size (...)`): the
// caller prefixes the configuration key.
func ParseBytes(s string) (Bytes, error) {
	t := strings.TrimSpace(s)
	if n, err := strconv.ParseInt(t, 10, 64); err == nil {
		return Bytes(n), nil
	}
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	unit := strings.TrimSpace(t[i:])
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if i == 0 || err != nil {
		return 0, fmt.Errorf("%q is not a size (%s)", s, bytesSyntax)
	}
	for _, u := range byteUnits {
		if strings.EqualFold(unit, u.name) {
			if n > math.MaxInt64/int64(u.size) {
				return 0, fmt.Errorf("%q is too large a size", s)
			}
			return Bytes(n) * u.size, nil
		}
	}
	return 0, fmt.Errorf("%q is not a size (%s)", s, bytesSyntax)
}

// String formats b in the unit that writes it with the fewest digits,
// decimal on a tie: 6291456 is "6MiB", 2000000000000 is "2TB", 512000 is
// "512KB", 1023 is "1023B".
func (b Bytes) String() string {
	n, name := int64(b), "B"
	for _, family := range [][]byteUnit{decimalUnits, binaryUnits} {
		for _, u := range family {
			if b%u.size == 0 {
				if m := int64(b / u.size); len(strconv.FormatInt(m, 10)) < len(strconv.FormatInt(n, 10)) {
					n, name = m, u.name
				}
				break // the largest exact unit of this family
			}
		}
	}
	return strconv.FormatInt(n, 10) + name
}

// MarshalText formats b as String does.
func (b Bytes) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// UnmarshalText parses a size as ParseBytes does.
func (b *Bytes) UnmarshalText(text []byte) error {
	v, err := ParseBytes(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// Age is a time limit in which -1 (Infinite) means "no limit", as Lambda's
// MaximumRecordAgeInSeconds does. It parses from "-1" or a Go duration
// ("90s", "1h30m"); a bare integer other than -1 and 0 is refused, because
// "3600" could mean seconds or nanoseconds.
type Age time.Duration

// Infinite is the Age that never runs out.
const Infinite Age = -1

const ageSyntax = `-1 for no limit, or Go syntax, e.g. "90s", "1h30m"`

// ParseAge parses "-1" (Infinite) or a Go duration. Like ParseBytes, its
// error describes the value only.
func ParseAge(s string) (Age, error) {
	t := strings.TrimSpace(s)
	switch t {
	case "-1":
		return Infinite, nil
	case "0":
		return 0, nil
	}
	d, err := time.ParseDuration(t)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (%s)", s, ageSyntax)
	}
	if d < 0 {
		return 0, fmt.Errorf("%q is negative (use -1 for no limit)", s)
	}
	return Age(d), nil
}

// IsInfinite reports whether a is Infinite (any negative Age counts).
func (a Age) IsInfinite() bool { return a < 0 }

// Duration returns a as a time.Duration; check IsInfinite first.
func (a Age) Duration() time.Duration { return time.Duration(a) }

// String formats a as "-1" or a short duration ("168h", "1h30m", "90s").
func (a Age) String() string {
	if a.IsInfinite() {
		return "-1"
	}
	return FormatDuration(time.Duration(a))
}

// MarshalText formats a as String does.
func (a Age) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// UnmarshalText parses an Age as ParseAge does.
func (a *Age) UnmarshalText(text []byte) error {
	v, err := ParseAge(string(text))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// FormatDuration is time.Duration.String without the zero tails that make
// messages hard to read: "168h" rather than "168h0m0s", "5m" rather than
// "5m0s". It still parses with time.ParseDuration.
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
