//! A kube-apiserver for benchmarks: starts an upstream [`testkit::Cluster`] without
//! controllers, loads a manifests file (Namespaces, Services, EndpointSlices) into it, prints one
//! line `ready KUBECONFIG APISERVER_PGID ETCD_PGID`, and keeps the cluster until its standard
//! input closes. `bench/dns.sh` feeds the DNS servers' kubernetes blocks from it.
//!
//! A line `churn RATE SECONDS DNS_PORT` on its standard input rewrites EndpointSlices at RATE
//! per second for SECONDS, round robin over the loaded ones, each to a single address never
//! used before, and asks the DNS server on 127.0.0.1:DNS_PORT for the slice's Service every
//! millisecond until the answer is the new address: it prints one line `churned CHANGES p50
//! P50_MS p99 P99_MS max MAX_MS mixed MIXED late LATE` — the time from sending each change to
//! kube-apiserver to the first answer with it, answers that were neither the old version nor
//! the new one, and changes not seen within 10 s. `bench/dns_churn.sh` drives it.
//!
//!   cargo run --release -p testkit --example bench_cluster -- MANIFESTS [SERVICE_CIDR]

use std::collections::BTreeSet;
use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::Value;
use testkit::{Cluster, ClusterOptions};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: bench_cluster MANIFESTS [SERVICE_CIDR]");
    let cidr = args.next().unwrap_or_else(|| "10.96.0.0/12".to_string());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut objects: Vec<Value> = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(document).expect("a YAML document");
        if !value.is_null() {
            objects.push(value);
        }
    }
    let cluster = Cluster::start(ClusterOptions {
        controllers: None,
        node_port_range: None,
        service_cidrs: Some(cidr),
        controller_manager_args: Vec::new(),
    });
    let client = cluster.client("admin").await;
    let started = std::time::Instant::now();
    for kind in ["Namespace", "Service", "EndpointSlice"] {
        let batch: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
        futures::stream::iter(batch)
            .map(|object| create(&client, object))
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
    }
    eprintln!(
        "bench_cluster: loaded {} objects in {:.0?}",
        objects.len(),
        started.elapsed()
    );
    let (apiserver, etcd) = cluster.process_groups();
    println!(
        "ready {} {apiserver} {etcd}",
        cluster.kubeconfig("admin").display()
    );
    // Commands until the caller closes our standard input.
    let slices: Vec<Slice> = objects
        .iter()
        .filter(|o| o["kind"] == "EndpointSlice")
        .map(|o| Slice {
            namespace: o["metadata"]["namespace"].as_str().unwrap().to_string(),
            name: o["metadata"]["name"].as_str().unwrap().to_string(),
            service: o["metadata"]["labels"]["kubernetes.io/service-name"]
                .as_str()
                .unwrap()
                .to_string(),
            addresses: o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str()?.parse().ok())
                .collect(),
        })
        .collect();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["churn", rate, seconds, port] = words[..] {
            let report = churn(
                &client,
                &slices,
                rate.parse().expect("RATE"),
                seconds.parse().expect("SECONDS"),
                port.parse().expect("DNS_PORT"),
            )
            .await;
            println!("{report}");
        } else {
            eprintln!("bench_cluster: unknown command {line:?}");
        }
    }
}

/// A loaded EndpointSlice and the addresses its Service answers with.
struct Slice {
    namespace: String,
    name: String,
    service: String,
    addresses: BTreeSet<IpAddr>,
}

/// What one change showed: how long until the new version was answered, and whether any answer
/// was neither version.
struct Seen {
    took: Option<Duration>,
    mixed: bool,
}

async fn churn(
    client: &kube::Client,
    slices: &[Slice],
    rate: f64,
    seconds: f64,
    port: u16,
) -> String {
    let changes = (rate * seconds) as usize;
    let mut current: Vec<BTreeSet<IpAddr>> = slices.iter().map(|s| s.addresses.clone()).collect();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..changes {
        ticker.tick().await;
        let i = k % slices.len();
        let slice = &slices[i];
        let ip = IpAddr::V4(Ipv4Addr::new(
            200 + (k >> 16) as u8,
            (k >> 8) as u8,
            k as u8,
            1,
        ));
        let old = std::mem::replace(&mut current[i], BTreeSet::from([ip]));
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &slice.namespace);
        let (name, qname) = (
            slice.name.clone(),
            format!("{}.{}.svc.cluster.local", slice.service, slice.namespace),
        );
        tasks.spawn(async move {
            let started = Instant::now();
            let patch = serde_json::json!({
                "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}]
            });
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap_or_else(|e| panic!("patch {name}: {e}"));
            watch_answer(&qname, port, &old, ip, started).await
        });
    }
    let mut took = Vec::new();
    let (mut mixed, mut late) = (0, 0);
    while let Some(seen) = tasks.join_next().await {
        let seen = seen.expect("a change task");
        mixed += usize::from(seen.mixed);
        match seen.took {
            Some(t) => took.push(t),
            None => late += 1,
        }
    }
    took.sort();
    let at = |q: f64| {
        took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    format!(
        "churned {changes} p50 {:.1} p99 {:.1} max {:.1} mixed {mixed} late {late}",
        at(0.5),
        at(0.99),
        took.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    )
}

/// Asks for `qname` every millisecond until the answer is `new` alone (or 10 s pass).
async fn watch_answer(
    qname: &str,
    port: u16,
    old: &BTreeSet<IpAddr>,
    new: IpAddr,
    started: Instant,
) -> Seen {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut query = hickory_proto::op::Message::query();
    query.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii(qname).unwrap(),
        hickory_proto::rr::RecordType::A,
    ));
    let mut mixed = false;
    let mut buf = [0u8; 4096];
    for id in 0u16.. {
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
        query.metadata.id = id;
        socket
            .send_to(&query.to_vec().unwrap(), ("127.0.0.1", port))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await;
        if let Ok(Ok(n)) = reply
            && let Ok(reply) = hickory_proto::op::Message::from_vec(&buf[..n])
            && reply.metadata.id == id
        {
            let answer: BTreeSet<IpAddr> = reply
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_proto::rr::RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .collect();
            if answer == BTreeSet::from([new]) {
                return Seen {
                    took: Some(started.elapsed()),
                    mixed,
                };
            }
            mixed |= answer != *old;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Seen { took: None, mixed }
}

async fn create(client: &kube::Client, object: &Value) {
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    let pp = PostParams::default();
    let result = match object["kind"].as_str() {
        Some("Namespace") => Api::<Namespace>::all(client.clone())
            .create(&pp, &serde_json::from_value(object.clone()).unwrap())
            .await
            .map(|_| ()),
        Some("Service") => Api::<Service>::namespaced(client.clone(), namespace)
            .create(&pp, &serde_json::from_value(object.clone()).unwrap())
            .await
            .map(|_| ()),
        Some("EndpointSlice") => Api::<EndpointSlice>::namespaced(client.clone(), namespace)
            .create(&pp, &serde_json::from_value(object.clone()).unwrap())
            .await
            .map(|_| ()),
        other => panic!("bench_cluster loads no {other:?}"),
    };
    if let Err(e) = result {
        panic!("create {}: {e}", object["metadata"]);
    }
}
