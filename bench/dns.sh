#!/usr/bin/env bash
# svcplane dns against Knot DNS and CoreDNS on the same data, taking turns: each server runs
# alone on one pinned core, dnsperf drives it from the other core over loopback for a bounded
# time, and the script prints median queries/s, average latency, the server's CPU share, queries
# per CPU-second and RSS. Contenders:
#   svcplane       svcplane dns --manifests (the generated Services and EndpointSlices)
#   knot           Knot DNS serving the equivalent zone file
#   coredns-file   CoreDNS's file plugin serving the same zone file
#   coredns-k8s    CoreDNS's kubernetes plugin fed by a real kube-apiserver holding the same
#                  objects; kube-apiserver and etcd are stopped (SIGSTOP) while it is measured
#
#   bench/dns.sh [N] [ROUNDS] [SECONDS] [CONTENDERS]
#       (defaults: 10000 services, 3 rounds, 10 s per run, "svcplane knot coredns-file coredns-k8s")
#
# Needs Debian's knot and dnsperf (installed here if missing), python3, and the peers
# (bash peers/build.sh coredns kube-apiserver etcd kubectl).
set -euo pipefail
N=${1:-10000}
ROUNDS=${2:-3}
SECONDS_PER_RUN=${3:-10}
CONTENDERS=${4:-svcplane knot coredns-file coredns-k8s}
SERVER_CPU=1
CLIENT_CPU=0
cd "$(dirname "$0")/.."
. bench/lib.sh
command -v knotd >/dev/null && command -v dnsperf >/dev/null || apt-get install -y knot dnsperf >/dev/null
cargo build --release --quiet
SVCPLANE=$PWD/target/release/svcplane
PEERS=${SVCPLANE_PEERS:-$PWD/target/peers/bin}
case " $CONTENDERS " in *" coredns"*)
    [ -x "$PEERS/coredns" ] || bash peers/build.sh coredns ;;
esac
case " $CONTENDERS " in *" coredns-k8s "*)
    [ -x "$PEERS/kube-apiserver" ] && [ -x "$PEERS/etcd" ] && [ -x "$PEERS/kubectl" ] || bash peers/build.sh kube-apiserver etcd kubectl
    cargo build --release --quiet -p testkit --example bench_cluster ;;
esac

WORK=$(mktemp -d)
# A frozen API server's watchdog could not notice that we are gone: thaw it first.
trap '[ -n "${APISERVER_PGID:-}" ] && kill -CONT -- "-$APISERVER_PGID" "-$ETCD_PGID" 2>/dev/null; kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
python3 bench/dns_gen.py "$N" "$WORK"

cat >"$WORK/knot.conf" <<KNOT
server:
    rundir: "$WORK"
    user: root:root
    listen: 127.0.0.1@KNOT_PORT
database:
    storage: "$WORK/knotdb"
log:
  - target: stderr
    any: error
zone:
  - domain: cluster.local
    file: "$WORK/cluster.local.zone"
    storage: "$WORK"
    zonefile-load: whole
    journal-content: none
KNOT

# Starts one server pinned to SERVER_CPU; sets PID and PORT.
start_server() {
    PORT=$(port)
    case $1 in
    svcplane)
        taskset -c $SERVER_CPU "$SVCPLANE" dns --listen "127.0.0.1:$PORT" --manifests "$WORK/manifests.yaml" 2>"$WORK/server.log" &
        ;;
    knot)
        sed "s/KNOT_PORT/$PORT/" "$WORK/knot.conf" >"$WORK/knot-run.conf"
        taskset -c $SERVER_CPU knotd -c "$WORK/knot-run.conf" 2>"$WORK/server.log" &
        ;;
    coredns-file)
        printf 'cluster.local:%s {\n bind 127.0.0.1\n file %s\n}\n' "$PORT" "$WORK/cluster.local.zone" >"$WORK/Corefile"
        taskset -c $SERVER_CPU "$PEERS/coredns" -conf "$WORK/Corefile" >"$WORK/server.log" 2>&1 &
        ;;
    coredns-k8s)
        printf 'cluster.local:%s {\n bind 127.0.0.1\n kubernetes cluster.local {\n kubeconfig %s admin\n }\n}\n' "$PORT" "$KUBECONFIG_FILE" >"$WORK/Corefile"
        taskset -c $SERVER_CPU "$PEERS/coredns" -conf "$WORK/Corefile" >"$WORK/server.log" 2>&1 &
        ;;
    esac
    PID=$!
    for _ in $(seq 600); do
        dig @127.0.0.1 -p "$PORT" +time=1 +tries=1 svc0.ns0.svc.cluster.local A 2>/dev/null | grep -q 'status: NOERROR' && return
        sleep 0.1
    done
    echo "$1 did not start; log:" >&2
    cat "$WORK/server.log" >&2
    exit 1
}

