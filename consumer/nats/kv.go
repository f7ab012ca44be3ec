package nats

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/consumer"
)

var _ consumer.KVOpener = (*Broker)(nil)

// OpenKV opens (creating or updating) the JetStream KV bucket of that name
// over the broker's connection: the engine of the cluster mode (package
// cluster), with compare-and-swap by revision, watchers and a bucket TTL.
func (b *Broker) OpenKV(ctx context.Context, bucket string, opts consumer.KVOptions) (consumer.KV, error) {
	js, err := jetstream.New(b.nc)
	if err != nil {
		return nil, err
	}
	history := uint8(1)
	if opts.History > 1 {
		history = uint8(min(opts.History, 64))
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: bucket, Description: opts.Description, History: history, TTL: opts.TTL, Storage: jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("nats: key-value bucket %s: %w", bucket, err)
	}
	return natsKV{kv: kv}, nil
}

// natsKV is a consumer.KV over a JetStream KV bucket.
type natsKV struct{ kv jetstream.KeyValue }

func kvErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return fmt.Errorf("%w: %w", consumer.ErrKVNotFound, err)
	case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyExists):
		return fmt.Errorf("%w: %w", consumer.ErrKVConflict, err)
	}
	return err
}

func (k natsKV) Get(ctx context.Context, key string) ([]byte, uint64, error) {
	e, err := k.kv.Get(ctx, key)
	if err != nil {
		return nil, 0, kvErr(err)
	}
	return e.Value(), e.Revision(), nil
}

func (k natsKV) Create(ctx context.Context, key string, value []byte) (uint64, error) {
	rev, err := k.kv.Create(ctx, key, value)
	return rev, kvErr(err)
}

func (k natsKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	rev, err := k.kv.Update(ctx, key, value, rev)
	return rev, kvErr(err)
}

func (k natsKV) Delete(ctx context.Context, key string, rev uint64) error {
	return kvErr(k.kv.Delete(ctx, key, jetstream.LastRevision(rev)))
}

func (k natsKV) Keys(ctx context.Context, prefix string) ([]string, error) {
	l, err := k.kv.ListKeysFiltered(ctx, strings.TrimSuffix(prefix, ".")+".>")
	if err != nil {
		return nil, kvErr(err)
	}
	var out []string
	for key := range l.Keys() {
		out = append(out, key)
	}
	return out, nil
}

func (k natsKV) Watch(ctx context.Context, key string, fn func([]byte, uint64)) error {
	w, err := k.kv.Watch(ctx, key)
	if err != nil {
		return kvErr(err)
	}
	go func() {
		defer func() { _ = w.Stop() }()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					continue // the end of the initial values
				}
				if e.Operation() != jetstream.KeyValuePut {
					fn(nil, e.Revision())
					continue
				}
				fn(e.Value(), e.Revision())
			}
		}
	}()
	return nil
}
