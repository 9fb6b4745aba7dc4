# The two commands of the README: `make run` and `make test`. Both install what is missing.
CARGO ?= cargo

.PHONY: run test check bench build install install-files

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
	$(CARGO) bench --bench chp_relay

build:
	scripts/setup.sh run
	$(CARGO) build --release

# Installs the binary, the systemd unit and (if absent) a commented /etc/depot/depot.toml.
# DESTDIR stages into a folder; PREFIX moves the binary (the unit's ExecStart follows it).
PREFIX ?= /usr/local
SYSTEMD_UNIT_DIR ?= /etc/systemd/system
BIN ?= target/release/depot

install: build install-files

install-files:
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/depot
	install -d $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	sed 's|/usr/local/bin/depot|$(PREFIX)/bin/depot|' packaging/depot.service > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/depot.service
	chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/depot.service
	install -d -m 0755 $(DESTDIR)/etc/depot
	test -e $(DESTDIR)/etc/depot/depot.toml || install -m 0644 packaging/depot.toml $(DESTDIR)/etc/depot/depot.toml
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/depot/README.md
