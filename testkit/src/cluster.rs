//! An upstream cluster without kubelets, on free loopback ports: etcd and kube-apiserver
//! configured as kubeadm configures them (serving certificates, service-account keys,
//! dual-stack Service ranges, NodeRestriction, `Node,RBAC` authorization, an audit log), with
//! `--endpoint-reconciler-type=none`, a token per identity and a kubeconfig for each; optionally
//! kube-controller-manager with a chosen set of controllers. Pods are made Running and Ready by
//! the harness through the status subresource, with IPs that are a function of their name, on
//! Node objects it creates.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::process::Watched;
use crate::{Etcd, TlsFiles, free_port, make_certs, peer};

/// The Service ClusterIP ranges, IPv4 first (as kubeadm's dual-stack configuration).
pub const SERVICE_CIDRS: &str = "10.96.0.0/16,fd00:10:96::/112";
/// The NodePort range.
pub const NODE_PORT_RANGE: &str = "30000-32767";

/// The identities the cluster knows, each with a bearer token and a kubeconfig
/// (`<dir>/<name>.kubeconfig`). Only `admin` is in `system:masters`; the others get only what
/// RBAC grants them (the bootstrap roles for kube-controller-manager; the tests bind roles to
/// the svcplane identities and to CoreDNS).
pub const IDENTITIES: &[(&str, &str, &str)] = &[
    // (kubeconfig name, user, groups)
    ("admin", "kubernetes-admin", "system:masters"),
    (
        "kube-controller-manager",
        "system:kube-controller-manager",
        "",
    ),
    ("coredns", "system:serviceaccount:kube-system:coredns", ""),
    ("svcplane-dns", "svcplane:dns", ""),
    ("svcplane-dns-limited", "svcplane:dns-limited", ""),
    ("svcplane-controller", "svcplane:controller", ""),
    // A second replica, so tests can tell the writers apart in the audit log.
    ("svcplane-controller-2", "svcplane:controller-2", ""),
    ("svcplane-kubelet", "svcplane:kubelet", ""),
];

/// What to start besides etcd and kube-apiserver.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// kube-controller-manager's `--controllers`; `serviceaccount` is always added. `None`:
    /// no kube-controller-manager (the harness then creates each namespace's `default`
    /// ServiceAccount itself).
    pub controllers: Option<Vec<String>>,
    /// kube-apiserver's `--service-cluster-ip-range`, if not [`SERVICE_CIDRS`].
    pub service_cidrs: Option<String>,
    /// kube-apiserver's `--service-node-port-range`, if not [`NODE_PORT_RANGE`].
    pub node_port_range: Option<String>,
    /// More kube-controller-manager flags (`--name=value`), e.g. `--max-endpoints-per-slice=10`.
    pub controller_manager_args: Vec<String>,
}

impl ClusterOptions {
    /// kube-controller-manager with the endpoint controllers and what they need around them.
    pub fn endpoint_controllers() -> ClusterOptions {
        ClusterOptions {
            controllers: Some(
                [
                    "endpoint",
                    "endpointslice",
                    "endpointslicemirroring",
                    "garbagecollector",
                    "namespace",
                    "serviceaccount",
                ]
                .map(String::from)
                .to_vec(),
            ),
            service_cidrs: None,
            node_port_range: None,
            controller_manager_args: Vec::new(),
        }
    }
}

/// A running upstream cluster; every process is stopped when it is dropped, or when the test
/// process ends.
pub struct Cluster {
    /// Certificates, tokens, kubeconfigs, the audit log and the processes' logs.
    dir: tempfile::TempDir,
    tls: TlsFiles,
    port: u16,
    etcd: Etcd,
    apiserver: Watched,
    controller_manager: Option<Watched>,
}

