//! `svcplane apiserver --simulate-kubelet` through kube-rs: nodes registered in their zones,
//! pods scheduled and given unique IPs from the pod CIDR(s) (dual-stack with two), Running and
//! Ready at once or held unready by the `svcplane.io/ready` annotation, Succeeded/Failed left as
//! a client set them, graceful deletion capped by `--max-pod-grace`, and a kubelet restart (an
//! API server restart on etcd) that keeps every IP and finishes pending deletions.

mod support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use k8s_openapi::jiff;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{ApiServer, Backend};

/// The bound of every wait.
const PATIENCE: Duration = Duration::from_secs(20);

fn pod(name: &str, extra: Value) -> Pod {
    let mut body = json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
    });
    json_patch::merge(&mut body, &extra);
    serde_json::from_value(body).unwrap()
}

async fn create(api: &Api<Pod>, name: &str, extra: Value) -> Pod {
    api.create(&PostParams::default(), &pod(name, extra))
        .await
        .unwrap()
}

fn condition<'a>(pod: &'a Pod, kind: &str) -> Option<&'a PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

fn condition_status(pod: &Pod, kind: &str) -> String {
    condition(pod, kind)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

fn phase(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && condition_status(pod, "Ready") == "True"
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

fn pod_ips(pod: &Pod) -> Vec<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect())
        .unwrap_or_default()
}

