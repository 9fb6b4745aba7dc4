# The two commands of the README: `make run` and `make test`. Both install what is missing.
CARGO ?= cargo

.PHONY: run test check bench build

run:
	scripts/setup.sh run
	$(CARGO) build --release --bin depot
	./target/release/depot serve

test:
	scripts/test.sh

# Formatting and lints, as CI's reviewers expect them.
check:
	scripts/setup.sh run
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --release -- -D warnings

bench:
	scripts/setup.sh run
	$(CARGO) bench --bench store

build:
	scripts/setup.sh run
	$(CARGO) build --release
