//! The endpoint controllers of `svcplane controller --manage=all` against kube-controller-
//! manager v1.37.2's (endpoint, endpointslice, endpointslicemirroring), side by side on one
//! upstream cluster (kube-apiserver and etcd from the peers), taking turns: only one contender
//! runs at a time, each starts on the same objects. `bench/controller.sh` runs the three
//! scenarios and prints their tables:
//!
//! - `latency ROUNDS PODS RATE`: PODS pods of a headless Service wait NotReady (with IPs);
//!   they turn Ready at RATE per second; for each, the time from its status write to its
//!   endpoint `ready` in a watched EndpointSlice, and to its name answering in `svcplane dns`
//!   (fed by the same cluster) — p50 / p99 per contender, and the contender's CPU.
//! - `scaleup ROUNDS PODS`: PODS Ready pods appear at once under a Service with a selector;
//!   the contender's writes (audit log) and the request bytes kube-apiserver received for
//!   Endpoints and EndpointSlices (`apiserver_request_body_size_bytes`).
//! - `sync ROUNDS SERVICES PODS`: SERVICES Services over 100 namespaces, PODS Running Ready
//!   pods (no kubelet) spread over them, loaded once; etcd's data directory is saved while etcd
//!   is stopped and put back before every run; the time from the contender's start until every
//!   Service has its Endpoints and EndpointSlice, its peak RSS and CPU seconds.
//!
//!   cargo run --release -p testkit --example controller_bench -- SCENARIO ARGS...
//!
//! kube-controller-manager runs with kubeadm's flags (each controller with its own service
//! account); in `sync` with `--kube-api-qps=10000 --kube-api-burst=10000`, as its default
//! client limit (20 requests/s per controller) alone would make 20 000 creates take 500 s.

use std::collections::{BTreeMap, HashMap};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use testkit::bench::{self, percentile, range};
use testkit::cluster::{self, Cluster, ClusterOptions};
use testkit::process::Watched;

/// kube-controller-manager's three endpoint controllers.
const KCM_CONTROLLERS: &[&str] = &["endpoint", "endpointslice", "endpointslicemirroring"];
const CONTENDERS: [&str; 2] = ["kube-controller-manager", "svcplane"];

fn svcplane_binary() -> PathBuf {
    std::env::var_os("SVCPLANE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/svcplane"))
}

/// One running contender.
struct Contender {
    process: Watched,
}

impl Contender {
    fn start(name: &str, cluster: &Cluster, dir: &Path, kcm_extra: &[String]) -> Contender {
        let log = dir.join(format!("{name}.log"));
        let process = if name == "svcplane" {
            Watched::spawn(
                &svcplane_binary(),
                vec![
                    "controller".into(),
                    "--manage=all".into(),
                    "--leader-elect=false".into(),
                    "--listen-http=127.0.0.1:0".into(),
                    "--kubeconfig".into(),
                    cluster.kubeconfig("svcplane-controller").into_os_string(),
                ],
                &[("RUST_LOG", "warn")],
                &log,
                None,
            )
        } else {
            cluster.spawn_controller_manager(KCM_CONTROLLERS, kcm_extra, &log)
        };
        Contender { process }
    }

    /// CPU seconds used so far (user + system).
    fn cpu(&self) -> f64 {
        bench::cpu_seconds(bench::pid_of(&self.process))
    }

    /// Peak resident memory so far, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        bench::peak_rss_mib(bench::pid_of(&self.process))
    }
}

fn start_cluster() -> Cluster {
    let cluster = Cluster::start(ClusterOptions {
        controllers: None,
        node_port_range: None,
        service_cidrs: Some("10.96.0.0/12".to_string()),
        controller_manager_args: Vec::new(),
    });
    cluster.apply(&cluster::svcplane_controller_rbac());
    cluster
}

