//! The Corefiles clusters bring — kubeadm's (newer and older), k3s's (NodeHosts, `import` of a
//! `coredns-custom` ConfigMap's `*.override` and `*.server` files) and a kube-dns ConfigMap's
//! stub domains as kubeadm translates them — in `svcplane dns` and in CoreDNS, compared.
//!
//! kubeadm's Corefile comes from the peers' kubeadm itself (`kubeadm init phase addon coredns --print-manifest`), and svcplane
//! runs it unedited, told its ports, bind address and resolv.conf by flags. CoreDNS runs a copy
//! in which the test changes only the ports, adds a `bind` line, names the upstream in place of
//! `/etc/resolv.conf` (a resolv.conf cannot carry a port for CoreDNS) and adds a `kubeconfig`
//! line (CoreDNS runs outside a pod). k3s's paths under `/etc/coredns` stand for a folder of
//! each server's, and a stub domain's nameserver for a second Unbound. Both servers follow one
//! kube-apiserver and forward to one loopback Unbound serving a test zone and NXDOMAIN for the
//! rest.
//!
//! A table of questions — cluster names, external names (A, AAAA, MX, TXT, NXDOMAIN, a TTL
//! under the cache's minimum, an answer that truncates over UDP), PTRs that fall through,
//! ExternalName Services pointing outside — gets identical answers over UDP with and without
//! EDNS and over TCP (cached TTLs within 1 s). Then: a Service created or deleted is visible on
//! the next query (the Corefile does not cache `cluster.local`); metrics carry CoreDNS's names
//! and label names and move by the same amounts for the same queries; an upstream that stops
//! gives SERVFAIL, an `errors` line and failed health checks in both.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use serde_json::json;
use support::dns_compare::{Question, Reply, TRANSPORTS, Transport, ask};
use testkit::process::Watched;
use testkit::{CoreDns, Unbound, cluster::Cluster};

/// The namespace of this test's Services.
const NS: &str = "kubeadm";

/// The upstream's zone: two addresses, MX, TXT, a TTL below the cache's 5 s minimum, and a
/// TXT set too large for a 512-byte UDP reply.
fn upstream_records() -> Vec<String> {
    let mut records = vec![
        "www.example.org. 300 IN A 192.0.2.10".to_string(),
        "www.example.org. 300 IN A 192.0.2.11".to_string(),
        "www.example.org. 300 IN AAAA 2001:db8::10".to_string(),
        "example.org. 300 IN MX 10 mail.example.org.".to_string(),
        "example.org. 300 IN MX 20 mail2.example.org.".to_string(),
        "example.org. 300 IN TXT \"v=test\"".to_string(),
        "short.example.org. 2 IN A 192.0.2.20".to_string(),
    ];
    for i in 0..12 {
        records.push(format!(
            "big.example.org. 300 IN TXT \"{i:02}-{}\"",
            "x".repeat(60)
        ));
    }
    for i in 0..40 {
        records.push(format!(
            "n{i}.batch.example.org. 300 IN A 192.0.2.{}",
            100 + i
        ));
    }
    records
}

/// kubeadm's Corefile as the peers' kubeadm renders it into the `coredns` ConfigMap.
fn kubeadm_corefile() -> String {
    let out = std::process::Command::new(testkit::peer("kubeadm"))
        .args([
            "init",
            "phase",
            "addon",
            "coredns",
            "--print-manifest",
            "--kubernetes-version",
            "v1.37.2",
        ])
        .output()
        .expect("run kubeadm");
    assert!(
        out.status.success(),
        "kubeadm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = String::from_utf8_lossy(&out.stdout);
    let mut lines = manifest.lines().skip_while(|l| l.trim() != "Corefile: |");
    lines.next().expect("kubeadm's ConfigMap has a Corefile");
    let mut corefile = String::new();
    for line in lines {
        let Some(text) = line.strip_prefix("    ") else {
            break;
        };
        corefile.push_str(text);
        corefile.push('\n');
    }
    assert!(corefile.starts_with(".:53 {"), "{corefile}");
    corefile
}

/// `text` with `from` replaced by `to`, which must occur exactly once.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} in:\n{text}");
    text.replacen(from, to, 1)
}

