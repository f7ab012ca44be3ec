package kafka

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

func TestRecordPoolCapacities(t *testing.T) {
	p := new(recordPool)
	for _, n := range []int{0, 1, 127, 128, 129, 1000, maxPooledRecords, maxPooledRecords + 1} {
		s := p.GetRecords(n)
		if len(s) != 0 || cap(s) < n {
			t.Fatalf("GetRecords(%d): len %d cap %d", n, len(s), cap(s))
		}
		if n <= maxPooledRecords && cap(s) >= max(n, 1)+recordPoolStep {
			t.Fatalf("GetRecords(%d): cap %d, more than a step over", n, cap(s))
		}
		p.PutRecords(s[:cap(s)])
		if again := p.GetRecords(n); cap(again) < n {
			t.Fatalf("GetRecords(%d) after a put: cap %d", n, cap(again))
		}
	}
	// A slice franz-go grew to an odd capacity is kept where every get
	// it may serve fits in it.
	p.PutRecords(make([]kgo.Record, 300))
	if s := p.GetRecords(256); cap(s) < 256 {
		t.Fatalf("cap %d for 256", cap(s))
	}
}
