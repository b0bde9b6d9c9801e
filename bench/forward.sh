#!/usr/bin/env bash
# The forwarding path — forward + cache — of svcplane dns against CoreDNS and Debian's Unbound
# (as a caching forwarder), taking turns: each runs alone on one pinned core and forwards to the
# same upstream (an Unbound answering hit.example and miss.example from local data) on the
# other core, where dnsperf drives it over loopback for a bounded time. Three query sets:
#   hits    1000 names asked over and over: after the first pass, every answer is cached
#   paced   the same hits offered at a fixed rate (PACE queries/s, below what dnsperf reaches
#           with svcplane and Unbound), so each contender's CPU is for the same work
#   misses  a name never asked before on every query: every answer goes upstream
# The script prints median queries/s, the contender's CPU share and queries per CPU-second, and
# the CPU both cores used per query (the client's side moves with the server's: a server that
# sleeps between queries is woken at the client's cost).
#
#   bench/forward.sh [ROUNDS] [SECONDS] [CONTENDERS]
#       (defaults: 3 rounds, 10 s per run, "svcplane coredns unbound"; environment:
#       PACE=100000, SETS="hits paced misses")
#
# Needs Debian's unbound and dnsperf (installed here if missing), and the peers' CoreDNS
# (bash peers/build.sh coredns).
set -euo pipefail
ROUNDS=${1:-3}
SECONDS_PER_RUN=${2:-10}
CONTENDERS=${3:-svcplane coredns unbound}
PACE=${PACE:-100000}
SETS=${SETS:-hits paced misses}
SERVER_CPU=1
CLIENT_CPU=0
cd "$(dirname "$0")/.."
. bench/lib.sh
command -v unbound >/dev/null && command -v dnsperf >/dev/null || apt-get install -y unbound dnsperf >/dev/null
cargo build --release --quiet
SVCPLANE=$PWD/target/release/svcplane
PEERS=${SVCPLANE_PEERS:-$PWD/target/peers/bin}
case " $CONTENDERS " in *" coredns "*)
    [ -x "$PEERS/coredns" ] || bash peers/build.sh coredns ;;
esac

WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

# The upstream, on the client's core: every name under hit.example and miss.example has an A.
UPSTREAM=$(port)
# The server section every Unbound here shares, listening on port $1.
unbound_server() {
    cat <<EOF
server:
  interface: 127.0.0.1
  port: $1
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$WORK"
  pidfile: ""
  use-syslog: no
  logfile: ""
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  num-threads: 1
EOF
}
{ unbound_server "$UPSTREAM"; cat <<EOF
  local-zone: "." static
  local-data: ". 3600 IN SOA ns.upstream.test. admin.upstream.test. 1 3600 600 86400 60"
  local-data: ". 3600 IN NS ns.upstream.test."
  local-zone: "hit.example." redirect
  local-data: "hit.example. 300 IN A 192.0.2.1"
  local-zone: "miss.example." redirect
  local-data: "miss.example. 300 IN A 192.0.2.2"
remote-control:
  control-enable: no
EOF
} >"$WORK/upstream.conf"
taskset -c $CLIENT_CPU unbound -d -c "$WORK/upstream.conf" 2>"$WORK/upstream.log" &
for _ in $(seq 100); do
    dig @127.0.0.1 -p "$UPSTREAM" +time=1 +tries=1 a.hit.example A 2>/dev/null | grep -q 'status: NOERROR' && break
    sleep 0.1
done

python3 - "$WORK" <<'EOF'
import sys
work = sys.argv[1]
with open(f"{work}/hits.txt", "w") as f:
    for i in range(1000):
        f.write(f"n{i}.hit.example A\n")
with open(f"{work}/misses.txt", "w") as f:
    for i in range(2_000_000):
        f.write(f"m{i}.miss.example A\n")
EOF

