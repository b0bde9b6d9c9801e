#!/usr/bin/env bash
# Service creation through kube-apiserver v1.37.2 with svcplane's allocation webhook (one
# replica, and two behind a round-robin proxy) against kube-apiserver's own allocator with no
# webhook, on one upstream cluster, taking turns; prints a markdown table (medians with min–max
# over the rounds) and the duplicate count. See docs/benchmarks.md.
#
#   bench/webhook.sh [ROUNDS] [SERVICES] [CONCURRENCY]   (defaults: 3 rounds, 2000, 16)
#
# Needs the peers (bash peers/build.sh; built here if missing) and release builds of svcplane
# and the driver (built here).
set -euo pipefail
ROUNDS=${1:-3}
SERVICES=${2:-2000}
CONCURRENCY=${3:-16}
cd "$(dirname "$0")/.."
[ -x target/peers/bin/kube-apiserver ] || bash peers/build.sh
cargo build --release --quiet --bin svcplane
cargo build --release --quiet -p testkit --example webhook_bench
export SVCPLANE=$PWD/target/release/svcplane
echo "## webhook ($(date -u +%F), $ROUNDS rounds)"
target/release/examples/webhook_bench "$ROUNDS" "$SERVICES" "$CONCURRENCY"