# The kube-apiserver (and etcd) that feeds coredns-k8s, loaded once with the same objects.
case " $CONTENDERS " in *" coredns-k8s "*)
    mkfifo "$WORK/cluster.stdin"
    SVCPLANE_PEERS=$PEERS target/release/examples/bench_cluster "$WORK/manifests.yaml" <"$WORK/cluster.stdin" >"$WORK/cluster.out" 2>"$WORK/cluster.log" &
    exec 3>"$WORK/cluster.stdin"
    for _ in $(seq 1800); do grep -q '^ready ' "$WORK/cluster.out" && break; sleep 0.2; done
    grep -q '^ready ' "$WORK/cluster.out" || { echo "the bench cluster did not start:" >&2; cat "$WORK/cluster.log" >&2; exit 1; }
    read -r _ KUBECONFIG_FILE APISERVER_PGID ETCD_PGID <"$WORK/cluster.out"
    cat "$WORK/cluster.log" >&2
    ;;
esac

declare -A QPS LAT CPU RSS QPC
for round in $(seq "$ROUNDS"); do
    for server in $CONTENDERS; do
        start_server $server
        if [ "$server" = coredns-k8s ]; then
            # Measured on its cache alone: the API server and etcd are frozen.
            kill -STOP -- "-$APISERVER_PGID" "-$ETCD_PGID"
        fi
        before=$(awk '{print $14 + $15}' "/proc/$PID/stat")
        start=$(date +%s.%N)
        taskset -c $CLIENT_CPU dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/queries.txt" -l "$SECONDS_PER_RUN" -c 8 -q 200 >"$WORK/perf.txt" 2>&1
        end=$(date +%s.%N)
        after=$(awk '{print $14 + $15}' "/proc/$PID/stat")
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
        kill $PID
        wait $PID 2>/dev/null || true
        if [ "$server" = coredns-k8s ]; then
            kill -CONT -- "-$APISERVER_PGID" "-$ETCD_PGID"
        fi
        qps=$(awk '/Queries per second/ {print int($4)}' "$WORK/perf.txt")
        lat=$(awk '/Average Latency/ {printf "%.0f", $4 * 1000000}' "$WORK/perf.txt")
        lost=$(awk '/Queries lost/ {print $3}' "$WORK/perf.txt")
        cpu=$(python3 -c "print(round(100 * (($after - $before) / $TICK) / ($end - $start)))")
        QPS[$server]+="$qps "
        LAT[$server]+="$lat "
        CPU[$server]+="$cpu "
        RSS[$server]+="$((rss / 1024)) "
        qpc=$(python3 -c "print(round($qps * 100 / max($cpu, 1)))")
        QPC[$server]+="$qpc "
        echo "N=$N round $round $server: $qps q/s, $lat us average latency, CPU $cpu %, $qpc q per CPU-second, RSS $((rss / 1024)) MiB, lost $lost" >&2
    done
done

echo
echo "| N | server | queries/s (median of $ROUNDS) | avg latency (us) | server CPU | queries per CPU-second | RSS (MiB) | runs (q/s) |"
echo "|---|---|---|---|---|---|---|---|"
for server in $CONTENDERS; do
    echo "| $N | $server | $(echo "${QPS[$server]}" | median) | $(echo "${LAT[$server]}" | median) | $(echo "${CPU[$server]}" | median) % | $(echo "${QPC[$server]}" | median) | $(echo "${RSS[$server]}" | median) | ${QPS[$server]}|"
done
