#!/usr/bin/env bash
# svcplane dns against Knot DNS and CoreDNS on the same data, taking turns: each server runs
# alone on one pinned core, dnsperf drives it from the other core over loopback, and the script
# prints, per contender, median queries/s (free-running), the server's CPU share, queries per
# CPU-second and RSS after the run, then p50/p99 latency at a fixed offered load (half of
# Knot's median capacity, or PACE) after one unmeasured pass over the query file at that load.
# Contenders:
#   svcplane       svcplane dns with kubeadm's Corefile, its kubernetes block reading the
#                  generated Services and EndpointSlices as manifests
#   svcplane-k8s   the same Corefile fed by a real kube-apiserver holding the same objects
#   knot           Knot DNS serving the equivalent zone file
#   coredns-k8s    CoreDNS with kubeadm's Corefile fed by the same kube-apiserver
#   coredns-file   CoreDNS's file plugin serving the zone file
# kube-apiserver and etcd are stopped (SIGSTOP) while any contender is measured.
# kubeadm's Corefile (v1.37, `kubeadm init phase addon coredns --print-manifest`): errors,
# health, ready, kubernetes (pods insecure, fallthrough for the reverse zones, ttl 30),
# prometheus, forward to /etc/resolv.conf, cache 30 with success and denial disabled for
# cluster.local, loop, reload, loadbalance.
#
#   bench/dns.sh [N] [ROUNDS] [SECONDS] [CONTENDERS]
#       (defaults: 10000 services, 3 rounds, 10 s per run, "svcplane svcplane-k8s knot coredns-k8s")
#   ENDPOINTS=E   ready endpoints per headless Service (default 3)
#   PACE=Q        the fixed offered load of the latency runs (default: half Knot's median)
#
# Needs Debian's knot and dnsperf (installed here if missing), python3, and the peers
# (bash peers/build.sh coredns kube-apiserver etcd kubectl).
set -euo pipefail
N=${1:-10000}
ROUNDS=${2:-3}
SECONDS_PER_RUN=${3:-10}
CONTENDERS=${4:-svcplane svcplane-k8s knot coredns-k8s}
ENDPOINTS=${ENDPOINTS:-3}
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
case " $CONTENDERS " in *"-k8s "*)
    [ -x "$PEERS/kube-apiserver" ] && [ -x "$PEERS/etcd" ] && [ -x "$PEERS/kubectl" ] || bash peers/build.sh kube-apiserver etcd kubectl
    cargo build --release --quiet -p testkit --example bench_cluster ;;
esac

WORK=$(mktemp -d)
# A frozen API server's watchdog could not notice that we are gone: thaw it first.
trap '{ [ -z "${APISERVER_PGID:-}" ] || kill -CONT -- "-$APISERVER_PGID" "-$ETCD_PGID" 2>/dev/null || true; }; kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
python3 bench/dns_gen.py "$N" "$WORK" "$ENDPOINTS"

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
        kubeadm_corefile "$PORT" "$(port)" "manifests $WORK/manifests.yaml" >"$WORK/Corefile"
        taskset -c $SERVER_CPU "$SVCPLANE" dns --conf "$WORK/Corefile" 2>"$WORK/server.log" &
        ;;
    svcplane-k8s)
        kubeadm_corefile "$PORT" "$(port)" "kubeconfig $KUBECONFIG_FILE admin" >"$WORK/Corefile"
        taskset -c $SERVER_CPU "$SVCPLANE" dns --conf "$WORK/Corefile" 2>"$WORK/server.log" &
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
        kubeadm_corefile "$PORT" "$(port)" "kubeconfig $KUBECONFIG_FILE admin" >"$WORK/Corefile"
        taskset -c $SERVER_CPU "$PEERS/coredns" -conf "$WORK/Corefile" >"$WORK/server.log" 2>&1 &
        ;;
    esac
    PID=$!
    # Every thread on the server's core: Knot pins one of its workers per online CPU itself
    # (one of them landed on the client's core, so Knot used up to 120 % of "its" core).
    wait_for_dns "$PORT" && taskset -a -p -c $SERVER_CPU "$PID" >/dev/null && return
    echo "$1 did not start; log:" >&2
    cat "$WORK/server.log" >&2
    exit 1
}

