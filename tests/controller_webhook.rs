//! `svcplane controller`'s Service admission webhook behind kube-apiserver v1.37.2, registered
//! as a cluster registers it: a `MutatingWebhookConfiguration` with `clientConfig.url` on
//! loopback (as envtest does), `sideEffects: NoneOnDryRun`, `admissionReviewVersions: [v1]`,
//! `failurePolicy: Fail` and a namespace selector leaving out the controller's namespace. The
//! cluster is dual-stack with kube-apiserver's ranges equal to svcplane's pools
//! (`10.96.0.0/24`, `fd00:10:96::/120`, `30000-32767`); svcplane pre-chooses every value and
//! kube-apiserver allocates it as a requested one (ClusterIPs as IPAddress objects). Values are
//! read from the pools' records in etcd, as stored. Each test works in its own namespace.

mod support;

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::Api;
use serde_json::{Value, json};
use support::webhook::{PATIENCE, WebhookCluster};
use testkit::cluster::WebhookController;

/// kube-apiserver's ranges and svcplane's pools.
const CIDRS: &str = "10.96.0.0/24,fd00:10:96::/120";

/// Where svcplane keeps its pools in the cluster's etcd.
const PREFIX: &str = "/svcplane-webhook-test/";

/// One cluster, one webhook-serving controller and its configuration, for the whole binary.
fn shared() -> &'static WebhookCluster {
    static SETUP: OnceLock<WebhookCluster> = OnceLock::new();
    SETUP.get_or_init(|| {
        WebhookCluster::start(
            CIDRS,
            None,
            PREFIX,
            &[
                "--leader-elect=false",
                "--release-retry-interval=1s",
                "--repair-interval=1s",
                "--allocation-timeout=2s",
            ],
        )
    })
}

impl WebhookCluster {
    /// `kubectl create service clusterip NAME` in `ns`, asking for `ip`.
    fn create_with_ip(&self, ns: &str, name: &str, ip: &str) -> std::process::Output {
        support::create_with_ip(|args| self.kubectl(args), ns, name, ip)
    }

    /// A kubectl-created namespace of the test's own.
    fn namespace(&self, name: &str) -> &'static str {
        self.kubectl_ok(&["create", "namespace", name]);
        Box::leak(name.to_string().into_boxed_str())
    }
}

/// The pool record of `value` in `pool`, as etcd holds it.
async fn record(pool: &str, value: &str) -> Option<Value> {
    let mut client = etcd_client::Client::connect([shared().cluster.etcd().endpoint()], None)
        .await
        .unwrap();
    let key = format!("{PREFIX}values/{pool}/{value}");
    let resp = client.get(key, None).await.unwrap();
    resp.kvs()
        .first()
        .map(|kv| serde_json::from_slice(kv.value()).unwrap())
}

/// What the pool's record of `value` says it was taken for.
async fn taken_for(pool: &str, value: &str) -> String {
    let found = record(pool, value).await.expect("recorded");
    found["owner"]["purpose"].as_str().unwrap_or("").to_string()
}

