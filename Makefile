# The everyday commands; each is a line or two of the project scripts.
.PHONY: run test lint fmt generate services services-down chaos bench

run:            ## serve paysync locally (starts PostgreSQL and localstripe)
	scripts/run

test:           ## every test, against the local services
	scripts/test

lint:           ## what CI checks besides the tests
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets --test bench -- -D warnings

fmt:
	cargo fmt --all

generate:       ## regenerate committed artefacts (CI fails when they are stale)
	cargo run --locked -q -- openapi > docs/openapi.json
	cargo run --locked -q -- crd > crds/syncpolicy.yaml
	cp crds/syncpolicy.yaml charts/paysync/files/syncpolicy-crd.yaml

services:       ## start PostgreSQL, localstripe and the tansu Kafka broker
	scripts/services up --kafka

services-down:
	scripts/services down

chaos:          ## a five-minute chaos run (scripts/chaos --help for more)
	scripts/chaos

bench:          ## outbound and inbound benchmarks, every transport (docs/BENCHMARKS.md)
	scripts/bench
