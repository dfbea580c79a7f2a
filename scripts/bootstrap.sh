#!/usr/bin/env bash
# Installs everything a fresh machine needs to build and test sg. Idempotent:
# every step checks first, and downloads are cached under ./.tools (git-ignored).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
TOOLCHAIN="1.99.0"
BPF_LINKER_VERSION="0.13.0"
mkdir -p "$TOOLS"

log() { printf '\033[1;34m[bootstrap]\033[0m %s\n' "$*" >&2; }

# 1. Debian packages the tests and the demo use.
PKGS=(nftables iptables bpftool iproute2 iputils-ping ethtool tcpdump socat netcat-openbsd python3-scapy)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. Rust toolchain with rust-src (RUSTUP_AUTO_INSTALL=0 here: install explicitly).
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1 \
   || ! rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null | grep -q '^rust-src'; then
  log "installing Rust $TOOLCHAIN with rust-src, clippy, rustfmt"
  rustup toolchain install "$TOOLCHAIN" --profile minimal --component rust-src,clippy,rustfmt
fi

# 3. bpf-linker, built against the toolchain's own libLLVM (no prebuilt binary here).
if ! "$TOOLS/bin/bpf-linker" --version >/dev/null 2>&1; then
  SYSROOT="$(rustup run "$TOOLCHAIN" rustc --print sysroot)"
  LIB="$(ls "$SYSROOT"/lib/libLLVM.so.* | head -n1)"
  mkdir -p "$TOOLS/llvm/lib"
  ln -sf "$LIB" "$TOOLS/llvm/lib/libLLVM.so"
  ln -sf "$LIB" "$TOOLS/llvm/lib/$(basename "$LIB")"
  log "building bpf-linker $BPF_LINKER_VERSION against $(basename "$LIB") (about a minute)"
  LLVM_PREFIX="$TOOLS/llvm" rustup run "$TOOLCHAIN" cargo install --locked bpf-linker \
    --version "$BPF_LINKER_VERSION" --root "$TOOLS" >&2
fi

# 4. bpffs, where enforcement state is pinned.
if ! mountpoint -q /sys/fs/bpf; then
  log "mounting bpffs on /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi
log "ready: Rust $TOOLCHAIN, $("$TOOLS/bin/bpf-linker" --version 2>&1 | head -n1)"
