#!/usr/bin/env bash
# The README's second command (and CI's): installs what is missing, then runs the whole
# suite: formatting, lints, unit and reference-model tests, kernel verdict tests
# (BPF_PROG_TEST_RUN) and end-to-end tests with real traffic between namespaces.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ $EUID -ne 0 ]]; then
  echo "test: needs root (network namespaces and eBPF); run with sudo" >&2
  exit 1
fi
bash scripts/bootstrap.sh
step() { printf '\n\033[1;34m== %s\033[0m\n' "$*"; }
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy --all-targets (warnings are errors)"
cargo clippy --all-targets --quiet -- -D warnings
step "build sg-daemon (embeds the eBPF object)"
cargo build -p sg-daemon --quiet
export SG_DAEMON_BIN="$ROOT/target/debug/sg-daemon"
step "tests"
cargo test --no-fail-fast "$@"
step "all tests passed"
