package kafka

import (
	"sync/atomic"

	"github.com/twmb/franz-go/pkg/kgo"
)

// fetchSizer sizes the stream Source's per-partition share of a fetch by
// what the fetched records decode to, not by their bytes on the wire.
//
// A share is in wire bytes, and a broker returns whole record batches: a
// topic whose producers compress gets many times the records a share's
// bytes suggest (the benchmark topic, snappy, ~11 times: a 256 KiB share
// brought ~13,000 records of 200 bytes, more than a shard's whole 4 MiB
// buffer, so every fetch had its shard paused and franz-go dropped what it
// had fetched for it). The sizer learns the wire bytes a record costs (its
// batch's compressed bytes, OnFetchBatchRead) and what it costs a shard
// (Record.Size, counted as the poll loop pushes), and sets the share so that
// it decodes to about target: a quarter of a shard's buffer, which a shard
// that is just short of full (a quarter, Worker's Full hook) takes in well
// below the whole buffer, where it would be paused. The share stays within
// minFetchShare..DefaultFetchMaxPartitionBytes.
type fetchSizer struct {
	target int64 // Record.Size bytes a share should decode to

	// Of the batches fetched since the last resize (franz-go's fetch
	// goroutines): their bytes on the wire and their records.
	wire, recs atomic.Int64

	// Of the records pushed since the last resize; guarded by Source.mu
	// (the poll loop).
	size, pushed int64
	share        int32 // the share in effect
}

// resizeEvery is how many pushed records a resize looks at: a few fetches'
// worth, so one odd batch does not swing the share.
const resizeEvery = 20000

func newFetchSizer(bufferBytes int64, share int32) *fetchSizer {
	return &fetchSizer{target: bufferBytes / 4, share: share}
}

// minFetchShare is the least share the sizer sets: below a batch, a broker
// returns one whole batch anyway.
const minFetchShare = 16 << 10

// OnFetchBatchRead implements kgo.HookFetchBatchRead.
func (f *fetchSizer) OnFetchBatchRead(_ kgo.BrokerMetadata, _ string, _ int32, m kgo.FetchBatchMetrics) {
	f.wire.Add(int64(m.CompressedBytes))
	f.recs.Add(int64(m.NumRecords))
}

// pushedLocked counts records the poll loop pushed, of total size size.
// Called with Source.mu held.
func (f *fetchSizer) pushedLocked(n int, size int64) {
	f.pushed += int64(n)
	f.size += size
}

// resizeLocked returns the share to set, and whether it changed by more than
// an eighth; it looks only once resizeEvery records were pushed since the
// last time. Called with Source.mu held.
func (f *fetchSizer) resizeLocked() (int32, bool) {
	if f.pushed < resizeEvery {
		return f.share, false
	}
	wire, recs := f.wire.Swap(0), f.recs.Swap(0)
	size, pushed := f.size, f.pushed
	f.size, f.pushed = 0, 0
	if wire <= 0 || recs <= 0 || size <= 0 {
		return f.share, false
	}
	// target × (wire bytes per record) ÷ (Size per record)
	share := int32(min(max(float64(f.target)*float64(wire)/float64(recs)*float64(pushed)/float64(size), minFetchShare), DefaultFetchMaxPartitionBytes))
	if d := share - f.share; d < f.share/8 && -d < f.share/8 {
		return f.share, false
	}
	f.share = share
	return share, true
}
