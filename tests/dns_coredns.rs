//! `svcplane dns` judged against CoreDNS, the server it replaces: both follow one real
//! kube-apiserver whose EndpointSlices kube-controller-manager writes, and answer the same table
//! of questions — a row per row of the DNS spec's decision table (§8), per example of §2–§7 and
//! per option of §9, mixed case, clients without EDNS and with EDNS 512 and 1232, UDP and TCP, a
//! headless Service that truncates, AXFR and ANY — identically. Then, while the cluster changes
//! (scale 0→30→0, a rolling replacement, a Service deleted and recreated), both converge to the
//! same answers. svcplane runs with a token whose ClusterRole grants only list and watch on
//! services, endpointslices, namespaces and pods, as docs/dns.md asks of operators.
//!
//! Intended differences are rows of [`INTENDED`], each citing what makes it intended, and listed
//! in docs/dns.md.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_proto::rr::{DNSClass, RecordType};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use support::dns_compare::{Question, Reply, TRANSPORTS, Transport, ask, difference};
use testkit::CoreDns;
use testkit::cluster::{self, Cluster, PodState};
use testkit::process::Watched;

/// How long the servers may take to agree after a change.
const CONVERGE: Duration = Duration::from_secs(90);

/// The RBAC a DNS server needs, as kubeadm grants CoreDNS (its `system:coredns` ClusterRole,
/// bound to kube-system/coredns) and as svcplane's docs ask for `svcplane dns`: list and watch
/// on services, endpointslices, namespaces and pods (CoreDNS's role also names endpoints).
fn rbac() -> Vec<Value> {
    let rule = |group: &str, resources: &[&str]| json!({"apiGroups": [group], "resources": resources, "verbs": ["list", "watch"]});
    let role = |name: &str, rules: Vec<Value>| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": name}, "rules": rules})
    };
    let binding = |name: &str, subject: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
               "subjects": [subject]})
    };
    vec![
        role(
            "system:coredns",
            vec![
                rule("", &["endpoints", "services", "pods", "namespaces"]),
                rule("discovery.k8s.io", &["endpointslices"]),
            ],
        ),
        binding(
            "system:coredns",
            json!({"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}),
        ),
        role(
            "svcplane:dns",
            vec![
                rule("", &["services", "pods", "namespaces"]),
                rule("discovery.k8s.io", &["endpointslices"]),
            ],
        ),
        binding(
            "svcplane:dns",
            json!({"kind": "User", "name": "svcplane:dns", "apiGroup": "rbac.authorization.k8s.io"}),
        ),
    ]
}

/// The test binary's cluster, with the DNS servers' RBAC applied once.
fn cluster() -> &'static Cluster {
    static RBAC: std::sync::Once = std::sync::Once::new();
    let cluster = Cluster::shared();
    RBAC.call_once(|| cluster.apply(&rbac()));
    cluster
}

/// One configuration of the kubernetes plugin, as CoreDNS options and as svcplane flags.
struct Options {
    coredns: &'static str,
    svcplane: &'static [&'static str],
}

/// `pods verified`, `ttl 30` (kubeadm's TTL).
const VERIFIED: Options = Options {
    coredns: "pods verified\n ttl 30",
    svcplane: &["--pods", "verified", "--ttl", "30"],
};
/// `pods insecure` and `endpoint_pod_names`, default TTL.
const POD_NAMES: Options = Options {
    coredns: "pods insecure\n endpoint_pod_names",
    svcplane: &["--pods", "insecure", "--endpoint-pod-names"],
};
/// `namespaces testns` and `ignore empty_service`, pods disabled.
const RESTRICTED: Options = Options {
    coredns: "namespaces testns\n ignore empty_service",
    svcplane: &["--namespaces", "testns", "--ignore-empty-service"],
};
/// `noendpoints`.
const NO_ENDPOINTS: Options = Options {
    coredns: "noendpoints",
    svcplane: &["--noendpoints"],
};

/// `svcplane dns` beside CoreDNS, both with the same options, following `cluster`.
struct Pair {
    svcplane: SvcplaneDns,
    coredns: CoreDns,
}

