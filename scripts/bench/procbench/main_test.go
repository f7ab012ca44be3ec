package main

import (
	"os"
	"testing"
	"time"

	"github.com/sluicehq/sluice/config"
)

func TestMedian(t *testing.T) {
	m := median([]result{{recPerSec: 3, cpuPerRec: 3, rssMiB: 1}, {recPerSec: 1, cpuPerRec: 1, rssMiB: 3}, {recPerSec: 2, cpuPerRec: 2, rssMiB: 2}})
	if m.recPerSec != 2 || m.cpuPerRec != 2 || m.rssMiB != 2 {
		t.Errorf("median %+v, want 2 everywhere", m)
	}
	if m := median([]result{{recPerSec: 1}, {recPerSec: 2}}); m.recPerSec != 1.5 {
		t.Errorf("median of two %v, want 1.5", m.recPerSec)
	}
	if median(nil) != nil {
		t.Error("median of nothing is not nil")
	}
}

// TestSluiceConfig: the configuration a run writes is one sluice accepts.
func TestSluiceConfig(t *testing.T) {
	dir := t.TempDir()
	for _, depth := range []int{-1, 0, 4} {
		path, err := sluiceConfig(dir, "127.0.0.1:9092", "t", "g", "http://127.0.0.1:1/", scenario{batch: 100, delay: time.Millisecond, pf: 10}, depth)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(path); err != nil {
			t.Fatal(err)
		}
		if _, err := config.Load([]string{path}, nil); err != nil {
			t.Errorf("depth %d: sluice refuses the configuration: %v", depth, err)
		}
	}
}
