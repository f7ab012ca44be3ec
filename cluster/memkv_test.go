package cluster

import (
	"context"
	"strings"
	"sync"

	"github.com/sluicehq/sluice/consumer"
)

// memKV is an in-memory consumer.KV with the engine's semantics
// (revisions, compare-and-swap), for unit tests; down makes every call
// fail as an unreachable engine would.
type memKV struct {
	mu     sync.Mutex
	rev    uint64
	vals   map[string][]byte
	revs   map[string]uint64
	down   bool
	watch  map[string][]func([]byte, uint64)
	writes int
}

func newMemKV() *memKV {
	return &memKV{vals: map[string][]byte{}, revs: map[string]uint64{}, watch: map[string][]func([]byte, uint64){}}
}

var errDown = context.DeadlineExceeded

func (k *memKV) setDown(d bool) { k.mu.Lock(); k.down = d; k.mu.Unlock() }

func (k *memKV) Get(_ context.Context, key string) ([]byte, uint64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.down {
		return nil, 0, errDown
	}
	v, ok := k.vals[key]
	if !ok {
		return nil, 0, consumer.ErrKVNotFound
	}
	return v, k.revs[key], nil
}

func (k *memKV) put(key string, v []byte) uint64 {
	k.rev++
	k.writes++
	k.vals[key], k.revs[key] = v, k.rev
	for _, fn := range k.watch[key] {
		go fn(v, k.rev)
	}
	return k.rev
}

func (k *memKV) Create(_ context.Context, key string, v []byte) (uint64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.down {
		return 0, errDown
	}
	if _, ok := k.vals[key]; ok {
		return 0, consumer.ErrKVConflict
	}
	return k.put(key, v), nil
}

func (k *memKV) Update(_ context.Context, key string, v []byte, rev uint64) (uint64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.down {
		return 0, errDown
	}
	if cur, ok := k.revs[key]; !ok || cur != rev {
		return 0, consumer.ErrKVConflict
	}
	return k.put(key, v), nil
}

func (k *memKV) Delete(_ context.Context, key string, rev uint64) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.down {
		return errDown
	}
	if cur, ok := k.revs[key]; !ok || cur != rev {
		return consumer.ErrKVConflict
	}
	delete(k.vals, key)
	delete(k.revs, key)
	return nil
}

func (k *memKV) Keys(_ context.Context, prefix string) ([]string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.down {
		return nil, errDown
	}
	var out []string
	for key := range k.vals {
		if strings.HasPrefix(key, prefix+".") {
			out = append(out, key)
		}
	}
	return out, nil
}

func (k *memKV) Watch(_ context.Context, key string, fn func([]byte, uint64)) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.watch[key] = append(k.watch[key], fn)
	return nil
}
