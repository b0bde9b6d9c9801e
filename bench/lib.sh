# Helpers the benchmark scripts share (sourced from the repository root).

# A loopback port free for both TCP and UDP (servers bind both, or take a TCP port for HTTP).
port() { python3 -c '
import socket
while True:
    t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
'; }
# Clock ticks per second, the unit of /proc's CPU times.
TICK=$(getconf CLK_TCK)
# The median and the min–max of the numbers on stdin, separated by spaces or lines.
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
range() { tr ' ' '\n' | grep -v '^$' | sort -n | awk 'NR==1 {lo=$1} {hi=$1} END {print lo "–" hi}'; }

# kubeadm's Corefile (v1.37, `kubeadm init phase addon coredns --print-manifest`) on loopback:
# kubeadm_corefile PORT PROMETHEUS_PORT SOURCE, SOURCE the kubernetes block's line that says
# where the objects come from (`manifests FILE` or `kubeconfig FILE CONTEXT`).
kubeadm_corefile() {
    cat <<COREFILE
.:$1 {
    bind 127.0.0.1
    errors
    health 127.0.0.1:$(port) {
       lameduck 5s
    }
    ready 127.0.0.1:$(port)
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
       $3
    }
    prometheus 127.0.0.1:$2
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload
    loadbalance
}
COREFILE
}

# Starts testkit's bench_cluster (kube-apiserver and etcd) loaded with $WORK/manifests.yaml, its
# standard input on file descriptor 3, and waits until it is ready (90 min at most: each
# ClusterIP Service kube-apiserver v1.37 creates lists every IPAddress to update its allocator's
# metrics, so loading N of them takes time quadratic in N — 58 minutes for 100 000
# Services on the second machine); sets KUBECONFIG_FILE, APISERVER_PGID and ETCD_PGID. Needs
# WORK and PEERS.
start_bench_cluster() {
    mkfifo "$WORK/cluster.stdin"
    SVCPLANE_PEERS=$PEERS target/release/examples/bench_cluster "$WORK/manifests.yaml" <"$WORK/cluster.stdin" >"$WORK/cluster.out" 2>"$WORK/cluster.log" &
    exec 3>"$WORK/cluster.stdin"
    for _ in $(seq 27000); do grep -q '^ready ' "$WORK/cluster.out" && break; sleep 0.2; done
    grep -q '^ready ' "$WORK/cluster.out" || { echo "the bench cluster did not start:" >&2; cat "$WORK/cluster.log" >&2; exit 1; }
    read -r _ KUBECONFIG_FILE APISERVER_PGID ETCD_PGID <"$WORK/cluster.out"
    cat "$WORK/cluster.log" >&2
}

# Waits (up to 5 min) until the DNS server on PORT answers svc0.ns0 (dns_gen.py's first Service).
wait_for_dns() {
    for _ in $(seq 3000); do
        dig @127.0.0.1 -p "$1" +time=1 +tries=1 svc0.ns0.svc.cluster.local A 2>/dev/null | grep -q 'status: NOERROR' && return 0
        sleep 0.1
    done
    return 1
}
