package telemetry

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string // a substring of the error; "" for valid
	}{
		{Config{}.WithDefaults(), ""},
		{Config{OTLPEndpoint: "http://127.0.0.1:4318", SampleRatio: 0.5}.WithDefaults(), ""},
		{Config{OTLPEndpoint: "https://otel.example:4318/custom/traces", SampleRatio: 1}.WithDefaults(), ""},
		{Config{OTLPEndpoint: "127.0.0.1:4318"}.WithDefaults(), "tracing.otlp_endpoint: \"127.0.0.1:4318\" is not an http:// or https:// URL"},
		{Config{OTLPEndpoint: "grpc://collector:4317"}.WithDefaults(), "tracing.otlp_endpoint"},
		{Config{SampleRatio: -0.1}.WithDefaults(), "tracing.sample_ratio: -0.1 is out of range (0..1)"},
		{Config{SampleRatio: 2}.WithDefaults(), "tracing.sample_ratio: 2 is out of range"},
		{Config{}, "tracing.service_name: must not be empty"},
	} {
		err := tc.cfg.Validate("tracing")
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v, want valid", tc.cfg, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalid)):
			t.Errorf("%+v: %v, want an ErrInvalid naming %q", tc.cfg, err, tc.want)
		}
	}
}

// Off costs nothing: no provider at all. On: a provider whose tracer makes
// recording spans, shut down cleanly without a receiver ever contacted.
func TestNewProvider(t *testing.T) {
	p, err := NewProvider(Config{}.WithDefaults(), "v1", nil)
	if err != nil || p != nil {
		t.Fatalf("NewProvider without an endpoint = %v, %v; want nil, nil", p, err)
	}
	if _, err := NewProvider(Config{OTLPEndpoint: "ftp://x"}.WithDefaults(), "v1", nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("NewProvider with a bad endpoint: %v, want ErrInvalid", err)
	}
	p, err = NewProvider(Config{OTLPEndpoint: "http://127.0.0.1:1", SampleRatio: 1}.WithDefaults(), "v1", nil)
	if err != nil || p == nil {
		t.Fatalf("NewProvider = %v, %v", p, err)
	}
	_, span := p.Tracer().Start(context.Background(), "x")
	if !span.IsRecording() || !span.SpanContext().IsSampled() {
		t.Error("a span of a ratio-1 provider is not recorded and sampled")
	}
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_ = p.Shutdown(ctx) // the export to a closed port fails; Shutdown must still return
}
