//! Service creation through kube-apiserver v1.37.2 with svcplane's allocation webhook (one
//! replica, and two behind a round-robin proxy) against kube-apiserver's own allocator with no
//! webhook, on one upstream cluster (kube-apiserver and etcd from the peers), taking turns.
//! `bench/webhook.sh` runs it:
//!
//!   cargo run --release -p testkit --example webhook_bench -- ROUNDS SERVICES CONCURRENCY
//!
//! Each round, each contender, on a fresh cluster (kube-apiserver's cost per create grows with
//! the Services it holds): SERVICES ClusterIP Services created by CONCURRENCY workers of one
//! kube-rs client; per create, the time from request to response (the
//! whole admission: the webhook's call and kube-apiserver's own allocation and write). Printed:
//! creates per second, p50 / p99 / p99.9 create latency, and the CPU seconds kube-apiserver and
//! the svcplane replicas used. After each run every Service is listed and no ClusterIP may
//! appear twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use testkit::bench::{self, percentile, range};
use testkit::cluster::{self, Cluster, ClusterOptions, WebhookController};
use testkit::process::Watched;
use testkit::proxy::RoundRobin;

const CIDR: &str = "10.96.0.0/16";
const CONTENDERS: [&str; 3] = ["kube-apiserver", "svcplane ×1", "svcplane ×2"];

fn svcplane_binary() -> PathBuf {
    std::env::var_os("SVCPLANE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/svcplane"))
}

/// The webhook replicas of one contender, and the proxy in front of two.
struct Replicas {
    processes: Vec<Watched>,
    http_ports: Vec<u16>,
    _proxy: Option<RoundRobin>,
    url: String,
}

impl Replicas {
    /// The values of `series` (a metric name with its labels) on each replica's `/metrics`.
    fn metric(&self, series: &str) -> Vec<f64> {
        self.http_ports
            .iter()
            .map(|port| {
                let body = http_get(*port, "/metrics");
                body.lines()
                    .filter(|l| l.starts_with(series))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            })
            .collect()
    }

    /// Admission requests the replicas served so far.
    fn admissions(&self) -> f64 {
        self.metric("controller_runtime_webhook_requests_total")
            .iter()
            .sum()
    }
}

/// A plain HTTP GET on loopback; the body, or nothing.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

