#!/usr/bin/env bash
# svcplane dns under endpoint churn: N Services (bench/dns_gen.py's) loaded into a real
# kube-apiserver, svcplane dns following it with kubeadm's Corefile on one pinned core, dnsperf
# asking the query mix at a fixed load from the other core, while testkit's bench_cluster
# rewrites EndpointSlices at RATE per second for SECONDS (each to an address never used before)
# and times each change from its write to the first answer that has it. Prints, per round, the
# changes' p50/p99/max time to the new answer, answers that were neither version, changes not
# seen within 10 s, the whole rebuilds of the record index during the churn
# (svcplane_dns_index_rebuilds_total before and after), and dnsperf's lost queries.
#
#   bench/dns_churn.sh [N] [RATE] [SECONDS] [ROUNDS]   (defaults: 10000 20 60 3)
#   PACE=Q   the load dnsperf offers meanwhile (default 50000 q/s)
#
# Needs Debian's dnsperf, python3, and the peers (bash peers/build.sh kube-apiserver etcd).
set -euo pipefail
N=${1:-10000}
RATE=${2:-20}
SECONDS_PER_RUN=${3:-60}
ROUNDS=${4:-3}
PACE=${PACE:-50000}
SERVER_CPU=1
CLIENT_CPU=0
cd "$(dirname "$0")/.."
. bench/lib.sh
command -v dnsperf >/dev/null || apt-get install -y dnsperf >/dev/null
PEERS=${SVCPLANE_PEERS:-$PWD/target/peers/bin}
[ -x "$PEERS/kube-apiserver" ] && [ -x "$PEERS/etcd" ] || bash peers/build.sh kube-apiserver etcd
cargo build --release --quiet
cargo build --release --quiet -p testkit --example bench_cluster
SVCPLANE=$PWD/target/release/svcplane

WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
python3 bench/dns_gen.py "$N" "$WORK"
start_bench_cluster

rebuilds() { python3 - "$1" <<'PY'
import sys, urllib.request
for line in urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode().splitlines():
    if line.startswith("svcplane_dns_index_rebuilds_total "):
        print(line.split()[1])
PY
}

declare -a P50 P99 MAX
for round in $(seq "$ROUNDS"); do
    PORT=$(port)
    METRICS=$(port)
    kubeadm_corefile "$PORT" "$METRICS" "kubeconfig $KUBECONFIG_FILE admin" >"$WORK/Corefile"
    taskset -c $SERVER_CPU "$SVCPLANE" dns --conf "$WORK/Corefile" 2>"$WORK/server.log" &
    PID=$!
    wait_for_dns "$PORT" || { cat "$WORK/server.log" >&2; exit 1; }
    before=$(rebuilds "$METRICS")
    taskset -c $CLIENT_CPU dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/queries.txt" -l "$((SECONDS_PER_RUN + 5))" -c 8 -q 200 -Q "$PACE" >"$WORK/perf.txt" 2>&1 &
    PERF=$!
    sleep 2
    echo "churn $RATE $SECONDS_PER_RUN $PORT" >&3
    while [ "$(grep -c '^churned' "$WORK/cluster.out")" -lt "$round" ]; do sleep 0.5; done
    wait $PERF
    after=$(rebuilds "$METRICS")
    kill -KILL $PID; wait $PID 2>/dev/null || true
    read -r _ changes _ p50 _ p99 _ max _ mixed _ late < <(grep '^churned' "$WORK/cluster.out" | tail -1)
    lost=$(awk '/Queries lost/ {print $3}' "$WORK/perf.txt")
    P50+=("$p50"); P99+=("$p99"); MAX+=("$max")
    echo "N=$N round $round: $changes changes at $RATE/s, to the new answer p50 $p50 ms p99 $p99 ms max $max ms, mixed $mixed, late $late, whole rebuilds during churn $((after - before)), dnsperf at $PACE q/s lost $lost" >&2
done
echo
echo "| N | changes/s × s | to the new answer, p50 (ms) | p99 (ms, min–max) | max (ms) |"
echo "|---|---|---|---|---|"
echo "| $N | $RATE × $SECONDS_PER_RUN | $(echo "${P50[*]}" | median) | $(echo "${P99[*]}" | median) ($(echo "${P99[*]}" | range)) | $(echo "${MAX[*]}" | median) |"
