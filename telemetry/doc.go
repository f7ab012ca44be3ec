// Package telemetry owns sluice's tracing: the `tracing` configuration
// section (Config) and the OpenTelemetry tracer provider that exports spans
// over OTLP/HTTP when tracing.otlp_endpoint is set (NewProvider).
//
// The spans themselves are made where the work happens: the dispatcher
// (package dispatch) opens one span per invocation through the
// trace.Tracer it is given, and knows nothing of exporters. Without an
// endpoint nothing is built and the dispatcher gets no tracer, so tracing
// costs nothing when it is off.
//
// It imports only the OpenTelemetry SDK and exporter; nothing of sluice
// imports it but config (for Config) and cmd/sluice (to wire it).
package telemetry
