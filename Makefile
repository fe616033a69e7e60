# xdpdns — see README.md. `make demo` and `make test` set up everything they
# need on a fresh Debian machine (as root).

CARGO       ?= cargo
JOBS        ?= 2
CARGO_FLAGS ?= -j$(JOBS)

# Build: clang + headers for the XDP program, nothing else. Tests and demo:
# DNS clients (kdig, kxdpgun, dig), knotd as the forwarding tests' backend,
# unbound as the resolver whose negative cache the rules tests feed,
# iproute2/ethtool for the veth lab, nsenter/unshare (util-linux), bpftool,
# apparmor_parser, systemd-analyze.
BUILD_DEPS = clang llvm libbpf-dev linux-libc-dev
# debhelper builds the package (scripts/build-deb.sh); lintian judges it.
DEB_DEPS = debhelper dh-apparmor dpkg-dev lintian
TEST_DEPS = iproute2 ethtool util-linux procps knot-dnsutils knot bind9-dnsutils unbound \
            bpftool apparmor systemd dnsperf $(DEB_DEPS)
# The end-to-end tests run a dataplane built with its test hooks; it lives in
# its own target directory, so a plain `cargo test` cannot replace it.
NETNS_TARGET ?= target/netns

.PHONY: all deps test-deps build release test unit-test netns-test lint demo deb bench clean help

all: build

help:
	@echo "make demo   - build, run xdpdns on a veth lab, query it, show counters, clean up (root)"
	@echo "make test   - formatting, clippy, unit tests, and the netns end-to-end tests (root)"
	@echo "make build  - debug binaries in target/debug"
	@echo "make release- release binaries in target/release"
	@echo "make bench  - xdpdns vs dnsdist and knotd on a veth lab; tables, CSV, JSON, PNG in target/bench (root)"
	@echo "make deb    - target/xdpdns_VERSION_ARCH.deb and its -dbgsym package, built with debhelper"

deps:
	@scripts/install-deps.sh $(BUILD_DEPS)

test-deps:
	@scripts/install-deps.sh $(BUILD_DEPS) $(TEST_DEPS)

build: deps
	$(CARGO) build $(CARGO_FLAGS) --workspace --bins

release: deps
	$(CARGO) build $(CARGO_FLAGS) --release --workspace --bins

lint: deps
	@$(CARGO) fmt --version >/dev/null 2>&1 && $(CARGO) clippy --version >/dev/null 2>&1 || \
	    rustup component add rustfmt clippy
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings

# Unit tests of the whole workspace, no privileges needed (the end-to-end
# tests are #[ignore]d there and reported as such).
unit-test: deps
	$(CARGO) test $(CARGO_FLAGS) --workspace

# End to end: real kernel, real XDP, real kdig, in namespaces (root).
# The dataplane is built with its test hooks (SIGUSR2 -> forbidden system call).
netns-test: test-deps
	@[ "$$(id -u)" -eq 0 ] || { echo "netns tests need root (network namespaces, XDP, bpffs)"; exit 1; }
	$(CARGO) build $(CARGO_FLAGS) --target-dir $(NETNS_TARGET) --workspace --bins --features xdpdns-dataplane/test-hooks,xdpdns-tcp/test-hooks
	$(CARGO) test $(CARGO_FLAGS) --target-dir $(NETNS_TARGET) -p xdpdns-netns-tests -- --ignored --test-threads=1

test: lint unit-test netns-test

demo: test-deps
	$(CARGO) build $(CARGO_FLAGS) --release --workspace --bins
	scripts/demo.sh target/release

# The race: xdpdns against dnsdist 1.7 and knotd (XDP, UDP) on one veth lab,
# plus the per-packet microbenchmark. Results in target/bench/ (README: "Benchmark").
BENCH_DEPS = knot-dnsutils dnsperf dnsdist knot fonts-dejavu-core
bench: test-deps
	@scripts/install-deps.sh $(BENCH_DEPS)
	$(CARGO) build $(CARGO_FLAGS) --release --workspace --bins
	$(CARGO) bench $(CARGO_FLAGS) -p xdpdns-dataplane --bench answer -- --warm-up-time 1 --measurement-time 3
	$(CARGO) bench $(CARGO_FLAGS) -p xdpdns-dataplane --bench overhead
	target/release/xdpdns-bench

deb: release
	@scripts/install-deps.sh $(DEB_DEPS)
	scripts/build-deb.sh target/release

clean:
	$(CARGO) clean
