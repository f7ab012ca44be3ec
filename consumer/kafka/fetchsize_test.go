package kafka

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// The sizer sets the share so that it decodes to its target: the wire bytes
// of a record (its batch's compressed bytes) times the records the target
// holds (target ÷ Record.Size), within its bounds, and only once enough
// records were pushed and the share moved by more than an eighth.
func TestFetchSizerSizesSharesByWhatTheyDecodeTo(t *testing.T) {
	t.Parallel()
	f := newFetchSizer(8<<20, 512<<10) // target 2 MiB
	fetched := func(recs, wire int) {
		f.OnFetchBatchRead(kgo.BrokerMetadata{}, "t", 0, kgo.FetchBatchMetrics{NumRecords: recs, CompressedBytes: wire, UncompressedBytes: 11 * wire})
	}
	// Compressed ~11 times: 20 bytes a record on the wire, 470 in a shard.
	fetched(resizeEvery, 20*resizeEvery)
	f.pushedLocked(resizeEvery-1, 470*(resizeEvery-1))
	if share, changed := f.resizeLocked(); changed || share != 512<<10 {
		t.Fatalf("resized after %d of %d records: %d, %v", resizeEvery-1, resizeEvery, share, changed)
	}
	f.pushedLocked(1, 470)
	share, changed := f.resizeLocked()
	if want := int32(2 << 20 * 20 / 470); !changed || share < want*99/100 || share > want*101/100 {
		t.Fatalf("share %d (changed %v), want ~%d", share, changed, want)
	}
	// A move of less than an eighth keeps the share.
	fetched(resizeEvery, 21*resizeEvery)
	f.pushedLocked(resizeEvery, 470*resizeEvery)
	if s, changed := f.resizeLocked(); changed || s != share {
		t.Fatalf("a 5%% move changed the share %d to %d", share, s)
	}
	// Uncompressed large records: capped at DefaultFetchMaxPartitionBytes.
	fetched(resizeEvery, 2000*resizeEvery)
	f.pushedLocked(resizeEvery, 2000*resizeEvery)
	if s, _ := f.resizeLocked(); s != DefaultFetchMaxPartitionBytes {
		t.Fatalf("share %d for uncompressed records, want the cap %d", s, DefaultFetchMaxPartitionBytes)
	}
	// Extremely compressible: at least minFetchShare.
	fetched(resizeEvery, resizeEvery)
	f.pushedLocked(resizeEvery, 100000*resizeEvery)
	if s, _ := f.resizeLocked(); s != minFetchShare {
		t.Fatalf("share %d, want the floor %d", s, minFetchShare)
	}
}
