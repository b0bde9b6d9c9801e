//! `svcplane controller` as it runs in a real cluster, beside kube-controller-manager v1.37.2
//! (its endpoint, endpointslice and mirroring controllers running) on kube-apiserver:
//! `--manage=annotated` with the set-based `svcplane.io/selector` annotation, leader election
//! between two replicas (each write checked against the Lease's history in the audit log),
//! `/healthz` and `/readyz`, and `/metrics` under kube-controller-manager's names with exact
//! counts. One cluster serves the binary; the tests take turns (each runs its own
//! controllers, which manage every namespace) and each works in its own namespace.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use testkit::cluster::{self, Cluster, ClusterOptions, PodState};
use testkit::process::Watched;

/// The bound of every wait.
const PATIENCE: Duration = Duration::from_secs(60);

/// The leader election timing of the election test: short, so handovers are quick.
const LEASE: Duration = Duration::from_secs(6);
const RENEW: Duration = Duration::from_secs(4);
const RETRY: Duration = Duration::from_secs(1);

fn shared() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::start(ClusterOptions::endpoint_controllers());
        cluster.apply(&cluster::svcplane_controller_rbac());
        cluster
    })
}

/// The tests take turns: each one's controllers manage every namespace.
async fn turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    TURN.get_or_init(tokio::sync::Mutex::default).lock().await
}

/// One `svcplane controller` process on the shared cluster.
struct Controller {
    process: Watched,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Controller {
    /// Starts a controller as `identity` (a kubeconfig of the cluster) with `flags`.
    fn start(identity: &str, flags: &[String]) -> Controller {
        let dir = tempfile::tempdir().unwrap();
        let port = testkit::free_port();
        let mut args: Vec<std::ffi::OsString> = vec![
            "controller".into(),
            "--kubeconfig".into(),
            shared().kubeconfig(identity).into_os_string(),
            format!("--listen-http=127.0.0.1:{port}").into(),
        ];
        args.extend(flags.iter().map(Into::into));
        let process = Watched::spawn(
            Path::new(env!("CARGO_BIN_EXE_svcplane")),
            args,
            &[("RUST_LOG", "info")],
            &dir.path().join("controller.log"),
            None,
        );
        Controller {
            process,
            port,
            _dir: dir,
        }
    }

    /// How many times the log says `line` so far.
    fn said(&self, line: &str) -> usize {
        self.process.log().matches(line).count()
    }

    /// Waits until the log says `line` `times` times; returns how long that took.
    async fn until_said(&self, line: &str, times: usize) -> Duration {
        let started = Instant::now();
        while self.said(line) < times {
            assert!(
                started.elapsed() < PATIENCE,
                "the controller never said {line:?} {times} times:\n{}",
                self.process.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }

    fn status(&self, path: &str) -> Option<u16> {
        support::get_status(self.port, path)
    }

    /// `/metrics` as series (`name{labels}`) and values.
    fn metrics(&self) -> BTreeMap<String, f64> {
        let (status, body) = support::http(self.port, "GET", "/metrics", &[], None).unwrap();
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect()
    }
}

async fn admin() -> kube::Client {
    shared().client("admin").await
}

/// A namespace with two nodes for the test's pods.
async fn namespace(name: &str) {
    let client = admin().await;
    shared().create_namespace(&client, name).await;
    cluster::create_nodes(&client, &[("node-a", "zone-a"), ("node-b", "zone-b")]).await;
}

/// Runs a Ready (or not) pod with `labels` in `ns`.
async fn run_pod(ns: &str, name: &str, labels: Value, state: PodState) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels}}))
    .unwrap();
    cluster::run_pod(&admin().await, "node-a", pod, state, false).await;
}