fn start_replicas(cluster: &Cluster, dir: &Path, n: usize, certs: &testkit::TlsFiles) -> Replicas {
    let identities = ["svcplane-controller", "svcplane-controller-2"];
    let mut ports = Vec::new();
    let mut http_ports = Vec::new();
    let processes: Vec<Watched> = (0..n)
        .map(|i| {
            let port = testkit::free_port();
            ports.push(port);
            let http = testkit::free_port();
            http_ports.push(http);
            Watched::spawn(
                &svcplane_binary(),
                {
                    let mut args = cluster.webhook_controller_args(&WebhookController {
                        identity: identities[i],
                        http_port: http,
                        webhook_port: port,
                        certs,
                        prefix: "/svcplane/ipam/",
                        cidrs: CIDR,
                    });
                    args.extend(
                        [
                            "--leader-elect-lease-duration=6s",
                            "--leader-elect-renew-deadline=4s",
                            "--leader-elect-retry-period=1s",
                        ]
                        .map(Into::into),
                    );
                    args
                },
                &[("RUST_LOG", "warn")],
                &dir.join(format!("svcplane-{n}-{i}.log")),
                None,
            )
        })
        .collect();
    for p in &processes {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !p.log().contains("serving the Service admission webhook") {
            assert!(Instant::now() < deadline, "{}", p.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let (proxy, addr) = if n == 1 {
        (None, format!("127.0.0.1:{}", ports[0]))
    } else {
        let proxy = RoundRobin::start(ports.iter().map(|p| ([127, 0, 0, 1], *p).into()).collect());
        let addr = proxy.addr().to_string();
        (Some(proxy), addr)
    };
    Replicas {
        processes,
        http_ports,
        _proxy: proxy,
        url: format!("https://{addr}/mutate-services"),
    }
}

/// Registers the webhook of `replicas` and waits until kube-apiserver calls it (a probe create
/// reaches a replica).
async fn register(cluster: &Cluster, replicas: &Replicas, ca: &Path, services: &Api<Service>) {
    cluster.apply(&[cluster::allocation_webhook_configuration(
        &replicas.url,
        ca,
        "Fail",
        None,
    )]);
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        services
            .create(&PostParams::default(), &service(&format!("probe-{i}")))
            .await
            .unwrap();
        if replicas.admissions() > 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kube-apiserver never called the webhook"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}}))
        .unwrap()
}

/// One contender's run: (creates/s, p50 ms, p99 ms, p99.9 ms).
async fn flood(services: &Api<Service>, count: usize, concurrency: usize) -> [f64; 4] {
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = (0..concurrency).map(|_| async {
        let mut latencies = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= count {
                return latencies;
            }
            let svc = service(&format!("s{i}"));
            let at = Instant::now();
            services
                .create(&PostParams::default(), &svc)
                .await
                .unwrap_or_else(|e| panic!("create s{i}: {e}"));
            latencies.push(at.elapsed().as_secs_f64() * 1000.0);
        }
    });
    let mut all: Vec<f64> = futures::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
        .collect();
    let wall = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    [
        count as f64 / wall,
        percentile(&all, 50.0),
        percentile(&all, 99.0),
        percentile(&all, 99.9),
    ]
}

/// ClusterIPs two Services of the cluster share.
async fn duplicate_cluster_ips(client: &kube::Client) -> usize {
    let all = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut duplicates = 0;
    for svc in &all.items {
        let ip = svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone())
            .unwrap_or_default();
        let name = format!(
            "{}/{}",
            svc.metadata.namespace.as_deref().unwrap_or(""),
            svc.metadata.name.as_deref().unwrap_or("")
        );
        if let Some(other) = seen.insert(ip.clone(), name.clone()) {
            eprintln!("duplicate {ip}: {other} and {name}");
            duplicates += 1;
        }
    }
    duplicates
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let count: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let concurrency: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(16);
    let dir = tempfile::tempdir().unwrap();
    let certs = testkit::make_certs(dir.path());
    // (contender → runs of [creates/s, p50, p99, p99.9, CPU kube-apiserver, CPU svcplane])
    let mut runs: BTreeMap<&str, Vec<[f64; 6]>> = BTreeMap::new();
    let mut duplicates = 0;
    for round in 0..rounds {
        for (c, contender) in CONTENDERS.iter().enumerate() {
            // A fresh cluster per run: kube-apiserver's cost per create grows with the Services
            // it holds, so every contender starts from the same empty one.
            let cluster = Cluster::start(ClusterOptions {
                controllers: None,
                service_cidrs: Some(CIDR.into()),
                node_port_range: None,
                controller_manager_args: Vec::new(),
            });
            cluster.apply(&cluster::svcplane_controller_rbac());
            let client = cluster.client("admin").await;
            let apiserver = bench::pid_in_group(cluster.process_groups().0);
            cluster.create_namespace(&client, "bench").await;
            let services = Api::<Service>::namespaced(client.clone(), "bench");
            let replicas = match c {
                0 => None,
                n => Some(start_replicas(&cluster, dir.path(), n, &certs)),
            };
            if let Some(r) = &replicas {
                register(&cluster, r, &certs.ca, &services).await;
            }
            let svcplane_cpu = |r: &Option<Replicas>| -> f64 {
                r.as_ref().map_or(0.0, |r| {
                    r.processes
                        .iter()
                        .map(|p| bench::cpu_seconds(bench::pid_of(p)))
                        .sum()
                })
            };
            let (api_before, ours_before) =
                (bench::cpu_seconds(apiserver), svcplane_cpu(&replicas));
            let [rate, p50, p99, p999] = flood(&services, count, concurrency).await;
            let run = [
                rate,
                p50,
                p99,
                p999,
                bench::cpu_seconds(apiserver) - api_before,
                svcplane_cpu(&replicas) - ours_before,
            ];
            eprintln!(
                "round {} {contender}: {rate:.0} creates/s, p50 {p50:.1} ms, p99 {p99:.1} ms, p99.9 {p999:.1} ms, CPU kube-apiserver {:.2} s, svcplane {:.2} s",
                round + 1,
                run[4],
                run[5]
            );
            runs.entry(contender).or_default().push(run);
            duplicates += duplicate_cluster_ips(&client).await;
            drop(replicas);
        }
    }
    println!(
        "{count} Services per run, {concurrency} at a time, each run on a fresh cluster; {duplicates} duplicate ClusterIPs"
    );
    println!();
    println!(
        "| contender | creates/s | p50 (ms) | p99 (ms) | p99.9 (ms) | CPU kube-apiserver (s) | CPU svcplane (s) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for contender in CONTENDERS {
        let r = &runs[contender];
        let col = |k: usize, d: usize| range(&r.iter().map(|x| x[k]).collect::<Vec<_>>(), d);
        println!(
            "| {contender} | {} | {} | {} | {} | {} | {} |",
            col(0, 0),
            col(1, 1),
            col(2, 1),
            col(3, 1),
            col(4, 2),
            col(5, 2)
        );
    }
    assert_eq!(duplicates, 0, "duplicate ClusterIPs");
}
