package kafka

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"
)

// recordPool is the stream Source's kgo.PoolRecords: franz-go decodes each
// fetched batch into a slice of kgo.Record taken from it, and the slice
// comes back once every record of the batch was recycled. The poll loop
// copies what a shard needs into event.Record (keys and values stay in
// franz-go's decoded buffers, which are not pooled) and recycles the
// kgo.Records at once, so the slices are reused fetch after fetch instead
// of being allocated (and collected) for every batch: they were most of a
// source's allocated bytes. Capacities are rounded up to a multiple of
// recordPoolStep records (a coarser rounding, to powers of two, held up to
// twice the memory for the fetched batches), one sync.Pool per capacity.
type recordPool struct {
	sizes [maxPooledRecords / recordPoolStep]sync.Pool // of *[]kgo.Record, capacity (i+1) × recordPoolStep
}

// records is the pool of every stream Source of the process.
var records = new(recordPool)

const (
	// recordPoolStep is the granularity of pooled capacities: at most
	// that many records (~20 KiB) of a slice are unused.
	recordPoolStep = 128
	// maxPooledRecords bounds the pooled slices; a larger batch gets a
	// slice of its own.
	maxPooledRecords = 1 << 14
)

var _ kgo.PoolRecords = (*recordPool)(nil)

// GetRecords returns an empty slice with capacity at least n.
func (p *recordPool) GetRecords(n int) []kgo.Record {
	i := (max(n, 1) - 1) / recordPoolStep // the least i with (i+1) × step >= n
	if i >= len(p.sizes) {
		return make([]kgo.Record, 0, n)
	}
	if s, ok := p.sizes[i].Get().(*[]kgo.Record); ok {
		return (*s)[:0]
	}
	return make([]kgo.Record, 0, (i+1)*recordPoolStep)
}

// PutRecords keeps s for a later GetRecords (franz-go has zeroed its
// records).
func (p *recordPool) PutRecords(s []kgo.Record) {
	i := cap(s)/recordPoolStep - 1 // the largest i with (i+1) × step <= cap
	if i < 0 || i >= len(p.sizes) {
		return
	}
	s = s[:0]
	p.sizes[i].Put(&s)
}

// recycle hands krs back to franz-go's pools once their contents were
// copied out; krs must not be used afterwards.
func recycle(krs []*kgo.Record) {
	for _, kr := range krs {
		kr.Recycle()
	}
}
