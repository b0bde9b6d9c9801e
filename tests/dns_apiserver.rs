//! `svcplane dns --kubeconfig` as its own process, fed by `svcplane apiserver` over real HTTP:
//! SERVFAIL until its watches have synced, then Services and headless EndpointSlices followed
//! as they change, and the last state kept while the API server is away and after it returns.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{ApiServer, Backend};

struct Dns {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dns {
    fn start(kubeconfig: &std::path::Path, dir: &std::path::Path) -> Dns {
        let port = support::free_dns_port();
        let log = dir.join("dns.log");
        let child = Command::new(env!("CARGO_BIN_EXE_svcplane"))
            .args([
                "dns",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--zone",
                "cluster.local",
                "--startup-timeout",
                "1s",
            ])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start svcplane dns");
        let dns = Dns { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&dns.log)
            .unwrap_or_default()
            .contains("svcplane dns: serving")
        {
            assert!(Instant::now() < deadline, "svcplane dns never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        dns
    }

    fn dig(&self, name: &str) -> support::Dig {
        support::dig(self.port, &[name])
    }
}

fn ips(answers: &[String]) -> Vec<String> {
    let mut ips: Vec<String> = answers
        .iter()
        .filter_map(|a| a.strip_prefix("A ").map(str::to_string))
        .collect();
    ips.sort();
    ips
}

fn slice(addresses: &[&str]) -> EndpointSlice {
    let endpoints: Vec<serde_json::Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": "hl-1", "labels": {"kubernetes.io/service-name": "hl"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .unwrap()
}

#[tokio::test]
async fn dns_follows_the_api_server_and_keeps_its_last_state_while_the_api_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let kubeconfig = support::write(
        dir.path(),
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
        ),
    );
    // No API yet: cluster names are SERVFAIL, never NXDOMAIN.
    let dns = Dns::start(&kubeconfig, dir.path());
    assert_eq!(
        dns.dig("kubernetes.default.svc.cluster.local").status,
        "SERVFAIL"
    );

    let mut api_server = ApiServer::start_at(Backend::Etcd, port, &[]);
    let client = api_server.client().await;
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let late: Service = serde_json::from_value(json!({"metadata": {"name": "late"},
        "spec": {"clusterIP": "10.0.0.5", "ports": [{"name": "http", "port": 80}]}}))
    .unwrap();
    services
        .create(&PostParams::default(), &late)
        .await
        .unwrap();
    let late_name = "late.default.svc.cluster.local";
    support::eventually("the Service created after DNS started", || {
        dns.dig(late_name).answers == ["A 10.0.0.5"]
    })
    .await;

    // A headless Service follows its EndpointSlices.
    let headless: Service = serde_json::from_value(json!({"metadata": {"name": "hl"},
        "spec": {"clusterIP": "None", "selector": {"app": "hl"}, "ports": [{"name": "http", "port": 8080}]}})).unwrap();
    services
        .create(&PostParams::default(), &headless)
        .await
        .unwrap();
    let hl = "hl.default.svc.cluster.local";
    support::eventually("an empty headless Service to be NXDOMAIN", || {
        dns.dig(hl).status == "NXDOMAIN"
    })
    .await;
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    slices
        .create(&PostParams::default(), &slice(&["10.1.0.1"]))
        .await
        .unwrap();
    support::eventually("the slice's endpoint", || {
        ips(&dns.dig(hl).answers) == ["10.1.0.1"]
    })
    .await;
    let changed = json!({"endpoints": [
        {"addresses": ["10.1.0.2"], "conditions": {"ready": true}},
        {"addresses": ["10.1.0.3"], "conditions": {"ready": true}},
        {"addresses": ["10.1.0.4"], "conditions": {"ready": false}}]});
    slices
        .patch("hl-1", &PatchParams::default(), &Patch::Merge(changed))
        .await
        .unwrap();
    support::eventually("the changed endpoints (ready ones only)", || {
        ips(&dns.dig(hl).answers) == ["10.1.0.2", "10.1.0.3"]
    })
    .await;
    slices
        .delete("hl-1", &DeleteParams::default())
        .await
        .unwrap();
    support::eventually("the deleted slice", || dns.dig(hl).status == "NXDOMAIN").await;
    slices
        .create(&PostParams::default(), &slice(&["10.1.0.9"]))
        .await
        .unwrap();
    support::eventually("a new slice", || ips(&dns.dig(hl).answers) == ["10.1.0.9"]).await;

    // The API server goes away: the last state is served.
    api_server.stop();
    for _ in 0..5 {
        assert_eq!(dns.dig(late_name).answers, ["A 10.0.0.5"]);
        assert_eq!(ips(&dns.dig(hl).answers), ["10.1.0.9"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // It comes back (same etcd): old names still answer and new ones are followed again.
    api_server.restart();
    let services: Api<Service> = Api::default_namespaced(api_server.client().await);
    let back: Service = serde_json::from_value(json!({"metadata": {"name": "back"},
        "spec": {"clusterIP": "10.0.0.6", "ports": [{"name": "http", "port": 80}]}}))
    .unwrap();
    services
        .create(&PostParams::default(), &back)
        .await
        .unwrap();
    support::eventually("a Service created after the API returned", || {
        dns.dig("back.default.svc.cluster.local").answers == ["A 10.0.0.6"]
    })
    .await;
    assert_eq!(dns.dig(late_name).answers, ["A 10.0.0.5"]);
}
