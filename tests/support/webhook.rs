//! A kube-apiserver v1.37.2 (the peers) with `svcplane controller` serving the allocation
//! webhook in front of it, registered as a cluster registers it: a
//! `MutatingWebhookConfiguration` with `clientConfig.url` on loopback (as envtest does),
//! `sideEffects: NoneOnDryRun`, `admissionReviewVersions: [v1]`, `failurePolicy: Fail` and a
//! namespace selector leaving out the controller's namespace. kube-apiserver's ranges equal
//! svcplane's pools, which live in the cluster's etcd.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::cluster::{self, Cluster, ClusterOptions, WebhookController};
use testkit::process::Watched;

/// The bound of every wait.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The namespace the webhook configuration leaves out (where the controller would run).
pub const CONTROLLER_NAMESPACE: &str = "svcplane-system";

/// The cluster, the controller and where its pools are.
pub struct WebhookCluster {
    pub cluster: Cluster,
    pub controller: Watched,
    /// The controller's `/metrics` port.
    pub http_port: u16,
    /// The pools' key prefix in the cluster's etcd.
    pub prefix: String,
    _dir: tempfile::TempDir,
}

impl WebhookCluster {
    /// Starts a cluster with ClusterIP ranges `cidrs` (comma-separated, primary first) and
    /// NodePort range `node_ports` (kube-apiserver's default if None), and a controller whose
    /// pools equal them, with `extra` flags. Returns once kube-apiserver calls the webhook.
    pub fn start(cidrs: &str, node_ports: Option<&str>, prefix: &str, extra: &[&str]) -> Self {
        let cluster = Cluster::start(ClusterOptions {
            controllers: Some(vec!["namespace".into(), "serviceaccount".into()]),
            node_port_range: node_ports.map(Into::into),
            service_cidrs: Some(cidrs.into()),
            controller_manager_args: Vec::new(),
        });
        cluster.apply(&cluster::svcplane_controller_rbac());
        let dir = tempfile::tempdir().unwrap();
        let certs = testkit::make_certs(dir.path());
        let (http_port, webhook_port) = (testkit::free_port(), testkit::free_port());
        let mut args = cluster.webhook_controller_args(&WebhookController {
            identity: "svcplane-controller",
            http_port,
            webhook_port,
            certs: &certs,
            prefix,
            cidrs,
        });
        if let Some(range) = node_ports {
            args.push(format!("--service-node-port-range={range}").into());
        }
        args.extend(extra.iter().map(Into::into));
        let controller = spawn_controller(args, &dir.path().join("controller.log"));
        let selector = json!({"matchExpressions": [{
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": [CONTROLLER_NAMESPACE],
        }]});
        cluster.apply(&[
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONTROLLER_NAMESPACE}}),
            cluster::allocation_webhook_configuration(
                &format!("https://127.0.0.1:{webhook_port}/mutate-services"),
                &certs.ca,
                "Fail",
                Some(selector),
            ),
        ]);
        let setup = WebhookCluster {
            cluster,
            controller,
            http_port,
            prefix: prefix.to_string(),
            _dir: dir,
        };
        setup.wait_until_called();
        setup
    }

    /// kube-apiserver picks up a new webhook configuration a moment after it is stored: waits
    /// until a Service create reaches the webhook.
    fn wait_until_called(&self) {
        let started = Instant::now();
        let namespace = "webhook-probe";
        self.kubectl(&["create", "namespace", namespace]);
        for i in 0.. {
            let name = format!("probe-{i}");
            self.kubectl(&[
                "-n",
                namespace,
                "create",
                "service",
                "clusterip",
                &name,
                "--tcp=80:80",
            ]);
            if self.metric("controller_runtime_webhook_requests_total") > 0.0 {
                // The probes hold values of the pools; checks that count values start clean.
                self.kubectl(&["-n", namespace, "delete", "services", "--all"]);
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "kube-apiserver never called the webhook:\n{}",
                self.controller.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// kubectl as the cluster's admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.cluster.kubectl("admin", args)
    }

    /// kubectl, which must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\ncontroller:\n{}",
            super::stderr(&out),
            self.controller.log()
        );
        super::stdout(&out)
    }

    /// The sum of the controller's series whose line starts with `prefix`.
    pub fn metric(&self, prefix: &str) -> f64 {
        let (_, body) =
            super::http(self.http_port, "GET", "/metrics", &[], None).unwrap_or_default();
        sum_of(&body, prefix)
    }

    /// The sum of kube-apiserver's series whose line starts with `prefix`.
    pub fn apiserver_metric(&self, prefix: &str) -> f64 {
        sum_of(&self.kubectl_ok(&["get", "--raw", "/metrics"]), prefix)
    }

    /// The Service as stored.
    pub fn service(&self, namespace: &str, name: &str) -> Value {
        let out = self.kubectl_ok(&["-n", namespace, "get", "service", name, "-o", "json"]);
        serde_json::from_str(&out).unwrap()
    }
}

/// Starts `svcplane` with `args` (a webhook-serving `controller`), logging to `log`; returns
/// once it serves the webhook.
pub fn spawn_controller(args: Vec<std::ffi::OsString>, log: &Path) -> Watched {
    let controller = Watched::spawn(
        Path::new(env!("CARGO_BIN_EXE_svcplane")),
        args,
        &[("RUST_LOG", "info")],
        log,
        None,
    );
    let started = Instant::now();
    while !controller
        .log()
        .contains("serving the Service admission webhook")
    {
        assert!(
            started.elapsed() < PATIENCE,
            "the webhook never started:\n{}",
            controller.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    controller
}

/// The sum of the Prometheus text's samples whose line starts with `prefix`.
pub fn sum_of(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