fn host_ips(pod: &Pod) -> Vec<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.host_ips.as_ref())
        .map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect())
        .unwrap_or_default()
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// Polls the pod until `check` holds (at most [`PATIENCE`]).
async fn wait_pod(api: &Api<Pod>, name: &str, what: &str, check: impl Fn(&Pod) -> bool) -> Pod {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let pod = api.get_opt(name).await.unwrap();
        if let Some(pod) = &pod
            && check(pod)
        {
            return pod.clone();
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} never became {what}: {pod:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until the pod is gone; returns when it was last seen.
async fn wait_gone(api: &Api<Pod>, name: &str, bound: Duration) -> Instant {
    let deadline = Instant::now() + bound;
    let mut last_seen = Instant::now();
    loop {
        let before = Instant::now();
        if api.get_opt(name).await.unwrap().is_none() {
            return last_seen;
        }
        last_seen = before;
        assert!(
            Instant::now() < deadline,
            "pod {name} still there after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_nodes(api: &Api<Node>, count: usize) -> Vec<Node> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let nodes = api.list(&ListParams::default()).await.unwrap().items;
        let ready = nodes
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        if ready == count {
            return nodes;
        }
        assert!(
            Instant::now() < deadline,
            "never {count} ready nodes: {nodes:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn zone(node: &Node) -> String {
    node.metadata.labels.as_ref().unwrap()["topology.kubernetes.io/zone"].clone()
}

#[tokio::test]
async fn nodes_are_registered_in_their_zones_ready_with_an_internal_ip() {
    let server = ApiServer::start(
        Backend::Memory,
        &["--simulate-kubelet", "--nodes", "4", "--zones", "east,west"],
    );
    let nodes: Api<Node> = Api::all(server.client().await);
    let listed = wait_nodes(&nodes, 4).await;
    let names: Vec<String> = listed
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["node-1", "node-2", "node-3", "node-4"]);
    let zones: Vec<String> = listed.iter().map(zone).collect();
    assert_eq!(zones, ["east", "west", "east", "west"]);
    let node = &listed[2];
    assert_eq!(
        node.metadata.labels.clone().unwrap(),
        BTreeMap::from(
            [
                ("kubernetes.io/arch", "amd64"),
                ("kubernetes.io/hostname", "node-3"),
                ("kubernetes.io/os", "linux"),
                ("topology.kubernetes.io/zone", "east"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        )
    );
    let status = node.status.as_ref().unwrap();
    let addresses: Vec<(String, String)> = status
        .addresses
        .as_ref()
        .unwrap()
        .iter()
        .map(|a| (a.type_.clone(), a.address.clone()))
        .collect();
    assert_eq!(
        addresses,
        [
            ("InternalIP".to_string(), "172.30.0.3".to_string()),
            ("Hostname".into(), "node-3".into())
        ]
    );
    let ready = status
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("True", Some("KubeletReady"))
    );
    let info = status.node_info.as_ref().unwrap();
    assert_eq!(info.kubelet_version, "v1.37.2+svcplane");
    assert_eq!(
        (info.operating_system.as_str(), info.architecture.as_str()),
        ("linux", "amd64")
    );
    let capacity: BTreeMap<String, String> = status
        .capacity
        .clone()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    assert_eq!(capacity["cpu"], "4");
    assert_eq!(capacity["memory"], "8Gi");
    assert_eq!(capacity["pods"], "110");
    assert_eq!(status.allocatable, status.capacity);
}

async fn pods_get_unique_ips_from_the_pod_cidr_a_node_and_become_ready(backend: Backend) {
    let server = ApiServer::start(
        backend,
        &[
            "--simulate-kubelet",
            "--nodes",
            "3",
            "--pod-cidr",
            "10.250.0.0/24",
        ],
    );
    let client = server.client().await;
    let nodes = wait_nodes(&Api::<Node>::all(client.clone()), 3).await;
    let zones: Vec<String> = nodes.iter().map(zone).collect();
    assert_eq!(zones, ["zone-a", "zone-b", "zone-c"], "the default zones");
    let api: Api<Pod> = Api::default_namespaced(client);
    let names = ["p1", "p2", "p3", "p4", "p5"];
    for name in names {
        create(&api, name, json!({})).await;
    }
    let cidr: apiserver::kubelet::IpNet = "10.250.0.0/24".parse().unwrap();
    let mut placed = Vec::new();
    for name in names {
        let pod = wait_pod(&api, name, "running and ready", running_and_ready).await;
        let ip: IpAddr = pod_ip(&pod).parse().unwrap();
        assert!(
            cidr.contains(&ip) && ip != cidr.network(),
            "{name}: {ip} is a pod address of {cidr}"
        );
        assert_eq!(pod_ips(&pod), [pod_ip(&pod)]);
        let node = node_of(&pod);
        let index = node.strip_prefix("node-").unwrap();
        let status = pod.status.clone().unwrap();
        assert_eq!(status.host_ip, Some(format!("172.30.0.{index}")));
        assert_eq!(host_ips(&pod), [format!("172.30.0.{index}")]);
        assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
        let conditions: Vec<(String, String)> = status
            .conditions
            .clone()
            .unwrap()
            .into_iter()
            .map(|c| (c.type_, c.status))
            .collect();
        assert_eq!(
            conditions,
            [
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled"
            ]
            .map(|t| (t.to_string(), "True".to_string()))
        );
        let start = status.start_time.clone().unwrap();
        let containers = status.container_statuses.clone().unwrap();
        assert_eq!(containers.len(), 1);
        let web = &containers[0];
        assert_eq!(
            (
                web.name.as_str(),
                web.image.as_str(),
                web.ready,
                web.started,
                web.restart_count
            ),
            ("web", "nginx:1.27", true, Some(true), 0)
        );
        assert_eq!(
            web.state
                .as_ref()
                .unwrap()
                .running
                .as_ref()
                .unwrap()
                .started_at,
            Some(start)
        );
        placed.push((name.to_string(), node, pod_ip(&pod)));
    }
    // One after the other, each to the least loaded node, each the next free address.
    assert_eq!(
        placed,
        [
            ("p1", "node-1", "10.250.0.1"),
            ("p2", "node-2", "10.250.0.2"),
            ("p3", "node-3", "10.250.0.3"),
            ("p4", "node-1", "10.250.0.4"),
            ("p5", "node-2", "10.250.0.5"),
        ]
        .map(|(p, n, ip)| (p.to_string(), n.to_string(), ip.to_string()))
    );
}

#[tokio::test]
async fn two_pod_cidrs_give_pods_an_ip_of_each_family() {
    let server = ApiServer::start(
        Backend::Memory,
        &[
            "--simulate-kubelet",
            "--pod-cidr",
            "10.251.0.0/24",
            "--pod-cidr",
            "fd00:10:251::/64",
        ],
    );
    let api: Api<Pod> = Api::default_namespaced(server.client().await);
    create(&api, "a", json!({})).await;
    create(&api, "b", json!({})).await;
    let a = wait_pod(&api, "a", "running and ready", running_and_ready).await;
    let b = wait_pod(&api, "b", "running and ready", running_and_ready).await;
    assert_eq!(pod_ips(&a), ["10.251.0.1", "fd00:10:251::1"]);
    assert_eq!(pod_ip(&a), "10.251.0.1");
    assert_eq!(pod_ips(&b), ["10.251.0.2", "fd00:10:251::2"]);
    assert_eq!(host_ips(&a), ["172.30.0.1", "fd00:172:30::1"]);
}

#[tokio::test]
async fn the_ready_annotation_holds_a_pod_unready_until_it_is_removed() {
    let server = ApiServer::start(Backend::Memory, &["--simulate-kubelet"]);
    let api: Api<Pod> = Api::default_namespaced(server.client().await);
    create(
        &api,
        "held",
        json!({"metadata": {"annotations": {"svcplane.io/ready": "false"}}}),
    )
    .await;
    let held = wait_pod(&api, "held", "running", |p| {
        phase(p) == "Running" && condition(p, "Ready").is_some()
    })
    .await;
    let ready = condition(&held, "Ready").unwrap();
    assert_eq!(
        (
            ready.status.as_str(),
            ready.reason.as_deref(),
            ready.message.as_deref()
        ),
        (
            "False",
            Some("ContainersNotReady"),
            Some("containers with unready status: [web]")
        )
    );
    assert_eq!(condition_status(&held, "ContainersReady"), "False");
    let web = &held
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert_eq!((web.ready, web.started), (false, Some(true)));
    assert_eq!(pod_ip(&held), "10.244.0.1", "an unready pod has its IP");

    let annotate = |value: Value| {
        Patch::Merge(json!({"metadata": {"annotations": {"svcplane.io/ready": value}}}))
    };
    api.patch("held", &PatchParams::default(), &annotate(Value::Null))
        .await
        .unwrap();
    let ready = wait_pod(&api, "held", "ready", running_and_ready).await;
    assert_eq!(condition_status(&ready, "ContainersReady"), "True");
    assert!(ready.status.unwrap().container_statuses.unwrap()[0].ready);

    api.patch("held", &PatchParams::default(), &annotate(json!("false")))
        .await
        .unwrap();
    wait_pod(&api, "held", "unready again", |p| {
        condition_status(p, "Ready") == "False"
    })
    .await;
    api.patch("held", &PatchParams::default(), &annotate(json!("true")))
        .await
        .unwrap();
    let back = wait_pod(&api, "held", "ready again", running_and_ready).await;
    assert_eq!(pod_ip(&back), "10.244.0.1", "readiness changes keep the IP");
}

#[tokio::test]
async fn a_pod_deleted_with_a_grace_period_stays_terminating_for_that_long() {
    let server = ApiServer::start(
        Backend::Memory,
        &["--simulate-kubelet", "--max-pod-grace", "5s"],
    );
    let api: Api<Pod> = Api::default_namespaced(server.client().await);
    create(&api, "slow", json!({})).await;
    wait_pod(&api, "slow", "running and ready", running_and_ready).await;
    let asked = Instant::now();
    let deleted = api
        .delete(
            "slow",
            &DeleteParams {
                grace_period_seconds: Some(1),
                ..DeleteParams::default()
            },
        )
        .await
        .unwrap()
        .left()
        .expect("a graceful delete returns the pod");
    assert!(deleted.metadata.deletion_timestamp.is_some());
    assert_eq!(deleted.metadata.deletion_grace_period_seconds, Some(1));
    let terminating = api.get("slow").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert!(
        running_and_ready(&terminating),
        "a terminating pod keeps running through its grace period"
    );
    let last_seen = wait_gone(&api, "slow", Duration::from_secs(10)).await;
    let visible = last_seen - asked;
    assert!(
        visible >= Duration::from_millis(800),
        "visible for {visible:?} of its 1 s grace period"
    );

    // A grace period of 0 deletes at once, and so does a delete of a pod no node runs.
    create(&api, "now", json!({})).await;
    wait_pod(&api, "now", "running and ready", running_and_ready).await;
    api.delete("now", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert!(api.get_opt("now").await.unwrap().is_none());
    create(
        &api,
        "unscheduled",
        json!({"spec": {"schedulerName": "someone-else"}}),
    )
    .await;
    api.delete("unscheduled", &DeleteParams::default())
        .await
        .unwrap();
    assert!(api.get_opt("unscheduled").await.unwrap().is_none());
}

#[tokio::test]
async fn max_pod_grace_caps_the_default_thirty_seconds() {
    let server = ApiServer::start(
        Backend::Memory,
        &["--simulate-kubelet", "--max-pod-grace", "1s"],
    );
    let api: Api<Pod> = Api::default_namespaced(server.client().await);
    create(&api, "capped", json!({})).await;
    let running = wait_pod(&api, "capped", "running and ready", running_and_ready).await;
    assert_eq!(
        running
            .spec
            .as_ref()
            .unwrap()
            .termination_grace_period_seconds,
        Some(30)
    );
    let asked = Instant::now();
    let deleted = api
        .delete("capped", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("a graceful delete returns the pod");
    assert_eq!(deleted.metadata.deletion_grace_period_seconds, Some(1));
    let at = deleted.metadata.deletion_timestamp.unwrap().0;
    let ahead = at.duration_since(jiff::Timestamp::now());
    assert!(
        ahead <= jiff::SignedDuration::from_secs(1),
        "deletionTimestamp is {ahead:?} away"
    );
    wait_gone(&api, "capped", Duration::from_secs(5)).await;
    assert!(asked.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn phases_a_client_ends_stay_and_the_pod_is_not_ready() {
    let server = ApiServer::start(Backend::Memory, &["--simulate-kubelet"]);
    let api: Api<Pod> = Api::default_namespaced(server.client().await);
    for name in ["done", "broken"] {
        create(&api, name, json!({})).await;
        wait_pod(&api, name, "running and ready", running_and_ready).await;
    }
    for (name, phase) in [("done", "Succeeded"), ("broken", "Failed")] {
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": phase}})),
        )
        .await
        .unwrap();
    }
    let done = wait_pod(&api, "done", "not ready", |p| {
        condition_status(p, "Ready") == "False"
    })
    .await;
    let broken = wait_pod(&api, "broken", "not ready", |p| {
        condition_status(p, "Ready") == "False"
    })
    .await;
    // Anything that makes the kubelet look again leaves the phase alone.
    for name in ["done", "broken"] {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"poked": "yes"}}})),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let done_now = api.get("done").await.unwrap();
    let broken_now = api.get("broken").await.unwrap();
    assert_eq!(phase(&done_now), "Succeeded");
    assert_eq!(phase(&broken_now), "Failed");
    assert_eq!(
        done_now.status, done.status,
        "nothing rewrites a finished pod"
    );
    assert_eq!(broken_now.status, broken.status);

    let ready = condition(&done, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("False", Some("PodCompleted"))
    );
    let web = &done
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    let ended = web.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (web.ready, ended.exit_code, ended.reason.as_deref()),
        (false, 0, Some("Completed"))
    );
    assert_eq!(pod_ip(&done), "10.244.0.1", "a finished pod keeps its IP");

    let ready = condition(&broken, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("False", Some("ContainersNotReady"))
    );
    let web = &broken
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    let ended = web.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (web.ready, ended.exit_code, ended.reason.as_deref()),
        (false, 1, Some("Error"))
    );
}

#[tokio::test]
async fn a_kubelet_restart_keeps_pod_ips_and_finishes_pending_deletions() {
    let mut server = ApiServer::start(
        Backend::Etcd,
        &[
            "--simulate-kubelet",
            "--pod-cidr",
            "10.252.0.0/24",
            "--max-pod-grace",
            "10s",
        ],
    );
    let api: Api<Pod> = Api::default_namespaced(server.client().await);
    let mut before = Vec::new();
    for name in ["a", "b", "leaving"] {
        create(&api, name, json!({})).await;
        before.push(wait_pod(&api, name, "running and ready", running_and_ready).await);
    }
    assert_eq!(
        before.iter().map(pod_ip).collect::<Vec<_>>(),
        ["10.252.0.1", "10.252.0.2", "10.252.0.3"]
    );
    api.delete(
        "leaving",
        &DeleteParams {
            grace_period_seconds: Some(2),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    server.restart();
    let restarted = Instant::now();
    let api: Api<Pod> = Api::default_namespaced(server.client().await);
    // The terminating pod is removed by the new kubelet.
    wait_gone(&api, "leaving", Duration::from_secs(10)).await;
    assert!(restarted.elapsed() < Duration::from_secs(10));
    for name in ["c", "d"] {
        create(&api, name, json!({})).await;
    }
    let c = wait_pod(&api, "c", "running and ready", running_and_ready).await;
    let d = wait_pod(&api, "d", "running and ready", running_and_ready).await;
    // The IPs in use were known before any new pod got one.
    let new_ips = [pod_ip(&c), pod_ip(&d)];
    for old in &before[..2] {
        assert!(
            !new_ips.contains(&pod_ip(old)),
            "{new_ips:?} reuses {}",
            pod_ip(old)
        );
    }
    assert_ne!(new_ips[0], new_ips[1]);
    // The running pods were left exactly as they were.
    for old in &before[..2] {
        let name = old.metadata.name.as_deref().unwrap();
        let now = api.get(name).await.unwrap();
        assert_eq!(now.metadata.resource_version, old.metadata.resource_version);
        assert_eq!(pod_ips(&now), pod_ips(old));
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Memory).await })*
        }
        mod etcd {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Etcd).await })*
        }
    };
}

on_both_backends!(pods_get_unique_ips_from_the_pod_cidr_a_node_and_become_ready);
