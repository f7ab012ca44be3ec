package kafka

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// A commit round that read the marks before a revoke's commit must not land
// after it: the committed offset would move back and the partition's next
// owner would start before records already delivered. The round here is
// held between its read of the marks (offset 10) and its commit while the
// worker marks on (offset 20) and the revoke commits; the revoke's commit
// must come after the round's, so the group ends at 20.
func TestCommitterRevokeCommitNeverGoesBack(t *testing.T) {
	seeds := newCluster(t, 1, "orders")
	produce(t, seeds, "orders", 1, 30)

	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumerGroup("g"), kgo.ConsumeTopics("orders"),
		kgo.AutoCommitMarks(), kgo.AutoCommitInterval(autoCommitInterval),
		kgo.OnPartitionsRevoked(func(context.Context, *kgo.Client, map[string][]int32) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	for len(recs) < 30 {
		fs := cl.PollFetches(t.Context())
		if err := fs.Err0(); err != nil {
			t.Fatal(err)
		}
		recs = append(recs, fs.Records()...)
	}

	c := newCommitter()
	var calls atomic.Int32
	held, release := make(chan struct{}), make(chan struct{})
	c.afterSnapshot = func() {
		if calls.Add(1) == 1 {
			close(held)
			<-release
		}
	}

	cl.MarkCommitRecords(recs[9]) // commit 10
	var wg sync.WaitGroup
	var roundErr, revokeErr error
	wg.Go(func() { roundErr = c.commit(t.Context(), cl) })
	<-held                         // the round read offset 10 and has not committed it
	cl.MarkCommitRecords(recs[19]) // commit 20
	revoked := make(chan struct{})
	wg.Go(func() {
		defer close(revoked)
		revokeErr = c.commit(t.Context(), cl)
	})
	// Give a revoke that does not wait for the round time to commit 20 (it
	// would take milliseconds); one that waits cannot finish before the
	// release.
	select {
	case <-revoked:
		t.Error("the revoke's commit ended while a round that read older marks was still to commit")
	case <-time.After(2 * time.Second):
	}
	close(release)
	wg.Wait()
	if roundErr != nil || revokeErr != nil {
		t.Fatalf("commits failed: round %v, revoke %v", roundErr, revokeErr)
	}
	if got := committed(t, seeds, "g", "orders")[0]; got != 20 {
		t.Fatalf("committed offset %d after the revoke's commit of 20 (a round that read 10 landed after it)", got)
	}
}