/// Creates a selectorless Service with the `svcplane.io/selector` annotation `selector`.
async fn annotated_service(ns: &str, name: &str, selector: &str, spec: Value) {
    let mut body = json!({"metadata": {"name": name, "namespace": ns,
            "annotations": {"svcplane.io/selector": selector}},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
    json_patch::merge(&mut body["spec"], &spec);
    let svc: Service = serde_json::from_value(body).unwrap();
    Api::<Service>::namespaced(admin().await, ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
}

/// The slices of a Service (by the service-name label).
async fn slices(ns: &str, svc: &str) -> Vec<EndpointSlice> {
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={svc}"));
    Api::<EndpointSlice>::namespaced(admin().await, ns)
        .list(&lp)
        .await
        .unwrap()
        .items
}

/// The addresses in a Service's slices, with each endpoint's ready condition.
async fn slice_addresses(ns: &str, svc: &str) -> BTreeMap<String, bool> {
    slices(ns, svc)
        .await
        .iter()
        .flat_map(|s| s.endpoints.clone())
        .flatten()
        .flat_map(|e| {
            let ready = e.conditions.and_then(|c| c.ready).unwrap_or(false);
            e.addresses.into_iter().map(move |a| (a, ready))
        })
        .collect()
}

fn ip(ns: &str, pod: &str) -> String {
    cluster::pod_ip(ns, pod, false).to_string()
}

/// Polls `probe` until it gives a value.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The audit log's events, parsed.
fn audit() -> Vec<Value> {
    std::fs::read_to_string(shared().audit_log())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &Value| e["stage"] == "ResponseComplete")
        .filter(|e| {
            e["responseStatus"]["code"]
                .as_u64()
                .is_some_and(|c| c < 300)
        })
        .collect()
}

/// Successful writes of Endpoints and EndpointSlices in `ns`: (received at, user, verb, name).
fn data_writes(ns: &str) -> Vec<(String, String, String, String)> {
    audit()
        .iter()
        .filter(|e| e["objectRef"]["namespace"] == ns)
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
        .map(|e| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                text(&e["requestReceivedTimestamp"]),
                text(&e["user"]["username"]),
                text(&e["verb"]),
                text(&e["objectRef"]["name"]),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn annotated_services_get_exactly_the_pods_their_set_based_selector_picks_beside_kube_controller_manager()
 {
    let _turn = turn().await;
    let ns = "annotated";
    namespace(ns).await;
    let pods = [
        (
            "in-a",
            json!({"app": "a", "tier": "web", "release": "1"}),
            PodState::Ready,
        ),
        // No `tier` label at all satisfies `notin`.
        ("in-b", json!({"app": "b", "release": "2"}), PodState::Ready),
        (
            "in-unready",
            json!({"app": "a", "release": "1"}),
            PodState::NotReady,
        ),
        (
            "out-app",
            json!({"app": "c", "tier": "web", "release": "1"}),
            PodState::Ready,
        ),
        (
            "out-tier",
            json!({"app": "a", "tier": "cache", "release": "1"}),
            PodState::Ready,
        ),
        (
            "out-legacy",
            json!({"app": "a", "legacy": "yes", "release": "1"}),
            PodState::Ready,
        ),
        (
            "out-release",
            json!({"app": "a", "tier": "web"}),
            PodState::Ready,
        ),
    ];
    for (name, labels, state) in &pods {
        run_pod(ns, name, labels.clone(), *state).await;
    }
    let set_based = "app in (a,b),tier notin (cache),!legacy,release";
    annotated_service(ns, "picky", set_based, json!({})).await;
    annotated_service(ns, "broken", "app in (a", json!({})).await;
    // Both a selector and the annotation: kube-controller-manager's; svcplane says so.
    annotated_service(ns, "both", "app", json!({"selector": {"app": "a"}})).await;
    let controller = Controller::start(
        "svcplane-controller",
        &["--leader-elect-resource-name=svcplane-annotated".to_string()],
    );
    controller.until_said("caches synced", 1).await;

    let want = BTreeMap::from([
        (ip(ns, "in-a"), true),
        (ip(ns, "in-b"), true),
        (ip(ns, "in-unready"), false),
    ]);
    until("picky's slice of exactly the selected pods", || async {
        (slice_addresses(ns, "picky").await == want).then_some(())
    })
    .await;
    for slice in slices(ns, "picky").await {
        let labels = slice.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels["endpointslice.kubernetes.io/managed-by"],
            "endpointslice-controller.svcplane.io"
        );
    }
    let endpoints: Api<Endpoints> = Api::namespaced(admin().await, ns);
    let picky = until("picky's Endpoints", || async {
        endpoints.get_opt("picky").await.unwrap()
    })
    .await;
    let labels = picky.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels["endpoints.kubernetes.io/managed-by"],
        "endpoint-controller.svcplane.io"
    );
    assert_eq!(labels["endpointslice.kubernetes.io/skip-mirror"], "true");
    let subset = &picky.subsets.as_ref().unwrap()[0];
    let ips = |a: &Option<Vec<k8s_openapi::api::core::v1::EndpointAddress>>| -> BTreeSet<String> {
        a.iter().flatten().map(|a| a.ip.clone()).collect()
    };
    assert_eq!(
        ips(&subset.addresses),
        BTreeSet::from([ip(ns, "in-a"), ip(ns, "in-b")])
    );
    assert_eq!(
        ips(&subset.not_ready_addresses),
        BTreeSet::from([ip(ns, "in-unready")])
    );

    // A pod that gains `legacy` leaves; one that loses it joins.
    let pods_api: Api<Pod> = Api::namespaced(admin().await, ns);
    let relabel = |name: &'static str, labels: Value| {
        let api = pods_api.clone();
        async move {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"labels": labels}})),
            )
            .await
            .unwrap();
        }
    };
    relabel("in-b", json!({"legacy": "now"})).await;
    relabel("out-legacy", json!({"legacy": null})).await;
    let want = BTreeMap::from([
        (ip(ns, "in-a"), true),
        (ip(ns, "out-legacy"), true),
        (ip(ns, "in-unready"), false),
    ]);
    until("the relabelled pods moved", || async {
        (slice_addresses(ns, "picky").await == want).then_some(())
    })
    .await;

    // The malformed annotation: a Warning event kubectl describe shows; nothing written.
    let described = until("the Warning event on broken", || async {
        let out = shared().kubectl("admin", &["-n", ns, "describe", "svc", "broken"]);
        let text = support::stdout(&out);
        text.contains("InvalidSelectorAnnotation").then_some(text)
    })
    .await;
    assert!(described.contains("Warning"), "{described}");
    assert!(described.contains("at column 10"), "{described}");
    let both = until("the ignored-annotation event on both", || async {
        let out = shared().kubectl("admin", &["-n", ns, "describe", "svc", "both"]);
        let text = support::stdout(&out);
        text.contains("SelectorAnnotationIgnored").then_some(text)
    })
    .await;
    assert!(both.contains("spec.selector is set"), "{both}");
    until("kube-controller-manager's slice of both", || async {
        let slices = slices(ns, "both").await;
        (!slices.is_empty()).then_some(())
    })
    .await;
    // Let every write land before reading the audit log.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(endpoints.get_opt("broken").await.unwrap().is_none());
    assert!(slices(ns, "broken").await.is_empty());
    for slice in slices(ns, "both").await {
        let labels = slice.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels["endpointslice.kubernetes.io/managed-by"], "endpointslice-controller.k8s.io",
            "kube-controller-manager's alone"
        );
    }
    let writes = data_writes(ns);
    let by = |user: &str| -> Vec<&(String, String, String, String)> {
        writes.iter().filter(|w| w.1 == user).collect()
    };
    // kube-controller-manager (each controller as its own service account) wrote only for
    // `both`: its Endpoints by name, its slices by generateName (no name in the audit event)
    // or a name starting `both-`.
    let upstream: Vec<_> = writes
        .iter()
        .filter(|w| w.1.starts_with("system:serviceaccount:kube-system:"))
        .collect();
    for write in &upstream {
        assert!(
            write.3 == "both" || write.3.is_empty() || write.3.starts_with("both-"),
            "kube-controller-manager wrote {write:?}"
        );
    }
    assert!(
        !upstream.is_empty(),
        "kube-controller-manager wrote for both"
    );
    assert!(
        writes
            .iter()
            .all(|w| w.1.starts_with("system:serviceaccount:kube-system:")
                || w.1 == "svcplane:controller"),
        "{writes:?}"
    );
    for write in by("svcplane:controller") {
        assert!(
            write.3 == "picky" || write.3.is_empty() || write.3.starts_with("picky-"),
            "svcplane wrote {write:?}"
        );
    }
    // No mirrored slice of picky: its Endpoints skip kube-controller-manager's mirroring.
    for slice in slices(ns, "picky").await {
        let labels = slice.metadata.labels.unwrap_or_default();
        assert_ne!(
            labels["endpointslice.kubernetes.io/managed-by"],
            "endpointslice-mirroring-controller.k8s.io"
        );
    }
}

