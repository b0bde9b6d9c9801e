#!/usr/bin/env bash
# What `svcplane dns` holds, against the size of the cluster: for each SERVICES:ENDPOINTS pair,
# bench/dns_gen.py's data (ENDPOINTS ready endpoints per headless Service) served from manifests
# with kubeadm's Corefile, pinned to one core (one UDP thread). Reads RSS once the load has
# settled (15 s, so freed pages have been returned), then after one pass over the query file
# (every distinct question asked, so kept as bytes) and 15 s more; counts the distinct questions
# and the bytes of their whole replies (asked once more with EDNS and a 65535-byte buffer, so
# nothing is cut: a kept reply is kept whole, and cut per client when it is sent). Then fits
#     RSS = BASE + PER_SERVICE × Services + PER_ENDPOINT × endpoints      (settled after load)
#     kept = PER_ANSWER × questions + PER_REPLY_BYTE × reply bytes          (queried − settled)
# by least squares and prints each row's prediction error (PER_REPLY_BYTE is below 1 where
# templates keep repetitive records compressed, as a headless Service's are).
#
#   bench/dns_memory.sh [SERVICES:ENDPOINTS ...]   (default 1000:3 10000:3 10000:30 30000:3 100000:3)
#
# Needs Debian's dnsperf (installed here if missing) and python3.
set -euo pipefail
CASES=${*:-1000:3 10000:3 10000:30 30000:3 100000:3}
SERVER_CPU=1
CLIENT_CPU=0
cd "$(dirname "$0")/.."
. bench/lib.sh
command -v dnsperf >/dev/null || apt-get install -y dnsperf >/dev/null
# SVCPLANE=path measures that binary instead of this checkout's release build.
if [ -z "${SVCPLANE:-}" ]; then
    cargo build --release --quiet
    SVCPLANE=$PWD/target/release/svcplane
fi
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

ROWS=$WORK/rows
: >"$ROWS"
for case in $CASES; do
    n=${case%%:*}
    e=${case##*:}
    mkdir -p "$WORK/$case"
    python3 bench/dns_gen.py "$n" "$WORK/$case" "$e"
    PORT=$(port)
    kubeadm_corefile "$PORT" "$(port)" "manifests $WORK/$case/manifests.yaml" >"$WORK/Corefile"
    taskset -c $SERVER_CPU "$SVCPLANE" dns --conf "$WORK/Corefile" 2>"$WORK/server.log" &
    PID=$!
    wait_for_dns "$PORT" || { cat "$WORK/server.log" >&2; exit 1; }
    sleep 15
    settled=$(rss $PID)
    taskset -c $CLIENT_CPU dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/$case/queries.txt" -n 1 -c 8 -q 200 >/dev/null 2>&1
    sleep 15
    queried=$(rss $PID)
    read -r questions reply_bytes < <(python3 - "$PORT" "$WORK/$case/queries.txt" <<'PY'
import socket, struct, sys
port, path = int(sys.argv[1]), sys.argv[2]
types = {"A": 1, "AAAA": 28, "SRV": 33, "PTR": 12}
distinct = sorted(set(tuple(line.split()) for line in open(path) if line.strip()))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
total = 0
for i, (name, qtype) in enumerate(distinct):
    wire = b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".")) + b"\0"
    opt = b"\0" + struct.pack(">HHIH", 41, 65535, 0, 0)
    s.sendto(struct.pack(">HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 1) + wire + struct.pack(">HH", types[qtype], 1) + opt, ("127.0.0.1", port))
    # Without the OPT record the reply carries for this question.
    total += len(s.recv(65535)) - len(opt)
print(len(distinct), total)
PY
)
    kill -KILL $PID
    wait $PID 2>/dev/null || true
    endpoints=$(( (n / 3) * e ))
    echo "$n $endpoints $questions $reply_bytes $settled $queried" >>"$ROWS"
    echo "services $n, endpoints $endpoints: RSS settled $((settled / 1024)) MiB, after asking $questions questions ($reply_bytes reply bytes) $((queried / 1024)) MiB" >&2
done

python3 - "$ROWS" <<'PY'
import sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]

def solve(a, b):
    """Least squares: the x minimising |a x - b| (normal equations, Gaussian elimination)."""
    n = len(a[0])
    m = [[sum(r[i] * r[j] for r in a) for j in range(n)] + [sum(r[i] * y for r, y in zip(a, b))] for i in range(n)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[p] = m[p], m[c]
        for r in range(n):
            if r != c:
                f = m[r][c] / m[c][c]
                m[r] = [x - f * y for x, y in zip(m[r], m[c])]
    return [m[i][n] / m[i][i] for i in range(n)]

KIB = 1024
base, per_service, per_endpoint = solve([[1, s, e] for s, e, *_ in rows], [st * KIB for *_, st, q in rows])
per_answer, per_byte = solve([[q, rb] for _, _, q, rb, *_ in rows], [(qd - st) * KIB for *_, st, qd in rows])
print()
print(f"BASE {base / 2**20:.1f} MiB, PER_SERVICE {per_service:.0f} B, PER_ENDPOINT {per_endpoint:.0f} B, PER_ANSWER {per_answer:.0f} B + {per_byte:.2f} × its reply")
print()
print("| Services | endpoints | questions kept | their replies (KiB) | RSS settled (MiB) | predicted | RSS after the queries (MiB) | predicted | error |")
print("|---|---|---|---|---|---|---|---|---|")
for s, e, q, rb, st, qd in rows:
    p_st = base + per_service * s + per_endpoint * e
    p_qd = p_st + per_answer * q + per_byte * rb
    print(f"| {s:,} | {e:,} | {q:,} | {rb // KIB:,} | {st / KIB:.1f} | {p_st / 2**20:.1f} | {qd / KIB:.1f} | {p_qd / 2**20:.1f} | {100 * (p_qd / (qd * KIB) - 1):+.1f} % |".replace(",", " "))
PY
