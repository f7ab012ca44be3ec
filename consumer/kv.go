package consumer

import (
	"context"
	"errors"
	"time"
)

// The key-value seam: a broker whose engine offers a key-value store with
// compare-and-swap (JetStream KV) implements KVOpener, and the cluster
// engine (package cluster) keeps the shared rule book and the capacity
// shares of several sluice processes in it. cmd/sluice asks the broker
// named by cluster.broker for it; the cluster package never sees a broker
// client.

// KVOpener is a Broker that can open a key-value bucket.
type KVOpener interface {
	// OpenKV opens bucket, creating it with opts when it is missing.
	OpenKV(ctx context.Context, bucket string, opts KVOptions) (KV, error)
}

// KVOptions shape a bucket made by OpenKV.
type KVOptions struct {
	// History is how many values of a key are kept (1 when 0).
	History int
	// TTL removes a key that has not been written for that long; 0 keeps
	// keys forever.
	TTL time.Duration
	// Description says what the bucket holds, in the broker's own views.
	Description string
}

// KV is one bucket. Every method is bounded by its ctx; revisions grow
// with every write of the bucket.
type KV interface {
	// Get returns the value of key and its revision, or ErrKVNotFound.
	Get(ctx context.Context, key string) (value []byte, rev uint64, err error)
	// Create writes key only when it has no value; ErrKVConflict otherwise.
	Create(ctx context.Context, key string, value []byte) (rev uint64, err error)
	// Update writes key only when its revision is still rev; ErrKVConflict
	// otherwise.
	Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error)
	// Delete removes key only when its revision is still rev; ErrKVConflict
	// otherwise.
	Delete(ctx context.Context, key string, rev uint64) error
	// Keys lists the keys under prefix (a dotted prefix such as "m").
	Keys(ctx context.Context, prefix string) ([]string, error)
	// Watch calls fn with every new value of key (nil when deleted) until
	// ctx ends, beginning with the current one. fn runs on one goroutine.
	Watch(ctx context.Context, key string, fn func(value []byte, rev uint64)) error
}

// Errors of a KV.
var (
	ErrKVNotFound = errors.New("key not found")
	ErrKVConflict = errors.New("key changed meanwhile (compare-and-swap refused)")
)
