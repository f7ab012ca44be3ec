package dispatch

import (
	"maps"
	"slices"
	"strings"
	"time"
)

// sortedKeys returns m's keys in order, so that validation reports the same
// first error every time.
func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// formatDuration prints d without zero units ("15m", not "15m0s"), as the
// operator would write it.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