impl Cluster {
    /// One cluster with kube-controller-manager's endpoint controllers, shared by every test
    /// of this test binary; tests keep apart by namespace.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| Cluster::start(ClusterOptions::endpoint_controllers()))
    }

    /// Starts etcd, kube-apiserver and (if asked) kube-controller-manager, and waits until the
    /// API server is ready and the controller-manager works.
    pub fn start(options: ClusterOptions) -> Cluster {
        let dir = crate::etcd::scratch_dir("svcplane-cluster-");
        let tls = make_certs(dir.path());
        write_service_account_keys(dir.path());
        let etcd = Etcd::start();
        let port = free_port();
        write_identities(dir.path(), port, &tls.ca);
        let apiserver = Watched::spawn(
            &peer("kube-apiserver"),
            apiserver_args(
                dir.path(),
                &tls,
                port,
                &etcd,
                options.service_cidrs.as_deref().unwrap_or(SERVICE_CIDRS),
                options
                    .node_port_range
                    .as_deref()
                    .unwrap_or(NODE_PORT_RANGE),
            ),
            &[],
            &dir.path().join("kube-apiserver.log"),
            Some(dir.path()),
        );
        let mut cluster = Cluster {
            dir,
            tls,
            port,
            etcd,
            apiserver,
            controller_manager: None,
        };
        cluster.wait_ready();
        if let Some(controllers) = &options.controllers {
            let mut controllers = controllers.clone();
            if !controllers.iter().any(|c| c == "serviceaccount") {
                controllers.push("serviceaccount".into());
            }
            let mut args = controller_manager_args(cluster.dir.path(), &controllers);
            args.extend(options.controller_manager_args.iter().map(Into::into));
            cluster.controller_manager = Some(Watched::spawn(
                &peer("kube-controller-manager"),
                args,
                &[],
                &cluster.dir.path().join("kube-controller-manager.log"),
                None,
            ));
            cluster.wait_for_service_account("default");
        }
        cluster
    }

    /// The API server's URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The cluster CA's certificate (it signed the API server's serving certificate).
    pub fn ca(&self) -> &Path {
        &self.tls.ca
    }

    /// The process groups of kube-apiserver and of its etcd (to freeze them with SIGSTOP while
    /// a benchmark measures what they fed).
    pub fn process_groups(&self) -> (u32, u32) {
        (
            self.apiserver.process_group().expect("kube-apiserver runs"),
            self.etcd.process_group().expect("etcd runs"),
        )
    }

    /// Stops kube-apiserver and etcd (SIGKILL), keeping etcd's data directory, so a benchmark
    /// can save it or put a saved one back ([`Cluster::etcd`]'s `data_path`).
    pub fn stop_store(&mut self) {
        self.apiserver.kill();
        self.etcd.kill();
    }

    /// Starts etcd and kube-apiserver again on their data and ports, and waits until the API
    /// server is ready (it has loaded what etcd holds).
    pub fn start_store(&mut self) {
        self.etcd.restart();
        self.apiserver.start();
        self.wait_ready();
    }

    /// Starts a kube-controller-manager of `controllers` (upstream's names, e.g. `endpoint`)
    /// with kubeadm's flags plus `extra`, logging to `log`; the caller owns and stops it.
    pub fn spawn_controller_manager(
        &self,
        controllers: &[&str],
        extra: &[String],
        log: &Path,
    ) -> Watched {
        let controllers: Vec<String> = controllers.iter().map(|c| c.to_string()).collect();
        let mut args = controller_manager_args(self.dir.path(), &controllers);
        args.extend(extra.iter().map(Into::into));
        Watched::spawn(&peer("kube-controller-manager"), args, &[], log, None)
    }

    /// kube-controller-manager's process, when it runs (to freeze it with SIGSTOP).
    pub fn controller_manager(&self) -> Option<&Watched> {
        self.controller_manager.as_ref()
    }

    /// The etcd the API server stores in.
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// The kubeconfig of one of [`IDENTITIES`].
    pub fn kubeconfig(&self, identity: &str) -> PathBuf {
        assert!(
            IDENTITIES.iter().any(|(name, _, _)| *name == identity),
            "unknown identity {identity}"
        );
        self.dir.path().join(format!("{identity}.kubeconfig"))
    }

    /// The bearer token of one of [`IDENTITIES`].
    pub fn token(&self, identity: &str) -> String {
        token_of(identity)
    }

    /// kube-apiserver's audit log, one JSON event a line.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// What kube-apiserver and kube-controller-manager have logged.
    pub fn logs(&self) -> String {
        let mut text = format!("--- kube-apiserver\n{}", self.apiserver.log());
        if let Some(kcm) = &self.controller_manager {
            text.push_str(&format!("\n--- kube-controller-manager\n{}", kcm.log()));
        }
        text
    }

    /// A kube-rs client for one of [`IDENTITIES`].
    pub async fn client(&self, identity: &str) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig(identity))
            .expect("read the harness's kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("a kubeconfig kube-rs accepts");
        kube::Client::try_from(config).expect("a kube-rs client")
    }

    /// The peers' kubectl as one of [`IDENTITIES`], with a cache directory of its own.
    pub fn kubectl(&self, identity: &str, args: &[&str]) -> Output {
        Command::new(peer("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig(identity))
            .arg("--cache-dir")
            .arg(self.dir.path().join(format!("kubectl-cache-{identity}")))
            .args(args)
            .env("HOME", self.dir.path())
            .output()
            .expect("run kubectl")
    }

    /// Applies `objects` (JSON manifests) as the admin with the peers' kubectl; panics with
    /// kubectl's message if it fails.
    pub fn apply(&self, objects: &[serde_json::Value]) {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        let path = self.dir.path().join(format!(
            "apply-{}.json",
            crate::unique_prefix("apply")
                .trim_matches('/')
                .replace('/', "-")
        ));
        std::fs::write(&path, list.to_string()).expect("write the objects to apply");
        let out = self.kubectl("admin", &["apply", "-f", &path.display().to_string()]);
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.apiserver.exited() {
                panic!("kube-apiserver exited with {status}:\n{}", self.logs());
            }
            let out = self.kubectl("admin", &["get", "--raw", "/readyz"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver was not ready within 120 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until kube-controller-manager's serviceaccount controller has made `namespace`'s
    /// `default` ServiceAccount (the proof that the controller-manager runs).
    fn wait_for_service_account(&mut self, namespace: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(Some(status)) = self.controller_manager.as_mut().map(Watched::exited) {
                panic!(
                    "kube-controller-manager exited with {status}:\n{}",
                    self.logs()
                );
            }
            let out = self.kubectl(
                "admin",
                &["get", "serviceaccount", "default", "-n", namespace],
            );
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-controller-manager made no default ServiceAccount within 120 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Creates `name` (if absent) and its `default` ServiceAccount, without which pods are
    /// refused: made by kube-controller-manager when it runs, by the harness otherwise.
    pub async fn create_namespace(&self, client: &kube::Client, name: &str) {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        ignore_exists(namespaces.create(&PostParams::default(), &ns).await);
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
        if self.controller_manager.is_none() {
            ignore_exists(accounts.create(&PostParams::default(), &sa).await);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while accounts.get_opt("default").await.ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "namespace {name} got no default ServiceAccount within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Creates the Node objects pods are placed on, each in its `topology.kubernetes.io/zone`
/// (nodes that exist already are left as they are).
pub async fn create_nodes(client: &kube::Client, nodes: &[(&str, &str)]) {
    let api: Api<Node> = Api::all(client.clone());
    for (name, zone) in nodes {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "topology.kubernetes.io/zone": zone,
            }},
        }))
        .unwrap();
        ignore_exists(api.create(&PostParams::default(), &node).await);
    }
}

/// Where a `svcplane controller` serving the allocation webhook listens and keeps its pools.
#[derive(Debug, Clone)]
pub struct WebhookController<'a> {
    /// A kubeconfig of the cluster ([`IDENTITIES`]).
    pub identity: &'a str,
    pub http_port: u16,
    pub webhook_port: u16,
    /// The serving certificate ([`crate::make_certs`]).
    pub certs: &'a TlsFiles,
    /// The pools' key prefix in the cluster's etcd.
    pub prefix: &'a str,
    /// `--service-cluster-ip-range`.
    pub cidrs: &'a str,
}

impl Cluster {
    /// The flags of a `svcplane controller` serving the allocation webhook against this cluster
    /// (pools in its etcd); more flags follow them.
    pub fn webhook_controller_args(&self, c: &WebhookController<'_>) -> Vec<OsString> {
        vec![
            "controller".into(),
            "--kubeconfig".into(),
            self.kubeconfig(c.identity).into_os_string(),
            format!("--listen-http=127.0.0.1:{}", c.http_port).into(),
            format!("--listen-webhook=127.0.0.1:{}", c.webhook_port).into(),
            "--tls-cert-file".into(),
            c.certs.server_cert.clone().into_os_string(),
            "--tls-key-file".into(),
            c.certs.server_key.clone().into_os_string(),
            format!("--etcd-endpoints={}", self.etcd.endpoint()).into(),
            format!("--etcd-prefix={}", c.prefix).into(),
            format!("--service-cluster-ip-range={}", c.cidrs).into(),
        ]
    }
}

/// A `MutatingWebhookConfiguration` for svcplane's allocation webhook at `url` (Service creates
/// and updates, `sideEffects: NoneOnDryRun`, AdmissionReview v1), trusting the CA in `ca`, with
/// `failure_policy` and, if given, a namespace selector.
pub fn allocation_webhook_configuration(
    url: &str,
    ca: &Path,
    failure_policy: &str,
    namespace_selector: Option<serde_json::Value>,
) -> serde_json::Value {
    use base64::Engine as _;
    let ca = std::fs::read(ca).unwrap_or_else(|e| panic!("read {}: {e}", ca.display()));
    let mut webhook = json!({
        "name": "allocation.svcplane.io",
        "clientConfig": {"url": url, "caBundle": base64::engine::general_purpose::STANDARD.encode(ca)},
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                   "resources": ["services"], "scope": "Namespaced"}],
        "sideEffects": "NoneOnDryRun",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 10,
        "failurePolicy": failure_policy,
    });
    if let Some(selector) = namespace_selector {
        webhook["namespaceSelector"] = selector;
    }
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "svcplane-allocation"},
        "webhooks": [webhook],
    })
}