/// Waits until the pool records `value` as allocated to `owner` (`namespace/name`).
async fn recorded_for(pool: &str, value: &str, owner: &str) {
    let started = Instant::now();
    loop {
        let found = record(pool, value).await;
        if found.as_ref().is_some_and(|r| {
            r["owner"]["object"] == owner && r.get("heldUntilMs").is_none_or(Value::is_null)
        }) {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{pool} {value} is not recorded for {owner}: {found:?}\n{}",
            shared().controller.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_dual_stack_node_port_service_gets_svcplanes_values_and_kube_apiserver_allocates_the_same()
 {
    let setup = shared();
    let ns = setup.namespace("webhook-values");
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "type": "NodePort",
            "ipFamilyPolicy": "PreferDualStack",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        },
    });
    setup.cluster.apply(&[service]);
    let stored = setup.service(ns, "web");
    let ips = support::strings(&stored["spec"]["clusterIPs"]);
    assert_eq!(ips.len(), 2, "{stored}");
    assert!(ips[0].starts_with("10.96.0.") && ips[1].starts_with("fd00:10:96::"));
    // The webhook took them (its records say what for; values the releaser imports from
    // Services say `carried`).
    let owner = format!("{ns}/web");
    recorded_for("ipv4", &ips[0], &owner).await;
    recorded_for("ipv6", &ips[1], &owner).await;
    assert_eq!(taken_for("ipv4", &ips[0]).await, "clusterIP");
    assert_eq!(taken_for("ipv6", &ips[1]).await, "clusterIP");
    for port in stored["spec"]["ports"].as_array().unwrap() {
        let node_port = port["nodePort"].as_u64().unwrap();
        // The upper band of 30000-32767 starts at 30086 and has room: dynamic values come from it.
        assert!((30086..=32767).contains(&node_port), "{port}");
        recorded_for("nodeport", &node_port.to_string(), &owner).await;
        assert_eq!(
            taken_for("nodeport", &node_port.to_string()).await,
            "nodePort"
        );
    }
    // kube-apiserver allocated the same IPs as requested ones: its IPAddress objects name them
    // and point at the Service.
    for ip in &ips {
        let out = setup.kubectl_ok(&["get", "ipaddress", ip, "-o", "json"]);
        let address: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            address["spec"]["parentRef"],
            json!({"resource": "services", "namespace": ns, "name": "web"}),
            "{address}"
        );
    }
    // kube-apiserver's repair finds nothing to mend: no value it holds that the Service lacks,
    // none twice.
    let events = setup.kubectl_ok(&["-n", ns, "get", "events", "-o", "json"]);
    let before = setup.metric("svcplane_ipam_releases_total");
    for reason in [
        "ClusterIPNotAllocated",
        "ClusterIPAlreadyAllocated",
        "ClusterIPOutOfRange",
        "PortNotAllocated",
        "PortAlreadyAllocated",
    ] {
        assert!(!events.contains(reason), "{reason} in {events}");
    }
    // Deleted, its two addresses and two ports are held for it (the pools' hold), and counted.
    setup.kubectl_ok(&["-n", ns, "delete", "service", "web"]);
    let started = Instant::now();
    while setup.metric("svcplane_ipam_releases_total{pool=") < before + 4.0 {
        assert!(started.elapsed() < PATIENCE, "{}", setup.controller.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = record("ipv4", &ips[0]).await.expect("held");
    assert!(held["heldUntilMs"].is_u64(), "{held}");
    assert_eq!(held["owner"]["object"], json!(owner));
}

#[tokio::test]
async fn a_generate_name_service_gets_values_that_the_created_service_claims() {
    let setup = shared();
    let ns = setup.namespace("webhook-generate");
    let (_dir, file) = support::manifest(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"generateName": "gen-", "namespace": ns},
        "spec": {"type": "NodePort", "ports": [{"port": 80}]},
    }));
    let out = setup.kubectl_ok(&["create", "-f", &file, "-o", "json"]);
    let created: Value = serde_json::from_str(&out).unwrap();
    let name = created["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("gen-"), "{name}");
    let ip = created["spec"]["clusterIP"].as_str().unwrap().to_string();
    let node_port = created["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    // Taken before the name existed, the values are the Service's once its watch event arrives.
    let owner = format!("{ns}/{name}");
    recorded_for("ipv4", &ip, &owner).await;
    recorded_for("nodeport", &node_port.to_string(), &owner).await;
    // And stay its own: the Service still carries them.
    let stored = setup.service(ns, &name);
    assert_eq!(stored["spec"]["clusterIP"], json!(ip));
}

#[tokio::test]
async fn a_server_side_dry_run_allocates_nothing() {
    let setup = shared();
    let ns = setup.namespace("webhook-dry-run");
    let (_dir, file) = support::manifest(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "dry", "namespace": ns},
        "spec": {"clusterIP": "10.96.0.8", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30050}]},
    }));
    let out = setup.kubectl_ok(&["apply", "--dry-run=server", "-f", &file, "-o", "json"]);
    let answered: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answered["spec"]["clusterIP"], "10.96.0.8", "{answered}");
    assert_eq!(record("ipv4", "10.96.0.8").await, None);
    assert_eq!(record("nodeport", "30050").await, None);
    let services = Api::<Service>::namespaced(setup.cluster.client("admin").await, ns);
    assert!(services.get_opt("dry").await.unwrap().is_none());
    let out = setup.kubectl(&["get", "ipaddress", "10.96.0.8"]);
    assert!(!out.status.success(), "an IPAddress exists for a dry run");
}

#[tokio::test]
async fn a_requested_cluster_ip_that_is_taken_is_refused_with_upstreams_text() {
    let setup = shared();
    let ns = setup.namespace("webhook-taken");
    // Requested values come from the static band (the /24's first 16), which the other tests'
    // dynamic allocations leave alone: a value from the upper band could be taken by one of
    // them first.
    let out = setup.create_with_ip(ns, "first", "10.96.0.5");
    assert!(out.status.success(), "{}", support::stderr(&out));
    recorded_for("ipv4", "10.96.0.5", &format!("{ns}/first")).await;
    let out = setup.create_with_ip(ns, "second", "10.96.0.5");
    assert!(!out.status.success());
    let said = support::stderr(&out);
    assert!(
        said.contains(
            "admission webhook \"allocation.svcplane.io\" denied the request: Service \"second\" is invalid: spec.clusterIPs: Invalid value: [\"10.96.0.5\"]: failed to allocate IP 10.96.0.5: provided IP is already allocated"
        ),
        "{said}"
    );
    // Out of range, in upstream's words too.
    let out = setup.create_with_ip(ns, "third", "10.97.0.5");
    assert!(!out.status.success());
    let said = support::stderr(&out);
    assert!(
        said.contains("failed to allocate IP 10.97.0.5: the provided IP (10.97.0.5) is not in the valid range. The range of valid IPs is 10.96.0.0/24"),
        "{said}"
    );
    // The refusals are counted by reason.
    assert!(setup.metric("svcplane_webhook_denials_total{reason=\"Invalid\"}") >= 2.0);
}