/// `svcplane dns` running the Corefile, on its own ports.
struct Svcplane {
    process: Watched,
    port: u16,
    ready_port: u16,
    metrics_port: u16,
    _dir: tempfile::TempDir,
}

/// CoreDNS and svcplane on the same Corefile, and the upstream they share.
struct Pair {
    svcplane: Svcplane,
    coredns: CoreDns,
    coredns_metrics: u16,
    /// Taken away to stop it.
    unbound: Option<Unbound>,
    /// CoreDNS's copies of the files: it reads them at start and on reload.
    _coredns_files: tempfile::TempDir,
}

/// The kubeadm Corefile, run by both servers.
fn start(cluster: &Cluster) -> Pair {
    start_with(cluster, &kubeadm_corefile(), &[], None)
}

/// svcplane and CoreDNS on `corefile`, both forwarding to one Unbound. `files` are written
/// into a folder of each server's, which `{files}` in the Corefile and in the files stands
/// for; `{stub}` stands for the address of `stub`, a second upstream.
fn start_with(
    cluster: &Cluster,
    corefile: &str,
    files: &[(&str, &str)],
    stub: Option<&Unbound>,
) -> Pair {
    let records = upstream_records();
    let unbound = Unbound::start(&records.iter().map(String::as_str).collect::<Vec<_>>());
    let kubeconfig = cluster.kubeconfig("admin");
    let stub = stub.map_or(String::new(), |s| format!("127.0.0.1:{}", s.port));
    let placed = |text: &str, dir: &std::path::Path| {
        text.replace("{files}", &dir.display().to_string())
            .replace("{stub}", &stub)
    };

    // svcplane: the Corefile as given; the rest by flags.
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        support::write(dir.path(), name, &placed(text, dir.path()));
    }
    let path = support::write(dir.path(), "Corefile", &placed(corefile, dir.path()));
    let resolv = support::write(
        dir.path(),
        "resolv.conf",
        &format!("nameserver 127.0.0.1:{}\n", unbound.port),
    );
    let (port, health, ready_port, metrics_port) = (
        testkit::free_dns_port(),
        testkit::free_port(),
        testkit::free_port(),
        testkit::free_port(),
    );
    let args: Vec<std::ffi::OsString> = vec![
        "dns".into(),
        "--conf".into(),
        path.into(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--dns-port".into(),
        port.to_string().into(),
        "--health-port".into(),
        health.to_string().into(),
        "--ready-port".into(),
        ready_port.to_string().into(),
        "--metrics-port".into(),
        metrics_port.to_string().into(),
        "--resolv-conf".into(),
        resolv.into(),
    ];
    let kubeconfig_env = kubeconfig.display().to_string();
    let process = Watched::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_svcplane")),
        args,
        &[("KUBECONFIG", &kubeconfig_env), ("RUST_LOG", "info")],
        &dir.path().join("svcplane-dns.log"),
        None,
    );
    let svcplane = Svcplane {
        process,
        port,
        ready_port,
        metrics_port,
        _dir: dir,
    };

    // CoreDNS: a copy with its ports, a bind line, the upstream and a kubeconfig; its files
    // with their blocks' ports and bind lines too.
    let (coredns_port, coredns_metrics) = (testkit::free_dns_port(), testkit::free_port());
    let coredns_files = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let text = placed(text, coredns_files.path())
            .replace(":53 {", &format!(":{coredns_port} {{\n    bind 127.0.0.1"));
        support::write(coredns_files.path(), name, &text);
    }
    let copy = placed(corefile, coredns_files.path())
        .replace(":53 {", ":{port} {\n    bind 127.0.0.1")
        .replace("/etc/resolv.conf", &format!("127.0.0.1:{}", unbound.port));
    let health_at = format!("health 127.0.0.1:{}", testkit::free_port());
    let copy = if copy.contains("health {") {
        replace_once(&copy, "health {", &format!("{health_at} {{"))
    } else {
        replace_once(&copy, "    health\n", &format!("    {health_at}\n"))
    };
    let copy = replace_once(&copy, "    ready\n", "    ready 127.0.0.1:{ready}\n");
    let copy = replace_once(
        &copy,
        "kubernetes cluster.local in-addr.arpa ip6.arpa {\n",
        &format!(
            "kubernetes cluster.local in-addr.arpa ip6.arpa {{\n       kubeconfig {}\n",
            kubeconfig.display()
        ),
    );
    let copy = replace_once(
        &copy,
        "prometheus :9153",
        &format!("prometheus 127.0.0.1:{coredns_metrics}"),
    );
    let coredns = CoreDns::start_at(coredns_port, &copy);

    let deadline = Instant::now() + Duration::from_secs(60);
    while support::get_status(svcplane.ready_port, "/ready") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "svcplane dns was not ready within 60 s: {}",
            svcplane.process.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Pair {
        svcplane,
        coredns,
        coredns_metrics,
        unbound: Some(unbound),
        _coredns_files: coredns_files,
    }
}

