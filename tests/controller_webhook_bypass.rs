//! `svcplane controller`'s allocation webhook on a single-stack kube-apiserver v1.37.2 with a
//! small range (`10.97.0.0/28`, `30000-30015`), registered with `failurePolicy: Ignore`: while
//! the controller is down kube-apiserver allocates on its own; when it comes up it imports those
//! values and never hands them out (shown by filling the rest of the /28 through the webhook).
//! After a restart, repair mends a leak planted in etcd and a record removed from it, with
//! upstream's event. And pools that lie outside the cluster's ServiceCIDR stop the controller
//! with both named.

mod support;

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::cluster::{self, Cluster, ClusterOptions, WebhookController};
use testkit::process::Watched;

/// The bound of every wait.
const PATIENCE: Duration = Duration::from_secs(60);

const CIDR: &str = "10.97.0.0/28";
const NODE_PORTS: &str = "30000-30015";

fn shared() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::start(ClusterOptions {
            controllers: Some(vec!["namespace".into(), "serviceaccount".into()]),
            service_cidrs: Some(CIDR.into()),
            node_port_range: Some(NODE_PORTS.into()),
            controller_manager_args: Vec::new(),
        });
        cluster.apply(&cluster::svcplane_controller_rbac());
        cluster
    })
}

/// A `svcplane controller` serving the webhook on `webhook_port` with pools in `prefix`.
fn start_controller(
    dir: &Path,
    webhook_port: u16,
    prefix: &str,
    cidr: &str,
    certs: &testkit::TlsFiles,
) -> (Watched, u16) {
    let cluster = shared();
    let http_port = testkit::free_port();
    let mut args = cluster.webhook_controller_args(&WebhookController {
        identity: "svcplane-controller",
        http_port,
        webhook_port,
        certs,
        prefix,
        cidrs: cidr,
    });
    args.extend(
        [
            "--leader-elect=false",
            "--repair-interval=1s",
            "--allocation-timeout=1s",
        ]
        .map(Into::into),
    );
    args.push(format!("--service-node-port-range={NODE_PORTS}").into());
    let process = Watched::spawn(
        Path::new(env!("CARGO_BIN_EXE_svcplane")),
        args,
        &[("RUST_LOG", "info")],
        &dir.join(format!("controller-{webhook_port}.log")),
        None,
    );
    (process, http_port)
}

/// The pool record of `value`, as etcd holds it.
async fn record(prefix: &str, pool: &str, value: &str) -> Option<Value> {
    let mut client = etcd_client::Client::connect([shared().etcd().endpoint()], None)
        .await
        .unwrap();
    let resp = client
        .get(format!("{prefix}values/{pool}/{value}"), None)
        .await
        .unwrap();
    resp.kvs()
        .first()
        .map(|kv| serde_json::from_slice(kv.value()).unwrap())
}

/// `kubectl create service` in namespace `bypass`: a NodePort Service `name`, or with `ip` a
/// ClusterIP one asking for that address (`create service nodeport` takes no `--clusterip`).
fn create_service(name: &str, ip: Option<&str>) -> std::process::Output {
    let (kind, ip) = match ip {
        Some(ip) => ("clusterip", Some(format!("--clusterip={ip}"))),
        None => ("nodeport", None),
    };
    let mut args = vec![
        "-n",
        "bypass",
        "create",
        "service",
        kind,
        name,
        "--tcp=80:80",
        "-o",
        "json",
    ];
    args.extend(ip.as_deref());
    shared().kubectl("admin", &args)
}

fn kubectl_ok(args: &[&str]) -> String {
    let out = shared().kubectl("admin", args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        support::stderr(&out)
    );
    support::stdout(&out)
}

