//! What a cluster install is made of. The Helm chart (`charts/svcplane`) with the peers' Helm:
//! it lints strictly with each of its values files, its schema refuses what it should, the
//! Corefile it renders is one `svcplane dns` accepts, the DNS's ClusterRole holds only what the
//! DNS reads, and every object it renders passes kube-apiserver's server-side dry run with
//! strict field validation. The Dockerfile, read statically (no container engine runs here).
//! And `svcplane controller --check`, which the chart's controller arguments will go through.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use support::helm::{chart, named, objects, text};
use testkit::cluster::{Cluster, ClusterOptions};
use testkit::peer;

/// The values files the tests render: the defaults, kubeadm's replacement, everything on.
const VALUES: &[&str] = &["", "ci/kubeadm-values.yaml", "ci/everything-values.yaml"];

/// The peers' helm, no cluster needed.
fn helm(args: &[&str]) -> Output {
    support::helm::helm(None, args)
}

/// `helm template` of the chart with `values` (a file of the chart, or "" for the defaults)
/// and `sets`, as the YAML text and the objects.
fn render(values: &str, sets: &[&str]) -> (String, Vec<Value>) {
    let chart = chart();
    let mut args = vec![
        "template".to_string(),
        "t".to_string(),
        chart.display().to_string(),
        "--namespace".to_string(),
        "kube-system".to_string(),
    ];
    if !values.is_empty() {
        args.push("-f".into());
        args.push(chart.join(values).display().to_string());
    }
    for set in sets {
        args.push("--set".into());
        args.push(set.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = helm(&args);
    assert!(
        out.status.success(),
        "helm template {values}: {}",
        text(&out)
    );
    let yaml = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    let objects = objects(&yaml);
    (yaml, objects)
}

fn object<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// The arguments of a rendered container, each with `substitutions` (from, to) applied.
fn args_of(container: &Value, substitutions: &[(&str, &str)]) -> Vec<String> {
    container["args"]
        .as_array()
        .expect("the container's args")
        .iter()
        .map(|a| {
            substitutions.iter().fold(
                a.as_str().expect("a string").to_string(),
                |a, (from, to)| a.replace(from, to),
            )
        })
        .collect()
}

/// The Corefile of the rendered DNS ConfigMap.
fn corefile(objects: &[Value]) -> &str {
    objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "t-svcplane-dns")
        .and_then(|o| o["data"]["Corefile"].as_str())
        .expect("the DNS ConfigMap with a Corefile")
}

#[test]
fn the_chart_lints_strictly_with_each_values_file() {
    for values in VALUES {
        let chart = chart();
        let file = chart.join(values);
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        if !values.is_empty() {
            args.extend(["-f", file.to_str().unwrap()]);
        }
        let out = helm(&args);
        assert!(out.status.success(), "helm lint {values}: {}", text(&out));
        assert!(
            text(&out).contains("1 chart(s) linted, 0 chart(s) failed"),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn the_schema_refuses_a_wrong_type_and_an_unknown_key_naming_them() {
    for (set, says) in [
        ("replicaCount=two", "/replicaCount"),
        ("service.clusterIp=10.96.0.10", "'clusterIp' not allowed"),
        ("servers[0].plugins[0].nmae=errors", "'nmae' not allowed"),
        ("serviceType=Internal", "/serviceType"),
        (
            "controller.webhook.allocationTimeout=1m30s",
            "/controller/webhook/allocationTimeout",
        ),
    ] {
        refused(&["controller.enabled=true", set], says);
    }
}

#[test]
fn values_that_cannot_work_together_are_refused_with_the_reason() {
    for (sets, says) in [
        (
            &["controller.webhook.allocationTimeout=10s"][..],
            "must be below controller.webhook.timeoutSeconds",
        ),
        (
            &["hpa.enabled=true", "autoscaler.enabled=true"][..],
            "hpa.enabled and autoscaler.enabled: choose one",
        ),
        (
            &["prometheus.monitor.enabled=true"][..],
            "prometheus.monitor.enabled needs prometheus.service.enabled",
        ),
        (&["etcd.enabled=false"][..], "etcd.external.endpoints: give"),
        (
            &[
                "controller.webhook.certManager.enabled=true",
                "controller.webhook.tls.existingSecret=mine",
            ][..],
            "choose one",
        ),
        (
            &["controller.webhook.url=https://192.0.2.1:9443/mutate-services"][..],
            "controller.webhook.url: a controller outside the cluster",
        ),
        // `helm template` cannot look the Secret up: without caBundle there is no CA to trust.
        (
            &["controller.webhook.tls.existingSecret=mine"][..],
            "set controller.webhook.tls.caBundle",
        ),
        (
            &["etcd.replicas=3", "etcd.persistence.enabled=false"][..],
            "etcd.persistence.enabled: members",
        ),
    ] {
        refused(&[&["controller.enabled=true"], sets].concat(), says);
    }
}

/// `helm template` with `sets` fails, saying `says`.
fn refused(sets: &[&str], says: &str) {
    let chart = chart();
    let mut args = vec!["template", "t", chart.to_str().unwrap()];
    for set in sets {
        args.extend(["--set", set]);
    }
    let out = helm(&args);
    assert!(!out.status.success(), "{sets:?} was accepted");
    assert!(text(&out).contains(says), "{sets:?}: {}", text(&out));
}

#[test]
fn each_rendered_corefile_passes_svcplane_dns_check() {
    for values in VALUES {
        let (_, objects) = render(values, &[]);
        let corefile = corefile(&objects).to_string();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Corefile");
        std::fs::write(&path, &corefile).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_svcplane"))
            .args(["dns", "--check", "--conf"])
            .arg(&path)
            .output()
            .expect("run svcplane");
        assert!(out.status.success(), "{values}: {}\n{corefile}", text(&out));
    }
}

#[test]
fn the_default_corefile_is_kubeadms_with_a_server_block_per_entry_of_servers() {
    let (_, objects) = render("", &[]);
    let text = corefile(&objects);
    assert!(text.starts_with(".:53 {\n    errors\n    health {\n        lameduck 5s\n    }\n"));
    assert!(
        text.contains(
            "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n        pods insecure\n"
        )
    );
    assert!(text.ends_with("    loadbalance\n}"), "{text}");
    let (_, objects) = render("ci/everything-values.yaml", &[]);
    let text = corefile(&objects);
    assert!(text.contains("\ncorp.example:5353 {\n    errors\n    forward . 192.0.2.53\n}"));
    // A verbatim Corefile replaces the servers.
    let (_, objects) = render("", &["corefile=.:53 {\n    whoami\n}"]);
    assert_eq!(corefile(&objects), ".:53 {\n    whoami\n}");
}

#[test]
fn the_dns_cluster_role_lists_and_watches_only_what_the_dns_reads() {
    let rules = |values: &str| {
        let (_, objects) = render(values, &[]);
        named(&objects, "ClusterRole", "t-svcplane-dns")["rules"].clone()
    };
    let core = |resources: &[&str]| {
        serde_json::json!([
            {"apiGroups": [""], "resources": resources, "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        ])
    };
    // `pods insecure` answers without pods; `pods verified` needs them.
    assert_eq!(rules(""), core(&["services", "namespaces"]));
    assert_eq!(
        rules("ci/everything-values.yaml"),
        core(&["services", "namespaces", "pods"])
    );
}

#[test]
fn the_kube_dns_service_has_kubeadms_name_ports_and_address() {
    let (_, objects) = render("ci/kubeadm-values.yaml", &[]);
    let service = object(&objects, "Service");
    assert_eq!(service["metadata"]["name"], "kube-dns");
    assert_eq!(service["metadata"]["labels"]["k8s-app"], "kube-dns");
    assert_eq!(service["spec"]["clusterIP"], "10.96.0.10");
    assert_eq!(
        service["spec"]["selector"],
        serde_json::json!({"k8s-app": "kube-dns"})
    );
    let ports: Vec<(String, i64, String)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["port"].as_i64().unwrap(),
                p["protocol"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("dns", 53, "UDP"),
        ("dns-tcp", 53, "TCP"),
        ("metrics", 9153, "TCP"),
    ]
    .map(|(n, p, proto)| (n.to_string(), p, proto.to_string()));
    assert_eq!(ports, want);
    // And as kubeadm v1.37.2 itself makes kube-dns: the same name, address, selector, ports and
    // Prometheus annotations.
    let out = Command::new(peer("kubeadm"))
        .args(["init", "phase", "addon", "coredns", "--print-manifest"])
        .args(["--kubernetes-version", "v1.37.2"])
        .output()
        .expect("run kubeadm");
    assert!(out.status.success(), "kubeadm: {}", text(&out));
    let kubeadm = support::helm::objects(&String::from_utf8_lossy(&out.stdout));
    let upstream = named(&kubeadm, "Service", "kube-dns");
    for field in [
        "/spec/clusterIP",
        "/spec/selector",
        "/spec/ports",
        "/metadata/annotations",
    ] {
        assert_eq!(
            service.pointer(field),
            upstream.pointer(field),
            "{field} differs from kubeadm's kube-dns"
        );
    }
    for label in ["k8s-app", "kubernetes.io/cluster-service"] {
        assert_eq!(
            service["metadata"]["labels"][label],
            upstream["metadata"]["labels"][label]
        );
    }
    // The Deployment's pods carry the label the Service selects, and its own selector does not
    // depend on it (so it never adopts CoreDNS's pods).
    let deployment = object(&objects, "Deployment");
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["k8s-app"],
        "kube-dns"
    );
    assert!(deployment["spec"]["selector"]["matchLabels"]["k8s-app"].is_null());
    // A Corefile change is left to `reload` unless asked otherwise.
    assert!(deployment["spec"]["template"]["metadata"]["annotations"].is_null());
    let (_, objects) = render("", &["rollOnConfigChange=true"]);
    let annotations =
        &object(&objects, "Deployment")["spec"]["template"]["metadata"]["annotations"];
    assert!(
        annotations["checksum/config"]
            .as_str()
            .is_some_and(|c| c.len() == 64)
    );
}

#[test]
fn every_rendered_object_passes_a_strict_server_side_dry_run() {
    let cluster = Cluster::start(ClusterOptions::default());
    // The kinds of prometheus-operator and cert-manager the chart can render.
    let dir = tempfile::tempdir().unwrap();
    for (n, crd) in testkit::crds::chart_crds().iter().enumerate() {
        let path = dir.path().join(format!("crd-{n}.yaml"));
        std::fs::write(&path, crd).unwrap();
        let out = cluster.kubectl("admin", &["create", "-f", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = cluster.kubectl(
        "admin",
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/podmonitors.monitoring.coreos.com",
            "crd/issuers.cert-manager.io",
            "crd/certificates.cert-manager.io",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // Each values file, and the defaults with an HPA instead of a fixed replica count.
    let renders = VALUES
        .iter()
        .map(|v| (*v, ""))
        .chain([("", "hpa.enabled=true")]);
    for (values, extra) in renders {
        let sets: Vec<&str> = Some(extra).into_iter().filter(|e| !e.is_empty()).collect();
        let (yaml, _) = render(values, &sets);
        if !extra.is_empty() {
            assert!(yaml.contains("kind: HorizontalPodAutoscaler"));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rendered.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let out = cluster.kubectl(
            "admin",
            &[
                "apply",
                "--dry-run=server",
                "--validate=strict",
                "-f",
                path.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{values}: {}", text(&out));
        let applied = String::from_utf8_lossy(&out.stdout);
        for kind in [
            "deployment.apps",
            "service",
            "configmap",
            "clusterrole.rbac.authorization.k8s.io",
        ] {
            assert!(applied.contains(&format!("{kind}/")), "{values}: {applied}");
        }
        if values == "ci/everything-values.yaml" {
            for object in [
                "mutatingwebhookconfiguration.admissionregistration.k8s.io/t-svcplane-controller",
                "statefulset.apps/t-svcplane-etcd",
                "role.rbac.authorization.k8s.io/t-svcplane-controller",
                "deployment.apps/t-svcplane-controller",
                "configmap/t-svcplane-dns-autoscaler",
                "deployment.apps/t-svcplane-dns-autoscaler",
                "servicemonitor.monitoring.coreos.com/t-svcplane-dns",
                "podmonitor.monitoring.coreos.com/t-svcplane",
                "certificate.cert-manager.io/t-svcplane-controller-webhook",
                "issuer.cert-manager.io/t-svcplane-controller-selfsigned",
                "service/t-svcplane-dns-metrics",
            ] {
                assert!(applied.contains(object), "{values}: {applied}");
            }
        }
    }
}

fn svcplane(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_svcplane"))
        .args(args)
        .output()
        .expect("run svcplane")
}

#[test]
fn controller_check_accepts_valid_flags_and_names_the_wrong_one_without_reaching_anything() {
    let dir = tempfile::tempdir().unwrap();
    let tls = testkit::make_certs(dir.path());
    let (cert, key) = (
        tls.server_cert.to_str().unwrap(),
        tls.server_key.to_str().unwrap(),
    );
    // No cluster and no etcd listen at these addresses: --check reaches neither.
    let etcd = "--etcd-endpoints=http://127.0.0.1:1";
    let webhook = ["--tls-cert-file", cert, "--tls-key-file", key];
    let ok = |args: &[&str]| {
        let out = svcplane(
            &[
                &["controller", "--check", "--kubeconfig", "/nonexistent"],
                args,
            ]
            .concat(),
        );
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("the flags and the files they name are valid"));
    };
    ok(&[]);
    ok(&[
        &webhook[..],
        &[
            etcd,
            "--service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112",
        ],
    ]
    .concat());
    let refused = |args: &[&str], says: &str| {
        let out = svcplane(&[&["controller", "--check"], args].concat());
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    };
    refused(&webhook, "give --etcd-endpoints");
    refused(
        &[
            "--tls-cert-file",
            "/nonexistent.pem",
            "--tls-key-file",
            key,
            etcd,
        ],
        "/nonexistent.pem",
    );
    refused(
        &[
            &webhook[..],
            &[etcd, "--service-cluster-ip-range=10.96.0.0/33"],
        ]
        .concat(),
        "10.96.0.0/33",
    );
    refused(&[etcd, "--etcd-prefix=pools"], "--etcd-prefix");
    refused(&[etcd, "--etcd-certfile", cert], "--etcd-keyfile");
    refused(
        &[
            "--leader-elect-lease-duration=5s",
            "--leader-elect-renew-deadline=10s",
        ],
        "--leader-elect-lease-duration",
    );
}

#[test]
fn the_dockerfile_builds_the_locked_release_binary_on_digest_pinned_images_as_a_numeric_user() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    for from in &froms {
        let image = from.split_whitespace().nth(1).unwrap();
        let (_, digest) = image
            .split_once("@sha256:")
            .unwrap_or_else(|| panic!("{from}: not pinned by digest"));
        assert!(
            digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
            "{from}"
        );
    }
    assert!(dockerfile.contains("cargo build --release --locked --bin svcplane"));
    assert!(dockerfile.contains("setcap cap_net_bind_service=+ep target/release/svcplane"));
    // The runtime stage runs as a numeric user, so `runAsNonRoot` can verify it.
    let user = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER");
    let uid = user.trim_start_matches("USER ").split(':').next().unwrap();
    assert!(uid.parse::<u32>().is_ok_and(|u| u != 0), "{user}");
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(runtime.contains("COPY --from=build /src/target/release/svcplane"));
    // The chart's default tag is appVersion, which is the crate's version.
    let chart = std::fs::read_to_string(chart().join("Chart.yaml")).unwrap();
    let chart: Value = serde_yaml::from_str(&chart).unwrap();
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    let (_, objects) = render("", &[]);
    let image =
        object(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
            .clone();
    assert_eq!(
        image,
        format!("ghcr.io/svcplane/svcplane:{}", env!("CARGO_PKG_VERSION"))
    );
}

/// Every (API group, resource, verb) a set of RBAC rules grants.
fn grants(rules: &[Value]) -> std::collections::BTreeSet<(String, String, String)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let mut out = std::collections::BTreeSet::new();
    for rule in rules {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

#[test]
fn the_controller_is_granted_exactly_what_the_end_to_end_tests_run_it_with() {
    let (_, objects) = render("ci/everything-values.yaml", &[]);
    let mut chart = grants(
        named(&objects, "ClusterRole", "t-svcplane-controller")["rules"]
            .as_array()
            .unwrap(),
    );
    // The Lease only in the release namespace, where the controller is told to hold it.
    let role = named(&objects, "Role", "t-svcplane-controller");
    assert_eq!(role["metadata"]["namespace"], "kube-system");
    chart.extend(grants(role["rules"].as_array().unwrap()));
    let harness: Vec<Value> = testkit::cluster::svcplane_controller_rbac()
        .into_iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .flat_map(|o| o["rules"].as_array().unwrap().clone())
        .collect();
    assert_eq!(chart, grants(&harness));
    // Without the webhook, no ServiceCIDRs.
    let (_, objects) = render(
        "",
        &[
            "controller.enabled=true",
            "controller.webhook.enabled=false",
        ],
    );
    let rules = grants(
        named(&objects, "ClusterRole", "t-svcplane-controller")["rules"]
            .as_array()
            .unwrap(),
    );
    assert!(!rules.iter().any(|(_, r, _)| r == "servicecidrs"));
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "MutatingWebhookConfiguration" || o["kind"] == "StatefulSet")
    );
}

#[test]
fn the_rendered_controller_arguments_pass_controller_check() {
    let dir = tempfile::tempdir().unwrap();
    let tls = testkit::make_certs(dir.path());
    for (values, sets) in [
        ("ci/everything-values.yaml", &[][..]),
        ("", &["controller.enabled=true"][..]),
        (
            "",
            &[
                "controller.enabled=true",
                "controller.webhook.enabled=false",
            ][..],
        ),
    ] {
        let (_, objects) = render(values, sets);
        let deployment = named(&objects, "Deployment", "t-svcplane-controller");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        // Only the mounted files' paths are substituted; every other argument is as rendered.
        let args = args_of(
            container,
            &[
                (
                    "/etc/svcplane/webhook/tls.crt",
                    tls.server_cert.to_str().unwrap(),
                ),
                (
                    "/etc/svcplane/webhook/tls.key",
                    tls.server_key.to_str().unwrap(),
                ),
                ("/etc/svcplane/etcd/ca.crt", tls.ca.to_str().unwrap()),
                (
                    "/etc/svcplane/etcd/tls.crt",
                    tls.client_cert.to_str().unwrap(),
                ),
                (
                    "/etc/svcplane/etcd/tls.key",
                    tls.client_key.to_str().unwrap(),
                ),
            ],
        );
        assert_eq!(args[0], "controller");
        let mut command: Vec<&str> = args.iter().map(String::as_str).collect();
        command.push("--check");
        let out = svcplane(&command);
        assert!(out.status.success(), "{values} {sets:?}: {}", text(&out));
    }
}

#[test]
fn the_webhook_trusts_the_generated_ca_which_signed_the_controller_services_certificate() {
    let (_, objects) = render("", &["controller.enabled=true"]);
    let secret = named(&objects, "Secret", "t-svcplane-controller-webhook-tls");
    let config = object(&objects, "MutatingWebhookConfiguration");
    let webhook = &config["webhooks"][0];
    assert_eq!(
        webhook["clientConfig"]["caBundle"],
        secret["data"]["ca.crt"]
    );
    assert_eq!(
        webhook["clientConfig"]["service"],
        serde_json::json!({"name": "t-svcplane-controller", "namespace": "kube-system",
            "path": "/mutate-services", "port": 443})
    );
    // Services of kube-system and of the release's namespace are imported, not admitted.
    assert_eq!(
        webhook["namespaceSelector"]["matchExpressions"][0]["values"],
        serde_json::json!(["kube-system"])
    );
    assert_eq!(webhook["sideEffects"], "NoneOnDryRun");
    assert_eq!(
        webhook["admissionReviewVersions"],
        serde_json::json!(["v1"])
    );
    assert_eq!(webhook["failurePolicy"], "Fail");
    // The certificate verifies against the CA for the Service's name.
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert) = (
        secret_file(secret, "ca.crt", dir.path()),
        secret_file(secret, "tls.crt", dir.path()),
    );
    assert_certificate_for(&ca, "t-svcplane-controller.kube-system.svc", &cert);
}

/// `cert` verifies against `ca` for the DNS name `host` (openssl).
fn assert_certificate_for(ca: &str, host: &str, cert: &str) {
    let out = Command::new("openssl")
        .args(["verify", "-CAfile", ca, "-verify_hostname", host, cert])
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "{host}: {}", text(&out));
}

/// The value of `key` in a rendered Secret, decoded into a file in `dir`: the file's path.
fn secret_file(secret: &Value, key: &str, dir: &Path) -> String {
    use base64::Engine as _;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(secret["data"][key].as_str().expect("the key in the Secret"))
        .expect("base64");
    let path = dir.join(key);
    std::fs::write(&path, pem).unwrap();
    path.display().to_string()
}

#[test]
fn the_bundled_etcds_generated_certificates_serve_it_and_admit_only_the_controllers_client() {
    let (_, objects) = render(
        "",
        &[
            "controller.enabled=true",
            "etcd.tls.enabled=true",
            "etcd.persistence.enabled=false",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let secret = named(&objects, "Secret", "t-svcplane-etcd-tls");
    let file = |key: &str| secret_file(secret, key, dir.path());
    let (ca, member_crt, member_key, client_crt, client_key) = (
        file("ca.crt"),
        file("member.crt"),
        file("member.key"),
        file("client.crt"),
        file("client.key"),
    );
    // The member's rendered arguments; only addresses, the data directory and the mounted
    // files' paths substituted.
    let statefulset = named(&objects, "StatefulSet", "t-svcplane-etcd");
    let container = &statefulset["spec"]["template"]["spec"]["containers"][0];
    let (client, peer_port, metrics) = (
        testkit::free_port(),
        testkit::free_port(),
        testkit::free_port(),
    );
    let data = dir.path().join("data");
    let peer_host = "t-svcplane-etcd-0.t-svcplane-etcd-peers.kube-system.svc";
    let (client_url, peer_url, metrics_url) = (
        format!("127.0.0.1:{client}"),
        format!("127.0.0.1:{peer_port}"),
        format!("127.0.0.1:{metrics}"),
    );
    let (host_client, host_peer) = (format!("{peer_host}:2379"), format!("{peer_host}:2380"));
    let args = args_of(
        container,
        &[
            ("$(POD_NAME)", "t-svcplane-etcd-0"),
            ("/var/lib/etcd", data.to_str().unwrap()),
            ("/etc/etcd/tls/member.crt", &member_crt),
            ("/etc/etcd/tls/member.key", &member_key),
            ("/etc/etcd/tls/ca.crt", &ca),
            ("0.0.0.0:2379", &client_url),
            ("0.0.0.0:2380", &peer_url),
            ("0.0.0.0:2381", &metrics_url),
            (&host_client, &client_url),
            (&host_peer, &peer_url),
        ],
    );
    assert!(args.contains(&"--client-cert-auth".to_string()), "{args:?}");
    // The member's certificate holds the in-cluster name the controller dials (the test
    // itself reaches the member at 127.0.0.1).
    assert_certificate_for(&ca, peer_host, &member_crt);
    let _etcd = testkit::process::Watched::spawn(
        &peer("etcd"),
        args.iter().map(std::ffi::OsString::from).collect(),
        &[],
        &dir.path().join("etcd.log"),
        None,
    );
    // svcplane's own etcd client, with the controller's rendered etcd flags, the client
    // certificate substituted for its mounted path.
    let controller = named(&objects, "Deployment", "t-svcplane-controller");
    let flags: Vec<String> = controller["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .filter(|a| a.starts_with("--etcd-"))
        .map(|a| {
            a.replace("/etc/svcplane/etcd/ca.crt", &ca)
                .replace("/etc/svcplane/etcd/tls.crt", &client_crt)
                .replace("/etc/svcplane/etcd/tls.key", &client_key)
                .replace(
                    &format!("https://{peer_host}:2379"),
                    &format!("https://127.0.0.1:{client}"),
                )
        })
        .collect();
    assert_eq!(flags.len(), 5, "{flags:?}");
    let show = |flags: &[String]| {
        let mut args = vec!["ipam", "show"];
        args.extend(flags.iter().map(String::as_str));
        svcplane(&args)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = show(&flags);
        if out.status.success() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", text(&out));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Without the client certificate, etcd refuses the connection.
    let without: Vec<String> = flags
        .iter()
        .filter(|f| !f.starts_with("--etcd-certfile") && !f.starts_with("--etcd-keyfile"))
        .cloned()
        .collect();
    let out = show(&without);
    assert!(
        !out.status.success(),
        "etcd admitted a client without a certificate"
    );
}

#[test]
fn every_value_the_schema_declares_has_a_doc_comment() {
    // A `# --` comment (helm-docs's form) right above each key the schema lists; keys inside
    // free-form values (resources, affinity, …) are the Kubernetes API's, documented there.
    let chart = chart();
    let values = std::fs::read_to_string(chart.join("values.yaml")).unwrap();
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart.join("values.schema.json")).unwrap())
            .unwrap();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut undocumented = Vec::new();
    let mut comment = false;
    for line in values.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("# --") {
            comment = true;
            continue;
        }
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let Some((key, _)) = trimmed.split_once(':') else {
            comment = false;
            continue;
        };
        if key.starts_with('-') || key.contains(' ') {
            comment = false;
            continue;
        }
        while path.last().is_some_and(|(i, _)| *i >= indent) {
            path.pop();
        }
        // The schema node of the parent: keys of strict objects must be documented.
        let mut node = &schema;
        for (_, k) in &path {
            node = &node["properties"][k];
        }
        let declared = node["additionalProperties"] == false && !node["properties"][key].is_null();
        // An object whose every key is documented needs no comment of its own.
        let grouping = node["properties"][key]["additionalProperties"] == false;
        if declared && !grouping && !comment {
            let mut full: Vec<&str> = path.iter().map(|(_, k)| k.as_str()).collect();
            full.push(key);
            undocumented.push(full.join("."));
        }
        path.push((indent, key.to_string()));
        comment = false;
    }
    assert!(
        undocumented.is_empty(),
        "values without a `# --` comment: {undocumented:?}"
    );
    // And the schema declares nothing values.yaml leaves out (outside lists).
    let rendered: Value = serde_yaml::from_str(&values).unwrap();
    let mut missing = Vec::new();
    let mut stack = vec![(String::new(), &schema, &rendered)];
    while let Some((path, node, value)) = stack.pop() {
        if node["additionalProperties"] != false {
            continue;
        }
        for (key, child) in node["properties"].as_object().unwrap() {
            let at = format!("{path}.{key}");
            match value.get(key) {
                Some(v) => stack.push((at, child, v)),
                None => missing.push(at),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "in the schema, not in values.yaml: {missing:?}"
    );
}
