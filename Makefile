# steadfast developer and CI entry points. `make test` is the one command the
# README and CI use: it installs (as root, via apt, only if missing) and starts
# PostgreSQL, Redis and RabbitMQ on 127.0.0.1 (see internal/testenv/services.sh),
# runs every test with the race detector against them, and stops what it
# started even when tests fail.

SHELL := /bin/bash
GO ?= go
SERVICES := bash internal/testenv/services.sh

PKGS ?= ./...
TESTFLAGS ?=
TESTTIMEOUT ?= 60m
BENCH ?= .
BENCHTIME ?= 1s
BENCHCOUNT ?= 3
BENCHFLAGS ?=
BENCHOUT ?= .services/bench.txt
FUZZTIME ?= 60s
# Each fuzz target runs this long in make test (its seed corpus always runs).
TESTFUZZTIME ?= 3s

.PHONY: test fuzz services services-down services-status bench lint

## test: start backends, run all tests with -race (extra flags: TESTFLAGS=...), stop backends;
## then every fuzz target for TESTFUZZTIME
test:
	STEADFAST_REQUIRE_BACKENDS=1 $(SERVICES) run -- \
		$(GO) test -race -count=1 -timeout $(TESTTIMEOUT) $(TESTFLAGS) $(PKGS)
	GO=$(GO) bash internal/testenv/fuzz.sh $(TESTFUZZTIME) $(PKGS)

## fuzz: run every fuzz target of PKGS for FUZZTIME each (default 60s)
fuzz:
	GO=$(GO) bash internal/testenv/fuzz.sh $(FUZZTIME) $(PKGS)

## services: start the backends and keep them up; then `. .services/env`
services:
	$(SERVICES) up

## services-down: stop the backends that `make services` / services.sh started
services-down:
	$(SERVICES) down

services-status:
	$(SERVICES) status

## bench: start backends, run benchmarks (BENCH, BENCHTIME, BENCHCOUNT, PKGS), save to BENCHOUT
# BENCHCOUNT rounds each run every benchmark once, so a variant and its raw
# baseline alternate rather than run back to back, and benchtable pairs them
# round by round: the load of a shared machine drifts over minutes.
bench:
	STEADFAST_REQUIRE_BACKENDS=1 $(SERVICES) run --tee $(BENCHOUT) -- \
		bash -c 'for round in $$(seq $(BENCHCOUNT)); do \
			$(GO) test -run "^\$$" -bench "$(BENCH)" -benchtime "$(BENCHTIME)" -count 1 -benchmem $(BENCHFLAGS) $(PKGS) || exit; \
		done'
	@echo; echo "== each figure beside its raw baseline from the same run (figures: medians; ratio: median of the per-round ratios, > 1 means faster than raw)"
	@$(GO) run ./internal/benchtable < $(BENCHOUT)
	@echo "raw benchmark output saved to $(BENCHOUT)"

## lint: gofmt must report nothing, go vet must pass
lint:
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then echo "gofmt -l reports unformatted files:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)
