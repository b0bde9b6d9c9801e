//! The chart installed on kube-apiserver v1.37.2 with the peers' Helm (RBAC on; no kubelet or
//! kube-controller-manager runs, so no pod of the chart starts): install, an upgrade that keeps
//! the webhook's CA, rollback, and an uninstall that leaves nothing. Then the DNS and the
//! controller run here as processes, with tokens of the chart's ServiceAccounts (TokenRequest)
//! and the chart's rendered arguments — only listen addresses, etcd endpoints and mounted
//! files substituted — and answer names, write EndpointSlices and allocate ClusterIPs with
//! exactly what the chart grants: every rule it grants is seen used, and allowed, in the audit
//! log, and `kubectl auth can-i --list` shows nothing more.

mod support;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use support::helm::{
    DnsPorts, account_kubeconfig, chart, dig_a, http_get, named, objects, start_dns, text, write,
};
use testkit::cluster::{Cluster, ClusterOptions, PodState, SERVICE_CIDRS};
use testkit::process::Watched;
use testkit::{free_port, peer};

/// The bound of every wait.
const PATIENCE: Duration = Duration::from_secs(60);

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start(ClusterOptions::default()))
}

/// The peers' helm as the cluster's admin; panics with its output when it fails.
fn helm(args: &[&str]) -> String {
    let out = support::helm::helm(Some(&cluster().kubeconfig("admin")), args);
    assert!(out.status.success(), "helm {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kubectl as `identity`; panics with its output when it fails.
fn kubectl(identity: &str, args: &[&str]) -> String {
    let out = cluster().kubectl(identity, args);
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn get_json(args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    serde_json::from_str(&kubectl("admin", &args)).expect("kubectl prints JSON")
}

/// The objects of a release's manifest.
fn manifest(release: &str, namespace: &str) -> Vec<Value> {
    objects(&helm(&["get", "manifest", release, "-n", namespace]))
}

#[test]
fn install_upgrade_rollback_and_uninstall_keep_the_webhook_ca_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The webhook selects no namespace here: no controller answers it in this test.
    let values = write(
        dir.path(),
        "values.yaml",
        "controller:\n  enabled: true\n  webhook:\n    namespaceSelector:\n      matchLabels:\n        svcplane.io/lifecycle-test: \"true\"\nservice:\n  name: life-dns\n",
    );
    let values = values.to_str().unwrap();
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let ca = || {
        let secret = get_json(&[
            "-n",
            "life",
            "get",
            "secret",
            "life-svcplane-controller-webhook-tls",
        ]);
        let config = get_json(&[
            "get",
            "mutatingwebhookconfiguration",
            "life-svcplane-controller",
        ]);
        let ca = secret["data"]["ca.crt"].as_str().unwrap().to_string();
        assert_eq!(config["webhooks"][0]["clientConfig"]["caBundle"], ca);
        ca
    };
    let replicas = || {
        get_json(&["-n", "life", "get", "deployment", "life-svcplane-dns"])["spec"]["replicas"]
            .as_i64()
            .unwrap()
    };
    helm(&[
        "install",
        "life",
        chart,
        "-n",
        "life",
        "--create-namespace",
        "-f",
        values,
    ]);
    let first = ca();
    assert_eq!(replicas(), 2);
    helm(&[
        "upgrade",
        "life",
        chart,
        "-n",
        "life",
        "-f",
        values,
        "--set",
        "replicaCount=3",
    ]);
    assert_eq!(ca(), first, "the upgrade rotated the webhook's CA");
    assert_eq!(replicas(), 3);
    helm(&["rollback", "life", "1", "-n", "life"]);
    assert_eq!(ca(), first, "the rollback rotated the webhook's CA");
    assert_eq!(replicas(), 2);
    helm(&["uninstall", "life", "-n", "life", "--wait"]);
    let left = kubectl(
        "admin",
        &[
            "get",
            "deployments,statefulsets,services,configmaps,secrets,serviceaccounts,roles,rolebindings,poddisruptionbudgets,clusterroles,clusterrolebindings,mutatingwebhookconfigurations",
            "-A",
            "-l",
            "app.kubernetes.io/instance=life",
            "-o",
            "name",
        ],
    );
    assert_eq!(left.trim(), "", "left after uninstall");
    // The webhook configuration went before the controller that answers it.
    let deleted = |resource: &str| {
        let log = std::fs::read_to_string(cluster().audit_log()).unwrap();
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| {
                e["verb"] == "delete"
                    && e["stage"] == "ResponseComplete"
                    && e["objectRef"]["resource"] == resource
                    && e["objectRef"]["name"] == "life-svcplane-controller"
            })
            .and_then(|e| e["requestReceivedTimestamp"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no delete of {resource} life-svcplane-controller audited"))
    };
    let (webhook, controller) = (
        deleted("mutatingwebhookconfigurations"),
        deleted("deployments"),
    );
    assert!(
        webhook < controller,
        "the webhook configuration was deleted at {webhook}, the controller at {controller}"
    );
    // Helm's own record of the release is gone too.
    let secrets = kubectl("admin", &["-n", "life", "get", "secrets", "-o", "name"]);
    assert!(!secrets.contains("sh.helm.release"), "{secrets}");
}

async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The (API group, resource, verb) triples allowed to `user` in the audit log.
fn audited(user: &str) -> BTreeSet<(String, String, String)> {
    let log = std::fs::read_to_string(cluster().audit_log()).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["user"]["username"] == user && e["stage"] == "ResponseComplete")
        .filter(|e| e["annotations"]["authorization.k8s.io/decision"] == "allow")
        .filter_map(|e| {
            let object = &e["objectRef"];
            Some((
                object["apiGroup"].as_str().unwrap_or("").to_string(),
                object["resource"].as_str()?.to_string(),
                e["verb"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dns_and_the_controller_work_with_the_charts_accounts_and_arguments_and_no_more() {
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let tls = testkit::make_certs(dir.path());
    let admin = c.client("admin").await;
    c.create_namespace(&admin, "apps").await;
    testkit::cluster::create_nodes(&admin, &[("node-a", "zone-a")]).await;

    // The webhook's certificate, given as an existing Secret (the controller runs here, at a
    // loopback URL, so the chart cannot generate it for a Service name).
    let webhook_port = free_port();
    kubectl("admin", &["create", "namespace", "svcplane-e2e"]);
    kubectl(
        "admin",
        &[
            "-n",
            "svcplane-e2e",
            "create",
            "secret",
            "generic",
            "e2e-webhook-tls",
            &format!("--from-file=ca.crt={}", tls.ca.display()),
            &format!("--from-file=tls.crt={}", tls.server_cert.display()),
            &format!("--from-file=tls.key={}", tls.server_key.display()),
        ],
    );
    let values = write(
        dir.path(),
        "values.yaml",
        &format!(
            "controller:\n  enabled: true\n  manage: all\n  pools:\n    serviceClusterIPRange: \"{SERVICE_CIDRS}\"\n  webhook:\n    namespaceSelector:\n      matchLabels:\n        kubernetes.io/metadata.name: apps\n    url: https://127.0.0.1:{webhook_port}/mutate-services\n    tls:\n      existingSecret: e2e-webhook-tls\netcd:\n  enabled: false\n  prefix: /svcplane-e2e/\n  external:\n    endpoints: [\"{}\"]\n",
            c.etcd().endpoint()
        ),
    );
    let chart = chart();
    helm(&[
        "install",
        "e2e",
        chart.to_str().unwrap(),
        "-n",
        "svcplane-e2e",
        "-f",
        values.to_str().unwrap(),
    ]);
    let objects = manifest("e2e", "svcplane-e2e");

    // The DNS: the rendered Corefile and arguments, its ports moved to free loopback ones.
    let deployment = named(&objects, "Deployment", "e2e-svcplane-dns");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["dns", "--conf", "/etc/svcplane/Corefile"]);
    let corefile = named(&objects, "ConfigMap", "e2e-svcplane-dns")["data"]["Corefile"]
        .as_str()
        .unwrap();
    let corefile = write(dir.path(), "Corefile", corefile);
    let dns_kubeconfig = account_kubeconfig(c, dir.path(), "svcplane-e2e", "e2e-svcplane-dns");
    let ports = DnsPorts::free();
    let dns = start_dns(dir.path(), &corefile, &dns_kubeconfig, ports, "dns.log");

    // The controller: the rendered arguments, with the listen addresses and the mounted files
    // substituted; every other argument is the rendered one.
    let deployment = named(&objects, "Deployment", "e2e-svcplane-controller");
    let rendered: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let http_port = free_port();
    let args: Vec<String> = rendered
        .iter()
        .map(|a| match a.as_str() {
            "--listen-http=0.0.0.0:10258" => format!("--listen-http=127.0.0.1:{http_port}"),
            "--listen-webhook=0.0.0.0:9443" => format!("--listen-webhook=127.0.0.1:{webhook_port}"),
            "--tls-cert-file=/etc/svcplane/webhook/tls.crt" => {
                format!("--tls-cert-file={}", tls.server_cert.display())
            }
            "--tls-key-file=/etc/svcplane/webhook/tls.key" => {
                format!("--tls-key-file={}", tls.server_key.display())
            }
            other => other.to_string(),
        })
        .collect();
    let substituted = rendered.iter().zip(&args).filter(|(r, a)| r != a).count();
    assert_eq!(substituted, 4, "{rendered:?}");
    assert!(rendered.contains(&format!("--etcd-endpoints={}", c.etcd().endpoint())));
    let controller_kubeconfig =
        account_kubeconfig(c, dir.path(), "svcplane-e2e", "e2e-svcplane-controller");
    let controller = Watched::spawn(
        Path::new(env!("CARGO_BIN_EXE_svcplane")),
        args.iter().map(OsString::from).collect(),
        &[("KUBECONFIG", controller_kubeconfig.to_str().unwrap())],
        &dir.path().join("controller.log"),
        None,
    );
    until("the controller ready", || async {
        (http_get(http_port, "/readyz")?.0 == 200).then_some(())
    })
    .await;
    until("the DNS ready", || async {
        (http_get(ports.ready, "/ready")?.0 == 200).then_some(())
    })
    .await;

    // A Service with a Ready pod, created as an admin would.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "apps", "labels": {"app": "web"}},
    }))
    .unwrap();
    testkit::cluster::run_pod(&admin, "node-a", pod, PodState::Ready, false).await;
    let services: Api<Service> = Api::namespaced(admin.clone(), "apps");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "apps"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]},
    }))
    .unwrap();
    let created = services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let ip = created.spec.unwrap().cluster_ip.unwrap();
    // Allocated by the webhook: the pools in etcd hold it, under the chart's prefix.
    let held = Command::new(peer("etcdctl"))
        .args([
            "--endpoints",
            &c.etcd().endpoint(),
            "get",
            "--prefix",
            "--keys-only",
            "/svcplane-e2e/",
        ])
        .output()
        .expect("run etcdctl");
    let held = String::from_utf8_lossy(&held.stdout);
    assert!(
        held.lines().any(|k| k.ends_with(&format!("/{ip}"))),
        "{ip} not in the pools: {held}"
    );
    // The controller's slice lists the pod; the DNS answers the name.
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "apps");
    let pod_ip = testkit::cluster::pod_ip("apps", "web-1", false).to_string();
    until("the slice of web", || async {
        let list = slices
            .list(&kube::api::ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .ok()?;
        list.items
            .iter()
            .any(|s| {
                s.endpoints
                    .iter()
                    .flatten()
                    .any(|e| e.addresses.contains(&pod_ip))
            })
            .then_some(())
    })
    .await;
    until("web.apps answered", || async {
        (dig_a(ports.dns, "web.apps.svc.cluster.local") == ip).then_some(())
    })
    .await;

    // A malformed set-based selector: the controller says so in a Warning event.
    let malformed: Service = serde_json::from_value(json!({
        "metadata": {"name": "malformed", "namespace": "apps",
                     "annotations": {"svcplane.io/selector": "app in ("}},
        "spec": {"ports": [{"port": 80}]},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &malformed)
        .await
        .unwrap();

    // Every rule the chart grants was used, and allowed, by its account.
    let rules = |kind: &str, name: &str| -> Vec<Value> {
        named(&objects, kind, name)["rules"]
            .as_array()
            .unwrap()
            .clone()
    };
    let accounts = [
        (
            "system:serviceaccount:svcplane-e2e:e2e-svcplane-dns",
            rules("ClusterRole", "e2e-svcplane-dns"),
        ),
        (
            "system:serviceaccount:svcplane-e2e:e2e-svcplane-controller",
            [
                rules("ClusterRole", "e2e-svcplane-controller"),
                rules("Role", "e2e-svcplane-controller"),
            ]
            .concat(),
        ),
    ];
    // What every account may do (the cluster's bootstrap roles): an account the chart did not
    // make, granted nothing.
    let baseline: std::collections::BTreeMap<&str, String> = ["apps", "svcplane-e2e"]
        .into_iter()
        .map(|namespace| {
            let args = [
                "auth",
                "can-i",
                "--list",
                "-n",
                namespace,
                "--as",
                "system:serviceaccount:apps:default",
            ];
            (namespace, kubectl("admin", &args))
        })
        .collect();
    for (user, rules) in &accounts {
        let deadline = Instant::now() + PATIENCE;
        let used = loop {
            let used = audited(user);
            let unused: Vec<&Value> = rules.iter().filter(|r| !rule_used(r, &used)).collect();
            if unused.is_empty() {
                break used;
            }
            assert!(
                Instant::now() < deadline,
                "{user}: rules not used within {PATIENCE:?}: {unused:?}\nused: {used:?}\n\
                 controller:\n{}",
                controller.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        // And nothing it used lies outside them (an allowed request outside the rules would
        // mean the account has more than the chart grants).
        for (group, resource, verb) in &used {
            assert!(
                rules.iter().any(|r| grants(r, group, resource, verb)),
                "{user} was allowed {verb} {resource} ({group}) outside the chart's rules"
            );
        }
        // Cluster-wide, and in the release namespace (where the controller's Role is).
        for namespace in ["apps", "svcplane-e2e"] {
            let listed = kubectl(
                "admin",
                &["auth", "can-i", "--list", "-n", namespace, "--as", user],
            );
            check_can_i(user, &listed, &baseline[namespace], rules);
        }
    }

    // Without its watch on EndpointSlices, a DNS never becomes ready, and says why.
    drop(dns);
    let mut role = named(&objects, "ClusterRole", "e2e-svcplane-dns").clone();
    role["rules"] = json!([role["rules"][0]]);
    let path = write(dir.path(), "role.json", &role.to_string());
    kubectl("admin", &["apply", "-f", path.to_str().unwrap()]);
    let _limited = start_dns(
        dir.path(),
        &corefile,
        &dns_kubeconfig,
        ports,
        "dns-limited.log",
    );
    let log = dir.path().join("dns-limited.log");
    until("the forbidden watch named", || async {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("cannot list or watch endpointslices (discovery.k8s.io): forbidden")
            .then_some(())
    })
    .await;
    assert_eq!(
        http_get(ports.ready, "/ready").map(|(status, _)| status),
        Some(503)
    );
    helm(&["uninstall", "e2e", "-n", "svcplane-e2e"]);
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn grants(rule: &Value, group: &str, resource: &str, verb: &str) -> bool {
    strings(&rule["apiGroups"]).iter().any(|g| g == group)
        && strings(&rule["resources"]).iter().any(|r| r == resource)
        && strings(&rule["verbs"]).iter().any(|v| v == verb)
}

fn rule_used(rule: &Value, used: &BTreeSet<(String, String, String)>) -> bool {
    used.iter().any(|(g, r, v)| grants(rule, g, r, v))
}

/// `kubectl auth can-i --list` shows, beyond the chart's rules, only what `baseline` (an
/// account granted nothing) shows too.
fn check_can_i(user: &str, listed: &str, baseline: &str, rules: &[Value]) {
    let everyone: BTreeSet<&str> = baseline.lines().skip(1).collect();
    for line in listed.lines().skip(1) {
        if everyone.contains(line) {
            continue;
        }
        let columns: Vec<&str> = line.split_whitespace().collect();
        let Some(resource) = columns.first() else {
            continue;
        };
        assert!(
            !resource.starts_with('[') && !resource.starts_with('/'),
            "{user} has a non-resource URL beyond what every account has: {line}"
        );
        let verbs = line[line.rfind('[').unwrap_or(0)..].trim_matches(|c| c == '[' || c == ']');
        let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
        for verb in verbs.split_whitespace() {
            assert!(
                rules.iter().any(|r| grants(r, group, resource, verb)),
                "{user} can {verb} {resource} ({group}) beyond the chart's rules:\n{listed}"
            );
        }
    }
}
