# sluice — common tasks. `make help` lists them.
GO ?= go
GOLANGCI_LINT_VERSION ?= v2.6.2
BIN := $(CURDIR)/bin

.PHONY: help build test test-race integration test-all chaos chaos-short fuzz fuzz-short bench lint fmt vet quickstart docs clean test-alerts

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)

build: ## build the sluice binary into ./bin
	$(GO) build -ldflags "-X main.version=$(VERSION) -X main.commit=$(COMMIT)" -o $(BIN)/sluice ./cmd/sluice

test: ## fast unit tests (no brokers needed)
	$(GO) test $$($(GO) list ./... | grep -v /integration)

test-race: ## unit tests with the race detector (integration has its own target)
	$(GO) test -race -timeout 5m $$($(GO) list ./... | grep -v /integration)

integration: ## integration tests; needs SLUICE_TEST_KAFKA and SLUICE_TEST_NATS (see test-all)
	$(GO) test -race -count=1 -timeout 20m ./integration/...

test-all: ## everything, against real brokers it fetches and starts itself (Kafka via Maven, nats-server via Go), plus a secured Kafka (TLS, SASL)
	SLUICE_BROKERS_SECURE=1 scripts/brokers/with-brokers.sh $(MAKE) vet test-race integration
	$(MAKE) chaos-short

# The chaos suite restarts brokers, so it always gets a set of its own (never
# the one the integration tests share) and runs after them, not beside them.
chaos: ## fault-injection suite, long: ≥ 20 kill -9, broker restarts, flaky function; Kafka and JetStream sources, stream and async modes; 12 kill -9 in a three-process cluster (~28 min, own brokers)
	SLUICE_CHAOS=long scripts/brokers/with-brokers.sh $(GO) test -race -count=1 -timeout 60m -v -run '^TestChaos' ./integration/

chaos-short: ## fault-injection suite, short (CI): Kafka and JetStream sources, stream and async modes; kill -9, broker restarts, store outages; 3 kill -9 in a three-process cluster (~9 min, own brokers)
	SLUICE_CHAOS=short scripts/brokers/with-brokers.sh $(GO) test -race -count=1 -timeout 30m -v -run '^TestChaos(JetStream|KafkaAsync|JetStreamAsync|Cluster)?$$' ./integration/

FUZZTIME ?= 30s
FUZZ_TARGETS := admin:FuzzAdminRequest config:FuzzLoad dispatch:FuzzParseBatchItemFailures dispatch:FuzzHTTPResponse retention:FuzzDecodeEnvelope retention:FuzzEnvelopeRoundTrip
fuzz: ## run each fuzz target for FUZZTIME (default 30s); their seed corpora run with the unit tests anyway
	GO=$(GO) scripts/fuzz.sh $(FUZZTIME) $(FUZZ_TARGETS)

fuzz-short: ## every fuzz target for 10s (CI)
	$(MAKE) fuzz FUZZTIME=10s

bench: ## benchmarks: one table of ratios to bare baselines from the same run (~6 min; own brokers unless SLUICE_TEST_KAFKA is set)
	@if [ -n "$$SLUICE_TEST_KAFKA" ]; then $(GO) run ./scripts/bench; else scripts/brokers/with-brokers.sh $(GO) run ./scripts/bench; fi

# promtool from the Go module proxy, without the service-discovery plugins
# (remove_all_sd) that only Prometheus itself needs: a much shorter build.
# Kept in ./bin, one binary per version.
PROMTOOL_VERSION ?= v0.316.0
PROMTOOL := $(BIN)/promtool-$(PROMTOOL_VERSION)

$(PROMTOOL):
	GOBIN=$(BIN) $(GO) install -tags remove_all_sd github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)
	mv $(BIN)/promtool $@

test-alerts: $(PROMTOOL) ## check docker/alerts.yml and run its unit tests (docker/alerts_test.yml) with promtool
	$(PROMTOOL) check rules docker/alerts.yml
	cd docker && $(PROMTOOL) test rules alerts_test.yml

vet: ## go vet
	$(GO) vet ./...

lint: ## golangci-lint, pinned version
	GOBIN=$(BIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	$(BIN)/golangci-lint run ./...

docs: ## regenerate the references under docs/reference (configuration, metrics, CLI); tests fail when they are stale
	$(GO) test -count=1 -run '^TestGenerated' ./config ./cmd/sluice -args -update

fmt: ## gofmt the tree
	gofmt -w $$(git ls-files '*.go')

clean: ## remove build output and fetched broker files
	rm -rf $(BIN) .brokers
