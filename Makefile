# Shoal's developer targets. `go test ./...` alone must pass on a fresh
# machine; these targets add the race detector, lint and code generation.

GO        ?= go
PKGS      ?= ./...
# Downloaded first: `go list -m` prints no directory for a module that is
# not in the module cache yet (a fresh machine).
RAFT_DIR   = $(shell $(GO) mod download -json go.etcd.io/raft/v3 | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p')
PROTOC_GEN_GO_VERSION      = v1.36.12
PROTOC_GEN_GO_GRPC_VERSION = v1.6.2
STATICCHECK_VERSION        = v0.8.2
BENCHTIME ?= 5s

.PHONY: all build test race lint proto proto-check tools bench fuzz redis-compat browser-test chaos-short chaos-long docker-image chaos-docker clean

all: build lint test

build:
	CGO_ENABLED=0 $(GO) build -o shoal ./cmd/shoal

test:
	$(GO) test $(PKGS)

race:
	$(GO) test -race -timeout 20m $(PKGS)

# gofmt, go vet, staticcheck (if installed: `make tools`), and the lint
# tests (import direction, banned calls).
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	@sc="$$($(GO) env GOPATH)/bin/staticcheck"; if [ -x "$$sc" ]; then echo staticcheck; "$$sc" $(PKGS); else echo "staticcheck not installed (make tools): skipped"; fi
	$(GO) test -count=1 ./internal/lint/

tools:
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

# Regenerate the protobuf code (needs protoc from Debian's protobuf-compiler
# and `make tools`).
proto:
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" protoc -I api -I $(RAFT_DIR)/raftpb \
		--go_out=api --go_opt=paths=source_relative \
		--go-grpc_out=api --go-grpc_opt=paths=source_relative \
		api/shoalpb/*.proto

# Fails if the committed generated code is not what `make proto` produces.
proto-check: proto
	@git diff --exit-code -- api/ || (echo "generated code is stale: run make proto and commit"; exit 1)

# Benchmarks; numbers go to docs/benchmarks.md with this command.
bench:
	$(GO) test -run '^$$' -bench 'BenchmarkReplicatedWrites' -benchtime $(BENCHTIME) ./internal/node/

# redis-cli -c and redis-benchmark --cluster against a real playground
# (needs Debian's redis-tools).
redis-compat:
	scripts/redis-compat.sh

# The master's dashboard in headless Chromium (Debian's chromium).
browser-test:
	$(GO) test -tags browser -count=1 -run TestDashboardInBrowser ./internal/master/

# The fault-tolerance suite: 3 masters and 5 nodes as real processes on
# 127.0.0.11-13 and 127.0.0.21-25, killed, paused and partitioned (iptables:
# needs root) under the Go client and go-redis; histories checked for
# linearizability and lost writes; and a node whose disk (a loop-mounted
# ext4) is frozen with fsfreeze must exit. See docs/reliability.md.
CHAOS_DURATION ?= 30s
chaos-short:
	CHAOS_DURATION=$(CHAOS_DURATION) $(GO) test -tags chaos -count=1 -run 'TestChaos$$|TestDiskStallProcess' -v -timeout 30m ./internal/chaos/

# The long version: more and longer runs, and the planted bugs the checker
# must catch. CHAOS_SUMMARY=file writes the table of docs/reliability.md.
chaos-long:
	CHAOS_RUNS=$${CHAOS_RUNS:-3} CHAOS_DURATION=$${CHAOS_DURATION_LONG:-3m} $(GO) test -tags chaos -count=1 -run 'TestChaos$$|TestPlantedBugs' -v -timeout 3h ./internal/chaos/

# A short fuzzing pass over every fuzz target.
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 15s $$pkg || exit 1; \
		done; \
	done

# The container image deploy/docker-compose.yml runs: a static binary in a
# FROM scratch image (no base image to pull), built in a throw-away context.
DOCKER_IMAGE ?= shoal:dev
docker-image:
	@ctx=$$(mktemp -d) && trap 'rm -rf "$$ctx"' EXIT && \
	echo "CGO_ENABLED=0 $(GO) build -o $$ctx/shoal ./cmd/shoal" && \
	CGO_ENABLED=0 $(GO) build -trimpath -o "$$ctx/shoal" ./cmd/shoal && \
	docker build -t $(DOCKER_IMAGE) -f deploy/Dockerfile "$$ctx"

# The fault suite against containers (DockerCluster): kill, pause and
# isolate under writers. Builds its own image (shoal:chaos) from this
# checkout; needs a local Docker engine.
chaos-docker:
	$(GO) test -tags 'chaos docker' -count=1 -run TestDocker -v -timeout 20m ./internal/chaos/

clean:
	rm -f shoal

# Shoal against etcd and Redis Cluster on this machine, same workload and
# load generator for all three (settings by environment, e.g.
# PHASE_SECONDS=10 MEMDISK=1; see bench/compare.sh and docs/benchmarks.md).
.PHONY: compare
compare:
	bench/compare.sh

# Shoal's throughput, latency and CPU per operation at 64, 256 and 1024
# shards and with 1, 3 and 5 nodes (bench/compare.sh once per shape;
# settings by environment, e.g. PHASE_SECONDS=20 WORKLOADS="w c a"; see
# bench/scaling.sh).
.PHONY: scaling
scaling:
	bench/scaling.sh
