package config_test

import (
	"testing"
	"time"

	"github.com/sluicehq/sluice/shard"
)

// The sizes and ages operators write; the types live in shard so that every
// package can use them.

func TestParseBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want shard.Bytes
		str  string
		err  string
	}{
		{in: "6MiB", want: 6 << 20, str: "6MiB"},
		{in: "1GiB", want: 1 << 30, str: "1GiB"},
		{in: "512KB", want: 512000, str: "512KB"},
		{in: "512 kb", want: 512000, str: "512KB"},
		{in: "1048576", want: 1 << 20, str: "1MiB"},
		{in: "1023", want: 1023, str: "1023B"},
		{in: "10B", want: 10, str: "10B"},
		{in: "2TB", want: 2e12, str: "2TB"},
		{in: "-1", want: -1, str: "-1B"},
		{in: "1.5GiB", err: `"1.5GiB" is not a size (an integer with an optional unit: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)`},
		{in: "6 MiBs", err: `"6 MiBs" is not a size (an integer with an optional unit: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)`},
		{in: "MiB", err: `"MiB" is not a size (an integer with an optional unit: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)`},
		{in: "99999999TiB", err: `"99999999TiB" is too large a size`},
	} {
		got, err := shard.ParseBytes(tc.in)
		switch {
		case tc.err != "":
			if err == nil || err.Error() != tc.err {
				t.Errorf("ParseBytes(%q) error = %v, want %s", tc.in, err, tc.err)
			}
		case err != nil || got != tc.want || got.String() != tc.str:
			t.Errorf("ParseBytes(%q) = %d (%s), %v; want %d (%s)", tc.in, got, got, err, tc.want, tc.str)
		}
	}
}

func TestParseAge(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want shard.Age
		str  string
		err  string
	}{
		{in: "-1", want: shard.Infinite, str: "-1"},
		{in: "0", want: 0, str: "0s"},
		{in: "168h", want: shard.Age(168 * time.Hour), str: "168h"},
		{in: "1h30m", want: shard.Age(90 * time.Minute), str: "1h30m"},
		{in: "90s", want: shard.Age(90 * time.Second), str: "1m30s"},
		{in: "3600", err: `"3600" is not a duration (-1 for no limit, or Go syntax, e.g. "90s", "1h30m")`},
		{in: "-5s", err: `"-5s" is negative (use -1 for no limit)`},
	} {
		got, err := shard.ParseAge(tc.in)
		switch {
		case tc.err != "":
			if err == nil || err.Error() != tc.err {
				t.Errorf("ParseAge(%q) error = %v, want %s", tc.in, err, tc.err)
			}
		case err != nil || got != tc.want || got.String() != tc.str:
			t.Errorf("ParseAge(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 500 * time.Millisecond: "500ms", time.Minute: "1m", 6 * time.Hour: "6h",
		90 * time.Minute: "1h30m", time.Hour + 30*time.Second: "1h0m30s",
	} {
		if got := shard.FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