/// `svcplane dns --kubeconfig` as its own process on a free loopback port.
struct SvcplaneDns {
    process: Watched,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SvcplaneDns {
    /// Starts it for `zones` with `extra` flags and waits until it serves.
    fn start(kubeconfig: &std::path::Path, zones: &str, extra: &[&str]) -> SvcplaneDns {
        let dir = tempfile::tempdir().unwrap();
        let port = testkit::free_dns_port();
        let mut args: Vec<std::ffi::OsString> = vec![
            "dns".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}").into(),
            "--zone".into(),
            zones.into(),
            "--kubeconfig".into(),
            kubeconfig.into(),
        ];
        args.extend(extra.iter().map(Into::into));
        let process = Watched::spawn(
            std::path::Path::new(env!("CARGO_BIN_EXE_svcplane")),
            args,
            &[("RUST_LOG", "info")],
            &dir.path().join("svcplane-dns.log"),
            None,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !process.log().contains("svcplane dns: serving") {
            assert!(
                Instant::now() < deadline,
                "svcplane dns never started: {}",
                process.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SvcplaneDns {
            process,
            port,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        self.process.log()
    }
}

impl Pair {
    fn start(cluster: &Cluster, options: &Options) -> Pair {
        let corefile = format!(
            "cluster.local:{{port}} in-addr.arpa:{{port}} ip6.arpa:{{port}} {{\n bind 127.0.0.1\n \
             ready 127.0.0.1:{{ready}}\n kubernetes cluster.local in-addr.arpa ip6.arpa {{\n \
             kubeconfig {} coredns\n {}\n }}\n}}\n",
            cluster.kubeconfig("coredns").display(),
            options.coredns
        );
        let coredns = CoreDns::start(&corefile);
        let svcplane = SvcplaneDns::start(
            &cluster.kubeconfig("svcplane-dns"),
            "cluster.local,in-addr.arpa,ip6.arpa",
            options.svcplane,
        );
        Pair { svcplane, coredns }
    }

    /// Both replies to `question` over `transport`.
    fn ask(&self, question: &Question, transport: Transport) -> (Reply, Reply) {
        (
            ask(self.svcplane.port, question, transport),
            ask(self.coredns.port, question, transport),
        )
    }

    /// Every difference over every transport for `questions`, intended ones aside.
    fn differences(&self, questions: &[Question]) -> Vec<String> {
        let mut out = Vec::new();
        for question in questions {
            for transport in TRANSPORTS {
                let (ours, theirs) = self.ask(question, transport);
                if let Some(diff) = difference(question, transport, &ours, &theirs)
                    && !intended(question, transport)
                {
                    out.push(diff);
                }
            }
        }
        out
    }

    /// Waits until both servers answer `questions` identically; panics with the differences.
    fn assert_agree(&self, questions: &[Question]) {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let diffs = self.differences(questions);
            if diffs.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "svcplane and CoreDNS still differ after {CONVERGE:?} on {} of {} questions:\n{}\n\
                 svcplane's log:\n{}",
                diffs.len(),
                questions.len(),
                diffs.join("\n"),
                self.svcplane.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Intended differences: (name suffix, qtype, transport or any, why). Each is listed in
/// docs/dns.md with its reason.
const INTENDED: &[(&str, RecordType, Option<Transport>, &str)] = &[];

fn intended(question: &Question, transport: Transport) -> bool {
    INTENDED.iter().any(|(name, qtype, only, _)| {
        question.name.ends_with(name)
            && question.qtype == *qtype
            && only.is_none_or(|t| t == transport)
    })
}

fn q(name: &str, qtype: RecordType) -> Question {
    Question::new(name, qtype)
}

/// `name` in the cluster zone.
fn cz(name: &str) -> String {
    format!("{name}.cluster.local.")
}

/// The reverse-zone name of an address.
fn reverse(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut labels: Vec<String> = v6
                .octets()
                .iter()
                .flat_map(|b| [format!("{:x}", b >> 4), format!("{:x}", b & 0xf)])
                .collect();
            labels.reverse();
            format!("{}.ip6.arpa.", labels.join("."))
        }
    }
}

/// The dashed form of an address, as an endpoint name.
fn dashed(ip: IpAddr) -> String {
    let text = ip.to_string().replace(['.', ':'], "-");
    if text.ends_with('-') {
        format!("{text}0")
    } else {
        text
    }
}

fn pod_json(namespace: &str, name: &str, labels: Value, extra_spec: Value) -> Pod {
    let mut spec = json!({"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
        "ports": [{"name": "web", "containerPort": 8080}]}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": spec,
    }))
    .unwrap()
}

fn service(namespace: &str, body: Value) -> Service {
    let mut value = body;
    value["metadata"]["namespace"] = json!(namespace);
    serde_json::from_value(value).unwrap()
}

async fn create_service(client: &kube::Client, namespace: &str, body: Value) {
    Api::<Service>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &service(namespace, body))
        .await
        .unwrap_or_else(|e| panic!("create a Service in {namespace}: {e}"));
}

/// The DNS spec's test namespace, built as a cluster builds it: Services, pods made Ready (or
/// not, or terminating) by the harness, and the EndpointSlices kube-controller-manager writes
/// for them; one selectorless Service with a hand-written slice; a Service in another
/// namespace. Returns the facts the table's rows are built from.
struct World {
    /// A ready pod behind svc1 and hdls1 respectively, and one behind nothing.
    svc1_pod: IpAddr,
    hdls_pod_v6: IpAddr,
    named_pod: IpAddr,
    lonely_pod: IpAddr,
}

async fn build_world(cluster: &Cluster, client: &kube::Client) -> World {
    let ns = "testns";
    cluster.create_namespace(client, ns).await;
    cluster.create_namespace(client, "othns").await;
    cluster::create_nodes(client, &[("node-a", "zone-a"), ("node-b", "zone-b")]).await;

    let http = json!([{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]);
    create_service(
        client,
        ns,
        json!({"metadata": {"name": "svc1"}, "spec": {
        "clusterIP": "10.96.100.1", "selector": {"app": "svc1"}, "ports": http}}),
    )
    .await;
    create_service(
        client,
        ns,
        json!({"metadata": {"name": "svc-two"}, "spec": {
        "clusterIP": "10.96.100.2", "selector": {"app": "svc1"}, "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "https", "port": 443, "targetPort": 8443}]}}),
    )
    .await;
    create_service(
        client,
        ns,
        json!({"metadata": {"name": "svc-unnamed"}, "spec": {
        "clusterIP": "10.96.100.4", "selector": {"app": "svc1"}, "ports": [{"port": 8080}]}}),
    )
    .await;
    create_service(client, ns, json!({"metadata": {"name": "svc-dual-stack"}, "spec": {
        "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"],
        "clusterIP": "10.96.100.3", "clusterIPs": ["10.96.100.3", "fd00:10:96::3"], "selector": {"app": "dual"}, "ports": http}}))
    .await;
    create_service(
        client,
        ns,
        json!({"metadata": {"name": "svc-empty"}, "spec": {
        "clusterIP": "10.96.100.5", "selector": {"app": "nothing"}, "ports": http}}),
    )
    .await;
    create_service(
        client,
        ns,
        json!({"metadata": {"name": "hdls1"}, "spec": {
        "clusterIP": "None", "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"],
        "selector": {"app": "hdls1"}, "ports": http}}),
    )
    .await;
    create_service(
        client,
        ns,
        json!({"metadata": {"name": "hdls-pnr"}, "spec": {
        "clusterIP": "None", "publishNotReadyAddresses": true,
        "selector": {"app": "pnr"}, "ports": http}}),
    )
    .await;
    create_service(
        client,
        ns,
        json!({"metadata": {"name": "hdlsempty"}, "spec": {
        "clusterIP": "None", "selector": {"app": "nothing"}, "ports": http}}),
    )
    .await;
    create_service(
        client,
        ns,
        json!({"metadata": {"name": "bighdls"}, "spec": {
        "clusterIP": "None", "selector": {"app": "big"}, "ports": http}}),
    )
    .await;
    create_service(
        client,
        ns,
        json!({"metadata": {"name": "external"}, "spec": {
        "type": "ExternalName", "externalName": "ext.interwebs.test"}}),
    )
    .await;
    create_service(
        client,
        ns,
        json!({"metadata": {"name": "internal"}, "spec": {
        "type": "ExternalName", "externalName": "svc1.testns.svc.cluster.local"}}),
    )
    .await;
    create_service(
        client,
        ns,
        json!({"metadata": {"name": "ipname"}, "spec": {
        "type": "ExternalName", "externalName": "1.2.3.4"}}),
    )
    .await;
    create_service(
        client,
        ns,
        json!({"metadata": {"name": "manual"}, "spec": {
        "clusterIP": "None", "ports": [{"name": "http", "port": 80}]}}),
    )
    .await;
    create_service(
        client,
        "othns",
        json!({"metadata": {"name": "svc-other"}, "spec": {
        "clusterIP": "10.96.100.9", "selector": {"app": "other"}, "ports": http}}),
    )
    .await;

    // A hand-written slice for the selectorless Service: one port-less address and one with a
    // hostname, as a user or another controller writes them.
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "manual-1", "namespace": ns, "labels": {
            "kubernetes.io/service-name": "manual",
            "endpointslice.kubernetes.io/managed-by": "someone.example.com"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["192.0.2.1"], "conditions": {"ready": true}, "hostname": "first"},
            {"addresses": ["192.0.2.2"]},
            {"addresses": ["192.0.2.3"], "conditions": {"ready": false}},
        ],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &slice)
        .await
        .unwrap();

    let run = |name: &'static str, labels: Value, spec: Value, state: PodState, dual: bool| {
        let pod = pod_json(ns, name, labels, spec);
        let client = client.clone();
        async move { cluster::run_pod(&client, "node-a", pod, state, dual).await }
    };
    let none = json!({});
    run(
        "svc1-a",
        json!({"app": "svc1"}),
        none.clone(),
        PodState::Ready,
        false,
    )
    .await;
    run(
        "svc1-b",
        json!({"app": "svc1"}),
        none.clone(),
        PodState::Ready,
        false,
    )
    .await;
    run(
        "svc1-c",
        json!({"app": "svc1"}),
        none.clone(),
        PodState::NotReady,
        false,
    )
    .await;
    run(
        "dual-a",
        json!({"app": "dual"}),
        none.clone(),
        PodState::Ready,
        true,
    )
    .await;
    // hdls1: hostnames through spec.hostname + subdomain, a shared hostname, a pod without
    // one, a not-ready pod and a terminating one.
    let hostname = |h: &str| json!({"hostname": h, "subdomain": "hdls1"});
    run(
        "web-0",
        json!({"app": "hdls1"}),
        hostname("web-0"),
        PodState::Ready,
        true,
    )
    .await;
    run(
        "web-1",
        json!({"app": "hdls1"}),
        hostname("dup-name"),
        PodState::Ready,
        true,
    )
    .await;
    run(
        "web-2",
        json!({"app": "hdls1"}),
        hostname("dup-name"),
        PodState::Ready,
        true,
    )
    .await;
    run(
        "hdls1-plain",
        json!({"app": "hdls1"}),
        none.clone(),
        PodState::Ready,
        true,
    )
    .await;
    run(
        "hdls1-unready",
        json!({"app": "hdls1"}),
        none.clone(),
        PodState::NotReady,
        true,
    )
    .await;
    run(
        "hdls1-leaving",
        json!({"app": "hdls1"}),
        none.clone(),
        PodState::Ready,
        true,
    )
    .await;
    run(
        "pnr-0",
        json!({"app": "pnr"}),
        none.clone(),
        PodState::NotReady,
        false,
    )
    .await;
    run(
        "lonely",
        json!({"app": "lonely"}),
        none.clone(),
        PodState::Ready,
        false,
    )
    .await;
    for i in 0..30 {
        let name = format!("big-{i:02}");
        let pod = pod_json(ns, &name, json!({"app": "big"}), none.clone());
        cluster::run_pod(client, "node-b", pod, PodState::Ready, false).await;
    }
    // Terminating: graceful deletion of a bound pod leaves it, with a deletionTimestamp, until
    // a kubelet confirms — and there is none.
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete("hdls1-leaving", &DeleteParams::default())
        .await
        .unwrap();

