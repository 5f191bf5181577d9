# edgeproxy: `make run` starts a local trial server, `make test` runs the whole suite.
# `make help` lists every target: each has one `## target: what it does` line above it.
GO ?= go
DATA_DIR ?= ./data
FUZZTIME ?= 30s
SOAK_DURATION ?= 10m

.PHONY: help run build cluster cluster-stop cluster-clean test tools e2e bench bench-store bench-proxy bench-lifecycle scale fuzz fuzz-ci chaos chaos-cluster outage soak clean

## help: list the targets, each with what it does
help:
	@sed -n 's/^## \([a-z-]*\): \(.*\)/\1\t\2/p' $(MAKEFILE_LIST) | awk -F '\t' '{ printf "  %-16s %s\n", $$1, $$2 }'

## run: the server on the embedded bbolt default, in --dev mode (API on 127.0.0.1:8080)
run:
	$(GO) run ./cmd/edgeproxy serve --dev --data-dir $(DATA_DIR)

## build: the binary in ./bin
build:
	$(GO) build -o bin/edgeproxy ./cmd/edgeproxy

## cluster: a local cluster on loopback: 3 etcd members and 3 edgeproxy nodes on them (APIs on 127.0.0.1:8101-8103), state in ./.cluster; prints where each node is and the bootstrap key (docs/CLUSTER.md)
cluster:
	GO=$(GO) ./scripts/cluster.sh start

## cluster-stop: stop the local cluster (nodes drain, then etcd); its data stays in ./.cluster for the next make cluster
cluster-stop:
	./scripts/cluster.sh stop

## cluster-clean: stop the local cluster and remove ./.cluster
cluster-clean:
	./scripts/cluster.sh clean

## test: make tools, go vet, every test with -race (a missing external tool fails the tests that need it), then each fuzz target for 5 s
test: tools
	$(GO) vet ./...
	EDGEPROXY_REQUIRE_TOOLS=1 $(GO) test -race -count=1 -timeout 15m ./...
	$(MAKE) fuzz-ci

## tools: install the programs the tests run when missing (promtool, prometheus: Debian's prometheus package; curl; node and the npm packages of scripts/openapi-check), with apt-get and npm; needs root for apt-get; builds etcd at go.mod's version into .tools/bin
tools:
	sh scripts/ensure-prometheus.sh
	sh scripts/ensure-curl.sh
	sh scripts/ensure-openapi-tools.sh
	GO=$(GO) sh scripts/ensure-etcd.sh >/dev/null

## e2e: the built binary against Pebble, a loopback DNS server and upstream; prints each status of one record
e2e: build
	$(GO) run ./cmd/e2e -bin bin/edgeproxy

## bench: the control-plane benchmarks (numbers go to docs/PERFORMANCE.md)
bench:
	$(GO) test -run '^$$' -bench . -benchtime 3s ./control/

## bench-store: the store's creates and reads on etcd through one node and three, and on the bbolt file (docs/PERFORMANCE.md)
bench-store:
	$(GO) test -run '^$$' -bench 'Etcd|Bolt' -benchtime 3s -count 2 ./store/

## bench-proxy: the TLS edge against nginx and Caddy under wrk and h2load, about 20 minutes (installs wrk, h2load, nginx, caddy when missing; args in BENCH_PROXY_ARGS)
bench-proxy:
	./scripts/bench-proxy.sh $(BENCH_PROXY_ARGS)

## bench-lifecycle: EDGEPROXY_BENCH_RECORDS (default 1000) records provisioned to valid against Pebble, then startup of the binary on 10,000 valid records (docs/PERFORMANCE.md)
bench-lifecycle:
	EDGEPROXY_BENCH_RECORDS=$${EDGEPROXY_BENCH_RECORDS:-1000} $(GO) test -run '^TestProvisionBurst$$' -count 1 -timeout 30m -v ./lifecycle/
	EDGEPROXY_BENCH_RECORDS=10000 $(GO) test -run '^TestStartupWithValidRecords$$' -count 1 -timeout 20m -v ./cmd/edgeproxy/

## scale: 100,000 records (20,000 valid, each with its certificate) in a bbolt file and, migrated, in a local etcd; the built binary on each: start to serving, RSS, handshake latency, a new etcd node's catch-up; twice (args in SCALE_ARGS; report in bin/scale-report.md; docs/PERFORMANCE.md)
scale: build
	GO=$(GO) sh scripts/ensure-etcd.sh >/dev/null
	$(GO) run ./cmd/scale -bin bin/edgeproxy -etcd-bin .tools/bin/etcd -out bin/scale-report.md $(SCALE_ARGS)

## fuzz: each fuzz target (every func Fuzz* in the module) for FUZZTIME (default 30s), printing the inputs tried
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) sh scripts/fuzz-ci.sh

## fuzz-ci: each fuzz target for 5 s (part of make test)
fuzz-ci:
	GO=$(GO) FUZZTIME=5s sh scripts/fuzz-ci.sh

## chaos: EDGEPROXY_CHAOS_KILLS (default 60) kill -9s of the real binary under API writes and provisioning, invariants checked after each (make test runs 5)
chaos:
	EDGEPROXY_CHAOS_KILLS=$${EDGEPROXY_CHAOS_KILLS:-60} $(GO) test -race -run '^TestChaos$$' -count 1 -timeout 40m -v ./cmd/edgeproxy/

## chaos-cluster: EDGEPROXY_CHAOS_CLUSTER_KILLS (default 30) kill -9s of a random node (the leader first, then in half) or etcd member (one at a time) of a 3-node cluster under API writes and provisioning, invariants checked across the nodes after each (make test runs 4)
chaos-cluster:
	GO=$(GO) sh scripts/ensure-etcd.sh >/dev/null
	EDGEPROXY_CHAOS_CLUSTER_KILLS=$${EDGEPROXY_CHAOS_CLUSTER_KILLS:-30} EDGEPROXY_REQUIRE_TOOLS=1 $(GO) test -race -run '^TestChaosCluster$$' -count 1 -timeout 40m -v ./cmd/edgeproxy/

## outage: every etcd member killed (kill -9) for EDGEPROXY_OUTAGE_DURATION (default 3m) under 3 nodes serving valid records: no TLS handshake or proxied request may fail, writes answer 503, a node killed and restarted meanwhile serves from its local copy; then etcd returns and everything catches up (make test runs 12 s)
outage:
	GO=$(GO) sh scripts/ensure-etcd.sh >/dev/null
	EDGEPROXY_REQUIRE_TOOLS=1 EDGEPROXY_OUTAGE_DURATION=$${EDGEPROXY_OUTAGE_DURATION:-3m} $(GO) test -race -run '^TestClusterEtcdAllDown$$' -count 1 -timeout 30m -v ./cmd/edgeproxy/

## soak: the built binary (no -race) for SOAK_DURATION (default 10m) at SOAK_RATE (default 400/s) while records are created and deleted; fails on any unprovoked failure or growth of RSS, goroutines or fds (report in bin/soak-report.md, server log in bin/soak-server.log)
soak: build
	$(GO) run ./cmd/soak -bin bin/edgeproxy -duration $(SOAK_DURATION) -out bin/soak-report.md -server-log bin/soak-server.log

## clean: remove ./bin
clean:
	rm -rf bin