impl Pair {
    /// How many of `table`'s questions, over every transport, the servers answer differently
    /// (each written to stderr).
    fn differences(&self, table: &[Question]) -> usize {
        let mut differences = 0;
        for question in table {
            for transport in TRANSPORTS {
                let (ours, theirs) = self.ask(question, transport);
                if differs(question, transport, &ours, &theirs) {
                    differences += 1;
                }
            }
        }
        differences
    }

    fn ask(&self, question: &Question, transport: Transport) -> (Reply, Reply) {
        (
            ask(self.svcplane.port, question, transport),
            ask(self.coredns.port, question, transport),
        )
    }

    fn logs(&self) -> String {
        format!(
            "--- svcplane\n{}\n--- coredns\n{}\n--- unbound\n{}",
            self.svcplane.process.log(),
            self.coredns.log(),
            self.unbound.as_ref().map(Unbound::log).unwrap_or_default()
        )
    }

    fn metrics(&self) -> (Metrics, Metrics) {
        (
            scrape(self.svcplane.metrics_port),
            scrape(self.coredns_metrics),
        )
    }
}

/// Label names and values a sample must have.
type Labels<'a> = &'a [(&'a str, &'a str)];

/// Samples by metric name: each label set with its value.
type Metrics = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

fn scrape(port: u16) -> Metrics {
    let (status, body) = support::http(port, "GET", "/metrics", &[], None).expect("/metrics");
    assert_eq!(status, 200, "{body}");
    let mut out = Metrics::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut set = BTreeMap::new();
        // Label values here never hold `",`.
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").expect("a label");
            set.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        out.entry(name.to_string())
            .or_default()
            .push((set, value.parse().unwrap_or(f64::NAN)));
    }
    out
}

/// The sum of `name`'s samples whose labels include `labels`.
fn sum(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics.get(name).map_or(0.0, |samples| {
        samples
            .iter()
            .filter(|(set, _)| {
                labels
                    .iter()
                    .all(|(k, v)| set.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| v)
            .sum()
    })
}

/// The label names of a family (`le` and `quantile` left out).
fn label_names(metrics: &Metrics, name: &str) -> BTreeSet<String> {
    metrics
        .get(name)
        .into_iter()
        .flatten()
        .flat_map(|(set, _)| set.keys().cloned())
        .filter(|k| k != "le")
        .collect()
}

fn objects() -> Vec<serde_json::Value> {
    let service = |name: &str, spec: serde_json::Value| {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": NS}, "spec": spec})
    };
    // The trigger time the endpoint controllers write, so both servers time the programming.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let slice = |service: &str, endpoints: serde_json::Value| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": format!("{service}-1"), "namespace": NS,
                            "labels": {"kubernetes.io/service-name": service,
                                       "endpointslice.kubernetes.io/managed-by": "test.svcplane.io"},
                            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": now}},
               "addressType": "IPv4",
               "endpoints": endpoints,
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    };
    let ready = |ip: &str| json!({"addresses": [ip], "conditions": {"ready": true}});
    let port = json!([{"name": "http", "port": 80, "protocol": "TCP"}]);
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        service("web", json!({"ports": port})),
        slice("web", json!([ready("10.10.0.1"), ready("10.10.0.2")])),
        service("headless", json!({"clusterIP": "None", "ports": port})),
        slice(
            "headless",
            json!([ready("10.10.1.1"), ready("10.10.1.2"), ready("10.10.1.3")]),
        ),
        service(
            "ext",
            json!({"type": "ExternalName", "externalName": "www.example.org"}),
        ),
        service(
            "ext-missing",
            json!({"type": "ExternalName", "externalName": "nothere.example.org"}),
        ),
        service(
            "ext-big",
            json!({"type": "ExternalName", "externalName": "big.example.org"}),
        ),
    ]
}

