package nats

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// partitioning maps a stream-mode source's subject onto partition subjects.
// Publishers publish to the source's subject, whose one "*" token is the
// record key ("clicks.*" → "clicks.user42"); the stream's subject transform
// stores each message under the same subject with the partition inserted
// before the key ("clicks.3.user42"), the partition being a hash of the key
// that the server computes ({{partition(N,1)}}). One consumer per partition
// filters on "clicks.<p>.*".
type partitioning struct {
	subject    string   // as published, e.g. "clicks.*" or "app.*.click"
	tokens     []string // subject's tokens
	key        int      // index of the "*" token in tokens
	partitions int
}

func newPartitioning(subject string, partitions int) (partitioning, error) {
	if partitions < 1 {
		return partitioning{}, fmt.Errorf("partitions must be at least 1, got %d", partitions)
	}
	tokens := strings.Split(subject, ".")
	key := -1
	for i, t := range tokens {
		switch {
		case t == "":
			return partitioning{}, fmt.Errorf("subject %q has an empty token", subject)
		case t == ">":
			return partitioning{}, fmt.Errorf("subject %q: stream mode needs exactly one \"*\" token (the key) and no \">\"", subject)
		case t == "*" && key >= 0:
			return partitioning{}, fmt.Errorf("subject %q: stream mode needs exactly one \"*\" token (the key)", subject)
		case t == "*":
			key = i
		case strings.ContainsAny(t, "*> \t\r\n"):
			return partitioning{}, fmt.Errorf("subject %q has an invalid token %q", subject, t)
		}
	}
	if key < 0 {
		return partitioning{}, fmt.Errorf("subject %q: stream mode needs exactly one \"*\" token (the key)", subject)
	}
	return partitioning{subject: subject, tokens: tokens, key: key, partitions: partitions}, nil
}

// with returns the subject's tokens with the key token replaced by repl.
func (pt partitioning) with(repl ...string) string {
	out := make([]string, 0, len(pt.tokens)+len(repl))
	out = append(out, pt.tokens[:pt.key]...)
	out = append(out, repl...)
	out = append(out, pt.tokens[pt.key+1:]...)
	return strings.Join(out, ".")
}

// destination is the stream's subject transform destination, e.g.
// "clicks.{{partition(8,1)}}.{{wildcard(1)}}" (nats-server 2.10+ syntax; 1
// names the subject's first, and only, wildcard).
func (pt partitioning) destination() string {
	return pt.with("{{partition("+strconv.Itoa(pt.partitions)+",1)}}", "{{wildcard(1)}}")
}

// filter is partition p's consumer filter, e.g. "clicks.3.*".
func (pt partitioning) filter(p int) string { return pt.with(strconv.Itoa(p), "*") }

// errNotPartitioned: a stored subject without a partition token where the
// transform puts one (published to the stream under another subject).
var errNotPartitioned = errors.New("subject has no partition token")

// parse splits a stored subject ("clicks.3.user42") into its partition, its
// key token and the subject it was published to ("clicks.user42").
func (pt partitioning) parse(stored string) (p int32, key, published string, err error) {
	tokens := strings.Split(stored, ".")
	if len(tokens) != len(pt.tokens)+1 {
		return 0, "", "", errNotPartitioned
	}
	n, err := strconv.ParseInt(tokens[pt.key], 10, 32)
	if err != nil || n < 0 {
		return 0, "", "", errNotPartitioned
	}
	key = tokens[pt.key+1]
	published = strings.Join(append(tokens[:pt.key:pt.key], tokens[pt.key+1:]...), ".")
	return int32(n), key, published, nil
}

// nameToken makes s usable in a consumer, stream or KV bucket name: letters,
// digits, "-" and "_" are kept, anything else becomes "_".
func nameToken(s string) string {
	if s == "" {
		return "_"
	}
	b := []byte(s)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			b[i] = '_'
		}
	}
	return string(b)
}

// subjectToken makes s usable as one subject token: dots, wildcards and
// white space become "_"; an empty s is "_".
func subjectToken(s string) string {
	if s == "" {
		return "_"
	}
	if !strings.ContainsAny(s, ".*> \t\r\n") {
		return s
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '.', '*', '>', ' ', '\t', '\r', '\n':
			return '_'
		}
		return r
	}, s)
}
