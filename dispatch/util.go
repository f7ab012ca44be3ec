package dispatch

import (
	"maps"
	"slices"
)

// sortedKeys returns m's keys in order, so that validation reports the same
// first error every time.
func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
