//! Two `svcplane controller` replicas serving the allocation webhook behind a round-robin TCP
//! proxy (standing for their Service), with leader election between them, on a dual-stack
//! kube-apiserver v1.37.2 (`10.96.0.0/24`, `fd00:10:96::/120`): a flood of concurrent creates
//! fills the /24 with every address handed out once, the first create past it is refused as
//! full, and both replicas served a fair share of the admissions.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use testkit::cluster::{self, Cluster, ClusterOptions, WebhookController};
use testkit::process::Watched;

/// The bound of every wait.
const PATIENCE: Duration = Duration::from_secs(60);

const CIDRS: &str = "10.96.0.0/24,fd00:10:96::/120";
const PREFIX: &str = "/svcplane-replicas/";

fn start_controller(
    cluster: &Cluster,
    dir: &Path,
    identity: &str,
    http_port: u16,
    webhook_port: u16,
    certs: &testkit::TlsFiles,
) -> Watched {
    let mut args = cluster.webhook_controller_args(&WebhookController {
        identity,
        http_port,
        webhook_port,
        certs,
        prefix: PREFIX,
        cidrs: CIDRS,
    });
    args.extend(
        [
            "--leader-elect-lease-duration=6s",
            "--leader-elect-renew-deadline=4s",
            "--leader-elect-retry-period=1s",
            "--hold=0s",
        ]
        .map(Into::into),
    );
    Watched::spawn(
        Path::new(env!("CARGO_BIN_EXE_svcplane")),
        args,
        &[("RUST_LOG", "info")],
        &dir.join(format!("{identity}.log")),
        None,
    )
}

/// The controller's webhook requests so far.
fn admissions(http_port: u16) -> f64 {
    let (_, body) = support::http(http_port, "GET", "/metrics", &[], None).unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with("controller_runtime_webhook_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The IPv4 pool's records: (address, owner).
async fn ipv4_records(cluster: &Cluster) -> Vec<(String, String)> {
    let mut client = etcd_client::Client::connect([cluster.etcd().endpoint()], None)
        .await
        .unwrap();
    let prefix = format!("{PREFIX}values/ipv4/");
    let resp = client
        .get(
            prefix.clone(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| {
            let record: Value = serde_json::from_slice(kv.value()).unwrap();
            let key = kv.key_str().unwrap();
            (
                key.trim_start_matches(&prefix).to_string(),
                record["owner"]["object"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_behind_a_proxy_fill_the_range_with_every_address_handed_out_once() {
    let cluster = Cluster::start(ClusterOptions {
        controllers: Some(vec!["namespace".into(), "serviceaccount".into()]),
        service_cidrs: Some(CIDRS.into()),
        node_port_range: None,
        controller_manager_args: Vec::new(),
    });
    cluster.apply(&cluster::svcplane_controller_rbac());
    let dir = tempfile::tempdir().unwrap();
    let certs = testkit::make_certs(dir.path());
    let ports: Vec<(u16, u16)> = (0..2)
        .map(|_| (testkit::free_port(), testkit::free_port()))
        .collect();
    let replicas: Vec<Watched> = ["svcplane-controller", "svcplane-controller-2"]
        .iter()
        .zip(&ports)
        .map(|(identity, (http, webhook))| {
            start_controller(&cluster, dir.path(), identity, *http, *webhook, &certs)
        })
        .collect();
    let proxy = testkit::proxy::RoundRobin::start(
        ports
            .iter()
            .map(|(_, webhook)| ([127, 0, 0, 1], *webhook).into())
            .collect(),
    );
    for replica in &replicas {
        let started = Instant::now();
        while !replica
            .log()
            .contains("serving the Service admission webhook")
        {
            assert!(started.elapsed() < PATIENCE, "{}", replica.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    cluster.apply(&[cluster::allocation_webhook_configuration(
        &format!("https://{}/mutate-services", proxy.addr()),
        &certs.ca,
        "Fail",
        None,
    )]);
    let client = cluster.client("admin").await;
    cluster.create_namespace(&client, "flood").await;
    let services = Api::<Service>::namespaced(client, "flood");
    let service = |name: &str| -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"ports": [{"port": 80}]},
        }))
        .unwrap()
    };
    // kube-apiserver takes up the configuration a moment after it is stored: a probe Service
    // until one reaches a replica.
    let started = Instant::now();
    for i in 0.. {
        services
            .create(&PostParams::default(), &service(&format!("probe-{i}")))
            .await
            .unwrap();
        if ports.iter().map(|(http, _)| admissions(*http)).sum::<f64>() > 0.0 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "the webhook was never called");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // What is already taken (default/kubernetes's 10.96.0.1, imported by the leader's releaser,
    // and the probes), once the leader has recorded it.
    let started = Instant::now();
    let taken = loop {
        let records = ipv4_records(&cluster).await;
        let live = services
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len()
            + 1;
        if records.iter().any(|(ip, _)| ip == "10.96.0.1") && records.len() == live {
            break records.len();
        }
        assert!(started.elapsed() < PATIENCE, "records: {records:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let before: f64 = ports.iter().map(|(http, _)| admissions(*http)).sum();
    // 254 usable addresses in the /24: the flood asks for one more than are left, all at once.
    let free = 254 - taken;
    let flood = (0..=free).map(|i| {
        let services = services.clone();
        let svc = service(&format!("s{i}"));
        async move { services.create(&PostParams::default(), &svc).await }
    });
    let results = join_all(flood).await;
    let mut given = BTreeSet::new();
    let mut refusals = Vec::new();
    for result in results {
        match result {
            Ok(svc) => {
                let ip = svc.spec.unwrap().cluster_ip.unwrap();
                assert!(given.insert(ip.clone()), "{ip} handed out twice");
            }
            Err(e) => refusals.push(e.to_string()),
        }
    }
    assert_eq!(given.len(), free, "refusals: {refusals:?}");
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(
        refusals[0].contains("failed to allocate a serviceIP: range is full"),
        "{refusals:?}"
    );
    // Each recorded once, for the Service that carries it.
    let records = ipv4_records(&cluster).await;
    let flooded: BTreeSet<String> = records
        .iter()
        .filter(|(_, owner)| owner.starts_with("flood/s"))
        .map(|(ip, _)| ip.clone())
        .collect();
    assert_eq!(flooded, given);
    // Both replicas took their share of the admissions.
    let served: Vec<f64> = ports.iter().map(|(http, _)| admissions(*http)).collect();
    let total: f64 = served.iter().sum::<f64>() - before;
    assert!(total >= (free + 1) as f64, "{served:?}");
    for n in &served {
        assert!(
            *n >= total / 3.0,
            "a replica served {n} of {total} admissions: {served:?}, proxy connections {:?}",
            proxy.connections()
        );
    }
}