/// The RBAC `svcplane controller` needs (what its Helm chart grants), bound to both of its
/// identities: read Services, pods and nodes; write (create, update, patch, delete) Endpoints
/// and EndpointSlices, and events; hold its leader Lease; and read ServiceCIDRs (the webhook
/// compares its pools with them).
pub fn svcplane_controller_rbac() -> Vec<serde_json::Value> {
    let rule = |group: &str, resources: &[&str], verbs: &[&str]| json!({"apiGroups": [group], "resources": resources, "verbs": verbs});
    let read = ["get", "list", "watch"];
    let write = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    let subject =
        |user: &str| json!({"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"});
    vec![
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "svcplane:controller"},
        "rules": [
            rule("", &["services", "pods", "nodes"], &read),
            rule("", &["endpoints"], &write),
            rule("discovery.k8s.io", &["endpointslices"], &write),
            rule("", &["events"], &["create", "patch", "update"]),
            rule("events.k8s.io", &["events"], &["create", "patch", "update"]),
            rule("coordination.k8s.io", &["leases"], &["get", "create", "update"]),
            rule("networking.k8s.io", &["servicecidrs"], &read),
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "svcplane:controller"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "svcplane:controller"},
            "subjects": [subject("svcplane:controller"), subject("svcplane:controller-2")]}),
    ]
}