/// The `i`th pod address of a scenario: unique across 16 million pods.
fn pod_ip(base: u8, i: usize) -> String {
    format!(
        "10.{}.{}.{}",
        base as usize + i / 65536,
        (i / 256) % 256,
        i % 256
    )
}

/// A Running pod's status with `ip`, Ready or not, changed now.
fn status(ip: &str, ready: bool) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    cluster::running_status(&[ip.to_string()], ready, &now)
}

/// Creates a pod and writes its status.
async fn run_pod(client: &kube::Client, ns: &str, pod: Value, ip: &str, ready: bool) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let name = pod.name_any();
    for attempt in 0.. {
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 409 => break,
            Err(e) if attempt < 5 => {
                eprintln!("create pod {ns}/{name}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("create pod {ns}/{name}: {e}"),
        }
    }
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&status(ip, ready)),
    )
    .await
    .unwrap_or_else(|e| panic!("status of {ns}/{name}: {e}"));
}

fn pod(ns: &str, name: &str, labels: Value, node: &str, extra: Value) -> Value {
    let mut pod = json!({"metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                 "ports": [{"name": "http", "containerPort": 8080}]}]}});
    if let (Some(spec), Some(more)) = (pod["spec"].as_object_mut(), extra.as_object()) {
        for (k, v) in more {
            spec.insert(k.clone(), v.clone());
        }
    }
    pod
}

async fn create_service(client: &kube::Client, ns: &str, svc: Value) {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc: Service = serde_json::from_value(svc).unwrap();
    match api.create(&PostParams::default(), &svc).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create service: {e}"),
    }
}

/// A DNS A query for `name` (no EDNS), as bytes.
fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Whether `svcplane dns` on `port` answers `name` with `ip`.
fn resolves(socket: &UdpSocket, port: u16, id: u16, name: &str, ip: &str) -> bool {
    let _ = socket.send_to(&a_query(id, name), ("127.0.0.1", port));
    let mut buf = [0u8; 1500];
    let want: Vec<u8> = ip.split('.').map(|o| o.parse::<u8>().unwrap()).collect();
    while let Ok(n) = socket.recv(&mut buf) {
        if n < 12 || u16::from_be_bytes([buf[0], buf[1]]) != id {
            continue;
        }
        let answers = u16::from_be_bytes([buf[6], buf[7]]);
        return answers > 0 && buf[..n].ends_with(&want);
    }
    false
}

async fn latency(rounds: usize, pods: usize, rate: f64) {
    let cluster = start_cluster();
    let client = cluster.client("admin").await;
    cluster::create_nodes(&client, &[("node-a", "zone-a"), ("node-b", "zone-b")]).await;
    let work = tempfile::tempdir().unwrap();
    let dns_port = testkit::free_dns_port();
    let _dns = Watched::spawn(
        &svcplane_binary(),
        vec![
            "dns".into(),
            format!("--listen=127.0.0.1:{dns_port}").into(),
            "--kubeconfig".into(),
            cluster.kubeconfig("admin").into_os_string(),
            "--ttl=0".into(),
        ],
        &[("RUST_LOG", "warn")],
        &work.path().join("dns.log"),
        None,
    );
    let mut rows: BTreeMap<&str, Vec<[f64; 5]>> = BTreeMap::new();
    for round in 1..=rounds {
        for (c, name) in CONTENDERS.iter().enumerate() {
            let ns = format!("lat-{round}-{c}");
            cluster.create_namespace(&client, &ns).await;
            create_service(
                &client,
                &ns,
                json!({"metadata": {"name": "lat"}, "spec": {"clusterIP": "None",
                    "selector": {"app": "lat"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
            )
            .await;
            let base = 100 + (round * 2 + c) as u8;
            futures::stream::iter(0..pods)
                .map(|i| {
                    let (client, ns) = (client.clone(), ns.clone());
                    async move {
                        let name = format!("p-{i:04}");
                        let spec = pod(
                            &ns,
                            &name,
                            json!({"app": "lat"}),
                            if i % 2 == 0 { "node-a" } else { "node-b" },
                            json!({"hostname": name, "subdomain": "lat"}),
                        );
                        run_pod(&client, &ns, spec, &pod_ip(base, i), false).await;
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<()>>()
                .await;
            let contender = Contender::start(name, &cluster, work.path(), &[]);
            let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
            // Every pod in a slice, not ready, before the clock starts.
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let listed = slices.list(&Default::default()).await.unwrap();
                let n: usize = listed
                    .items
                    .iter()
                    .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
                    .sum();
                if n == pods {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} never listed the {pods} pods"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
            let watch = {
                let seen = seen.clone();
                let stream = watcher(slices.clone(), watcher::Config::default());
                tokio::spawn(async move {
                    let mut stream = std::pin::pin!(stream);
                    while let Ok(Some(event)) = stream.try_next().await {
                        let now = Instant::now();
                        let slices: Vec<EndpointSlice> = match event {
                            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => vec![s],
                            _ => Vec::new(),
                        };
                        let mut seen = seen.lock().unwrap();
                        for e in slices.iter().flat_map(|s| s.endpoints.iter().flatten()) {
                            let ready = e.conditions.as_ref().and_then(|c| c.ready) == Some(true);
                            if let (true, Some(target)) = (ready, &e.target_ref) {
                                let name = target.name.clone().unwrap_or_default();
                                seen.entry(name).or_insert(now);
                            }
                        }
                    }
                })
            };
            tokio::time::sleep(Duration::from_secs(1)).await;
            let cpu_before = contender.cpu();
            let started = Instant::now();
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut flips = Vec::new();
            for i in 0..pods {
                tokio::time::sleep_until((started + interval * i as u32).into()).await;
                let (client, ns) = (client.clone(), ns.clone());
                flips.push(tokio::spawn(async move {
                    let name = format!("p-{i:04}");
                    let ip = pod_ip(base, i);
                    let api: Api<Pod> = Api::namespaced(client, &ns);
                    let sent = Instant::now();
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&status(&ip, true)),
                    )
                    .await
                    .unwrap();
                    // Then ask the DNS for the pod's name until it answers with its address.
                    let dns = tokio::task::spawn_blocking(move || {
                        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
                        socket
                            .set_read_timeout(Some(Duration::from_millis(20)))
                            .unwrap();
                        let qname = format!("{name}.lat.{ns}.svc.cluster.local");
                        let deadline = Instant::now() + Duration::from_secs(60);
                        let mut id: u16 = (i as u16).wrapping_mul(7);
                        while Instant::now() < deadline {
                            id = id.wrapping_add(1);
                            if resolves(&socket, dns_port, id, &qname, &ip) {
                                return Some(Instant::now());
                            }
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        None
                    })
                    .await
                    .unwrap();
                    (format!("p-{i:04}"), sent, dns)
                }));
            }
            let mut sent_at = HashMap::new();
            let mut dns_latency = Vec::new();
            for flip in flips {
                let (name, sent, dns) = flip.await.unwrap();
                if let Some(at) = dns {
                    dns_latency.push(at.duration_since(sent).as_secs_f64() * 1000.0);
                }
                sent_at.insert(name, sent);
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen.lock().unwrap().len() < pods && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let cpu = contender.cpu() - cpu_before;
            let elapsed = started.elapsed().as_secs_f64();
            watch.abort();
            let seen = seen.lock().unwrap().clone();
            let mut slice_latency: Vec<f64> = sent_at
                .iter()
                .filter_map(|(name, sent)| {
                    seen.get(name)
                        .map(|at| at.saturating_duration_since(*sent).as_secs_f64() * 1000.0)
                })
                .collect();
            assert_eq!(
                slice_latency.len(),
                pods,
                "{name}: not every pod reached a slice"
            );
            assert_eq!(
                dns_latency.len(),
                pods,
                "{name}: not every pod answered in DNS"
            );
            slice_latency.sort_by(f64::total_cmp);
            dns_latency.sort_by(f64::total_cmp);
            let row = [
                percentile(&slice_latency, 50.0),
                percentile(&slice_latency, 99.0),
                percentile(&dns_latency, 50.0),
                percentile(&dns_latency, 99.0),
                100.0 * cpu / elapsed,
            ];
            eprintln!(
                "round {round} {name}: slice p50 {:.1} ms p99 {:.1} ms, dns p50 {:.1} ms p99 {:.1} ms, CPU {:.1} %",
                row[0], row[1], row[2], row[3], row[4]
            );
            rows.entry(name).or_default().push(row);
            drop(contender);
        }
    }
    println!(
        "| contender | → slice p50 (ms) | → slice p99 (ms) | → DNS p50 (ms) | → DNS p99 (ms) | CPU (% of a core) |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, runs) in &rows {
        let col = |k: usize| range(&runs.iter().map(|r| r[k]).collect::<Vec<_>>(), 1);
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            col(0),
            col(1),
            col(2),
            col(3),
            col(4)
        );
    }
}

/// kube-apiserver's `apiserver_request_body_size_bytes_sum` for Endpoints and EndpointSlice
/// writes, summed.
fn request_bytes(cluster: &Cluster) -> f64 {
    let out = cluster.kubectl("admin", &["get", "--raw", "/metrics"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("apiserver_request_body_size_bytes_sum{"))
        .filter(|l| {
            l.contains("resource=\"endpoints\"") || l.contains("resource=\"endpointslices\"")
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Writes of Endpoints and EndpointSlices in `ns` in the audit log, by the contenders.
fn audited_writes(cluster: &Cluster, ns: &str) -> usize {
    std::fs::read_to_string(cluster.audit_log())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete" && e["objectRef"]["namespace"] == ns)
        .filter(|e| e["user"]["username"] != "kubernetes-admin")
        .filter(|e| {
            matches!(
                e["objectRef"]["resource"].as_str(),
                Some("endpoints" | "endpointslices")
            )
        })
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .filter(|e| {
            e["responseStatus"]["code"]
                .as_u64()
                .is_some_and(|c| c < 300)
        })
        .count()
}

async fn scaleup(rounds: usize, pods: usize) {
    let cluster = start_cluster();
    let client = cluster.client("admin").await;
    cluster::create_nodes(&client, &[("node-a", "zone-a"), ("node-b", "zone-b")]).await;
    let work = tempfile::tempdir().unwrap();
    let mut rows: BTreeMap<&str, Vec<[f64; 4]>> = BTreeMap::new();
    for round in 1..=rounds {
        for (c, name) in CONTENDERS.iter().enumerate() {
            let ns = format!("up-{round}-{c}");
            cluster.create_namespace(&client, &ns).await;
            create_service(
                &client,
                &ns,
                json!({"metadata": {"name": "up"}, "spec": {"selector": {"app": "up"},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
            )
            .await;
            let contender = Contender::start(name, &cluster, work.path(), &[]);
            let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
            let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
            let count = |want: usize| {
                let (slices, endpoints) = (slices.clone(), endpoints.clone());
                async move {
                    let s: usize = slices
                        .list(&Default::default())
                        .await
                        .unwrap()
                        .items
                        .iter()
                        .flat_map(|s| s.endpoints.iter().flatten())
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                        .count();
                    let e: usize = endpoints.get_opt("up").await.unwrap().map_or(0, |e| {
                        e.subsets
                            .iter()
                            .flatten()
                            .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                            .sum()
                    });
                    let have_slice = !slices
                        .list(&Default::default())
                        .await
                        .unwrap()
                        .items
                        .is_empty();
                    s == want && e == want && have_slice
                }
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            while !count(0).await || endpoints.get_opt("up").await.unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "{name} never wrote the empty objects"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (writes_before, bytes_before, cpu_before) = (
                audited_writes(&cluster, &ns),
                request_bytes(&cluster),
                contender.cpu(),
            );
            let base = 150 + (round * 2 + c) as u8;
            let started = Instant::now();
            futures::stream::iter(0..pods)
                .map(|i| {
                    let (client, ns) = (client.clone(), ns.clone());
                    async move {
                        let name = format!("u-{i:04}");
                        let spec = pod(&ns, &name, json!({"app": "up"}), "node-a", json!({}));
                        run_pod(&client, &ns, spec, &pod_ip(base, i), true).await;
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<()>>()
                .await;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !count(pods).await {
                assert!(
                    Instant::now() < deadline,
                    "{name} never listed the {pods} pods"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let converged = started.elapsed().as_secs_f64();
            // Quiet: no write left in flight.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let writes = audited_writes(&cluster, &ns) - writes_before;
            let bytes = request_bytes(&cluster) - bytes_before;
            let cpu = contender.cpu() - cpu_before;
            eprintln!(
                "round {round} {name}: {writes} writes, {bytes:.0} request bytes, converged in {converged:.1} s, {cpu:.2} CPU s"
            );
            rows.entry(name)
                .or_default()
                .push([writes as f64, bytes / 1024.0, converged, cpu]);
            drop(contender);
        }
    }
    println!("| contender | writes | request KiB | all {pods} listed after (s) | CPU (s) |");
    println!("|---|---|---|---|---|");
    for (name, runs) in &rows {
        let col = |k: usize, d: usize| range(&runs.iter().map(|r| r[k]).collect::<Vec<_>>(), d);
        println!(
            "| {name} | {} | {} | {} | {} |",
            col(0, 0),
            col(1, 0),
            col(2, 1),
            col(3, 2)
        );
    }
}

async fn sync(rounds: usize, services: usize, pods: usize) {
    let mut cluster = start_cluster();
    let client = cluster.client("admin").await;
    let nodes: Vec<(String, String)> = (0..20)
        .map(|i| (format!("node-{i:02}"), format!("zone-{}", i % 3)))
        .collect();
    let node_refs: Vec<(&str, &str)> = nodes
        .iter()
        .map(|(n, z)| (n.as_str(), z.as_str()))
        .collect();
    cluster::create_nodes(&client, &node_refs).await;
    let namespaces = 100;
    let loading = Instant::now();
    for n in 0..namespaces {
        cluster
            .create_namespace(&client, &format!("sync-{n:03}"))
            .await;
    }
    futures::stream::iter(0..services)
        .map(|s| {
            let client = client.clone();
            async move {
                let ns = format!("sync-{:03}", s % namespaces);
                create_service(
                    &client,
                    &ns,
                    json!({"metadata": {"name": format!("s-{s:05}")},
                    "spec": {"selector": {"svc": format!("s-{s:05}")},
                             "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
                )
                .await;
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let per_service = pods.div_ceil(services);
    futures::stream::iter(0..pods)
        .map(|p| {
            let client = client.clone();
            let node = nodes[p % nodes.len()].0.clone();
            async move {
                let s = p / per_service;
                let ns = format!("sync-{:03}", s % namespaces);
                let spec = pod(
                    &ns,
                    &format!("p-{p:06}"),
                    json!({"svc": format!("s-{s:05}")}),
                    &node,
                    json!({}),
                );
                run_pod(&client, &ns, spec, &pod_ip(64, p), true).await;
                if p % 10000 == 9999 {
                    eprintln!("loaded {} pods", p + 1);
                }
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    eprintln!(
        "loaded {services} Services and {pods} pods in {:.0?}",
        loading.elapsed()
    );
    drop(client);
    // Save etcd's data while it is stopped.
    cluster.stop_store();
    let data = cluster.etcd().data_path();
    let saved = data.with_file_name("saved");
    copy_dir(&data, &saved);
    let work = tempfile::tempdir().unwrap();
    let unthrottled = vec![
        "--kube-api-qps=10000".to_string(),
        "--kube-api-burst=10000".to_string(),
    ];
    let mut rows: BTreeMap<&str, Vec<[f64; 3]>> = BTreeMap::new();
    for round in 1..=rounds {
        for name in CONTENDERS {
            cluster.stop_store();
            std::fs::remove_dir_all(&data).unwrap();
            copy_dir(&saved, &data);
            cluster.start_store();
            let client = cluster.client("admin").await;
            // Count Services with Endpoints and with a slice from watches of both.
            let (have_ep, ep_watch) = seen_keys(Api::<Endpoints>::all(client.clone()), |e| {
                Some(format!(
                    "{}/{}",
                    e.namespace().unwrap_or_default(),
                    e.name_any()
                ))
            });
            let (have_slice, slice_watch) =
                seen_keys(Api::<EndpointSlice>::all(client.clone()), |s| {
                    let svc = s.labels().get("kubernetes.io/service-name")?;
                    Some(format!("{}/{svc}", s.namespace().unwrap_or_default()))
                });
            tokio::time::sleep(Duration::from_secs(2)).await;
            let started = Instant::now();
            let contender = Contender::start(name, &cluster, work.path(), &unthrottled);
            // (default/kubernetes has no selector: neither side writes for it.)
            let want = services;
            let deadline = Instant::now() + Duration::from_secs(1800);
            loop {
                let (e, s) = (
                    have_ep.lock().unwrap().len(),
                    have_slice.lock().unwrap().len(),
                );
                if e >= want && s >= want {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name}: only {e} Endpoints and {s} slices after 30 min"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let took = started.elapsed().as_secs_f64();
            let (rss, cpu) = (contender.peak_rss_mib(), contender.cpu());
            eprintln!(
                "round {round} {name}: synced {want} Services in {took:.1} s, peak RSS {rss:.0} MiB, {cpu:.1} CPU s"
            );
            rows.entry(name).or_default().push([took, rss, cpu]);
            ep_watch.abort();
            slice_watch.abort();
            drop(contender);
        }
    }
    println!("| contender | initial sync (s) | peak RSS (MiB) | CPU (s) |");
    println!("|---|---|---|---|");
    for (name, runs) in &rows {
        let col = |k: usize, d: usize| range(&runs.iter().map(|r| r[k]).collect::<Vec<_>>(), d);
        println!("| {name} | {} | {} | {} |", col(0, 1), col(1, 0), col(2, 1));
    }
}

/// Follows `api`, keeping `key` of every object seen (applied) in the returned set.
fn seen_keys<K>(
    api: Api<K>,
    key: fn(&K) -> Option<String>,
) -> (
    Arc<Mutex<std::collections::HashSet<String>>>,
    tokio::task::JoinHandle<()>,
)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let seen: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()));
            while let Ok(Some(event)) = stream.try_next().await {
                if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = event
                    && let Some(k) = key(&o)
                {
                    seen.lock().unwrap().insert(k);
                }
            }
        })
    };
    (seen, task)
}

fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: f64| -> f64 {
        args.get(i)
            .map_or(default, |a| a.parse().expect("a number"))
    };
    match args.first().map(String::as_str) {
        Some("latency") => {
            latency(num(1, 3.0) as usize, num(2, 500.0) as usize, num(3, 20.0)).await
        }
        Some("scaleup") => scaleup(num(1, 3.0) as usize, num(2, 300.0) as usize).await,
        Some("sync") => {
            sync(
                num(1, 3.0) as usize,
                num(2, 10000.0) as usize,
                num(3, 100000.0) as usize,
            )
            .await
        }
        _ => {
            eprintln!("usage: controller_bench latency|scaleup|sync [ROUNDS] [SIZES...]");
            std::process::exit(2);
        }
    }
}
