package dispatch

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/semaphore"
)

// benchRatio times base and ours over the same b.N in the same run and
// reports ours ÷ base, because absolute times on a shared machine are noise.
// ns/op is ours.
func benchRatio(b *testing.B, unit string, base, ours func(n int)) {
	b.Helper()
	b.StopTimer()
	base(1000) // warm both up
	ours(1000)
	start := time.Now()
	base(b.N)
	baseDur := time.Since(start)
	b.StartTimer()
	start = time.Now()
	ours(b.N)
	oursDur := time.Since(start)
	b.StopTimer()
	if baseDur > 0 {
		b.ReportMetric(float64(oursDur)/float64(baseDur), unit)
	}
}

// parallel runs n iterations of f split over g goroutines.
func parallel(n, g int, f func(n int)) {
	var wg sync.WaitGroup
	for i := range g {
		share := n / g
		if i < n%g {
			share++
		}
		wg.Go(func() { f(share) })
	}
	wg.Wait()
}

func benchLimiter(b *testing.B, limit int, rules ...Rule) *Limiter {
	b.Helper()
	l, err := NewLimiter(Config{
		Account:   AccountConfig{Concurrency: 1000, MinUnreserved: 100},
		Functions: map[string]FunctionConfig{"f": {ReservedConcurrency: &limit}},
		Rules:     rules,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(l.Close)
	return l
}

func semLoop(sem *semaphore.Weighted) func(n int) {
	return func(n int) {
		ctx := context.Background()
		for range n {
			if err := sem.Acquire(ctx, 1); err != nil {
				panic(err)
			}
			sem.Release(1)
		}
	}
}

func limiterLoop(l *Limiter, scopes func(i int) []string) func(n int) {
	return func(n int) {
		ctx := context.Background()
		for i := range n {
			s, err := l.Acquire(ctx, "f", scopes(i), nil)
			if err != nil {
				panic(err)
			}
			s.Release()
		}
	}
}

func noScope(int) []string { return nil }

// BenchmarkAcquireRelease: one goroutine, never waits.
func BenchmarkAcquireRelease(b *testing.B) {
	l := benchLimiter(b, 100)
	sem := semaphore.NewWeighted(100)
	benchRatio(b, "x-semaphore", semLoop(sem), limiterLoop(l, noScope))
}

// BenchmarkAcquireReleaseScoped: one goroutine with a scope under a "*" rule.
func BenchmarkAcquireReleaseScoped(b *testing.B) {
	l := benchLimiter(b, 100, Rule{Pattern: "*", Concurrency: 10})
	sem := semaphore.NewWeighted(100)
	scope := []string{"tenant-1"}
	benchRatio(b, "x-semaphore", semLoop(sem), limiterLoop(l, func(int) []string { return scope }))
}

// BenchmarkAcquireReleaseContended: 8 goroutines on 4 slots, so most
// acquisitions wait.
func BenchmarkAcquireReleaseContended(b *testing.B) {
	l := benchLimiter(b, 4)
	sem := semaphore.NewWeighted(4)
	benchRatio(b, "x-semaphore",
		func(n int) { parallel(n, 8, semLoop(sem)) },
		func(n int) { parallel(n, 8, limiterLoop(l, noScope)) })
}

// BenchmarkAcquireRelease1000Scopes: 8 goroutines on 4 slots spread over
// 1,000 scopes, each under its own "*" budget; the baseline is still one
// semaphore, which knows nothing of scopes or fairness.
func BenchmarkAcquireRelease1000Scopes(b *testing.B) {
	l := benchLimiter(b, 4, Rule{Pattern: "*", Concurrency: 2})
	sem := semaphore.NewWeighted(4)
	names := make([][]string, 1000)
	for i := range names {
		names[i] = []string{fmt.Sprintf("tenant-%d", i)}
	}
	benchRatio(b, "x-semaphore",
		func(n int) { parallel(n, 8, semLoop(sem)) },
		func(n int) {
			parallel(n, 8, limiterLoop(l, func(i int) []string { return names[i%len(names)] }))
		})
}