/// The IPs the harness gives a pod: an IPv4 address in 10.244.0.0/16 and an IPv6 address in
/// fd00:10:244::/112, both a function of the pod's namespace and name (FNV-1a), never a
/// network or broadcast address.
pub fn pod_ips(namespace: &str, name: &str) -> (Ipv4Addr, Ipv6Addr) {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in namespace.bytes().chain([b'/']).chain(name.bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    // 1..=65534 within the /16.
    let host = (hash % 65534 + 1) as u16;
    let [hi, lo] = host.to_be_bytes();
    (
        Ipv4Addr::new(10, 244, hi, lo),
        Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, host),
    )
}

/// How the harness runs a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// Running and Ready.
    Ready,
    /// Running, not Ready.
    NotReady,
}

/// Creates `pod` (placed on `node` unless it names one) and makes it Running with the IPs of
/// [`pod_ips`] (both families when `dual_stack`), Ready or not, through the status
/// subresource as a kubelet would. Returns the pod as stored.
pub async fn run_pod(
    client: &kube::Client,
    node: &str,
    mut pod: Pod,
    state: PodState,
    dual_stack: bool,
) -> Pod {
    let namespace = pod.metadata.namespace.clone().expect("the pod's namespace");
    let name = pod.metadata.name.clone().expect("the pod's name");
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let spec = pod.spec.get_or_insert_with(Default::default);
    if spec.node_name.is_none() {
        spec.node_name = Some(node.to_string());
    }
    if spec.containers.is_empty() {
        spec.containers = vec![
            serde_json::from_value(json!({"name": "app", "image": "registry.k8s.io/pause:3.10"}))
                .unwrap(),
        ];
    }
    api.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {namespace}/{name}: {e}"));
    set_pod_state(client, &namespace, &name, state, dual_stack).await
}

