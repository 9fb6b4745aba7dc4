#!/usr/bin/env bash
# Multicast bus across two network namespaces joined by veth (two test hosts), with 1% of UDP
# dropped by nftables in the receiving namespace (this kernel has no netem qdisc). Depot runs
# in the first namespace, a subscriber (`depot bench bus --mode receive`) in the second.
# Needs root. Usage: scripts/bench-bus-netns.sh [records] [rate records/s] [loss %] [bus kbit/s]
set -euo pipefail
records=${1:-500000}
rate=${2:-50000}
loss=${3:-1}
kbps=${4:-100000}
depot=${DEPOT:-$(cd "$(dirname "$0")/.." && pwd)/target/release/depot}
tag=$$
a=dbus${tag}a b=dbus${tag}b
work=$(mktemp -d)
cleanup() {
  [ -n "${serve_pid:-}" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true
  ip netns del "$a" 2>/dev/null || true
  ip netns del "$b" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$a"; ip netns add "$b"
ip link add "v${tag}a" netns "$a" type veth peer name "v${tag}b" netns "$b"
ip -n "$a" addr add 10.78.0.1/24 dev "v${tag}a"; ip -n "$b" addr add 10.78.0.2/24 dev "v${tag}b"
for ns in "$a" "$b"; do ip -n "$ns" link set lo up; done
ip -n "$a" link set "v${tag}a" up multicast on; ip -n "$b" link set "v${tag}b" up multicast on
group="239.192.78.1:17801"
cat > "$work/depot.toml" <<TOML
[admin]
listen = "127.0.0.1:0"
[[multicast.bus]]
name = "lan"
endpoint = "epgm://10.78.0.1;$group"
rate_kbps = $kbps
recovery_ms = 2000
logs = ["bench."]
TOML
ip netns exec "$a" "$depot" serve --config "$work/depot.toml" --data "$work/data" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 100); do [ -f "$work/data/run.json" ] && break; sleep 0.1; done
if [ "$loss" != 0 ]; then
  ip netns exec "$b" nft -f - <<NFT
table inet depot_loss {
  chain input {
    type filter hook input priority 0; policy accept;
    meta l4proto udp numgen random mod 100 < $loss counter drop
  }
}
NFT
fi
echo "depot in $a, subscriber in $b, bus epgm://10.78.0.1;$group at $kbps kbit/s, ${loss}% UDP loss into $b"
ip netns exec "$b" "$depot" bench bus --mode receive --bus "epgm://10.78.0.2;$group" \
  --records "$records" --idle-secs 20 2>&1 | grep -v '^Warn' &
receiver=$!
# The subscriber joins the group as it starts; PGM takes a new receiver from the next packet.
sleep 1
ip netns exec "$a" "$depot" bench bus --mode send --config "$work/depot.toml" --data "$work/data" \
  --bus lan --records "$records" --rate "$rate"
wait "$receiver" && status=0 || status=$?
[ "$loss" != 0 ] && ip netns exec "$b" nft list table inet depot_loss | grep -o 'counter packets [0-9]*' | sed 's/^/dropped by nftables: /'
ip netns exec "$a" "$depot" bus ls --config "$work/depot.toml" --data "$work/data"
exit $status
