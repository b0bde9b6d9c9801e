#!/usr/bin/env python3
"""Generates the DNS benchmark's data set: N Services over 100 namespaces (two in three ClusterIP
with an `http` port, one in three headless with E ready endpoints, 3 unless given), as Kubernetes
manifests for `svcplane dns --manifests`, as the equivalent `cluster.local` zone file for Knot DNS,
and a dnsperf query file: 70% A hits, 10% SRV, 10% NXDOMAIN, 10% AAAA NODATA.

usage: dns_gen.py N OUTDIR [E]
"""
import random
import sys

n = int(sys.argv[1])
out = sys.argv[2]
per_headless = int(sys.argv[3]) if len(sys.argv) > 3 else 3
random.seed(42)
NAMESPACES = 100
TTL = 5


def cluster_ip(i):
    # From 10.96.0.16 on: kube-apiserver (for the coredns-k8s contender) refuses the network
    # address and gives 10.96.0.1 to the kubernetes Service.
    i += 16
    return f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def endpoint_ip(i, k):
    j = i * per_headless + k
    return f"10.{128 + j // 65536}.{(j // 256) % 256}.{j % 256}"


services = []
for i in range(n):
    ns = f"ns{i % NAMESPACES}"
    headless = i % 3 == 2
    services.append((f"svc{i}", ns, headless, i))

with open(f"{out}/manifests.yaml", "w") as m:
    for j in range(NAMESPACES):
        m.write(f"---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{j}}}\n")
    for name, ns, headless, i in services:
        ip = "None" if headless else cluster_ip(i)
        m.write(
            f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80, protocol: TCP}}]}}\n"
        )
        if headless:
            eps = "".join(f"- addresses: [{endpoint_ip(i, k)}]\n" for k in range(per_headless))
            m.write(
                f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
                f"metadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n"
                f"addressType: IPv4\nports: [{{name: http, port: 80, protocol: TCP}}]\nendpoints:\n{eps}"
            )

with open(f"{out}/cluster.local.zone", "w") as z:
    z.write(f"$ORIGIN cluster.local.\n$TTL {TTL}\n")
    z.write(f"@ SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 {TTL}\n")
    z.write("@ NS ns.dns\nns.dns A 127.0.0.1\ndns-version TXT \"1.1.0\"\n")
    for name, ns, headless, i in services:
        owner = f"{name}.{ns}.svc"
        if headless:
            eps = [endpoint_ip(i, k) for k in range(per_headless)]
            w = max(1, 100 // per_headless)
            for ip in eps:
                dashed = ip.replace(".", "-")
                z.write(f"{owner} A {ip}\n{dashed}.{owner} A {ip}\n")
                z.write(f"_http._tcp.{owner} SRV 0 {w} 80 {dashed}.{owner}.cluster.local.\n")
                z.write(f"{owner} SRV 0 {w} 80 {dashed}.{owner}.cluster.local.\n")
        else:
            z.write(f"{owner} A {cluster_ip(i)}\n")
            z.write(f"_http._tcp.{owner} SRV 0 100 80 {owner}.cluster.local.\n{owner} SRV 0 100 80 {owner}.cluster.local.\n")

with open(f"{out}/queries.txt", "w") as q:
    for _ in range(100_000):
        name, ns, headless, i = random.choice(services)
        r = random.random()
        if r < 0.7:
            q.write(f"{name}.{ns}.svc.cluster.local A\n")
        elif r < 0.8:
            q.write(f"_http._tcp.{name}.{ns}.svc.cluster.local SRV\n")
        elif r < 0.9:
            q.write(f"missing{i}.{ns}.svc.cluster.local A\n")
        else:
            q.write(f"{name}.{ns}.svc.cluster.local AAAA\n")
