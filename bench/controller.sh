#!/usr/bin/env bash
# svcplane controller --manage=all against kube-controller-manager v1.37.2's endpoint
# controllers on one upstream cluster (the peers' kube-apiserver and etcd), taking turns;
# prints one markdown table per scenario (medians with min–max over the rounds). See
# docs/benchmarks.md for what each measures.
#
#   bench/controller.sh [ROUNDS] [SCENARIOS]   (defaults: 3 rounds; "latency scaleup sync")
#
# Sizes as the docs state them; override with LATENCY_PODS, LATENCY_RATE, SCALEUP_PODS,
# SYNC_SERVICES, SYNC_PODS. Needs the peers (bash peers/build.sh; built here if missing) and
# release builds of svcplane and the driver (built here).
set -euo pipefail
ROUNDS=${1:-3}
SCENARIOS=${2:-latency scaleup sync}
cd "$(dirname "$0")/.."
[ -x target/peers/bin/kube-apiserver ] || bash peers/build.sh
cargo build --release --quiet --bin svcplane
cargo build --release --quiet -p testkit --example controller_bench
export SVCPLANE=$PWD/target/release/svcplane
for scenario in $SCENARIOS; do
  echo "## $scenario ($(date -u +%F), $ROUNDS rounds)"
  case $scenario in
    latency) target/release/examples/controller_bench latency "$ROUNDS" "${LATENCY_PODS:-500}" "${LATENCY_RATE:-20}" ;;
    scaleup) target/release/examples/controller_bench scaleup "$ROUNDS" "${SCALEUP_PODS:-300}" ;;
    sync) target/release/examples/controller_bench sync "$ROUNDS" "${SYNC_SERVICES:-10000}" "${SYNC_PODS:-100000}" ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
  echo
done