/// The test binary's cluster, with this file's objects created once: tests applying them at
/// the same time could both try to create them.
fn cluster() -> &'static Cluster {
    static CREATED: std::sync::Once = std::sync::Once::new();
    let cluster = Cluster::shared();
    CREATED.call_once(|| cluster.apply(&objects()));
    cluster
}

/// The ClusterIP kube-apiserver gave `web`.
fn cluster_ip(cluster: &Cluster, name: &str) -> String {
    let out = cluster.kubectl(
        "admin",
        &[
            "get",
            "service",
            name,
            "-n",
            NS,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    assert!(out.status.success(), "{}", support::stderr(&out));
    support::stdout(&out)
}

fn reverse(ip: &str) -> String {
    let mut octets: Vec<&str> = ip.split('.').collect();
    octets.reverse();
    format!("{}.in-addr.arpa.", octets.join("."))
}

fn table(web_ip: &str) -> Vec<Question> {
    let svc = |name: &str| format!("{name}.{NS}.svc.cluster.local.");
    let q = Question::new;
    vec![
        q(&svc("web"), RecordType::A),
        q(&svc("web"), RecordType::AAAA),
        q(&format!("_http._tcp.{}", svc("web")), RecordType::SRV),
        q(&svc("headless"), RecordType::A),
        q(&svc("missing"), RecordType::A),
        q(&svc("ext"), RecordType::A),
        q(&svc("ext"), RecordType::AAAA),
        q(&svc("ext-missing"), RecordType::A),
        q(&svc("ext-big"), RecordType::TXT),
        q(&svc("ext-big"), RecordType::A),
        q("cluster.local.", RecordType::SOA),
        q(&reverse(web_ip), RecordType::PTR),
        // Unknown PTRs: NXDOMAIN in the cluster's reverse zones, so they fall through upstream.
        q("254.255.96.10.in-addr.arpa.", RecordType::PTR),
        q("9.9.9.203.in-addr.arpa.", RecordType::PTR),
        q(
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
            RecordType::PTR,
        ),
        q("www.example.org.", RecordType::A),
        q("www.example.org.", RecordType::AAAA),
        q("WWW.Example.ORG.", RecordType::A),
        q("example.org.", RecordType::MX),
        q("example.org.", RecordType::TXT),
        q("nope.example.org.", RecordType::A),
        q("short.example.org.", RecordType::A),
        q("big.example.org.", RecordType::TXT),
    ]
}

/// The row of `table` whose name starts with `prefix`, of type `qtype`.
fn row(table: &[Question], prefix: &str, qtype: RecordType) -> Question {
    table
        .iter()
        .find(|q| q.name.starts_with(prefix) && q.qtype == qtype)
        .unwrap_or_else(|| panic!("no row {prefix} {qtype}"))
        .clone()
}

/// How two replies differ (none when they agree). Over UDP, when either is truncated, the
/// header alone (which records survive truncation depends on record order; the TCP row
/// compares them all).
fn differs(question: &Question, transport: Transport, ours: &Reply, theirs: &Reply) -> bool {
    let truncated = transport != Transport::Tcp && (ours.tc || theirs.tc);
    if truncated {
        ours.header() != theirs.header()
    } else {
        !ours.same_within(theirs, 1)
    }
    .then(|| eprintln!("{question} over {transport:?}:\n svcplane:\n{ours} CoreDNS:\n{theirs}"))
    .is_some()
}

#[test]
fn kubeadms_corefile_answers_metrics_and_failures_are_coredns_own() {
    let cluster = cluster();
    let web_ip = cluster_ip(cluster, "web");
    let pair = start(cluster);
    let table = table(&web_ip);

    // 1. The table, until both servers have the cluster (its first rows), then all at once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ours, theirs) = pair.ask(&row(&table, "headless.", RecordType::A), Transport::Tcp);
        if ours.answer.len() == 3 && theirs.answer.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the servers never saw the cluster\n{}",
            pair.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        pair.differences(&table),
        0,
        "see the differences above\n{}",
        pair.logs()
    );
    // What the table must have covered, seen from svcplane's side.
    let (ext, _) = pair.ask(&row(&table, "ext.", RecordType::A), Transport::Tcp);
    assert_eq!(
        ext.answers_of("A"),
        ["192.0.2.10", "192.0.2.11"].map(String::from).into(),
        "{ext}"
    );
    let (missing, _) = pair.ask(&row(&table, "ext-missing.", RecordType::A), Transport::Tcp);
    assert_eq!(
        (missing.rcode.as_str(), missing.answer.len()),
        ("NoError", 1),
        "{missing}"
    );
    let (big, _) = pair.ask(
        &row(&table, "big.example.org.", RecordType::TXT),
        Transport::Udp,
    );
    assert!(big.tc, "{big}");
    let (fell, _) = pair.ask(
        &row(&table, "254.255.96.10.", RecordType::PTR),
        Transport::Tcp,
    );
    assert_eq!(fell.rcode, "NXDomain", "{fell}");

    // 2. Cluster changes show on the next query: kubeadm's Corefile caches no cluster.local.
    let later = Question::new(&format!("later.{NS}.svc.cluster.local."), RecordType::A);
    for (server, port) in [
        ("svcplane", pair.svcplane.port),
        ("CoreDNS", pair.coredns.port),
    ] {
        assert_eq!(
            ask(port, &later, Transport::Udp).rcode,
            "NXDomain",
            "{server}"
        );
    }
    cluster.apply(&[json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "later", "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})]);
    let visible = |port: u16, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while ask(port, &later, Transport::Udp).rcode != want {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    };
    // 10 s, a third of the 30 s a cached NXDOMAIN would live.
    assert!(visible(pair.svcplane.port, "NoError"), "{}", pair.logs());
    assert!(visible(pair.coredns.port, "NoError"), "{}", pair.logs());
    let out = cluster.kubectl("admin", &["delete", "service", "later", "-n", NS]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(visible(pair.svcplane.port, "NXDomain"), "{}", pair.logs());
    assert!(visible(pair.coredns.port, "NXDomain"), "{}", pair.logs());

    // 3. Metrics: a known batch moves both servers' counters by the same, expected amounts.
    let (before_ours, before_theirs) = pair.metrics();
    let batch = 5;
    for i in 0..batch {
        for port in [pair.svcplane.port, pair.coredns.port] {
            let name = format!("n{i}.batch.example.org.");
            // A miss that is forwarded, then a hit.
            ask(port, &Question::new(&name, RecordType::A), Transport::Udp);
            ask(port, &Question::new(&name, RecordType::A), Transport::Udp);
            // A cluster name: answered, never cached.
            ask(
                port,
                &Question::new(&format!("web.{NS}.svc.cluster.local."), RecordType::A),
                Transport::Udp,
            );
        }
    }
    let (after_ours, after_theirs) = pair.metrics();
    let n = f64::from(batch);
    let expected: [(&str, Labels<'_>, f64); 7] = [
        (
            "coredns_dns_requests_total",
            &[("type", "A"), ("proto", "udp")],
            3.0 * n,
        ),
        (
            "coredns_dns_responses_total",
            &[("rcode", "NOERROR")],
            3.0 * n,
        ),
        ("coredns_cache_requests_total", &[], 3.0 * n),
        ("coredns_cache_misses_total", &[], 2.0 * n),
        ("coredns_cache_hits_total", &[("type", "success")], n),
        (
            "coredns_proxy_request_duration_seconds_count",
            &[("rcode", "NOERROR")],
            n,
        ),
        ("coredns_dns_request_duration_seconds_count", &[], 3.0 * n),
    ];
    for (name, labels, want) in expected {
        let ours = sum(&after_ours, name, labels) - sum(&before_ours, name, labels);
        let theirs = sum(&after_theirs, name, labels) - sum(&before_theirs, name, labels);
        assert_eq!((ours, theirs), (want, want), "{name} {labels:?} moved");
    }
    // The plugin CoreDNS credits replies to.
    let credited = |m: &Metrics| -> BTreeSet<String> {
        m.get("coredns_dns_responses_total")
            .into_iter()
            .flatten()
            .filter_map(|(set, _)| set.get("plugin").cloned())
            .collect()
    };
    assert_eq!(credited(&after_ours), credited(&after_theirs));

    // 4. The upstream stops: SERVFAIL, an errors line, failed health checks in both.
    let mut pair = pair;
    drop(pair.unbound.take());
    let gone = Question::new("gone.example.org.", RecordType::A);
    let (ours, theirs) = pair.ask(&gone, Transport::Udp);
    assert_eq!(
        (ours.rcode.as_str(), theirs.rcode.as_str()),
        ("ServFail", "ServFail")
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ours, theirs) = pair.metrics();
        let failures = |m: &Metrics| sum(m, "coredns_proxy_healthcheck_failures_total", &[]);
        if failures(&ours) > 0.0 && failures(&theirs) > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed health check\n{}",
            pair.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        pair.svcplane
            .process
            .log()
            .contains("[ERROR] plugin/errors: 2 gone.example.org. A:"),
        "{}",
        pair.logs()
    );

    // The endpoint controllers' next change of web's and headless's slices: both servers time
    // how long it took to be answered.
    cluster.apply(&objects());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ours, theirs) = pair.metrics();
        let count = |m: &Metrics| {
            sum(
                m,
                "coredns_kubernetes_dns_programming_duration_seconds_count",
                &[],
            )
        };
        if count(&ours) >= 2.0 && count(&theirs) >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "programming not timed: svcplane {}, CoreDNS {}",
            count(&ours),
            count(&theirs)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A query with the DO bit, for coredns_dns_do_requests_total.
    for port in [pair.svcplane.port, pair.coredns.port] {
        dnssec_ok_query(port);
    }

    // 5. Every metric of spec §15 has a sample, with CoreDNS's label names where CoreDNS shows
    // the family in this run.
    let (ours, theirs) = pair.metrics();
    let mut missing = Vec::new();
    let mut labels_differ = Vec::new();
    for family in SPEC_METRICS {
        let sampled = |m: &Metrics| {
            m.contains_key(*family)
                || m.contains_key(&format!("{family}_count"))
                || m.contains_key(&format!("{family}_bucket"))
        };
        if !sampled(&ours) {
            missing.push(*family);
            continue;
        }
        let key = |m: &Metrics| {
            [
                family.to_string(),
                format!("{family}_count"),
                format!("{family}_bucket"),
            ]
            .into_iter()
            .find(|k| m.contains_key(k))
        };
        if let (Some(a), Some(b)) = (key(&ours), key(&theirs))
            && label_names(&ours, &a) != label_names(&theirs, &b)
        {
            labels_differ.push(format!(
                "{family}: svcplane {:?}, CoreDNS {:?}",
                label_names(&ours, &a),
                label_names(&theirs, &b)
            ));
        }
    }
    assert!(missing.is_empty(), "no sample of {missing:?}");
    // Samples of things that happened, in both: the programming of web's and headless's slices
    // (annotated), and the API requests of the watches (at least the list of each of the three
    // kinds; CoreDNS's client counts a watch request once it ends, svcplane's once it begins).
    for m in [&ours, &theirs] {
        let programmed = |kind: &str| {
            sum(
                m,
                "coredns_kubernetes_dns_programming_duration_seconds_count",
                &[("service_kind", kind)],
            )
        };
        assert!(programmed("cluster_ip") >= 1.0 && programmed("headless_with_selector") >= 1.0);
        assert!(
            sum(
                m,
                "coredns_kubernetes_rest_client_requests_total",
                &[("method", "GET"), ("code", "200")]
            ) >= 3.0
        );
    }
    assert!(labels_differ.is_empty(), "{labels_differ:#?}");
}

/// The metric families of spec §15 (and the process metrics CoreDNS dashboards chart).
const SPEC_METRICS: &[&str] = &[
    "coredns_dns_requests_total",
    "coredns_dns_request_duration_seconds",
    "coredns_dns_request_size_bytes",
    "coredns_dns_response_size_bytes",
    "coredns_dns_responses_total",
    "coredns_dns_do_requests_total",
    "coredns_panics_total",
    "coredns_build_info",
    "coredns_plugin_enabled",
    "coredns_cache_entries",
    "coredns_cache_hits_total",
    "coredns_cache_misses_total",
    "coredns_cache_requests_total",
    "coredns_cache_prefetch_total",
    "coredns_cache_drops_total",
    "coredns_cache_served_stale_total",
    "coredns_cache_evictions_total",
    "coredns_forward_healthcheck_broken_total",
    "coredns_forward_max_concurrent_rejects_total",
    "coredns_proxy_request_duration_seconds",
    "coredns_proxy_healthcheck_failures_total",
    "coredns_proxy_conn_cache_hits_total",
    "coredns_proxy_conn_cache_misses_total",
    "coredns_kubernetes_dns_programming_duration_seconds",
    "coredns_kubernetes_rest_client_requests_total",
    "coredns_kubernetes_rest_client_request_duration_seconds",
    "coredns_kubernetes_rest_client_rate_limiter_duration_seconds",
    "coredns_health_request_duration_seconds",
    "coredns_health_request_failures_total",
    "coredns_reload_failed_total",
    "coredns_reload_version_info",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
];

/// Asks `web`'s A record with EDNS and the DO bit over UDP, and waits for the reply.
fn dnssec_ok_query(port: u16) {
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::Name;
    let mut message = Message::query();
    message.metadata.id = 4242;
    let name = Name::from_ascii(format!("web.{NS}.svc.cluster.local.")).unwrap();
    message.add_query(Query::query(name, RecordType::A));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.set_dnssec_ok(true);
    message.set_edns(edns);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    socket
        .send_to(&message.to_vec().unwrap(), ("127.0.0.1", port))
        .unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf).expect("a reply to the DO query");
    assert!(n >= 12);
}

#[test]
fn a_corefile_names_the_kubeconfig_context_and_the_label_selectors_to_watch_with() {
    let cluster = cluster();
    cluster.apply(&[json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "tiered", "namespace": NS, "labels": {"tier": "web"}},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})]);
    let kubeconfig = cluster.kubeconfig("admin");
    let corefile = |context: &str| {
        format!(
            ".:53 {{\n  kubernetes cluster.local {{\n    kubeconfig {} {context}\n    labels tier=web\n    namespace_labels kubernetes.io/metadata.name={NS}\n  }}\n}}\n",
            kubeconfig.display()
        )
    };
    let dns = support::corefile::ConfDns::start(&corefile("admin"), &[]);
    let rcode = |name: &str| {
        ask(
            dns.port,
            &Question::new(&format!("{name}.{NS}.svc.cluster.local."), RecordType::A),
            Transport::Udp,
        )
        .rcode
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while rcode("tiered") != "NoError" {
        assert!(Instant::now() < deadline, "{}", dns.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // `web` has no tier label: not selected.
    assert_eq!(rcode("web"), "NXDomain");
    // A context the kubeconfig does not have: refused at start, naming it.
    let mut wrong = support::corefile::ConfDns::spawn(&corefile("nope"), &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = wrong.exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "{}", wrong.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    assert!(wrong.log().contains("nope"), "{}", wrong.log());
}

/// Waits until both servers answer `web` (they have the cluster).
fn wait_for_cluster(pair: &Pair) {
    let web = Question::new(&format!("web.{NS}.svc.cluster.local."), RecordType::A);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ours, theirs) = pair.ask(&web, Transport::Tcp);
        if !ours.answer.is_empty() && !theirs.answer.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{}", pair.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kubeadms_older_corefile_with_a_plain_cache_answers_like_coredns() {
    let cluster = cluster();
    let web_ip = cluster_ip(cluster, "web");
    // kubeadm before v1.32 wrote the same Corefile with a plain `cache 30`.
    let older = replace_once(
        &kubeadm_corefile(),
        "cache 30 {\n       disable success cluster.local\n       disable denial cluster.local\n    }",
        "cache 30",
    );
    let pair = start_with(cluster, &older, &[], None);
    wait_for_cluster(&pair);
    assert_eq!(pair.differences(&table(&web_ip)), 0, "{}", pair.logs());
}

/// k3s's Corefile (DNS spec §14.1, `%{CLUSTER_DOMAIN}%` rendered), with `/etc/coredns` in its
/// paths standing for the test's folder.
const K3S: &str = ".:53 {
    errors
    health
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
      pods insecure
      fallthrough in-addr.arpa ip6.arpa
    }
    hosts {files}/NodeHosts {
      ttl 60
      reload 15s
      fallthrough
    }
    prometheus :9153
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
    import {files}/custom/*.override
}
import {files}/custom/*.server
";

#[test]
fn k3s_corefile_with_node_hosts_and_custom_imports_answers_like_coredns() {
    let cluster = cluster();
    let web_ip = cluster_ip(cluster, "web");
    let stub = Unbound::start(&["db.corp.example. 300 IN A 198.51.100.7"]);
    let files = [
        (
            "NodeHosts",
            "172.18.0.2 k3s-server\n172.18.0.3 k3s-agent-1\n",
        ),
        ("custom/log.override", "log\n"),
        (
            "custom/rewrite.override",
            "rewrite name exact db.example. web.kubeadm.svc.cluster.local.\nrewrite name suffix .corp.internal. .kubeadm.svc.cluster.local. answer auto\n",
        ),
        (
            "custom/stub.server",
            "corp.example:53 {\n    errors\n    forward . {stub}\n}\n",
        ),
    ];
    let pair = start_with(cluster, K3S, &files, Some(&stub));
    wait_for_cluster(&pair);
    let q = Question::new;
    let mut rows = vec![
        q("k3s-server.", RecordType::A),
        q("k3s-agent-1.", RecordType::A),
        q("k3s-server.", RecordType::AAAA),
        q("2.0.18.172.in-addr.arpa.", RecordType::PTR),
        q("unknown-node.", RecordType::A),
        q("db.corp.example.", RecordType::A),
        q("nope.corp.example.", RecordType::A),
        q("db.example.", RecordType::A),
        q("web.corp.internal.", RecordType::A),
        q("headless.corp.internal.", RecordType::A),
        q("_http._tcp.web.corp.internal.", RecordType::SRV),
        q("gone.corp.internal.", RecordType::A),
    ];
    rows.extend(table(&web_ip));
    assert_eq!(pair.differences(&rows), 0, "{}", pair.logs());
    let (renamed, _) = pair.ask(&rows[8], Transport::Udp);
    assert_eq!(
        renamed.answers_of("A"),
        [web_ip.clone()].into(),
        "{renamed}"
    );
    assert!(
        renamed
            .answer
            .iter()
            .all(|r| r.starts_with("web.corp.internal. ")),
        "{renamed}"
    );
    // What the rows covered, from svcplane's side: a node name, the stub domain, and the
    // override's `log` writing a line in both.
    let (node, _) = pair.ask(&rows[0], Transport::Udp);
    assert_eq!(
        node.answers_of("A"),
        ["172.18.0.2".to_string()].into(),
        "{node}"
    );
    let (db, _) = pair.ask(&rows[5], Transport::Udp);
    assert_eq!(
        db.answers_of("A"),
        ["198.51.100.7".to_string()].into(),
        "{db}"
    );
    let logged = |log: String| log.contains("\"A IN k3s-server. udp ");
    assert!(logged(pair.svcplane.process.log()), "{}", pair.logs());
    assert!(logged(pair.coredns.log()), "{}", pair.logs());
}

#[test]
fn a_kube_dns_configmap_translated_by_kubeadm_answers_like_coredns() {
    let cluster = cluster();
    let web_ip = cluster_ip(cluster, "web");
    let stub = Unbound::start(&["db.corp.example. 300 IN A 198.51.100.7"]);
    // kube-dns's `stubDomains: {"corp.example": [STUB]}` and `upstreamNameservers`, as kubeadm
    // translates them (DNS spec §14.2): a block per stub domain, and the upstream nameservers
    // in place of /etc/resolv.conf (here the resolv.conf the test points at the upstream).
    let corefile = format!(
        "{}corp.example:53 {{\n    errors\n    cache 30\n    loop\n    forward . {{stub}}\n}}\n",
        kubeadm_corefile()
    );
    let pair = start_with(cluster, &corefile, &[], Some(&stub));
    wait_for_cluster(&pair);
    let q = Question::new;
    let mut rows = vec![
        q("db.corp.example.", RecordType::A),
        q("nope.corp.example.", RecordType::A),
        q("corp.example.", RecordType::SOA),
    ];
    rows.extend(table(&web_ip));
    assert_eq!(pair.differences(&rows), 0, "{}", pair.logs());
    let (db, _) = pair.ask(&rows[0], Transport::Udp);
    assert_eq!(
        db.answers_of("A"),
        ["198.51.100.7".to_string()].into(),
        "{db}"
    );
}