    World {
        svc1_pod: cluster::pod_ip(ns, "svc1-a", false),
        hdls_pod_v6: cluster::pod_ip(ns, "hdls1-plain", true),
        named_pod: cluster::pod_ip(ns, "web-0", false),
        lonely_pod: cluster::pod_ip(ns, "lonely", false),
    }
}

/// The table for `pods verified`, `ttl 30`: §2–§8 and §11.
fn verified_rows(world: &World) -> Vec<Question> {
    use RecordType::*;
    let t = "testns.svc";
    let mut rows = vec![
        // §2.1 A / AAAA, dual-stack, missing family.
        q(&cz(&format!("svc1.{t}")), A),
        q(&cz(&format!("svc1.{t}")), AAAA),
        q(&cz(&format!("svc-dual-stack.{t}")), A),
        q(&cz(&format!("svc-dual-stack.{t}")), AAAA),
        q(&cz(&format!("svc-empty.{t}")), A),
        // §2.2 SRV: named, bare, two ports, unnamed port, protocol mismatch, no underscores,
        // an empty label, dual-stack weights, port form asked for A.
        q(&cz(&format!("_http._tcp.svc1.{t}")), SRV),
        q(&cz(&format!("svc1.{t}")), SRV),
        q(&cz(&format!("svc-two.{t}")), SRV),
        q(&cz(&format!("_https._tcp.svc-two.{t}")), SRV),
        q(&cz(&format!("svc-unnamed.{t}")), SRV),
        q(&cz(&format!("_grpc._udp.svc1.{t}")), SRV),
        q(&cz(&format!("http.tcp.svc1.{t}")), SRV),
        q(&cz(&format!("_._tcp.svc-two.{t}")), SRV),
        q(&cz(&format!("svc-dual-stack.{t}")), SRV),
        q(&cz(&format!("_http._tcp.svc1.{t}")), A),
        // §2.3 endpoint names under a ClusterIP Service.
        q(&cz(&format!("{}.svc1.{t}", dashed(world.svc1_pod))), A),
        q(&cz(&format!("nosuchpod.svc1.{t}")), A),
        // §3 headless: both families, hostnames, a shared hostname, dashed IPv6, SRV,
        // not-ready and terminating pods left out, publishNotReadyAddresses, empty, port-less
        // hand-written slice.
        q(&cz(&format!("hdls1.{t}")), A),
        q(&cz(&format!("hdls1.{t}")), AAAA),
        q(&cz(&format!("hdls1.{t}")), SRV),
        q(&cz(&format!("_http._tcp.hdls1.{t}")), SRV),
        q(&cz(&format!("web-0.hdls1.{t}")), A),
        q(&cz(&format!("web-0.hdls1.{t}")), AAAA),
        q(&cz(&format!("dup-name.hdls1.{t}")), A),
        q(
            &cz(&format!("{}.hdls1.{t}", dashed(world.hdls_pod_v6))),
            AAAA,
        ),
        q(&cz(&format!("bogusendpoint.hdls1.{t}")), A),
        q(&cz(&format!("hdls-pnr.{t}")), A),
        q(&cz(&format!("hdlsempty.{t}")), A),
        q(&cz(&format!("hdlsempty.{t}")), SRV),
        q(&cz(&format!("manual.{t}")), A),
        q(&cz(&format!("manual.{t}")), SRV),
        q(&cz(&format!("first.manual.{t}")), A),
        q(&cz(&format!("_http._tcp.manual.{t}")), SRV),
        // A headless Service too large for 512 bytes.
        q(&cz(&format!("bighdls.{t}")), A),
        q(&cz(&format!("bighdls.{t}")), SRV),
        // §4 ExternalName: out of zone (nothing to forward to), in zone, an IP, SRV, names
        // below it.
        q(&cz(&format!("external.{t}")), CNAME),
        q(&cz(&format!("external.{t}")), A),
        q(&cz(&format!("external.{t}")), SRV),
        q(&cz(&format!("internal.{t}")), A),
        q(&cz(&format!("internal.{t}")), AAAA),
        q(&cz(&format!("ipname.{t}")), A),
        q(&cz(&format!("x.external.{t}")), A),
        q(&cz(&format!("endpoint.external.{t}")), CNAME),
        // §5 PTR: a ClusterIP, an IPv6 ClusterIP, endpoints (hostname, dashed, IPv6), a pod
        // behind nothing, a forward name in a reverse zone, PTR of a forward name, a partial
        // reverse name.
        q(&reverse("10.96.100.1".parse().unwrap()), PTR),
        q(&reverse("fd00:10:96::3".parse().unwrap()), PTR),
        q(&reverse(world.named_pod), PTR),
        q(&reverse(world.svc1_pod), PTR),
        q(&reverse(world.hdls_pod_v6), PTR),
        q(&reverse(world.lonely_pod), PTR),
        q(&reverse("192.0.2.2".parse().unwrap()), PTR),
        q("svc1.testns.svc.0.10.in-addr.arpa.", A),
        q(&cz(&format!("svc1.{t}")), PTR),
        q("244.10.in-addr.arpa.", PTR),
        // §6 dns-version, SOA, NS, the apex, zone transfers.
        q(&cz("dns-version"), TXT),
        q(&cz("dns-version"), A),
        q("cluster.local.", SOA),
        q("cluster.local.", NS),
        q("cluster.local.", A),
        q("cluster.local.", AAAA),
        q("cluster.local.", SRV),
        q("cluster.local.", HINFO),
        q("cluster.local.", MX),
        q("in-addr.arpa.", SOA),
        q(&cz("ns.dns"), A),
        q(&cz("ns.dns"), AAAA),
        q(&cz("ns.dns"), TXT),
        q(&cz("ns.dns"), SRV),
        q("cluster.local.", AXFR),
        q("cluster.local.", IXFR),
        // §7 pods verified: a live pod, an unknown IP, a non-IP label, the namespace node, an
        // IPv6 pod name asked for A.
        q(&cz(&format!("{}.testns.pod", dashed(world.svc1_pod))), A),
        q(&cz("10-244-255-254.testns.pod"), A),
        q(&cz("blah.testns.pod"), A),
        q(&cz("testns.pod"), A),
        q(&cz(&format!("{}.testns.pod", dashed(world.hdls_pod_v6))), A),
        // §8's table.
        q(&cz(&format!("svc1.{t}")), TXT),
        q(&cz(&format!("svc1.{t}")), SOA),
        q(&cz(&format!("svc0.{t}")), A),
        q(&cz("svc0.nsnoexist.svc"), A),
        q(&cz("testns.svc"), A),
        q(&cz("testns.svc"), NS),
        q(&cz("nsnoexist.svc"), A),
        q(&cz("svc"), A),
        q(&cz("svc"), SRV),
        q(&cz("pod"), A),
        q(&cz("foo"), NS),
        q(&cz("foo.svc"), NS),
        q(&cz(&format!("a.b.c.svc1.{t}")), A),
        q(&cz(&format!("svc0.{t}")), SOA),
        q(&cz(&format!("svc0.{t}")), TXT),
        q(&cz(&format!("svc1.{t}")), ANY),
        q(&cz(&format!("svc1.{t}")), HINFO),
        q(&cz("svc-other.othns.svc"), A),
        // §11 case: owner names echo the question, the zone part follows its spelling.
        q("SvC1.TeStNs.SvC.cLuStEr.LoCaL.", A),
        q("_HTTP._Tcp.SvC1.tEsTnS.sVc.ClUsTeR.lOcAl.", SRV),
        q("HDLS1.testns.svc.CLUSTER.local.", SRV),
        q("Cluster.Local.", SOA),
        q("Cluster.Local.", NS),
        q("SVC0.TESTNS.SVC.CLUSTER.LOCAL.", A),
        // Outside every zone.
        q("example.com.", A),
    ];
    rows.push(q(&cz(&format!("svc1.{t}")), A).class(DNSClass::CH));
    rows
}

