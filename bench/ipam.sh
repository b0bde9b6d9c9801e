#!/usr/bin/env bash
# Allocation throughput of `svcplane ipam bench` against a real etcd on loopback: 1 worker and 4
# workers take turns for ROUNDS rounds; prints the median allocations/s, and the CPU used by the
# svcplane process and by etcd (percent of one core, over the whole bench command's wall time).
#
#   bench/ipam.sh [ROUNDS] [COUNT]        (defaults: 3 rounds, 10000 values per run)
#
# Needs the peers' etcd 3.6 (bash peers/build.sh etcd; built here if missing) and a release
# build (built here if missing).
set -euo pipefail
ROUNDS=${1:-3}
COUNT=${2:-10000}
cd "$(dirname "$0")/.."
. bench/lib.sh
cargo build --release --quiet
SVCPLANE=target/release/svcplane
PEERS=${SVCPLANE_PEERS:-$PWD/target/peers/bin}
[ -x "$PEERS/etcd" ] || bash peers/build.sh etcd

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CLIENT=$(free_port); PEER=$(free_port)
DATA=$(mktemp -d /dev/shm/svcplane-bench-XXXXXX 2>/dev/null || mktemp -d)
"$PEERS/etcd" --name bench --data-dir "$DATA/etcd" \
  --listen-client-urls "http://127.0.0.1:$CLIENT" --advertise-client-urls "http://127.0.0.1:$CLIENT" \
  --listen-peer-urls "http://127.0.0.1:$PEER" --initial-advertise-peer-urls "http://127.0.0.1:$PEER" \
  --initial-cluster "bench=http://127.0.0.1:$PEER" --log-level error >"$DATA/etcd.log" 2>&1 &
ETCD_PID=$!
trap 'kill $ETCD_PID 2>/dev/null; wait $ETCD_PID 2>/dev/null; rm -rf "$DATA"' EXIT
ETCD="--etcd-endpoints http://127.0.0.1:$CLIENT"
for _ in $(seq 100); do python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "http://127.0.0.1:$CLIENT/health" 2>/dev/null && break; sleep 0.1; done

# A /16: 10000 values fit in the dynamic band, so the runs measure the common case.
$SVCPLANE ipam apply --service-cluster-ip-range 10.96.0.0/16 --hold 0 $ETCD >/dev/null

etcd_ticks() { awk '{print $14 + $15}' "/proc/$ETCD_PID/stat"; }

declare -A RATE CPU ECPU
for round in $(seq "$ROUNDS"); do
  for workers in 1 4; do
    before=$(etcd_ticks)
    TIMEFORMAT='%R %U %S'
    { time $SVCPLANE ipam bench --pool ipv4 --workers "$workers" --count "$COUNT" -o json $ETCD >"$DATA/out.json"; } 2>"$DATA/time"
    after=$(etcd_ticks)
    read -r wall user sys <"$DATA/time"
    rate=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["duplicates"]==0 and not r["mismatches"]; print(round(r["allocationsPerSecond"]))' "$DATA/out.json")
    secs=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["seconds"])' "$DATA/out.json")
    RATE[$workers]+="$rate "
    CPU[$workers]+="$(python3 -c "print(round(100*($user+$sys)/$wall))") "
    ECPU[$workers]+="$(python3 -c "print(round(100*(($after-$before)/$TICK)/$wall))") "
    echo "round $round, $workers worker(s): $rate allocations/s ($secs s allocating; 0 duplicates)" >&2
  done
done

echo
echo "| workers | allocations/s (median of $ROUNDS) | svcplane CPU | etcd CPU | runs |"
echo "|---|---|---|---|---|"
for workers in 1 4; do
  echo "| $workers | $(echo "${RATE[$workers]}" | median) | $(echo "${CPU[$workers]}" | median) % | $(echo "${ECPU[$workers]}" | median) % | ${RATE[$workers]}|"
done
