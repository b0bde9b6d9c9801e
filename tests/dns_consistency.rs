//! Answers while the cluster changes under them: every answer is one version of a Service,
//! never a mix (snapshots and indexes are published whole, kept answers are checked against
//! what they read) — for a manifest rewritten in place, and for EndpointSlices rewritten
//! through kube-apiserver as fast as it takes them, where the index must also follow every
//! change without being built whole again.

mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

/// A version of the headless Service `flip`: ten addresses split over two slices, so that a
/// reload applied slice by slice would show one slice of each version.
fn version(third_octet: u8) -> (String, BTreeSet<IpAddr>) {
    let ips: Vec<String> = (1..=10)
        .map(|i| format!("10.3.{third_octet}.{i}"))
        .collect();
    let slice = |name: &str, part: &[String]| {
        let endpoints: String = part
            .iter()
            .map(|ip| format!("- addresses: [{ip}]\n"))
            .collect();
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: testns\n\
             \x20 labels: {{kubernetes.io/service-name: flip}}\naddressType: IPv4\nendpoints:\n{endpoints}"
        )
    };
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: flip, namespace: testns}}\nspec: {{clusterIP: None}}\n{}{}",
        slice("flip-1", &ips[..5]),
        slice("flip-2", &ips[5..])
    );
    (text, ips.iter().map(|ip| ip.parse().unwrap()).collect())
}

const FLIP: &str = "flip.testns.svc.cluster.local.";

/// The server, killed when the test ends however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The A records of `name` from the server on `port` (`None`: no reply in time).
fn addresses(socket: &UdpSocket, port: u16, name: &str, id: u16) -> Option<BTreeSet<IpAddr>> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    socket
        .send_to(&m.to_vec().unwrap(), ("127.0.0.1", port))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        let reply = Message::from_vec(&buf[..n]).unwrap();
        if reply.metadata.id != id {
            continue;
        }
        return Some(
            reply
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .collect(),
        );
    }
}

