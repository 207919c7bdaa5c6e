package main

import (
	"testing"
	"time"
)

func TestColumnsLayOutReadingsAsABatch(t *testing.T) {
	b := columns("d-1", 7, []int64{1000, 1010, 990}, []string{"temp", "hum", "temp"}, []float64{1, 2, 3})
	if b.DeviceId != "d-1" || b.Seq != 7 || b.BaseTimeMs != 1000 {
		t.Fatalf("header: %v", b)
	}
	if got := b.TimeOffsetMs; len(got) != 3 || got[0] != 0 || got[1] != 10 || got[2] != -10 {
		t.Fatalf("offsets: %v", got)
	}
	if len(b.MetricNames) != 2 || b.MetricNames[0] != "temp" || b.MetricNames[1] != "hum" {
		t.Fatalf("names: %v", b.MetricNames)
	}
	if got := b.MetricIndex; got[0] != 0 || got[1] != 1 || got[2] != 0 {
		t.Fatalf("index: %v", got)
	}
}

func TestRetryDelayHonoursPushbackElseJitteredBackoff(t *testing.T) {
	one := func() float64 { return 1 }
	if d := retryDelay("1500", 9, time.Second, time.Minute, one); d != 1500*time.Millisecond {
		t.Fatalf("pushback: %v", d)
	}
	for failures, want := range []time.Duration{200, 400, 800, 1000} {
		if d := retryDelay("", failures, 200*time.Millisecond, time.Second, one); d != want*time.Millisecond {
			t.Fatalf("failures %d: %v, want %v", failures, d, want*time.Millisecond)
		}
	}
	if d := retryDelay("", 3, 200*time.Millisecond, time.Second, func() float64 { return 0.5 }); d != 500*time.Millisecond {
		t.Fatalf("jitter: %v", d)
	}
}