/// Sets a pod's status as a kubelet would: Running, the IPs of [`pod_ips`], and the Ready
/// condition of `state`.
pub async fn set_pod_state(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    state: PodState,
    dual_stack: bool,
) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let (v4, v6) = pod_ips(namespace, name);
    let mut ips = vec![v4.to_string()];
    if dual_stack {
        ips.push(v6.to_string());
    }
    let status = running_status(&ips, state == PodState::Ready, "2026-01-01T00:00:00Z");
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("set the status of pod {namespace}/{name}: {e}"))
}

/// A Running pod's status as a kubelet writes it: `ips` (the first is `podIP`), the Ready and
/// ContainersReady conditions as `ready`, every transition at `at` (RFC 3339).
pub fn running_status(ips: &[String], ready: bool, at: &str) -> serde_json::Value {
    let ready = if ready { "True" } else { "False" };
    let pod_ips: Vec<serde_json::Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({"status": {
        "phase": "Running",
        "hostIP": "192.0.2.10",
        "podIP": ips.first(),
        "podIPs": pod_ips,
        "startTime": at,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": at},
            {"type": "Initialized", "status": "True", "lastTransitionTime": at},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": at},
            {"type": "Ready", "status": ready, "lastTransitionTime": at},
        ],
    }})
}

/// The address a pod's [`pod_ips`] gives for one family.
pub fn pod_ip(namespace: &str, name: &str, v6: bool) -> IpAddr {
    let (v4, v6addr) = pod_ips(namespace, name);
    if v6 { v6addr.into() } else { v4.into() }
}

fn ignore_exists<T>(result: kube::Result<T>) {
    match result {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => panic!("create: {e}"),
    }
}

fn token_of(identity: &str) -> String {
    format!("svcplane-test-token-{identity}")
}