#[tokio::test]
async fn repair_records_a_value_missing_from_the_pool_and_frees_a_planted_leak() {
    let setup = shared();
    let ns = setup.namespace("webhook-repair");
    let out = setup.create_with_ip(ns, "mended", "10.96.0.6");
    assert!(out.status.success(), "{}", support::stderr(&out));
    let owner = format!("{ns}/mended");
    recorded_for("ipv4", "10.96.0.6", &owner).await;
    // Behind svcplane's back: the Service's record removed, and a record planted for a Service
    // that was never written (as a create that failed after admission leaves one).
    let mut etcd = etcd_client::Client::connect([setup.cluster.etcd().endpoint()], None)
        .await
        .unwrap();
    etcd.delete(format!("{PREFIX}values/ipv4/10.96.0.6"), None)
        .await
        .unwrap();
    let planted = json!({"owner": {"object": format!("{ns}/never-written"), "purpose": "clusterIP"}, "nonce": "planted"});
    etcd.put(
        format!("{PREFIX}values/ipv4/10.96.0.7"),
        planted.to_string(),
        None,
    )
    .await
    .unwrap();
    // The next runs record the first again and, after three runs and the allocation deadline,
    // free the second.
    recorded_for("ipv4", "10.96.0.6", &owner).await;
    let started = Instant::now();
    while record("ipv4", "10.96.0.7").await.is_some() {
        assert!(
            started.elapsed() < PATIENCE,
            "the planted leak was never freed:\n{}",
            setup.controller.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The repair is told as upstream's repair tells it, on the Service.
    let started = Instant::now();
    loop {
        let events = setup.kubectl_ok(&["-n", ns, "get", "events", "-o", "json"]);
        let events: Value = serde_json::from_str(&events).unwrap();
        let told = events["items"].as_array().unwrap().iter().any(|e| {
            e["reason"] == "ClusterIPNotAllocated"
                && e["type"] == "Warning"
                && e["involvedObject"]["name"] == "mended"
                && e["message"] == "Cluster IP [IPv4]:10.96.0.6 is not allocated; repairing"
        });
        if told {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no ClusterIPNotAllocated event: {events}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(setup.metric("svcplane_ipam_repair_errors_total{pool=\"ipv4\",type=\"leak\"}") >= 1.0);
}

/// Whether a TLS handshake with 127.0.0.1:`port`, trusting only the CA in `ca`, succeeds.
fn handshake(port: u16, ca: &Path) -> bool {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    while conn.is_handshaking() {
        if conn.complete_io(&mut tcp).is_err() {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn a_rotated_serving_certificate_is_served_without_a_restart() {
    let setup = shared();
    let dir = tempfile::tempdir().unwrap();
    let pair = |name: &str| {
        let at = dir.path().join(name);
        std::fs::create_dir(&at).unwrap();
        testkit::make_certs(&at)
    };
    let (first, second) = (pair("first"), pair("second"));
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let (cert, key) = (live.join("tls.crt"), live.join("tls.key"));
    std::fs::copy(&first.server_cert, &cert).unwrap();
    std::fs::copy(&first.server_key, &key).unwrap();
    let port = testkit::free_port();
    let live_certs = testkit::TlsFiles {
        server_cert: cert.clone(),
        server_key: key.clone(),
        ..first.clone()
    };
    let mut args = setup.cluster.webhook_controller_args(&WebhookController {
        identity: "svcplane-controller",
        http_port: testkit::free_port(),
        webhook_port: port,
        certs: &live_certs,
        prefix: "/svcplane-rotation/",
        cidrs: CIDRS,
    });
    args.push("--leader-elect=false".into());
    let controller = support::webhook::spawn_controller(args, &dir.path().join("controller.log"));
    assert!(handshake(port, &first.ca));
    assert!(!handshake(port, &second.ca));
    // Rotated in place, as a kubelet updates a mounted Secret.
    std::fs::copy(&second.server_key, &key).unwrap();
    std::fs::copy(&second.server_cert, &cert).unwrap();
    let started = Instant::now();
    while !handshake(port, &second.ca) {
        assert!(
            started.elapsed() < PATIENCE,
            "the new certificate was never served:\n{}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!handshake(port, &first.ca));
    assert!(controller.log().contains("serving certificate reloaded"));
}