# Starts one contender pinned to SERVER_CPU; sets PID and PORT.
start_server() {
    PORT=$(port)
    case $1 in
    svcplane)
        printf '.:%s {\n    forward . 127.0.0.1:%s\n    cache 30\n}\n' "$PORT" "$UPSTREAM" >"$WORK/Corefile"
        taskset -c $SERVER_CPU "$SVCPLANE" dns --conf "$WORK/Corefile" --bind 127.0.0.1 >"$WORK/server.log" 2>&1 &
        ;;
    coredns)
        printf '.:%s {\n    bind 127.0.0.1\n    forward . 127.0.0.1:%s\n    cache 30\n}\n' "$PORT" "$UPSTREAM" >"$WORK/Corefile"
        taskset -c $SERVER_CPU "$PEERS/coredns" -conf "$WORK/Corefile" >"$WORK/server.log" 2>&1 &
        ;;
    unbound)
        { unbound_server "$PORT"; cat <<EOF
  do-not-query-localhost: no
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@$UPSTREAM
remote-control:
  control-enable: no
EOF
        } >"$WORK/forwarder.conf"
        taskset -c $SERVER_CPU unbound -d -c "$WORK/forwarder.conf" >"$WORK/server.log" 2>&1 &
        ;;
    esac
    PID=$!
    for _ in $(seq 300); do
        dig @127.0.0.1 -p "$PORT" +time=1 +tries=1 warm.hit.example A 2>/dev/null | grep -q 'status: NOERROR' && return
        sleep 0.1
    done
    echo "$1 did not start; log:" >&2
    cat "$WORK/server.log" >&2
    exit 1
}

declare -A QPS CPU QPC BOTH
# Busy clock ticks of both cores (user, nice, system, irq, softirq).
busy() { awk '/^cpu0 |^cpu1 / {b += $2 + $3 + $4 + $7 + $8} END {print b}' /proc/stat; }
for round in $(seq "$ROUNDS"); do
    for set in $SETS; do
        for server in $CONTENDERS; do
            start_server $server
            case $set in
            paced) queries=hits pace="-Q $PACE" ;;
            *) queries=$set pace="" ;;
            esac
            before=$(awk '{print $14 + $15}' "/proc/$PID/stat")
            busy_before=$(busy)
            start=$(date +%s.%N)
            taskset -c $CLIENT_CPU dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/$queries.txt" -l "$SECONDS_PER_RUN" -c 8 -q 200 $pace >"$WORK/perf.txt" 2>&1
            end=$(date +%s.%N)
            after=$(awk '{print $14 + $15}' "/proc/$PID/stat")
            busy_after=$(busy)
            kill $PID
            wait $PID 2>/dev/null || true
            qps=$(awk '/Queries per second/ {print int($4)}' "$WORK/perf.txt")
            lost=$(awk '/Queries lost/ {print $3}' "$WORK/perf.txt")
            cpu=$(python3 -c "print(round(100 * (($after - $before) / $TICK) / ($end - $start)))")
            qpc=$(python3 -c "print(round($qps * 100 / max($cpu, 1)))")
            both=$(python3 -c "print(round(1e6 * (($busy_after - $busy_before) / $TICK) / ($end - $start) / max($qps, 1), 2))")
            QPS[$set $server]+="$qps "
            CPU[$set $server]+="$cpu "
            QPC[$set $server]+="$qpc "
            BOTH[$set $server]+="$both "
            echo "round $round $set $server: $qps q/s, CPU $cpu %, $qpc q per CPU-second, both cores $both µs per query, lost $lost" >&2
        done
    done
done

echo
echo "| queries | server | queries/s (median of $ROUNDS, min–max) | server CPU | queries per CPU-second (min–max) | both cores' CPU per query, µs (min–max) |"
echo "|---|---|---|---|---|---|"
for set in $SETS; do
    for server in $CONTENDERS; do
        echo "| $set | $server | $(echo "${QPS[$set $server]}" | median) ($(echo "${QPS[$set $server]}" | range)) | $(echo "${CPU[$set $server]}" | median) % | $(echo "${QPC[$set $server]}" | median) ($(echo "${QPC[$set $server]}" | range)) | $(echo "${BOTH[$set $server]}" | median) ($(echo "${BOTH[$set $server]}" | range)) |"
    done
done
