//! Replacing kubeadm's CoreDNS with the chart, on kube-apiserver v1.37.2 with
//! kube-controller-manager's endpoint controllers, as docs/install.md tells it: CoreDNS and the
//! `kube-dns` Service exactly as `kubeadm init phase addon coredns --print-manifest` gives
//! them; install with `service.create=false` so svcplane's DNS pods (labelled
//! `k8s-app: kube-dns`) join kube-dns; check the svcplane DNS with dig; scale CoreDNS to 0; roll
//! back. No kubelet runs: the harness makes the pods each Deployment would have, Ready, and
//! removes them when it is scaled down. Through every step, kube-dns's EndpointSlices list at
//! least one ready DNS pod.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use serde::Deserialize as _;
use serde_json::{Value, json};
use testkit::cluster::{Cluster, PodState};
use testkit::process::Watched;
use testkit::{free_dns_port, free_port, peer};

/// The bound of every wait.
const PATIENCE: Duration = Duration::from_secs(60);

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(program: &Path, args: &[&str]) -> String {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(program)
        .args(args)
        .env("HOME", home.path())
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        program.display(),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl(args: &[&str]) -> String {
    let out = Cluster::shared().kubectl("admin", args);
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn helm(args: &[&str]) -> String {
    let kubeconfig = Cluster::shared().kubeconfig("admin");
    let mut all = args.to_vec();
    all.extend(["--kubeconfig", kubeconfig.to_str().unwrap()]);
    run(&peer("helm"), &all)
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// The ready pods behind kube-dns, by name, as its EndpointSlices list them.
async fn ready_behind_kube_dns(slices: &Api<EndpointSlice>) -> Option<BTreeSet<String>> {
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=kube-dns"))
        .await
        .ok()?;
    Some(
        list.items
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .filter_map(|e| e.target_ref.as_ref()?.name.clone())
            .collect(),
    )
}

/// Waits until kube-dns's ready pods are exactly `want`.
async fn behind_kube_dns(slices: &Api<EndpointSlice>, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = ready_behind_kube_dns(slices).await;
        if now.as_ref() == Some(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kube-dns's ready pods: {now:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pods a Deployment's template makes, Ready, as its controller and a kubelet would.
async fn start_pods(client: &kube::Client, deployment: &Value, names: &[&str]) {
    for name in names {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "kube-system",
                         "labels": deployment["spec"]["template"]["metadata"]["labels"]},
        }))
        .unwrap();
        testkit::cluster::run_pod(client, "node-a", pod, PodState::Ready, false).await;
    }
}

/// Removes pods as a scale-down would (no kubelet is there to confirm a graceful end).
fn stop_pods(names: &[&str]) {
    for name in names {
        kubectl(&[
            "-n",
            "kube-system",
            "delete",
            "pod",
            name,
            "--grace-period=0",
            "--force",
        ]);
    }
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn replacing_kubeadms_coredns_keeps_a_ready_dns_pod_behind_kube_dns_at_every_step() {
    let cluster = Cluster::shared();
    let dir = tempfile::tempdir().unwrap();
    let admin = cluster.client("admin").await;
    testkit::cluster::create_nodes(&admin, &[("node-a", "zone-a")]).await;
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "kube-system");

    // kubeadm's CoreDNS. kubeadm sets `resourceVersion: "0"` on the Service for its own
    // updates; a create must not carry one.
    let manifest = run(
        &peer("kubeadm"),
        &[
            "init",
            "phase",
            "addon",
            "coredns",
            "--print-manifest",
            "--kubernetes-version",
            "v1.37.2",
        ],
    );
    let manifest: String = manifest
        .lines()
        .filter(|l| l.trim() != "resourceVersion: \"0\"")
        .map(|l| format!("{l}\n"))
        .collect();
    let objects: Vec<Value> = serde_yaml::Deserializer::from_str(&manifest)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    let coredns = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("kubeadm's CoreDNS Deployment")
        .clone();
    let path = write(dir.path(), "coredns.yaml", &manifest);
    kubectl(&["create", "-f", path.to_str().unwrap()]);
    start_pods(&admin, &coredns, &["coredns-0", "coredns-1"]).await;
    behind_kube_dns(&slices, &["coredns-0", "coredns-1"]).await;

    // From here on, kube-dns must never be without a ready pod.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (slices, watching) = (slices.clone(), watching.clone());
        tokio::spawn(async move {
            let mut empty = Vec::new();
            while watching.load(Ordering::Relaxed) {
                if let Some(ready) = ready_behind_kube_dns(&slices).await
                    && ready.is_empty()
                {
                    empty.push(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            empty
        })
    };

    // 1. Install, keeping kube-dns (the chart's Service is not created).
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/svcplane");
    let values = chart.join("ci/kubeadm-values.yaml");
    helm(&[
        "install",
        "svcplane",
        chart.to_str().unwrap(),
        "-n",
        "kube-system",
        "-f",
        values.to_str().unwrap(),
        "--set",
        "service.create=false",
    ]);
    let rendered: Vec<Value> = {
        let yaml = helm(&["get", "manifest", "svcplane", "-n", "kube-system"]);
        serde_yaml::Deserializer::from_str(&yaml)
            .map(|d| Value::deserialize(d).unwrap())
            .filter(|v| !v.is_null())
            .collect()
    };
    assert!(
        !rendered
            .iter()
            .any(|o| o["kind"] == "Service" && o["metadata"]["name"] == "kube-dns"),
        "the chart must leave kubeadm's kube-dns alone"
    );
    let deployment = rendered
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "svcplane-dns")
        .expect("the DNS Deployment")
        .clone();

    // 2. Check svcplane's DNS before it takes traffic: the chart's Corefile, with the token of
    //    the chart's ServiceAccount, answering with dig.
    let corefile = rendered
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "svcplane-dns")
        .and_then(|o| o["data"]["Corefile"].as_str())
        .expect("the chart's Corefile");
    let corefile = write(dir.path(), "Corefile", corefile);
    let token = kubectl(&["-n", "kube-system", "create", "token", "svcplane-dns"]);
    let kubeconfig = write(
        dir.path(),
        "dns.kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: dns\n  user:\n    token: {}\ncontexts:\n- name: dns\n  context:\n    cluster: c\n    user: dns\ncurrent-context: dns\n",
            cluster.url(),
            cluster.ca().display(),
            token.trim()
        ),
    );
    let resolv = write(
        dir.path(),
        "resolv.conf",
        &format!("nameserver 127.0.0.1:{}\n", free_dns_port()),
    );
    let (port, health, ready, metrics) = (free_dns_port(), free_port(), free_port(), free_port());
    let mut args: Vec<OsString> = vec!["dns".into(), "--conf".into(), corefile.into()];
    for (flag, value) in [
        ("--dns-port", port.to_string()),
        ("--bind", "127.0.0.1".into()),
        ("--health-port", health.to_string()),
        ("--ready-port", ready.to_string()),
        ("--metrics-port", metrics.to_string()),
        ("--resolv-conf", resolv.display().to_string()),
    ] {
        args.push(flag.into());
        args.push(value.into());
    }
    let _dns = Watched::spawn(
        Path::new(env!("CARGO_BIN_EXE_svcplane")),
        args,
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
        &dir.path().join("dns.log"),
        None,
    );
    let deadline = Instant::now() + PATIENCE;
    while http_status(ready, "/ready") != Some(200) {
        assert!(Instant::now() < deadline, "svcplane dns not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = run(
        Path::new("dig"),
        &[
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+short",
            "kubernetes.default.svc.cluster.local",
            "A",
        ],
    );
    assert_eq!(answer.trim(), "10.96.0.1");

    // 3. svcplane's pods join kube-dns beside CoreDNS's.
    start_pods(&admin, &deployment, &["svcplane-dns-0", "svcplane-dns-1"]).await;
    behind_kube_dns(
        &slices,
        &["coredns-0", "coredns-1", "svcplane-dns-0", "svcplane-dns-1"],
    )
    .await;

    // 4. CoreDNS scaled to 0.
    kubectl(&[
        "-n",
        "kube-system",
        "scale",
        "deployment",
        "coredns",
        "--replicas=0",
    ]);
    stop_pods(&["coredns-0", "coredns-1"]);
    behind_kube_dns(&slices, &["svcplane-dns-0", "svcplane-dns-1"]).await;

    // 5. Rollback: CoreDNS back and ready first, then the chart uninstalled.
    kubectl(&[
        "-n",
        "kube-system",
        "scale",
        "deployment",
        "coredns",
        "--replicas=2",
    ]);
    start_pods(&admin, &coredns, &["coredns-2", "coredns-3"]).await;
    behind_kube_dns(
        &slices,
        &["coredns-2", "coredns-3", "svcplane-dns-0", "svcplane-dns-1"],
    )
    .await;
    helm(&["uninstall", "svcplane", "-n", "kube-system"]);
    stop_pods(&["svcplane-dns-0", "svcplane-dns-1"]);
    behind_kube_dns(&slices, &["coredns-2", "coredns-3"]).await;
    // kubeadm's objects are as they were.
    let service = kubectl(&[
        "-n",
        "kube-system",
        "get",
        "service",
        "kube-dns",
        "-o",
        "jsonpath={.spec.clusterIP} {.metadata.labels.kubernetes\\.io/name}",
    ]);
    assert_eq!(service, "10.96.0.10 CoreDNS");

    watching.store(false, Ordering::Relaxed);
    let empty = watcher.await.unwrap();
    assert!(
        empty.is_empty(),
        "kube-dns had no ready pod {} times",
        empty.len()
    );
}
