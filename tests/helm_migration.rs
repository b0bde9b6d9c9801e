//! Replacing kubeadm's CoreDNS with the chart, on kube-apiserver v1.37.2 with
//! kube-controller-manager's endpoint controllers, as docs/install.md tells it: CoreDNS and the
//! `kube-dns` Service exactly as `kubeadm init phase addon coredns --print-manifest` gives
//! them; install with `service.create=false` so svcplane's DNS pods (labelled
//! `k8s-app: kube-dns`) join kube-dns; check the svcplane DNS with dig; scale CoreDNS to 0; roll
//! back. No kubelet runs: the harness makes the pods each Deployment would have, Ready, and
//! removes them when it is scaled down. Through every step, kube-dns's EndpointSlices list at
//! least one ready DNS pod.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use support::helm::{
    DnsPorts, account_kubeconfig, chart, dig_a, http_get, named, objects, start_dns, text, write,
};
use testkit::cluster::{Cluster, PodState};
use testkit::peer;

/// The bound of every wait.
const PATIENCE: Duration = Duration::from_secs(60);

fn kubectl(args: &[&str]) -> String {
    let out = Cluster::shared().kubectl("admin", args);
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn helm(args: &[&str]) -> String {
    let out = support::helm::helm(Some(&Cluster::shared().kubeconfig("admin")), args);
    assert!(out.status.success(), "helm {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// Scales kubeadm's CoreDNS Deployment (the harness then makes or removes its pods).
fn scale_coredns(replicas: u32) {
    kubectl(&[
        "-n",
        "kube-system",
        "scale",
        "deployment",
        "coredns",
        &format!("--replicas={replicas}"),
    ]);
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

#[tokio::test(flavor = "multi_thread")]
async fn replacing_kubeadms_coredns_keeps_a_ready_dns_pod_behind_kube_dns_at_every_step() {
    let cluster = Cluster::shared();
    let dir = tempfile::tempdir().unwrap();
    let admin = cluster.client("admin").await;
    testkit::cluster::create_nodes(&admin, &[("node-a", "zone-a")]).await;
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "kube-system");

    // kubeadm's CoreDNS. kubeadm sets `resourceVersion: "0"` on the Service for its own
    // updates; a create must not carry one.
    let out = Command::new(peer("kubeadm"))
        .args(["init", "phase", "addon", "coredns", "--print-manifest"])
        .args(["--kubernetes-version", "v1.37.2"])
        .output()
        .expect("run kubeadm");
    assert!(out.status.success(), "kubeadm: {}", text(&out));
    let manifest = String::from_utf8_lossy(&out.stdout);
    let manifest: String = manifest
        .lines()
        .filter(|l| l.trim() != "resourceVersion: \"0\"")
        .map(|l| format!("{l}\n"))
        .collect();
    let coredns = named(&objects(&manifest), "Deployment", "coredns").clone();
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
    let chart = chart();
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
    let rendered = objects(&helm(&["get", "manifest", "svcplane", "-n", "kube-system"]));
    assert!(
        !rendered
            .iter()
            .any(|o| o["kind"] == "Service" && o["metadata"]["name"] == "kube-dns"),
        "the chart must leave kubeadm's kube-dns alone"
    );
    let deployment = named(&rendered, "Deployment", "svcplane-dns").clone();

    // 2. Check svcplane's DNS before it takes traffic: the chart's Corefile, with the token of
    //    the chart's ServiceAccount, answering with dig.
    let corefile = named(&rendered, "ConfigMap", "svcplane-dns")["data"]["Corefile"]
        .as_str()
        .expect("the chart's Corefile");
    let corefile = write(dir.path(), "Corefile", corefile);
    let kubeconfig = account_kubeconfig(cluster, dir.path(), "kube-system", "svcplane-dns");
    let ports = DnsPorts::free();
    let _dns = start_dns(dir.path(), &corefile, &kubeconfig, ports, "dns.log");
    let deadline = Instant::now() + PATIENCE;
    while http_get(ports.ready, "/ready").map(|(status, _)| status) != Some(200) {
        assert!(Instant::now() < deadline, "svcplane dns not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        dig_a(ports.dns, "kubernetes.default.svc.cluster.local"),
        "10.96.0.1"
    );

    // 3. svcplane's pods join kube-dns beside CoreDNS's.
    start_pods(&admin, &deployment, &["svcplane-dns-0", "svcplane-dns-1"]).await;
    behind_kube_dns(
        &slices,
        &["coredns-0", "coredns-1", "svcplane-dns-0", "svcplane-dns-1"],
    )
    .await;

    // 4. CoreDNS scaled to 0.
    scale_coredns(0);
    stop_pods(&["coredns-0", "coredns-1"]);
    behind_kube_dns(&slices, &["svcplane-dns-0", "svcplane-dns-1"]).await;

    // 5. Rollback: CoreDNS back and ready first, then the chart uninstalled.
    scale_coredns(2);
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
