//! The real upstream the tests compare against: every peer binary reports the version it is
//! pinned to, and the harness's upstream cluster behaves as a kubeadm cluster does — RBAC
//! enforced per identity, an audit log, kube-controller-manager writing EndpointSlices for
//! pods the harness made Ready — and reports the same `/version` shape as svcplane's API server.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use support::{ApiServer, Backend};
use testkit::cluster::{self, Cluster, PodState};
use testkit::peer;

#[test]
fn every_peer_reports_the_version_it_is_pinned_to() {
    let rows: &[(&str, &[&str], &str)] = &[
        ("kube-apiserver", &["--version"], "Kubernetes v1.37.2"),
        (
            "kube-controller-manager",
            &["--version"],
            "Kubernetes v1.37.2",
        ),
        (
            "kubectl",
            &["version", "--client"],
            "Client Version: v1.37.2",
        ),
        ("kubeadm", &["version", "-o", "short"], "v1.37.2"),
        ("coredns", &["-version"], "CoreDNS-1.15.0"),
        ("helm", &["version"], "Version:\"v4.3.2\""),
        // Helm's kubeVersion comes from the client-go it was built with.
        ("helm", &["version"], "KubeClientVersion:\"v1.37\""),
        ("etcd", &["--version"], "etcd Version: 3.6.16"),
        ("etcdctl", &["version"], "etcdctl version: 3.6.16"),
    ];
    for (binary, args, expected) in rows {
        let out = Command::new(peer(binary))
            .args(*args)
            .output()
            .unwrap_or_else(|e| panic!("run {binary}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{binary} {args:?}: {text}");
        assert!(
            text.contains(expected),
            "{binary} {args:?} should say {expected}: {text}"
        );
    }
}

fn kubectl_ok(cluster: &Cluster, identity: &str, args: &[&str]) -> String {
    let out = cluster.kubectl(identity, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} as {identity}: {}",
        support::stderr(&out)
    );
    support::stdout(&out)
}

#[test]
fn kube_apiserver_reports_v1_37_2_to_kubectl_and_the_same_version_fields_as_svcplane() {
    let cluster = Cluster::shared();
    let version: Value =
        serde_json::from_str(&kubectl_ok(cluster, "admin", &["version", "-o", "json"])).unwrap();
    assert_eq!(version["serverVersion"]["gitVersion"], "v1.37.2");
    assert_eq!(version["clientVersion"]["gitVersion"], "v1.37.2");

    // svcplane's API server answers /version with the same fields (its values differ: it is
    // v1.37.2+svcplane).
    let upstream: Value =
        serde_json::from_str(&kubectl_ok(cluster, "admin", &["get", "--raw", "/version"])).unwrap();
    let ours = ApiServer::start(Backend::Memory, &[]);
    let (code, body) = support::http(ours.port, "GET", "/version", &[], None).unwrap();
    assert_eq!(code, 200);
    let ours: Value = serde_json::from_str(&body).unwrap();
    let keys = |v: &Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        keys(&ours),
        keys(&upstream),
        "ours {ours:#}\nupstream {upstream:#}"
    );
    for field in [
        "major",
        "minor",
        "emulationMajor",
        "emulationMinor",
        "minCompatibilityMajor",
        "minCompatibilityMinor",
        "compiler",
        "platform",
    ] {
        assert_eq!(ours[field], upstream[field], "{field}");
    }
}

#[test]
fn each_identity_gets_only_what_rbac_grants_it() {
    let cluster = Cluster::shared();
    // The svcplane identities start with no grant at all.
    let out = cluster.kubectl("svcplane-controller", &["get", "services", "-A"]);
    assert!(!out.status.success());
    assert!(
        support::stderr(&out).contains(
            "User \"svcplane:controller\" cannot list resource \"services\" in API group \"\" at the cluster scope"
        ),
        "{}",
        support::stderr(&out)
    );
    // kube-controller-manager's bootstrap role lets it read services but not delete nodes.
    kubectl_ok(
        cluster,
        "kube-controller-manager",
        &["get", "services", "-A"],
    );
    let out = cluster.kubectl(
        "kube-controller-manager",
        &["auth", "can-i", "delete", "nodes"],
    );
    assert_eq!(support::stdout(&out).trim(), "no");
    assert_eq!(
        kubectl_ok(cluster, "admin", &["auth", "can-i", "*", "*"]).trim(),
        "yes"
    );
    // Every request is in the audit log with its user.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(cluster.audit_log()).unwrap_or_default();
        if log.lines().any(|l| {
            let event: Value = serde_json::from_str(l).unwrap_or_default();
            event["user"]["username"] == "svcplane:controller"
                && event["responseStatus"]["code"] == 403
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "no audit event for the refusal");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_controller_manager_writes_slices_for_pods_the_harness_makes_ready() {
    let cluster = Cluster::shared();
    let admin = cluster.client("admin").await;
    let ns = "harness";
    cluster.create_namespace(&admin, ns).await;
    cluster::create_nodes(&admin, &[("node-a", "zone-a")]).await;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]},
    }))
    .unwrap();
    let svc = Api::<Service>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    // kube-apiserver allocated a ClusterIP from the harness's range.
    let ip = svc.spec.unwrap().cluster_ip.unwrap();
    assert!(ip.starts_with("10.96."), "{ip}");

    for (name, state) in [("web-0", PodState::Ready), ("web-1", PodState::NotReady)] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
            "spec": {},
        }))
        .unwrap();
        let pod = cluster::run_pod(&admin, "node-a", pod, state, false).await;
        let status = pod.status.unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(
            status.pod_ip.unwrap(),
            cluster::pod_ip(ns, name, false).to_string()
        );
    }
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = slices.list(&Default::default()).await.unwrap().items;
        let endpoints: Vec<(String, Option<bool>, Option<String>)> = list
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .map(|e| {
                (
                    e.addresses[0].clone(),
                    e.conditions.as_ref().and_then(|c| c.ready),
                    e.zone.clone(),
                )
            })
            .collect();
        let expected = vec![
            (
                cluster::pod_ip(ns, "web-0", false).to_string(),
                Some(true),
                Some("zone-a".to_string()),
            ),
            (
                cluster::pod_ip(ns, "web-1", false).to_string(),
                Some(false),
                Some("zone-a".to_string()),
            ),
        ];
        let (mut sorted, mut expected) = (endpoints.clone(), expected);
        sorted.sort();
        expected.sort();
        if sorted == expected {
            assert_eq!(
                list[0].metadata.labels.as_ref().unwrap()["endpointslice.kubernetes.io/managed-by"],
                "endpointslice-controller.k8s.io"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kube-controller-manager wrote {endpoints:?}, expected {expected:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
