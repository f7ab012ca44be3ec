package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// ErrInvalid is matched by every configuration error Validate returns.
var ErrInvalid = errors.New("invalid configuration")

// Defaults of the tracing section.
const (
	DefaultServiceName = "sluice"
	DefaultSampleRatio = 1.0
)

// Config is the `tracing` section. Tracing is off unless OTLPEndpoint is
// set.
type Config struct {
	// OTLPEndpoint is the URL of an OTLP/HTTP receiver (an OpenTelemetry
	// Collector, Jaeger, Tempo...), e.g. http://localhost:4318. Spans are
	// POSTed to its path /v1/traces unless the URL has a path of its own.
	// https:// uses TLS with the system's roots. Empty: tracing off.
	OTLPEndpoint string `koanf:"otlp_endpoint"`
	// ServiceName is the service.name of the spans; default "sluice".
	ServiceName string `koanf:"service_name"`
	// SampleRatio is the fraction of traces sluice starts that are
	// sampled, 0..1 (default 1). An invocation continuing a record's
	// traceparent follows that parent's sampled flag instead.
	SampleRatio float64 `koanf:"sample_ratio"`
}

// WithDefaults returns c with the defaults of unset fields.
func (c Config) WithDefaults() Config {
	if c.ServiceName == "" {
		c.ServiceName = DefaultServiceName
	}
	return c
}

// Enabled reports whether spans are exported.
func (c Config) Enabled() bool { return c.OTLPEndpoint != "" }

// Validate checks c; key is the section's key (tracing), which every
// problem names.
func (c Config) Validate(key string) error {
	var errs []error
	if c.OTLPEndpoint != "" {
		u, err := url.Parse(c.OTLPEndpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("%w: %s.otlp_endpoint: %q is not an http:// or https:// URL (an OTLP/HTTP receiver, e.g. http://localhost:4318)", ErrInvalid, key, c.OTLPEndpoint))
		}
	}
	if c.SampleRatio < 0 || c.SampleRatio > 1 {
		errs = append(errs, fmt.Errorf("%w: %s.sample_ratio: %v is out of range (0..1)", ErrInvalid, key, c.SampleRatio))
	}
	if c.ServiceName == "" {
		errs = append(errs, fmt.Errorf("%w: %s.service_name: must not be empty (default %s)", ErrInvalid, key, DefaultServiceName))
	}
	return errors.Join(errs...)
}

// Provider is a running tracer provider: Tracer hands out the tracer of
// sluice's spans, Shutdown flushes and stops the exporter.
type Provider struct {
	tp *sdktrace.TracerProvider
}

// NewProvider returns the tracer provider of c, exporting in batches over
// OTLP/HTTP, or nil when c is not Enabled. version is sluice's version, the
// service.version of every span. Nothing is sent before the first span; an
// unreachable receiver costs dropped spans and a warning on log (the
// process-wide OpenTelemetry error handler is set to it), never a delayed
// invocation.
func NewProvider(c Config, version string, log *slog.Logger) (*Provider, error) {
	if !c.Enabled() {
		return nil, nil
	}
	if err := c.Validate("tracing"); err != nil {
		return nil, err
	}
	opts := []otlptracehttp.Option{otlptracehttp.WithEndpointURL(c.OTLPEndpoint), otlptracehttp.WithTimeout(10 * time.Second)}
	if u, _ := url.Parse(c.OTLPEndpoint); u.Path == "" || u.Path == "/" {
		opts = append(opts, otlptracehttp.WithURLPath("/v1/traces"))
	}
	if log != nil {
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			log.Warn("tracing: span export failed", "endpoint", c.OTLPEndpoint, "err", err)
		}))
	}
	// New does not connect: the first export does.
	exp, err := otlptracehttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("telemetry: tracing.otlp_endpoint: %w", err)
	}
	res := resource.NewSchemaless(
		attribute.String("service.name", c.WithDefaults().ServiceName),
		attribute.String("service.version", version),
	)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(c.SampleRatio))),
	)
	return &Provider{tp: tp}, nil
}

// Tracer returns the tracer of sluice's spans.
func (p *Provider) Tracer() trace.Tracer {
	return p.tp.Tracer("github.com/sluicehq/sluice")
}

// Shutdown exports the spans still buffered and stops the exporter, within
// ctx.
func (p *Provider) Shutdown(ctx context.Context) error {
	if err := p.tp.Shutdown(ctx); err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	return nil
}