/// Lease writes on `lease` in the audit log: (completed at, writer, holder; empty on release).
fn lease_history(lease: &str) -> Vec<(String, String, String)> {
    audit()
        .iter()
        .filter(|e| e["objectRef"]["resource"] == "leases" && e["objectRef"]["name"] == lease)
        .filter(|e| matches!(e["verb"].as_str(), Some("create" | "update")))
        .map(|e| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                text(&e["stageTimestamp"]),
                text(&e["user"]["username"]),
                text(&e["requestObject"]["spec"]["holderIdentity"]),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_of_two_controllers_writes_and_a_successor_takes_over_on_sigkill_and_at_once_on_sigterm()
 {
    let _turn = turn().await;
    let ns = "election";
    let lease = "svcplane-election";
    namespace(ns).await;
    for i in 0..3 {
        run_pod(ns, &format!("e-{i}"), json!({"app": "e"}), PodState::Ready).await;
    }
    annotated_service(ns, "elected", "app=e", json!({})).await;
    let flags: Vec<String> = vec![
        format!("--leader-elect-resource-name={lease}"),
        format!("--leader-elect-lease-duration={}s", LEASE.as_secs()),
        format!("--leader-elect-renew-deadline={}s", RENEW.as_secs()),
        format!("--leader-elect-retry-period={}s", RETRY.as_secs()),
    ];
    let mut first = Controller::start("svcplane-controller", &flags);
    first.until_said("svcplane controller: leading", 1).await;
    let second = Controller::start("svcplane-controller-2", &flags);
    second.until_said("caches synced", 1).await;
    let endpoints_of = |n: usize| {
        let want: BTreeSet<String> = (0..n).map(|i| ip(ns, &format!("e-{i}"))).collect();
        async move {
            let have: BTreeSet<String> = slice_addresses(ns, "elected").await.into_keys().collect();
            (have == want).then_some(())
        }
    };
    until("three endpoints", || endpoints_of(3)).await;

    // Both serve health and readiness; only the leader says it leads.
    for c in [&first, &second] {
        assert_eq!(c.status("/healthz"), Some(200));
        assert_eq!(
            c.status("/readyz"),
            Some(200),
            "readiness is not gated on leadership"
        );
    }
    let leading =
        |c: &Controller| c.metrics()[&format!("leader_election_master_status{{name=\"{lease}\"}}")];
    assert_eq!(leading(&first), 1.0);
    assert_eq!(leading(&second), 0.0);
    assert_eq!(second.said("leading"), 0);

    run_pod(ns, "e-3", json!({"app": "e"}), PodState::Ready).await;
    until("four endpoints", || endpoints_of(4)).await;

    // SIGKILL: the follower takes over once the lease it last saw renewed has run out.
    let killed = Instant::now();
    first.process.kill();
    second.until_said("svcplane controller: leading", 1).await;
    let handover = killed.elapsed();
    // client-go's timing: the last renewal was seen up to 2.2 retry periods (jittered polls)
    // before the kill or after it, and the lease is taken at the first poll after it ran out.
    let bound = LEASE + RETRY.mul_f64(2.0 * 2.2) + Duration::from_secs(1);
    println!("handover after SIGKILL: {handover:?} (lease {LEASE:?}, retry {RETRY:?})");
    assert!(
        handover <= bound,
        "handover took {handover:?}, more than {bound:?}"
    );
    assert_eq!(leading(&second), 1.0);
    run_pod(ns, "e-4", json!({"app": "e"}), PodState::Ready).await;
    until("five endpoints", || endpoints_of(5)).await;

    // SIGTERM: the leader releases the Lease; the follower takes it at its next poll.
    first.process.start();
    first.until_said("caches synced", 2).await;
    let mut second = second;
    let terminated = Instant::now();
    second.process.signal(nix::sys::signal::Signal::SIGTERM);
    first.until_said("svcplane controller: leading", 2).await;
    let handover = terminated.elapsed();
    println!("handover after SIGTERM: {handover:?}");
    let bound = RETRY.mul_f64(2.2) + Duration::from_secs(1);
    assert!(
        handover <= bound,
        "handover took {handover:?}, more than {bound:?}"
    );
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = second.process.exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "a SIGTERM ends the controller cleanly: {status}"
    );
    assert!(second.process.log().contains("released the leader lease"));
    run_pod(ns, "e-5", json!({"app": "e"}), PodState::Ready).await;
    until("six endpoints", || endpoints_of(6)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.process.kill();

    // Every write was made by the holder of the Lease at that moment.
    let history = lease_history(lease);
    let mut events: Vec<(String, bool, String, String)> = history
        .iter()
        .map(|(at, writer, holder)| (at.clone(), true, writer.clone(), holder.clone()))
        .collect();
    let writes = data_writes(ns);
    let svcplane: Vec<_> = writes
        .iter()
        .filter(|w| w.1.starts_with("svcplane:"))
        .collect();
    events.extend(
        svcplane.iter().map(|(at, user, verb, name)| {
            (at.clone(), false, user.clone(), format!("{verb} {name}"))
        }),
    );
    events.sort();
    let mut holder: Option<String> = None;
    for (at, is_lease, user, what) in &events {
        if *is_lease {
            holder = (!what.is_empty()).then(|| user.clone());
        } else {
            assert_eq!(
                holder.as_deref(),
                Some(user.as_str()),
                "{user} wrote ({what}) at {at} without holding the Lease; history: {history:?}"
            );
        }
    }
    let writers: BTreeSet<&str> = svcplane.iter().map(|w| w.1.as_str()).collect();
    assert_eq!(
        writers,
        BTreeSet::from(["svcplane:controller", "svcplane:controller-2"]),
        "both replicas led and wrote in turn"
    );
    let holders: Vec<&str> = history.iter().map(|h| h.1.as_str()).collect();
    assert!(holders.contains(&"svcplane:controller-2"), "{history:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_have_kube_controller_managers_names_and_move_by_exactly_a_known_change() {
    let _turn = turn().await;
    let ns = "metrics";
    namespace(ns).await;
    for i in 0..3 {
        run_pod(ns, &format!("m-{i}"), json!({"app": "m"}), PodState::Ready).await;
    }
    annotated_service(
        ns,
        "warm",
        "app=m",
        json!({"trafficDistribution": "PreferClose"}),
    )
    .await;
    let controller = Controller::start(
        "svcplane-controller",
        &["--leader-elect-resource-name=svcplane-metrics".to_string()],
    );
    controller
        .until_said("svcplane controller: leading", 1)
        .await;
    until("warm's slice", || async {
        (slice_addresses(ns, "warm").await.len() == 3).then_some(())
    })
    .await;
    let quiet = || tokio::time::sleep(Duration::from_secs(2));
    quiet().await;
    // Every name of kube-controller-manager's EndpointSlice controller has a sample.
    let before = controller.metrics();
    for name in [
        "endpoint_slice_controller_endpoints_added_per_sync_count",
        "endpoint_slice_controller_endpoints_removed_per_sync_count",
        "endpoint_slice_controller_endpoints_desired",
        "endpoint_slice_controller_num_endpoint_slices",
        "endpoint_slice_controller_desired_endpoint_slices",
        "endpoint_slice_controller_changes{operation=\"create\"}",
        "endpoint_slice_controller_endpointslices_changed_per_sync_count",
        "endpoint_slice_controller_syncs{result=\"success\"}",
        "endpoint_slice_controller_services_count_by_traffic_distribution{traffic_distribution=\"PreferClose\"}",
        "workqueue_depth{name=\"endpoint_slice\"}",
        "workqueue_adds_total{name=\"endpoint_slice\"}",
        "workqueue_work_duration_seconds_count{name=\"endpoint_slice\"}",
        "workqueue_queue_duration_seconds_count{name=\"endpoint\"}",
        "workqueue_retries_total{name=\"endpoint\"}",
        "leader_election_master_status{name=\"svcplane-metrics\"}",
        "leader_election_slowpath_total{name=\"svcplane-metrics\"}",
    ] {
        let present = before
            .keys()
            .any(|k| k == name || k.starts_with(&format!("{name}{{")));
        assert!(present, "no sample of {name}: {before:#?}");
    }
    let delta = |after: &BTreeMap<String, f64>, series: &str| {
        after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
    };

    // A known change: one more annotated Service over the three pods.
    annotated_service(ns, "counted", "app=m", json!({})).await;
    until("counted's slice", || async {
        (slice_addresses(ns, "counted").await.len() == 3).then_some(())
    })
    .await;
    quiet().await;
    let after = controller.metrics();
    let changed = "endpoint_slice_controller_endpointslices_changed_per_sync";
    for (series, want) in [
        (
            "endpoint_slice_controller_changes{operation=\"create\"}",
            1.0,
        ),
        (
            "endpoint_slice_controller_changes{operation=\"update\"}",
            0.0,
        ),
        ("endpoint_slice_controller_syncs{result=\"success\"}", 1.0),
        (
            "endpoint_slice_controller_endpoints_added_per_sync_sum",
            3.0,
        ),
        (
            "endpoint_slice_controller_endpoints_added_per_sync_count",
            1.0,
        ),
        (
            "endpoint_slice_controller_endpoints_removed_per_sync_sum",
            0.0,
        ),
        ("endpoint_slice_controller_endpoints_desired", 3.0),
        ("endpoint_slice_controller_num_endpoint_slices", 1.0),
        ("endpoint_slice_controller_desired_endpoint_slices", 1.0),
        (
            &format!("{changed}_count{{topology=\"Disabled\",traffic_distribution=\"\"}}"),
            1.0,
        ),
        (
            &format!("{changed}_sum{{topology=\"Disabled\",traffic_distribution=\"\"}}"),
            1.0,
        ),
        ("workqueue_adds_total{name=\"endpoint_slice\"}", 1.0),
    ] {
        assert_eq!(
            delta(&after, series),
            want,
            "{series}: {}",
            controller.process.log()
        );
    }

    // Another: a pod both Services select is relabelled out of them (one watch event); each
    // Service's slice loses it.
    let before = after;
    Api::<Pod>::namespaced(admin().await, ns)
        .patch(
            "m-0",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"app": "gone"}}})),
        )
        .await
        .unwrap();
    until("m-0 gone from both", || async {
        let gone = slice_addresses(ns, "warm").await.len() == 2
            && slice_addresses(ns, "counted").await.len() == 2;
        gone.then_some(())
    })
    .await;
    quiet().await;
    let after = controller.metrics();
    let delta = |series: &str| {
        after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
    };
    assert_eq!(
        delta("endpoint_slice_controller_changes{operation=\"update\"}"),
        2.0
    );
    assert_eq!(
        delta("endpoint_slice_controller_changes{operation=\"create\"}"),
        0.0
    );
    assert_eq!(
        delta("endpoint_slice_controller_endpoints_removed_per_sync_sum"),
        2.0
    );
    assert_eq!(delta("endpoint_slice_controller_endpoints_desired"), -2.0);
    assert_eq!(
        delta("endpoint_slice_controller_syncs{result=\"success\"}"),
        2.0
    );
}