/// The table for `endpoint_pod_names` with `pods insecure` (§3.3, §7, §9).
fn pod_name_rows(world: &World) -> Vec<Question> {
    use RecordType::*;
    let t = "testns.svc";
    vec![
        q(&cz(&format!("hdls1.{t}")), SRV),
        q(&cz(&format!("hdls1-plain.hdls1.{t}")), A),
        q(&cz(&format!("web-0.hdls1.{t}")), A),
        q(
            &cz(&format!("{}.hdls1.{t}", dashed(world.hdls_pod_v6))),
            AAAA,
        ),
        q(&cz(&format!("svc1-a.svc1.{t}")), A),
        q(&cz(&format!("{}.svc1.{t}", dashed(world.svc1_pod))), A),
        q(&reverse(world.svc1_pod), PTR),
        q(&reverse(world.hdls_pod_v6), PTR),
        q(&cz(&format!("first.manual.{t}")), A),
        q(&cz(&format!("manual.{t}")), SRV),
        q(&cz("1-2-3-4.testns.pod"), A),
        q(&cz("fd00--1.testns.pod"), AAAA),
        q(&cz("fd00--1.testns.pod"), A),
        q(&cz("1-2-3-4.nsnoexist.pod"), A),
        q(&cz("blah.testns.pod"), A),
        q(&cz("testns.pod"), A),
        q(&cz(&format!("svc1.{t}")), A),
    ]
}

