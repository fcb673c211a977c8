# dsyncd — `make help` lists the targets.
GO        ?= go
BIN       := bin/dsyncd
CONFIG    ?= config/example.yaml
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
FUZZTIME  ?= 10s
FUZZTIME_APPLY ?= $(FUZZTIME)
PREFIX    ?= /usr/local

.PHONY: help build run test test-short bench bench-e2e bench-e2e-external bench-cluster bench-scale fuzz lint soak soak-short install deps clean

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-20s %s\n", $$1, $$2}'

deps: ## Download the Go modules (the only install step: Go itself ships on the machine)
	@command -v $(GO) >/dev/null || { echo "Go is required: install Go >= 1.26"; exit 1; }
	$(GO) mod download

build: deps ## Build bin/dsyncd, and bin/nats-server (for a cluster, the soak's cluster phase and bench-cluster)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/dsyncd
	$(GO) build -o bin/nats-server github.com/nats-io/nats-server/v2

run: build ## Run the daemon on the embedded NATS server with config/example.yaml
	@# DSYNCD_DEV=1 marks a development run: the example's webhook secret is expected here.
	DSYNCD_DEV=1 $(BIN) serve --config $(CONFIG)

test: deps ## Every test with the race detector, each fuzz target briefly, and the short soak
	$(GO) test -race -count=1 ./...
	@# Execution counts, not durations: a duration-bounded fuzz run can fail with a
	@# spurious "context deadline exceeded" (Go issue 75804, fixed in Go 1.27).
	$(MAKE) --no-print-directory fuzz FUZZTIME=200000x FUZZTIME_APPLY=20000x
	$(MAKE) --no-print-directory soak-short

test-short: deps ## Quick tests (fewer seeds, no fuzzing)
	$(GO) test -short -count=1 ./...

fuzz: ## Run each fuzz target for FUZZTIME (a duration, default 10s, or a count such as 100000x)
	@for t in FuzzParseSignatureHeader FuzzVerify FuzzDecode FuzzScanAgrees; do \
		$(GO) test -run='^$$' -fuzz="^$$t$$" -fuzztime=$(FUZZTIME) ./events/ || exit 1; done
	$(GO) test -run='^$$' -fuzz='^FuzzApply$$' -fuzztime=$(FUZZTIME_APPLY) ./storage/

bench: deps ## Benchmarks: replay of a 100k-event stream (events/s), verify, decode
	$(GO) test -run='^$$' -bench=. -benchtime=1x -benchmem ./storage/ ./worker/
	$(GO) test -run='^$$' -bench=. -benchmem ./events/

bench-e2e: build ## Load test the whole path (HTTP in -> applied) on loopback
	$(GO) run ./cmd/dsyncd-load -bin $(BIN) -users 100000 -groups 1000 -memberships 3 -concurrency 64

bench-e2e-external: build ## The same, with NATS in its own process (nats.url): memory reported per process
	$(GO) build -o bin/nats-server github.com/nats-io/nats-server/v2
	$(GO) run ./cmd/dsyncd-load -bin $(BIN) -nats-server bin/nats-server -users 100000 -groups 1000 -memberships 3 -concurrency 64

CLUSTER_USERS  ?= 20000
CLUSTER_GROUPS ?= 200
bench-cluster: build ## Three nats-servers and three dsyncd nodes (replicas 3): ingest across the nodes, time until all converged, RSS and CPU per process
	$(GO) build -o bin/nats-server github.com/nats-io/nats-server/v2
	$(GO) run ./cmd/dsyncd-load -cluster -bin $(BIN) -nats-server bin/nats-server -users $(CLUSTER_USERS) -groups $(CLUSTER_GROUPS) -memberships 3 -concurrency 48

# The scale run of issue 23: the default configuration, a 1M-user initial sync (4M events), with reads of
# single users during it. Not in CI: it takes ~10 minutes of both CPUs and ~6 GiB of memory; run it on an
# idle machine. SCALE_USERS=100000 SCALE_GROUPS=1000 is the 100k row.
SCALE_USERS  ?= 1000000
SCALE_GROUPS ?= 5000
bench-scale: build ## The 1M-user run of docs/performance.md (not in CI): all applied, events/s, memory, read p99, stream size
	$(GO) run ./cmd/dsyncd-load -bin $(BIN) -users $(SCALE_USERS) -groups $(SCALE_GROUPS) -memberships 3 -concurrency 64 -reads 100 -timeout 40m

soak: build ## Kill/flood/starve harness (long run, ~15 min); exits non-zero on any loss
	$(GO) run ./cmd/dsyncd-soak -bin $(BIN) -nats-server bin/nats-server -kills 25 -duration 2m -load-duration 5m -fuzz 30s

soak-short: build ## Short soak, as CI runs it (< 3 min); exits non-zero on any loss
	$(GO) run ./cmd/dsyncd-soak -bin $(BIN) -nats-server bin/nats-server -short -kills 20 -duration 45s

lint: ## gofmt check and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

install: build ## Install binary, systemd unit, service user and (if absent) config and env file (as root)
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/dsyncd
	install -D -m 0644 deploy/dsyncd.service $(DESTDIR)/etc/systemd/system/dsyncd.service
	install -D -m 0644 deploy/dsyncd.sysusers $(DESTDIR)/usr/lib/sysusers.d/dsyncd.conf
	@# An upgrade never overwrites the operator's configuration or secrets.
	test -e $(DESTDIR)/etc/dsyncd/dsyncd.yaml || install -D -m 0640 deploy/dsyncd.yaml $(DESTDIR)/etc/dsyncd/dsyncd.yaml
	test -e $(DESTDIR)/etc/dsyncd/dsyncd.env || install -D -m 0600 deploy/dsyncd.env.example $(DESTDIR)/etc/dsyncd/dsyncd.env
	@echo "Set the secrets in /etc/dsyncd/dsyncd.env, then: systemd-sysusers && chgrp dsyncd /etc/dsyncd/dsyncd.yaml && systemctl daemon-reload && systemctl enable --now dsyncd"

clean: ## Remove build output
	rm -rf bin
