#!/bin/bash
# xdpdns demo: a veth lab in two namespaces, xdpdns on one side with the
# default configuration (interface and UMEM size adapted to the lab), kdig on
# the other. Everything it creates is removed on exit, also on failure or ^C.
set -euo pipefail

BIN=${1:-target/release}
XDPDNS=$(realpath "$BIN/xdpdns")
SRV=xdpdns-demo-srv
CLI=xdpdns-demo-cli
WORK=$(mktemp -d /tmp/xdpdns-demo.XXXXXX)
CONFIG=$WORK/xdpdns.toml
LOADER=""
CREATED_USERS=""

cleanup() {
    set +e
    if [ -n "$LOADER" ] && kill -0 "$LOADER" 2>/dev/null; then
        kill -TERM "$LOADER"; wait "$LOADER"
    fi
    for u in $CREATED_USERS; do userdel "$u" 2>/dev/null; done
    ip netns del $SRV 2>/dev/null
    ip netns del $CLI 2>/dev/null
    rm -rf /sys/fs/bpf/xdpdns-demo "$WORK"
    # The runtime directory's parent, if the loader left it empty.
    rmdir /run/xdpdns 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

[ "$(id -u)" -eq 0 ] || { echo "the demo needs root (namespaces, XDP)"; exit 1; }
for ns in $SRV $CLI; do ip netns del $ns 2>/dev/null || true; done
# The workers' dedicated users (the package creates them with sysusers.d);
# the demo creates those missing and removes them on exit.
for u in xdpdns-dp xdpdns-tcp; do
    if ! getent passwd "$u" >/dev/null; then
        useradd --system --no-create-home --shell /usr/sbin/nologin "$u"
        CREATED_USERS="$CREATED_USERS $u"
    fi
done

step "veth lab: $SRV (demo0, 192.0.2.1, 2001:db8::1) <-> $CLI (demo1), 2 queues each"
ip netns add $SRV
ip netns add $CLI
ip -n $SRV link add demo0 numtxqueues 2 numrxqueues 2 type veth peer name demo1 netns $CLI numtxqueues 2 numrxqueues 2
ip -n $SRV addr add 192.0.2.1/24 dev demo0
ip -n $SRV addr add 2001:db8::1/64 dev demo0 nodad
ip -n $CLI addr add 192.0.2.2/24 dev demo1
ip -n $CLI addr add 192.0.2.99/24 dev demo1   # a client the ACL leaves out
ip -n $CLI addr add 2001:db8::2/64 dev demo1 nodad
for ns in $SRV $CLI; do ip -n $ns link set lo up; done
ip -n $SRV link set demo0 up
ip -n $CLI link set demo1 up
# The veth peer keeps its TX checksum offload on, as containers have it:
# the XDP program recognises the partial checksums it leaves.

# The default configuration, with the lab's interface. UMEM: the default is
# 4096 frames (8 MiB) per queue; if RLIMIT_MEMLOCK cannot hold that for two
# queues, use fewer frames (xdpdns check explains the budget).
frames=4096
limit=$(ulimit -H -l)
if [ "$limit" != unlimited ] && [ "$limit" -lt $((2 * 4096 * 2)) ]; then frames=1024; fi
sed -e 's/^interface = .*/interface = "demo0"/' \
    -e 's/^instance = .*/instance = "demo"/' \
    -e 's|^pin_root = .*|pin_root = "/sys/fs/bpf/xdpdns-demo"|' \
    -e "s/^frames = .*/frames = $frames/" \
    packaging/xdpdns.toml > "$CONFIG"
# The default ACL (dnsdist's: loopback and private ranges) leaves out the
# lab's documentation prefixes: allow the lab's client, and only it.
cat >> "$CONFIG" <<'EOF'
[acl]
allow = ["127.0.0.0/8", "::1/128", "192.0.2.2/32", "2001:db8::2/128"]
EOF

step "configuration ($CONFIG)"
grep -v '^\s*#' "$CONFIG" | grep -v '^\s*$'

step "xdpdns check"
nsenter --net=/run/netns/$SRV "$XDPDNS" check --config "$CONFIG"

step "xdpdns run (in $SRV)"
nsenter --net=/run/netns/$SRV "$XDPDNS" run --config "$CONFIG" 2> "$WORK/xdpdns.log" &
LOADER=$!
for _ in $(seq 100); do
    if "$XDPDNS" status --config "$CONFIG" --json 2>/dev/null | grep -q '"ready": true'; then break; fi
    kill -0 $LOADER 2>/dev/null || { cat "$WORK/xdpdns.log"; exit 1; }
    sleep 0.1
done
cat "$WORK/xdpdns.log"

step "queries from $CLI"
for q in "@192.0.2.1 www.example.com A" "@2001:db8::1 www.example.com AAAA +edns" "@192.0.2.1 example.org MX +dnssec"; do
    echo "\$ kdig $q"
    # shellcheck disable=SC2086
    ip netns exec $CLI kdig +retry=0 +timeout=2 $q | grep -E 'status|Flags|EDNS|Version|QUESTION|IN\s|Received|From' || true
done
echo "\$ kdig -b 192.0.2.99 @192.0.2.1 www.example.com   (outside the ACL: dropped in XDP)"
ip netns exec $CLI kdig +retry=0 +timeout=1 -b 192.0.2.99 @192.0.2.1 www.example.com 2>&1 | grep -E 'status|timeout' || true
echo "... and 200 more, over both queues"
for i in $(seq 100); do
    ip netns exec $CLI kdig +retry=0 +timeout=1 @192.0.2.1 "q$i.example.net" >/dev/null &
    v4=$!
    ip netns exec $CLI kdig +retry=0 +timeout=1 @2001:db8::1 "q$i.example.net" AAAA >/dev/null
    wait $v4
done
sleep 1.2

step "xdpdns status"
"$XDPDNS" status --config "$CONFIG"

step "stopping (SIGTERM)"
kill -TERM $LOADER
wait $LOADER
LOADER=""
tail -n 6 "$WORK/xdpdns.log"
if ip -d -n $SRV link show demo0 | grep -q 'prog/xdp'; then echo "XDP program still attached!"; exit 1; fi
echo "program detached, pins removed; the lab goes next"