/// The table for `namespaces testns` with `ignore empty_service` (§8, §9).
fn restricted_rows() -> Vec<Question> {
    use RecordType::*;
    let t = "testns.svc";
    vec![
        q(&cz(&format!("svc1.{t}")), A),
        q(&cz(&format!("svc-empty.{t}")), A),
        q(&cz(&format!("svc-empty.{t}")), SRV),
        q(&cz(&format!("hdlsempty.{t}")), A),
        q(&cz("svc-other.othns.svc"), A),
        q(&cz("othns.svc"), A),
        q(&cz("testns.svc"), A),
        q(&reverse("10.96.100.9".parse().unwrap()), PTR),
        q(&reverse("10.96.100.5".parse().unwrap()), PTR),
        q(&cz("1-2-3-4.testns.pod"), A),
        q(&cz("testns.pod"), A),
        q(&cz("pod"), A),
    ]
}

/// The table for `noendpoints` (§9).
fn no_endpoint_rows(world: &World) -> Vec<Question> {
    use RecordType::*;
    let t = "testns.svc";
    vec![
        q(&cz(&format!("svc1.{t}")), A),
        q(&cz(&format!("svc1.{t}")), SRV),
        q(&cz(&format!("hdls1.{t}")), A),
        q(&cz(&format!("web-0.hdls1.{t}")), A),
        q(&cz(&format!("{}.svc1.{t}", dashed(world.svc1_pod))), A),
        q(&reverse(world.svc1_pod), PTR),
        q(&reverse("10.96.100.1".parse().unwrap()), PTR),
        q(&cz(&format!("external.{t}")), CNAME),
        q(&cz(&format!("internal.{t}")), A),
    ]
}

