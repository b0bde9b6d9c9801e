//! `svcplane dev --allocation=webhook`: the dev API server calls the allocation webhook over
//! HTTPS as kube-apiserver does — before it names a `generateName` create and validates, never
//! told of a write that then fails — and repair frees what such a write took. Checked through
//! kubectl against one shared instance; each test works in its own namespace.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Dev;

/// The bound of every wait.
const PATIENCE: Duration = Duration::from_secs(60);

fn dev() -> &'static Dev {
    Dev::shared(&[
        "--allocation=webhook",
        "--hold=0s",
        "--repair-interval=1s",
        "--allocation-timeout=1s",
        "--service-cluster-ip-range=10.96.0.0/24",
    ])
}

fn kubectl_ok(args: &[&str]) -> String {
    let out = dev().kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}\n{}",
        support::stderr(&out),
        dev().log()
    );
    support::stdout(&out)
}

/// Creates a ClusterIP Service `name` in `ns` asking for `ip`; kubectl's output.
fn create_with_ip(ns: &str, name: &str, ip: &str) -> std::process::Output {
    support::create_with_ip(|args| dev().kubectl(args), ns, name, ip)
}

#[test]
fn a_generate_name_service_keeps_the_values_the_webhook_chose_and_nobody_else_gets_them() {
    kubectl_ok(&["create", "namespace", "wh-generate"]);
    let (_dir, file) = support::manifest(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"generateName": "gen-", "namespace": "wh-generate"},
        "spec": {"ports": [{"port": 80}]},
    }));
    let out = kubectl_ok(&["create", "-f", &file, "-o", "json"]);
    let created: Value = serde_json::from_str(&out).unwrap();
    let ip = created["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.96.0."), "{created}");
    // The value is the Service's: another Service asking for it is refused, over and over as
    // repair runs (it would free a value nobody claimed).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let out = create_with_ip("wh-generate", "thief", &ip);
        assert!(!out.status.success(), "{ip} handed out twice");
        let said = support::stderr(&out);
        assert!(said.contains("provided IP is already allocated"), "{said}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_requested_ip_that_is_taken_is_refused_by_the_webhook_in_upstreams_words() {
    kubectl_ok(&["create", "namespace", "wh-taken"]);
    let out = create_with_ip("wh-taken", "first", "10.96.0.200");
    assert!(out.status.success(), "{}", support::stderr(&out));
    let out = create_with_ip("wh-taken", "second", "10.96.0.200");
    assert!(!out.status.success());
    let said = support::stderr(&out);
    assert!(
        said.contains("denied the request: Service \"second\" is invalid: spec.clusterIPs: Invalid value: [\"10.96.0.200\"]: failed to allocate IP 10.96.0.200: provided IP is already allocated"),
        "{said}"
    );
}

#[test]
fn a_server_side_dry_run_allocates_nothing() {
    kubectl_ok(&["create", "namespace", "wh-dry"]);
    let (_dir, file) = support::manifest(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "dry", "namespace": "wh-dry"},
        "spec": {"clusterIP": "10.96.0.210", "ports": [{"port": 80}]},
    }));
    kubectl_ok(&["apply", "--dry-run=server", "-f", &file]);
    // Nothing was taken: another Service gets the address at once.
    let out = create_with_ip("wh-dry", "real", "10.96.0.210");
    assert!(out.status.success(), "{}", support::stderr(&out));
}

#[test]
fn what_a_create_of_an_existing_name_took_is_freed_by_repair() {
    kubectl_ok(&["create", "namespace", "wh-leak"]);
    let out = create_with_ip("wh-leak", "web", "10.96.0.220");
    assert!(out.status.success(), "{}", support::stderr(&out));
    // The same name again, asking for another address: the webhook takes it before the API
    // server finds the name taken, and is never told.
    let out = create_with_ip("wh-leak", "web", "10.96.0.221");
    assert!(!out.status.success());
    assert!(support::stderr(&out).contains("already exists"));
    let out = create_with_ip("wh-leak", "other", "10.96.0.221");
    assert!(!out.status.success(), "the leaked address was free at once");
    // Repair frees it after three runs and the allocation deadline.
    let started = Instant::now();
    loop {
        let out = create_with_ip("wh-leak", "other", "10.96.0.221");
        if out.status.success() {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the leak was never freed: {}\n{}",
            support::stderr(&out),
            dev().log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