#[test]
fn rewrites_during_queries_never_yield_a_mixed_answer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flip.yaml");
    let (a_text, a_ips) = version(0);
    let (b_text, b_ips) = version(1);
    std::fs::write(&file, &a_text).unwrap();
    // Free for both UDP and TCP: the server binds both.
    let port = testkit::free_dns_port();
    let log = dir.path().join("dns.log");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_svcplane"))
            .args([
                "dns",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--manifests-reload-interval",
                "5ms",
            ])
            .args(["--manifests", &file.display().to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while addresses(&socket, port, FLIP, 1).as_ref() != Some(&a_ips) {
        assert!(
            Instant::now() < deadline,
            "svcplane dns never answered: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let writer = {
        let (file, dir) = (file.clone(), dir.path().to_path_buf());
        std::thread::spawn(move || {
            for i in 0..200 {
                let text = if i % 2 == 0 { &b_text } else { &a_text };
                let aside = dir.join("flip.yaml.tmp");
                std::fs::write(&aside, text).unwrap();
                std::fs::rename(&aside, &file).unwrap();
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };
    let (mut seen_a, mut seen_b) = (0, 0);
    let mut answered = 0;
    let mut id: u16 = 2;
    let deadline = Instant::now() + Duration::from_secs(120);
    while answered < 5000 || !writer.is_finished() {
        assert!(
            Instant::now() < deadline,
            "5000 answers did not come within 2 minutes ({answered} did)"
        );
        id = id.wrapping_add(1);
        let Some(ips) = addresses(&socket, port, FLIP, id) else {
            continue;
        };
        answered += 1;
        if ips == a_ips {
            seen_a += 1;
        } else if ips == b_ips {
            seen_b += 1;
        } else {
            panic!("a mixed or partial answer: {ips:?}");
        }
    }
    writer.join().unwrap();
    assert!(answered >= 5000);
    assert!(
        seen_a > 0 && seen_b > 0,
        "both versions were served (A {seen_a}, B {seen_b})"
    );
}

/// The addresses of version `v` of Service `i` under churn: disjoint from every other version's
/// and Service's.
fn churn_ips(i: usize, v: usize) -> Vec<String> {
    (1..=3)
        .map(|k| format!("10.{}.{}.{}", 100 + v % 100, i, k + 3 * (v / 100)))
        .collect()
}

fn churn_slice(namespace: &str, i: usize, v: usize) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = churn_ips(i, v)
        .iter()
        .map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": format!("s{i}-1"), "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": format!("s{i}")}},
        "addressType": "IPv4",
        "endpoints": endpoints,
    })
}

/// Where the served answer of Service `i` stands: an answer must be exactly one version
/// written so far.
fn version_of(i: usize, written: usize, ips: &BTreeSet<IpAddr>) -> Option<usize> {
    (0..=written).find(|v| {
        churn_ips(i, *v)
            .iter()
            .map(|ip| ip.parse::<IpAddr>().unwrap())
            .collect::<BTreeSet<_>>()
            == *ips
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_through_kube_apiserver_never_mixes_versions_nor_rebuilds_the_index() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, Patch, PatchParams};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SERVICES: usize = 40;
    let cluster = testkit::cluster::Cluster::start(testkit::cluster::ClusterOptions::default());
    let namespace = "churn";
    let mut objects = vec![serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                                              "metadata": {"name": namespace}})];
    for i in 0..SERVICES {
        objects.push(serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("s{i}"), "namespace": namespace},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}}));
        objects.push(churn_slice(namespace, i, 0));
    }
    cluster.apply(&objects);

    // kubeadm's Corefile: cluster answers are not cached, so every answer is the index's (and
    // the worker's kept bytes of it).
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics) = (testkit::free_dns_port(), testkit::free_port());
    let corefile = dir.path().join("Corefile");
    std::fs::write(
        &corefile,
        format!(
            "cluster.local:{port} {{\n bind 127.0.0.1\n prometheus 127.0.0.1:{metrics}\n \
             kubernetes cluster.local {{\n  kubeconfig {} admin\n }}\n \
             cache 30 {{\n  disable success cluster.local\n  disable denial cluster.local\n }}\n \
             loadbalance\n}}\n",
            cluster.kubeconfig("admin").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("dns.log");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_svcplane"))
            .args(["dns", "--conf"])
            .arg(&corefile)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let ask = move |socket: &UdpSocket, i: usize, id: u16| {
        addresses(
            socket,
            port,
            &format!("s{i}.{namespace}.svc.cluster.local."),
            id,
        )
    };
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..SERVICES {
        while ask(&socket, i, i as u16).and_then(|ips| version_of(i, 0, &ips)) != Some(0) {
            assert!(
                Instant::now() < deadline,
                "svcplane dns never served s{i}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let rebuilds = || {
        let (_, text) = support::http(metrics, "GET", "/metrics", &[], None).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("svcplane_dns_index_rebuilds_total "))
            .map(|n| n.parse::<u64>().unwrap())
            .expect("the rebuild counter")
    };
    // The initial lists (each kind's) are whole builds; none may follow.
    let loaded = rebuilds();

    // The writer: each step replaces one Service's slice with its next version, as fast as
    // kube-apiserver takes them, for 10 s; `written[i]` is the last version sent for s{i}.
    let written: Arc<Vec<AtomicUsize>> =
        Arc::new((0..SERVICES).map(|_| AtomicUsize::new(0)).collect());
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client("admin").await, namespace);
    let writer = {
        let written = written.clone();
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(10);
            let mut steps = 0;
            while Instant::now() < until {
                let i = steps % SERVICES;
                let v = written[i].load(Ordering::SeqCst) + 1;
                // Announced before it is written: a reader may see it from then on.
                written[i].store(v, Ordering::SeqCst);
                let slice = churn_slice(namespace, i, v);
                slices
                    .patch(
                        &format!("s{i}-1"),
                        &PatchParams::apply("churn").force(),
                        &Patch::Apply(&slice),
                    )
                    .await
                    .unwrap();
                steps += 1;
            }
            steps
        })
    };
    let reader = {
        let written = written.clone();
        tokio::task::spawn_blocking(move || {
            let mut answered = 0usize;
            let mut id: u16 = 1000;
            let mut i = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                i = (i + 7) % SERVICES;
                id = id.wrapping_add(1);
                let known = written[i].load(Ordering::SeqCst);
                let Some(ips) = ask(&socket, i, id) else {
                    continue;
                };
                answered += 1;
                assert!(
                    version_of(i, known.max(written[i].load(Ordering::SeqCst)), &ips).is_some(),
                    "s{i} answered with no version written: {ips:?}"
                );
            }
            (socket, answered)
        })
    };
    let steps = writer.await.unwrap();
    let (socket, answered) = reader.await.unwrap();
    assert!(steps > 100, "the writer made {steps} changes");
    assert!(answered > 1000, "{answered} answers during the churn");

    // Every Service converges to its last version.
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..SERVICES {
        let last = written[i].load(Ordering::SeqCst);
        while ask(&socket, i, i as u16).and_then(|ips| version_of(i, last, &ips)) != Some(last) {
            assert!(
                Instant::now() < deadline,
                "s{i} never answered version {last}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // And the index followed every change without being built whole again.
    assert_eq!(rebuilds(), loaded, "whole builds after the initial load");
}