# The kube-apiserver (and etcd) that feeds the -k8s contenders, loaded once with the same objects.
case " $CONTENDERS " in *"-k8s "*)
    start_bench_cluster
    ;;
esac

# Stops the server at once (its lameduck would only delay the next run).
stop_server() {
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
}

# Freezes or thaws the bench cluster's API server and etcd, whichever contender is measured:
# left running beside a server that does not need them, they took CPU at moments of their own
# and raised that server's p99 (svcplane from manifests and Knot against svcplane fed by
# kube-apiserver, measured frozen, on 2026-12-07).
freeze() {
    [ -z "${APISERVER_PGID:-}" ] || kill "-$2" -- "-$APISERVER_PGID" "-$ETCD_PGID"
}

declare -A QPS LAT CPU RSS QPC P50 P99
for round in $(seq "$ROUNDS"); do
    for server in $CONTENDERS; do
        start_server $server
        freeze $server STOP
        before=$(awk '{print $14 + $15}' "/proc/$PID/stat")
        start=$(date +%s.%N)
        taskset -c $CLIENT_CPU dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/queries.txt" -l "$SECONDS_PER_RUN" -c 8 -q 200 >"$WORK/perf.txt" 2>&1
        end=$(date +%s.%N)
        after=$(awk '{print $14 + $15}' "/proc/$PID/stat")
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
        stop_server
        freeze $server CONT
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

# Latency at a fixed offered load: every query's time from dnsperf -v.
if [ -z "${PACE:-}" ]; then
    case " $CONTENDERS " in
    *" knot "*) PACE=$(( $(echo "${QPS[knot]}" | median | cut -d. -f1) / 2 )) ;;
    *) PACE=$(( $(echo "${QPS[$(echo $CONTENDERS | cut -d' ' -f1)]}" | median | cut -d. -f1) / 2 )) ;;
    esac
fi
for round in $(seq "$ROUNDS"); do
    for server in $CONTENDERS; do
        start_server $server
        freeze $server STOP
        # Every contender first answers the query file once at the same load, unmeasured: the
        # steady state is measured, not a server's first sight of each name.
        taskset -c $CLIENT_CPU dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/queries.txt" -n 1 -c 8 -q 200 -Q "$PACE" >/dev/null 2>&1
        taskset -c $CLIENT_CPU dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/queries.txt" -l "$SECONDS_PER_RUN" -c 8 -q 200 -Q "$PACE" -v >"$WORK/paced.txt" 2>&1
        stop_server
        freeze $server CONT
        read -r p50 p99 < <(awk '/^> / {print $NF * 1000000}' "$WORK/paced.txt" | sort -n | awk '{a[NR]=$1} END {printf "%.0f %.0f\n", a[int(NR*0.5)], a[int(NR*0.99)]}')
        P50[$server]+="$p50 "
        P99[$server]+="$p99 "
        echo "N=$N paced round $round $server at $PACE q/s: p50 $p50 us, p99 $p99 us" >&2
    done
done

echo
echo "| N | server | queries/s (median of $ROUNDS, min–max) | server CPU | queries per CPU-second (min–max) | RSS (MiB) | p50 / p99 at $PACE q/s (µs, p99 min–max) |"
echo "|---|---|---|---|---|---|---|"
for server in $CONTENDERS; do
    echo "| $N | $server | $(echo "${QPS[$server]}" | median) ($(echo "${QPS[$server]}" | range)) | $(echo "${CPU[$server]}" | median) % | $(echo "${QPC[$server]}" | median) ($(echo "${QPC[$server]}" | range)) | $(echo "${RSS[$server]}" | median) | $(echo "${P50[$server]}" | median) / $(echo "${P99[$server]}" | median) ($(echo "${P99[$server]}" | range)) |"
done