/// An ECDSA P-256 key pair for signing and checking service-account tokens.
fn write_service_account_keys(dir: &Path) {
    let generate = "ecparam -name prime256v1 -genkey -noout -out sa.key";
    crate::certs::openssl(dir, &generate.split(' ').collect::<Vec<_>>());
    crate::certs::openssl(dir, &["ec", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
}

/// The token file and a kubeconfig per identity.
fn write_identities(dir: &Path, port: u16, ca: &Path) {
    let mut tokens = String::new();
    for (name, user, groups) in IDENTITIES {
        tokens.push_str(&format!("{},{user},{user},\"{groups}\"\n", token_of(name)));
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: \
             https://127.0.0.1:{port}\n    certificate-authority: {ca}\nusers:\n- name: {name}\n  \
             user:\n    token: {token}\ncontexts:\n- name: {name}\n  context:\n    cluster: test\n    \
             user: {name}\ncurrent-context: {name}\n",
            ca = ca.display(),
            token = token_of(name),
        );
        std::fs::write(dir.join(format!("{name}.kubeconfig")), kubeconfig)
            .expect("write a kubeconfig");
    }
    std::fs::write(dir.join("tokens.csv"), tokens).expect("write the token file");
    std::fs::write(
        dir.join("audit-policy.yaml"),
        // Leases with their request bodies, so tests can read who held one when.
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n\
         - level: Request\n  resources:\n  - group: coordination.k8s.io\n    resources: [leases]\n\
         - level: Metadata\n",
    )
    .expect("write the audit policy");
}

fn flag(name: &str, value: impl AsRef<std::ffi::OsStr>) -> OsString {
    let mut arg = OsString::from(format!("--{name}="));
    arg.push(value);
    arg
}

/// kube-apiserver's flags as kubeadm sets them, on loopback.
fn apiserver_args(
    dir: &Path,
    tls: &TlsFiles,
    port: u16,
    etcd: &Etcd,
    service_cidrs: &str,
    node_port_range: &str,
) -> Vec<OsString> {
    vec![
        flag("advertise-address", "127.0.0.1"),
        flag("bind-address", "127.0.0.1"),
        flag("secure-port", port.to_string()),
        flag("allow-privileged", "true"),
        flag("authorization-mode", "Node,RBAC"),
        flag("enable-admission-plugins", "NodeRestriction"),
        flag("client-ca-file", &tls.ca),
        flag("tls-cert-file", &tls.server_cert),
        flag("tls-private-key-file", &tls.server_key),
        flag("token-auth-file", dir.join("tokens.csv")),
        flag("etcd-servers", etcd.endpoint()),
        flag(
            "service-account-issuer",
            "https://kubernetes.default.svc.cluster.local",
        ),
        flag("service-account-key-file", dir.join("sa.pub")),
        flag("service-account-signing-key-file", dir.join("sa.key")),
        flag("service-cluster-ip-range", service_cidrs),
        flag("service-node-port-range", node_port_range),
        flag("endpoint-reconciler-type", "none"),
        flag("audit-log-path", dir.join("audit.log")),
        flag("audit-policy-file", dir.join("audit-policy.yaml")),
        flag("profiling", "false"),
    ]
}

/// kube-controller-manager's flags as kubeadm sets them (each controller with its own service
/// account's credentials), without leader election.
fn controller_manager_args(dir: &Path, controllers: &[String]) -> Vec<OsString> {
    let kubeconfig = dir.join("kube-controller-manager.kubeconfig");
    vec![
        flag("kubeconfig", &kubeconfig),
        flag("authentication-kubeconfig", &kubeconfig),
        flag("authorization-kubeconfig", &kubeconfig),
        flag("bind-address", "127.0.0.1"),
        flag("secure-port", free_port().to_string()),
        flag("controllers", controllers.join(",")),
        flag("leader-elect", "false"),
        flag("use-service-account-credentials", "true"),
        flag("service-account-private-key-file", dir.join("sa.key")),
        flag("root-ca-file", dir.join("ca.pem")),
        flag("cluster-name", "kubernetes"),
        flag("profiling", "false"),
    ]
}
