package cluster

import (
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
)

// A limit's entry in the engine: the capacity the last writer saw and the
// claim of every member. One entry per limit: "p" (the unreserved pool),
// "f.<function>" (a reservation), "s.<scope>" (the rule of one scope).
type entry struct {
	Capacity int               `json:"capacity"`
	Members  map[string]*claim `json:"members"`
}

// claim is one member's share of a limit, and its demand (slots held plus
// invocations waiting) when it wrote it. Seq grows with every write of the
// member, so that the others can tell a renewed claim from a stale one.
type claim struct {
	Share  int    `json:"share"`
	Demand int    `json:"demand"`
	Seq    uint64 `json:"seq"`
}

func decodeEntry(b []byte) entry {
	var e entry
	if len(b) > 0 {
		_ = json.Unmarshal(b, &e) // an unreadable entry counts as empty: its writers rewrite it
	}
	if e.Members == nil {
		e.Members = map[string]*claim{}
	}
	return e
}

// Kinds of limits, the first letter of their key.
const (
	kindPool     = "p"
	kindFunction = "f"
	kindScope    = "s"
)

// limitKey is the engine key of a limit of kind over name (a function or a
// scope; "" for the pool). Names are base64url-encoded: scopes may hold any
// byte, keys may not.
func limitKey(kind, name string) string {
	if kind == kindPool {
		return kindPool
	}
	return kind + "." + base64.RawURLEncoding.EncodeToString([]byte(name))
}

// parseKey is the inverse of limitKey.
func parseKey(key string) (kind, name string) {
	kind, enc, _ := strings.Cut(key, ".")
	b, _ := base64.RawURLEncoding.DecodeString(enc)
	return kind, string(b)
}

// label names a limit in the status: "pool", "function:F", "scope:S".
func label(kind, name string) string {
	switch kind {
	case kindFunction:
		return "function:" + name
	case kindScope:
		return "scope:" + name
	}
	return "pool"
}

// fair splits capacity over demands max-min fairly (water-filling): every
// member gets its demand if the capacity allows, else the members with the
// largest demands get equal parts. What is left over after every demand is
// met goes in equal parts to the members with a demand, as headroom, so
// that their next invocations are admitted locally. Ties and remainders go
// by member id, so that every member computes the same split from the same
// view.
func fair(capacity int, demand map[string]int) map[string]int {
	out := make(map[string]int, len(demand))
	ids := make([]string, 0, len(demand))
	for id, d := range demand {
		if d > 0 {
			ids = append(ids, id)
		}
		out[id] = 0
	}
	if capacity <= 0 || len(ids) == 0 {
		return out
	}
	slices.SortFunc(ids, func(a, b string) int {
		if demand[a] != demand[b] {
			return demand[a] - demand[b]
		}
		return strings.Compare(a, b)
	})
	left := capacity
	for i, id := range ids {
		n := len(ids) - i
		even := left / n
		if demand[id] <= even {
			out[id] = demand[id]
			left -= demand[id]
			continue
		}
		// Everyone from here on wants more than an even part: split what
		// is left evenly, the remainder to the first by id.
		rest := slices.Clone(ids[i:])
		slices.Sort(rest)
		for j, rid := range rest {
			out[rid] = left / n
			if j < left%n {
				out[rid]++
			}
		}
		return out
	}
	// Every demand is met: share the rest as headroom.
	if left > 0 {
		sorted := slices.Clone(ids)
		slices.Sort(sorted)
		n := len(sorted)
		for j, id := range sorted {
			out[id] += left / n
			if j < left%n {
				out[id]++
			}
		}
	}
	return out
}
