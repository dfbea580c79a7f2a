#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and shows sg enforcing
# the default security groups of a Linux and a Windows instance on real traffic.
#
#   host namespace  sg-demo-host : the hypervisor; taps tap-linux, tap-win, uplink
#   instance        sg-demo-linux: 10.70.1.2  fd70:1::2   (servers on 22 80 443 9833)
#   instance        sg-demo-win  : 10.70.2.2  fd70:2::2   (servers on 22 80 443 9833)
#   remote client   sg-demo-remote: 10.70.9.2 fd70:9::2   (servers on tcp 80, udp 53)
#
# Everything lives in namespaces created here and is removed on exit, also on Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ $EUID -ne 0 ]]; then
  echo "demo: needs root (network namespaces and eBPF); run with sudo" >&2
  exit 1
fi

bash scripts/bootstrap.sh
echo "== building sg-daemon (release)"
cargo build --release -p sg-daemon --quiet 2>&1 | grep -v '^warning: sg-daemon@' || true
SG="$ROOT/target/release/sg-daemon"
[[ -x "$SG" ]] || { echo "demo: build failed" >&2; exit 1; }

export SG_BPFFS=/sys/fs/bpf/sg-demo
export SG_STATE_DIR="$ROOT/.sg-demo/state"
export SG_NETNS=sg-demo-host
NS=(sg-demo-host sg-demo-linux sg-demo-win sg-demo-remote)
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "$SG" uninstall >/dev/null 2>&1 || true
  for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$ROOT/.sg-demo"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cleanup   # leftovers of an interrupted run

echo "== creating namespaces"
for n in "${NS[@]}"; do
  ip netns add "$n"; ip -n "$n" link set lo up
  # No duplicate-address detection: addresses (link-local too) are usable at once.
  ip netns exec "$n" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
done
ip netns exec sg-demo-host sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
link() { # host-ifname ns subnet-index
  ip -n sg-demo-host link add "$1" type veth peer name eth0 netns "$2"
  ip -n sg-demo-host addr add "10.70.$3.1/24" dev "$1"
  ip -n sg-demo-host addr add "fd70:$3::1/64" dev "$1" nodad
  ip -n "$2" addr add "10.70.$3.2/24" dev eth0
  ip -n "$2" addr add "fd70:$3::2/64" dev eth0 nodad
  ip -n sg-demo-host link set "$1" up
  ip -n "$2" link set eth0 up
  ip -n "$2" route add default via "10.70.$3.1"
  ip -n "$2" -6 route add default via "fd70:$3::1"
}
link tap-linux sg-demo-linux 1
link tap-win sg-demo-win 2
link uplink sg-demo-remote 9

serve() { # ns proto port
  local opts="fork,reuseaddr"
  [[ $2 == TCP6 ]] && opts="$opts,ipv6only=1"  # else it races the TCP4 listener for the port
  ip netns exec "$1" socat "$2-LISTEN:$3,$opts" EXEC:"echo ok" >/dev/null 2>&1 &
  PIDS+=($!)
}
for n in sg-demo-linux sg-demo-win; do
  for p in 22 80 443 9833; do serve "$n" TCP4 "$p"; serve "$n" TCP6 "$p"; done
done
serve sg-demo-remote TCP4 80; serve sg-demo-remote TCP6 80
ip netns exec sg-demo-remote socat UDP4-RECVFROM:53,fork EXEC:"echo answer" >/dev/null 2>&1 & PIDS+=($!)
sleep 0.5
# Warm up neighbour caches so the first probe does not race address resolution.
for i in 1 2; do
  ip netns exec sg-demo-remote ping -c1 -W2 "10.70.$i.2" >/dev/null 2>&1 || true
  ip netns exec sg-demo-remote ping -c1 -W2 "fd70:$i::2" >/dev/null 2>&1 || true
done

mkdir -p "$ROOT/.sg-demo"
cat > "$ROOT/.sg-demo/desired.yaml" <<'YAML'
instances:
  - id: "937648"
    interface: tap-linux
    os: linux
  - id: "892486"
    interface: tap-win
    os: windows
YAML

tcp() { # ns addr port
  ip netns exec "$1" timeout 3 socat -T2 - "TCP:$2:$3,connect-timeout=2" </dev/null 2>/dev/null | grep -q ok
}
udp() { ip netns exec "$1" timeout 3 socat -T1 - "UDP:$2:$3" <<<"q" 2>/dev/null | grep -q answer; }
icmp() { ip netns exec "$1" ping -c1 -W1 "$2" >/dev/null 2>&1; }
report() { # label command...
  local label="$1"; shift
  if "$@"; then printf '  %-52s \033[32mALLOWED\033[0m\n' "$label"; else printf '  %-52s \033[31mBLOCKED\033[0m\n' "$label"; fi
}
probes() {
  for inst in linux:1 win:2; do
    local name="${inst%%:*}" i="${inst##*:}"
    echo "  -- remote -> $name instance (ingress)"
    for p in 22 443 80 9833; do report "tcp/$p   10.70.9.2 -> 10.70.$i.2" tcp sg-demo-remote "10.70.$i.2" "$p"; done
    report "icmp echo 10.70.9.2 -> 10.70.$i.2" icmp sg-demo-remote "10.70.$i.2"
    report "tcp/22 over IPv6 fd70:9::2 -> fd70:$i::2" tcp sg-demo-remote "[fd70:$i::2]" 22
    echo "  -- $name instance -> remote (egress; replies ride connection tracking)"
    report "tcp/80   10.70.$i.2 -> 10.70.9.2" tcp "sg-demo-$name" 10.70.9.2 80
    report "udp/53   10.70.$i.2 -> 10.70.9.2" udp "sg-demo-$name" 10.70.9.2 53
    report "icmp echo 10.70.$i.2 -> 10.70.9.2" icmp "sg-demo-$name" 10.70.9.2
    report "tcp/80 over IPv6 fd70:$i::2 -> fd70:9::2" tcp "sg-demo-$name" "[fd70:9::2]" 80
  done
}

echo "== before sg: everything is reachable"
probes
echo "== sg-daemon apply -f desired.yaml (default rules: linux 937648, windows 892486)"
"$SG" apply -f "$ROOT/.sg-demo/desired.yaml" | sed 's/^/  /'
echo "== sg-daemon ls -s 892486"
"$SG" ls -s 892486 | sed 's/^/  /'
echo "== with sg enforcing the default rules"
probes
echo "== verdict counters (sg-daemon stats)"
"$SG" stats | sed 's/^/  /'
echo "== the drops, as the kernel reported them (sg-daemon events)"
"$SG" events | tail -n 12 | sed 's/^/  /'
echo "== done; cleaning up"