/// Waits until kube-controller-manager has written what the table relies on: 30 ready
/// endpoints for bighdls, the IPv6 slice of hdls1 and svc1's two ready pods.
async fn wait_for_slices(client: &kube::Client) {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "testns");
    let ready = |slices: &[EndpointSlice], service: &str, family: &str| -> usize {
        slices
            .iter()
            .filter(|s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    == Some(&service.to_string())
                    && s.address_type == family
            })
            .flat_map(|s| s.endpoints.iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .count()
    };
    let deadline = Instant::now() + CONVERGE;
    loop {
        let slices = api.list(&Default::default()).await.unwrap().items;
        if ready(&slices, "bighdls", "IPv4") == 30
            && ready(&slices, "hdls1", "IPv6") == 4
            && ready(&slices, "svc1", "IPv4") == 2
            && ready(&slices, "hdls-pnr", "IPv4") == 1
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kube-controller-manager did not write the expected slices: {slices:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn svcplane_and_coredns_answer_the_spec_table_identically() {
    let cluster = cluster();
    let admin = cluster.client("admin").await;
    let world = build_world(cluster, &admin).await;
    wait_for_slices(&admin).await;

    let verified = Pair::start(cluster, &VERIFIED);
    let rows = verified_rows(&world);
    verified.assert_agree(&rows);

    // The agreement is about real answers, not two servers failing alike.
    let (ours, _) = verified.ask(&q(&cz("svc1.testns.svc"), RecordType::A), Transport::Udp);
    assert_eq!(
        ours.answers_of("A"),
        BTreeSet::from(["10.96.100.1".to_string()])
    );
    let (ours, _) = verified.ask(
        &q(&cz("hdls1.testns.svc"), RecordType::AAAA),
        Transport::Tcp,
    );
    assert_eq!(ours.answers_of("AAAA").len(), 4, "{ours}");
    let (ours, _) = verified.ask(&q(&cz("bighdls.testns.svc"), RecordType::A), Transport::Udp);
    assert!(ours.tc, "30 A records do not fit in 512 bytes: {ours}");
    let (ours, _) = verified.ask(&q(&cz("bighdls.testns.svc"), RecordType::A), Transport::Tcp);
    assert_eq!(ours.answers_of("A").len(), 30, "{ours}");
    let (ours, _) = verified.ask(
        &q(&reverse(world.named_pod), RecordType::PTR),
        Transport::Udp,
    );
    assert_eq!(
        ours.answers_of("PTR"),
        BTreeSet::from(["web-0.hdls1.testns.svc.cluster.local.".to_string()])
    );

    let pod_names = Pair::start(cluster, &POD_NAMES);
    pod_names.assert_agree(&pod_name_rows(&world));
    let restricted = Pair::start(cluster, &RESTRICTED);
    restricted.assert_agree(&restricted_rows());
    let no_endpoints = Pair::start(cluster, &NO_ENDPOINTS);
    no_endpoints.assert_agree(&no_endpoint_rows(&world));
}

/// `labels` and `namespace_labels`, and the same for svcplane as flags.
const LABELED: Options = Options {
    coredns: "labels tier in (web, api)\n namespace_labels dns=on",
    svcplane: &[
        "--labels",
        "tier in (web, api)",
        "--namespace-labels",
        "dns=on",
    ],
};

#[tokio::test(flavor = "multi_thread")]
async fn svcplane_and_coredns_select_services_and_namespaces_by_label_alike() {
    let cluster = cluster();
    let mut objects = Vec::new();
    for (ns, on) in [("lbl-on", "on"), ("lbl-off", "off")] {
        objects.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"dns": on}}}));
        for (name, tier) in [
            ("web", Some("web")),
            ("api", Some("api")),
            ("db", Some("db")),
            ("bare", None),
        ] {
            let labels = match tier {
                Some(t) => json!({"tier": t}),
                None => json!({}),
            };
            objects.push(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}));
            let mut slice_labels = json!({"kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "test.svcplane.io"});
            if let Some(t) = tier {
                slice_labels["tier"] = json!(t);
            }
            objects.push(
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-1"), "namespace": ns, "labels": slice_labels},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.20.0.1"], "conditions": {"ready": true}}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
            );
        }
        // Headless, labelled, but its slice is not: no endpoints pass the selector.
        objects.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "hl", "namespace": ns, "labels": {"tier": "web"}},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}}));
        objects.push(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "hl-1", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": "hl"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.20.0.2"], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
        );
    }
    cluster.apply(&objects);
    let pair = Pair::start(cluster, &LABELED);
    let mut rows = Vec::new();
    for ns in ["lbl-on", "lbl-off"] {
        for name in ["web", "api", "db", "bare", "hl"] {
            let svc = cz(&format!("{name}.{ns}.svc"));
            rows.push(q(&svc, RecordType::A));
            rows.push(q(&format!("_http._tcp.{svc}"), RecordType::SRV));
        }
    }
    // Until both have seen the objects, then every row alike.
    let probe = q(&cz("web.lbl-on.svc"), RecordType::A);
    let deadline = Instant::now() + CONVERGE;
    while pair.ask(&probe, Transport::Tcp).0.answer.is_empty()
        || pair.ask(&probe, Transport::Tcp).1.answer.is_empty()
    {
        assert!(Instant::now() < deadline, "{}", pair.svcplane.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    pair.assert_agree(&rows);
    // What the selectors let through, from svcplane's side.
    let rcode = |name: &str| {
        pair.ask(&q(&cz(name), RecordType::A), Transport::Tcp)
            .0
            .rcode
    };
    assert_eq!(rcode("web.lbl-on.svc"), "NoError");
    assert_eq!(rcode("api.lbl-on.svc"), "NoError");
    assert_eq!(rcode("db.lbl-on.svc"), "NXDomain");
    assert_eq!(rcode("bare.lbl-on.svc"), "NXDomain");
    assert_eq!(rcode("web.lbl-off.svc"), "NXDomain");
}

/// The answers both servers give for `service`'s addresses and SRV records, over TCP.
fn churn_rows(service: &str) -> Vec<Question> {
    vec![
        q(&cz(&format!("{service}.churn.svc")), RecordType::A),
        q(&cz(&format!("{service}.churn.svc")), RecordType::SRV),
        q(
            &cz(&format!("_http._tcp.{service}.churn.svc")),
            RecordType::SRV,
        ),
    ]
}

/// Waits until svcplane alone answers `question` over TCP with exactly `expected` A records.
fn wait_for_addresses(pair: &Pair, question: &Question, expected: &BTreeSet<String>) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let (ours, theirs) = pair.ask(question, Transport::Tcp);
        if ours.answers_of("A") == *expected && theirs.answers_of("A") == *expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{question}: expected {expected:?}\n svcplane:\n{ours} CoreDNS:\n{theirs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn svcplane_and_coredns_converge_while_the_cluster_changes() {
    let cluster = cluster();
    let admin = cluster.client("admin").await;
    let ns = "churn";
    cluster.create_namespace(&admin, ns).await;
    cluster::create_nodes(&admin, &[("node-a", "zone-a"), ("node-b", "zone-b")]).await;
    let http = json!([{"name": "http", "port": 80, "targetPort": 8080}]);
    create_service(
        &admin,
        ns,
        json!({"metadata": {"name": "scaled"}, "spec": {
        "clusterIP": "None", "selector": {"app": "scaled"}, "ports": http}}),
    )
    .await;
    create_service(
        &admin,
        ns,
        json!({"metadata": {"name": "reborn"}, "spec": {
        "clusterIP": "10.96.101.1", "selector": {"app": "scaled"}, "ports": http}}),
    )
    .await;
    let pair = Pair::start(cluster, &VERIFIED);
    let scaled_a = q(&cz("scaled.churn.svc"), RecordType::A);

    // Scale 0 → 30.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let mut expected = BTreeSet::new();
    for i in 0..30 {
        let name = format!("v1-{i:02}");
        let pod = pod_json(
            ns,
            &name,
            json!({"app": "scaled", "version": "v1"}),
            json!({}),
        );
        cluster::run_pod(
            &admin,
            if i % 2 == 0 { "node-a" } else { "node-b" },
            pod,
            PodState::Ready,
            false,
        )
        .await;
        expected.insert(cluster::pod_ip(ns, &name, false).to_string());
    }
    wait_for_addresses(&pair, &scaled_a, &expected);
    pair.assert_agree(&churn_rows("scaled"));

    // A rolling replacement, 5 at a time: new pods come up Ready, old ones go not-ready and are
    // deleted.
    for batch in 0..6 {
        for i in batch * 5..batch * 5 + 5 {
            let name = format!("v2-{i:02}");
            let pod = pod_json(
                ns,
                &name,
                json!({"app": "scaled", "version": "v2"}),
                json!({}),
            );
            cluster::run_pod(&admin, "node-a", pod, PodState::Ready, false).await;
            expected.insert(cluster::pod_ip(ns, &name, false).to_string());
            let old = format!("v1-{i:02}");
            cluster::set_pod_state(&admin, ns, &old, PodState::NotReady, false).await;
            pods.delete(&old, &DeleteParams::default().grace_period(0))
                .await
                .unwrap();
            expected.remove(&cluster::pod_ip(ns, &old, false).to_string());
        }
        pair.assert_agree(&churn_rows("scaled"));
    }
    wait_for_addresses(&pair, &scaled_a, &expected);

    // Scale 30 → 0: a headless Service without ready endpoints is NXDOMAIN on both.
    for i in 0..30 {
        pods.delete(
            &format!("v2-{i:02}"),
            &DeleteParams::default().grace_period(0),
        )
        .await
        .unwrap();
    }
    wait_for_addresses(&pair, &scaled_a, &BTreeSet::new());
    let (ours, _) = pair.ask(&scaled_a, Transport::Udp);
    assert_eq!(ours.rcode, "NXDomain", "{ours}");
    pair.assert_agree(&churn_rows("scaled"));

    // A Service deleted and recreated at once with another ClusterIP.
    let services: Api<Service> = Api::namespaced(admin.clone(), ns);
    let reborn_a = q(&cz("reborn.churn.svc"), RecordType::A);
    wait_for_addresses(
        &pair,
        &reborn_a,
        &BTreeSet::from(["10.96.101.1".to_string()]),
    );
    services
        .delete("reborn", &DeleteParams::default())
        .await
        .unwrap();
    create_service(
        &admin,
        ns,
        json!({"metadata": {"name": "reborn"}, "spec": {
        "clusterIP": "10.96.101.2", "selector": {"app": "scaled"}, "ports": http}}),
    )
    .await;
    wait_for_addresses(
        &pair,
        &reborn_a,
        &BTreeSet::from(["10.96.101.2".to_string()]),
    );
    let mut rows = churn_rows("reborn");
    rows.push(q(&reverse("10.96.101.1".parse().unwrap()), RecordType::PTR));
    rows.push(q(&reverse("10.96.101.2".parse().unwrap()), RecordType::PTR));
    pair.assert_agree(&rows);
}

#[tokio::test(flavor = "multi_thread")]
async fn svcplane_dns_without_the_endpointslices_grant_is_not_ready_and_names_the_kind() {
    let cluster = cluster();
    // An identity of its own, granted everything but endpointslices.
    let name = "svcplane:dns-limited";
    cluster.apply(&[
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": name},
                "rules": [{"apiGroups": [""], "resources": ["services", "pods", "namespaces"],
                           "verbs": ["list", "watch"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"kind": "User", "name": "svcplane:dns-limited",
                              "apiGroup": "rbac.authorization.k8s.io"}]}),
        ],
    );
    let admin = cluster.client("admin").await;
    cluster.create_namespace(&admin, "limited").await;
    create_service(
        &admin,
        "limited",
        json!({"metadata": {"name": "web"}, "spec": {
        "clusterIP": "10.96.102.1", "ports": [{"port": 80}]}}),
    )
    .await;

    let dns = SvcplaneDns::start(
        &cluster.kubeconfig("svcplane-dns-limited"),
        "cluster.local",
        &["--startup-timeout", "1s"],
    );
    let port = dns.port;
    // Never synced: a name that does not exist is SERVFAIL, never NXDOMAIN (spec §10).
    let missing = q(&cz("nothere.limited.svc"), RecordType::A);
    let reply = ask(port, &missing, Transport::Udp);
    assert_eq!(reply.rcode, "ServFail", "{reply}");
    // It says which kind it cannot watch and what to grant.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dns.log().contains("cannot list or watch endpointslices") {
        assert!(
            Instant::now() < deadline,
            "svcplane dns did not name the kind it cannot watch: {}",
            dns.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Granted, it syncs and answers.
    cluster.apply(&[
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]}),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = ask(port, &missing, Transport::Udp);
        if reply.rcode == "NXDomain" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never synced: {reply}\n{}",
            dns.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let reply = ask(
        port,
        &q(&cz("web.limited.svc"), RecordType::A),
        Transport::Udp,
    );
    assert_eq!(
        reply.answers_of("A"),
        BTreeSet::from(["10.96.102.1".to_string()])
    );
}