#[tokio::test]
async fn values_kube_apiserver_allocated_while_the_webhook_was_down_are_never_handed_out() {
    let cluster = shared();
    let dir = tempfile::tempdir().unwrap();
    let certs = testkit::make_certs(dir.path());
    let webhook_port = testkit::free_port();
    let prefix = "/svcplane-bypass/";
    cluster.apply(&[cluster::allocation_webhook_configuration(
        &format!("https://127.0.0.1:{webhook_port}/mutate-services"),
        &certs.ca,
        "Ignore",
        None,
    )]);
    kubectl_ok(&["create", "namespace", "bypass"]);
    // The controller is down: kube-apiserver ignores the unreachable webhook and allocates.
    let mut bypassed: Vec<(String, u64)> = Vec::new();
    for i in 0..4 {
        let out = create_service(&format!("early-{i}"), None);
        assert!(out.status.success(), "{}", support::stderr(&out));
        let svc: Value = serde_json::from_str(&support::stdout(&out)).unwrap();
        bypassed.push((
            svc["spec"]["clusterIP"].as_str().unwrap().to_string(),
            svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap(),
        ));
    }
    // kube-apiserver's own refusal of a taken address, to hold the webhook's against below.
    let taken_ip = bypassed[0].0.clone();
    let upstream = create_service("dup-upstream", Some(&taken_ip));
    assert!(!upstream.status.success());
    let upstream = support::stderr(&upstream);
    // It comes up and imports them from the Service watch.
    let (mut controller, http) = start_controller(dir.path(), webhook_port, prefix, CIDR, &certs);
    for (i, (ip, port)) in bypassed.iter().enumerate() {
        let owner = format!("bypass/early-{i}");
        let started = Instant::now();
        loop {
            let ip_record = record(prefix, "ipv4", ip).await;
            let port_record = record(prefix, "nodeport", &port.to_string()).await;
            let imported = |r: &Option<Value>| {
                r.as_ref()
                    .is_some_and(|r| r["owner"]["object"] == owner.as_str())
            };
            if imported(&ip_record) && imported(&port_record) {
                break;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{owner}'s {ip} and {port} were not imported:\n{}",
                controller.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Counted as imports.
    let (_, metrics) = support::http(http, "GET", "/metrics", &[], None).unwrap_or_default();
    let imported: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("svcplane_ipam_imports_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // 4 ClusterIPs, 4 NodePorts and default/kubernetes's 10.97.0.1.
    assert!(imported >= 9.0, "{metrics}");
    // The same request through the webhook is refused in the same words: kube-apiserver only
    // puts the webhook's name before them.
    let ours = create_service("dup-webhook", Some(&taken_ip));
    assert!(!ours.status.success());
    let ours = support::stderr(&ours);
    let unframed = ours.replacen(
        "admission webhook \"allocation.svcplane.io\" denied the request: ",
        "",
        1,
    );
    assert_ne!(unframed, ours, "not the webhook's refusal: {ours}");
    assert_eq!(
        unframed.replace("dup-webhook", "NAME"),
        upstream.replace("dup-upstream", "NAME")
    );
    // Fill the rest of the /28 through the webhook: 14 usable addresses, 10.97.0.1 is
    // default/kubernetes's, 4 are the imported ones, so 9 Services get one and the next is
    // refused as full. kube-apiserver refusing one as "already allocated" would mean svcplane
    // handed out an imported value.
    let mut given: Vec<String> = Vec::new();
    let refusal = loop {
        let out = create_service(&format!("fill-{}", given.len()), None);
        if !out.status.success() {
            break support::stderr(&out);
        }
        let svc: Value = serde_json::from_str(&support::stdout(&out)).unwrap();
        let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
        let port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        assert!(
            !bypassed.iter().any(|(i, _)| *i == ip),
            "{ip} handed out twice"
        );
        assert!(
            !bypassed.iter().any(|(_, p)| *p == port),
            "{port} handed out twice"
        );
        // The webhook took it (an imported value's record says `carried`).
        let taken = record(prefix, "ipv4", &ip).await.expect("recorded");
        assert_eq!(taken["owner"]["purpose"], "clusterIP", "{taken}");
        given.push(ip);
        assert!(given.len() <= 9, "more than the /28 holds: {given:?}");
    };
    assert_eq!(given.len(), 9, "{given:?}\n{refusal}");
    assert!(
        refusal.contains("admission webhook \"allocation.svcplane.io\" denied the request")
            && refusal.contains("failed to allocate a serviceIP: range is full"),
        "{refusal}"
    );

    // Down again: a record removed from etcd behind its back, and a leak planted (the /28 is
    // full, so it takes a port: 30015 if free, else the first free one).
    controller.kill();
    let mut etcd = etcd_client::Client::connect([cluster.etcd().endpoint()], None)
        .await
        .unwrap();
    let (lost_ip, _) = &bypassed[0];
    etcd.delete(format!("{prefix}values/ipv4/{lost_ip}"), None)
        .await
        .unwrap();
    let mut leaked = 30015;
    while record(prefix, "nodeport", &leaked.to_string())
        .await
        .is_some()
    {
        leaked -= 1;
    }
    let planted = json!({"owner": {"object": "bypass/never-written", "purpose": "nodePort"}, "nonce": "planted"});
    etcd.put(
        format!("{prefix}values/nodeport/{leaked}"),
        planted.to_string(),
        None,
    )
    .await
    .unwrap();
    // Up again: the runs after the restart mend both.
    controller.start();
    let started = Instant::now();
    loop {
        let back = record(prefix, "ipv4", lost_ip)
            .await
            .is_some_and(|r| r["owner"]["object"] == "bypass/early-0");
        let freed = record(prefix, "nodeport", &leaked.to_string())
            .await
            .is_none();
        if back && freed {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "not mended (record back: {back}, leak freed: {freed}):\n{}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn pools_outside_the_clusters_service_cidr_stop_the_controller_naming_both() {
    shared();
    let dir = tempfile::tempdir().unwrap();
    let certs = testkit::make_certs(dir.path());
    let (mut controller, _) = start_controller(
        dir.path(),
        testkit::free_port(),
        "/svcplane-mismatch/",
        "10.96.0.0/24",
        &certs,
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = controller.exited() {
            break status;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the controller kept running:\n{}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    let log = controller.log();
    assert!(
        log.contains("pool ipv4 10.96.0.0/24 lies outside every Ready ServiceCIDR of the cluster (kubernetes: 10.97.0.0/28)"),
        "{log}"
    );
    assert!(
        !log.contains("serving the Service admission webhook"),
        "{log}"
    );
}
