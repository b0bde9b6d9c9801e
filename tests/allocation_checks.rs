//! Spec part E, checks 1–24 (ClusterIP and NodePort allocation and repair), through kubectl, on
//! four targets: kube-apiserver v1.37.2 with `svcplane controller`'s allocation webhook in front
//! of it (`support::webhook`), in two cluster shapes — dual-stack (`10.96.0.0/24`,
//! `fd00:10:96::/120`, `30000-32767`) and single-stack (`10.97.0.0/28`, `30000-30015`) — and
//! `svcplane dev --allocation=webhook` in the same two shapes (plus a `/12` for the bands of
//! check 3). Every target keeps svcplane's pools in etcd with no hold (upstream frees at once),
//! and the checks read the pools' records there. After every check on kube-apiserver, its own
//! repair controllers must have found nothing to mend: no events of theirs, their error
//! counters at zero.
//!
//! Each check works in a namespace of its own. Checks that fill a range take their target for
//! themselves (the others share it) and empty what they filled before they give it back.
//!
//! Differences from kube-apiserver's own allocator, kept on purpose (docs/controller.md):
//! a value a Service stops carrying is freed when the releaser sees the change on the watch
//! (DESIGN decision 1), so checks 11, 12, 14 and 16 wait for the record to go before they
//! reuse a value; and a refusal reads `admission webhook "allocation.svcplane.io" denied the
//! request: <upstream's text>`, since kube-apiserver names the webhook that refused. Two
//! Services sharing an address and an address outside every range (the rest of check 24)
//! cannot be made through an API server that refuses them; `controller/src/repair.rs` and
//! `ipam`'s repair tests cover them.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Output;
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Dev;
use support::webhook::{PATIENCE, WebhookCluster};

/// The flags every target's allocator runs with: repair, release retries and the allocation
/// deadline short enough for a test.
const ALLOCATOR_FLAGS: [&str; 3] = [
    "--release-retry-interval=1s",
    "--repair-interval=1s",
    "--allocation-timeout=2s",
];

const DUAL_CIDRS: &str = "10.96.0.0/24,fd00:10:96::/120";
const SINGLE_CIDR: &str = "10.97.0.0/28";
const SINGLE_NODE_PORTS: &str = "30000-30015";

/// What serves the API.
enum Server {
    Upstream(Box<WebhookCluster>),
    Dev(Box<Dev>),
}

/// One target: its server, whether it allocates through the webhook, where its pools are, and
/// who may use it now.
struct Target {
    server: Server,
    /// Values are chosen by the webhook (before naming; a `generateName` Service claims its
    /// values on the watch), not in-process after validation.
    webhook: bool,
    etcd: String,
    /// The pools' key prefix.
    pools: String,
    /// Checks that fill a range write-lock it; the others read-lock it.
    room: RwLock<()>,
}

/// `fn $name() -> &'static Target`: the target, started by its first caller.
macro_rules! target {
    ($name:ident, $start:expr) => {
        fn $name() -> &'static Target {
            static T: OnceLock<Target> = OnceLock::new();
            T.get_or_init(|| $start)
        }
    };
}

target!(upstream_dual, upstream(DUAL_CIDRS, None, "/checks-dual/"));

target!(
    upstream_single,
    upstream(SINGLE_CIDR, Some(SINGLE_NODE_PORTS), "/checks-single/")
);

target!(dev_dual, {
    dev(
        "webhook",
        &ranges(DUAL_CIDRS, "30000-32767"),
        "/checks-dev-dual/",
    )
});

target!(dev_single, {
    dev(
        "webhook",
        &ranges(SINGLE_CIDR, SINGLE_NODE_PORTS),
        "/checks-dev-single/",
    )
});

target!(dev_wide, {
    dev(
        "webhook",
        &ranges("10.96.0.0/12", "30000-32767"),
        "/checks-dev-wide/",
    )
});

target!(local_dual, {
    dev(
        "local",
        &ranges(DUAL_CIDRS, "30000-32767"),
        "/checks-local-dual/",
    )
});

target!(local_single, {
    dev(
        "local",
        &ranges(SINGLE_CIDR, SINGLE_NODE_PORTS),
        "/checks-local-single/",
    )
});

target!(local_wide, {
    dev(
        "local",
        &ranges("10.96.0.0/12", "30000-32767"),
        "/checks-local-wide/",
    )
});

// A /28 whose released addresses are held for their Service, as svcplane's pools hold them
// by default.
target!(local_held, {
    let mut flags = vec![
        "--service-cluster-ip-range=10.96.0.0/28".to_string(),
        "--hold=5m".to_string(),
    ];
    flags.push("--service-node-port-range=30000-32767".into());
    dev("local", &flags, "/checks-local-held/")
});

// A /28 with 10.96.0.5 reserved for `reserved/dns`, from a pools file.
target!(local_reserved, {
    let dir = tempfile::tempdir().unwrap().keep();
    let file = dir.join("pools.yaml");
    std::fs::write(
            &file,
            "clusterIP:\n  ipv4:\n    cidrs: [10.96.0.0/28]\n    hold: 0s\n    reservations:\n      reserved/dns: 10.96.0.5\nnodePort:\n  range: 30000-32767\n  hold: 0s\n",
        )
        .unwrap();
    dev(
        "local",
        &[format!("--pools={}", file.display())],
        "/checks-local-reserved/",
    )
});

/// The range flags of a pool-per-range dev target, with no hold (upstream frees at once).
fn ranges(cidrs: &str, node_ports: &str) -> Vec<String> {
    vec![
        format!("--service-cluster-ip-range={cidrs}"),
        format!("--service-node-port-range={node_ports}"),
        "--hold=0s".into(),
    ]
}

fn upstream(cidrs: &str, node_ports: Option<&str>, prefix: &str) -> Target {
    let mut flags = vec!["--leader-elect=false", "--hold=0s"];
    flags.extend(ALLOCATOR_FLAGS);
    let setup = WebhookCluster::start(cidrs, node_ports, prefix, &flags);
    Target {
        webhook: true,
        etcd: setup.cluster.etcd().endpoint(),
        pools: prefix.to_string(),
        server: Server::Upstream(Box::new(setup)),
        room: RwLock::new(()),
    }
}

/// `svcplane dev --allocation=<allocation>` with `pool_flags`, objects and pools in the shared
/// etcd under `prefix`.
fn dev(allocation: &str, pool_flags: &[String], prefix: &str) -> Target {
    let etcd = testkit::Etcd::shared().endpoint();
    let pools = format!("{prefix}ipam/");
    let mut flags = vec![
        format!("--allocation={allocation}"),
        format!("--etcd-endpoints={etcd}"),
        format!("--etcd-prefix={prefix}objects/"),
        format!("--ipam-etcd-prefix={pools}"),
    ];
    flags.extend(pool_flags.iter().cloned());
    flags.extend(ALLOCATOR_FLAGS.map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Target {
        webhook: allocation == "webhook",
        server: Server::Dev(Box::new(Dev::start(&flags))),
        etcd,
        pools,
        room: RwLock::new(()),
    }
}

/// A Service manifest.
fn service(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

impl Target {
    /// The check shares the target.
    fn shared(&self) -> RwLockReadGuard<'_, ()> {
        self.room.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The check has the target to itself, once the pools hold exactly what the Services
    /// carry (nothing still on its way to being released).
    fn alone(&self) -> RwLockWriteGuard<'_, ()> {
        let guard = self.room.write().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        loop {
            let (ips, ports) = self.in_use();
            let mut carried: BTreeSet<String> = ips.iter().map(ToString::to_string).collect();
            carried.extend(ports.iter().map(ToString::to_string));
            let recorded: BTreeSet<String> = ["ipv4", "ipv6", "nodeport"]
                .into_iter()
                .flat_map(|pool| self.records(pool))
                .map(|(value, _)| value)
                .collect();
            if carried == recorded {
                return guard;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the pools never settled: carried {carried:?}, recorded {recorded:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        match &self.server {
            Server::Upstream(s) => {
                let kubeconfig = s.cluster.kubeconfig("admin");
                let home = kubeconfig.parent().unwrap().join("kubectl-home");
                support::run_kubectl(&kubeconfig, &home, None, args, stdin)
            }
            Server::Dev(d) => d.kubectl_stdin(args, stdin),
        }
    }

    fn log(&self) -> String {
        match &self.server {
            Server::Upstream(s) => format!("{}\n{}", s.controller.log(), s.cluster.logs()),
            Server::Dev(d) => d.log(),
        }
    }

    /// kubectl, which must succeed; its stdout.
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\n{}",
            support::stderr(&out),
            self.log()
        );
        support::stdout(&out)
    }

    /// A namespace of the check's own.
    fn namespace(&self, name: &str) -> String {
        self.ok(&["create", "namespace", name], None);
        name.to_string()
    }

    /// Creates Service `name` in `ns` with `spec`; the object as created.
    fn create(&self, ns: &str, name: &str, spec: Value) -> Value {
        let manifest = service(ns, name, spec).to_string();
        let out = self.ok(&["create", "-f", "-", "-o", "json"], Some(&manifest));
        serde_json::from_str(&out).unwrap()
    }

    /// Creates the Services in one kubectl run, in order; the objects as created.
    fn create_all(&self, ns: &str, services: Vec<(String, Value)>) -> Vec<Value> {
        if services.is_empty() {
            return Vec::new();
        }
        // A multi-document manifest, as a file of several objects is.
        let list = services
            .into_iter()
            .map(|(name, spec)| service(ns, &name, spec).to_string())
            .collect::<Vec<_>>()
            .join("\n---\n");
        // One JSON document per object created.
        let out = self.ok(&["create", "-f", "-", "-o", "json"], Some(&list));
        serde_json::Deserializer::from_str(&out)
            .into_iter::<Value>()
            .map(Result::unwrap)
            .collect()
    }

    /// A create that must fail; kubectl's error.
    fn refused(&self, ns: &str, name: &str, spec: Value) -> String {
        let manifest = service(ns, name, spec).to_string();
        let out = self.kubectl(&["create", "-f", "-"], Some(&manifest));
        assert!(!out.status.success(), "{ns}/{name} was created");
        support::stderr(&out)
    }

    fn get(&self, ns: &str, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["-n", ns, "get", "service", name, "-o", "json"], None))
            .unwrap()
    }

    /// A merge patch that must succeed; the object after it.
    fn patch(&self, ns: &str, name: &str, patch: Value) -> Value {
        let patch = patch.to_string();
        let args = [
            "-n",
            ns,
            "patch",
            "service",
            name,
            "--type=merge",
            "-p",
            &patch,
            "-o",
            "json",
        ];
        serde_json::from_str(&self.ok(&args, None)).unwrap()
    }

    /// `kubectl replace` of `object` (as read, changed); its output.
    fn replace(&self, object: &Value) -> Output {
        self.kubectl(
            &["replace", "-f", "-", "-o", "json"],
            Some(&object.to_string()),
        )
    }

    fn delete(&self, ns: &str, name: &str) {
        self.ok(&["-n", ns, "delete", "service", name], None);
    }

    /// Every record of `pool`: value and record.
    fn records(&self, pool: &str) -> Vec<(String, Value)> {
        let prefix = format!("{}values/{pool}/", self.pools);
        let out = etcdctl(&self.etcd, &["get", "--prefix", &prefix]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|pair| pair.len() == 2)
            .map(|pair| {
                let value = pair[0].strip_prefix(&prefix).unwrap_or(pair[0]);
                (value.to_string(), serde_json::from_str(pair[1]).unwrap())
            })
            .collect()
    }

    /// The record of `value` in `pool`.
    fn record(&self, pool: &str, value: &str) -> Option<Value> {
        self.records(pool)
            .into_iter()
            .find(|(v, _)| v == value)
            .map(|(_, r)| r)
    }

    /// The values of `pool` allocated to `owner` (`namespace/name`).
    fn values_of(&self, pool: &str, owner: &str) -> Vec<String> {
        self.records(pool)
            .into_iter()
            .filter(|(_, r)| r["owner"]["object"] == owner && is_allocated(r))
            .map(|(v, _)| v)
            .collect()
    }

    /// Waits until `pool` records `value` as allocated to `owner`, for `purpose`.
    fn await_allocated(&self, pool: &str, value: &str, owner: &str, purpose: &str) {
        self.await_record(pool, value, "allocated", |r| {
            r.is_some_and(|r| {
                r["owner"]["object"] == owner && r["owner"]["purpose"] == purpose && is_allocated(r)
            })
        });
    }

    /// Waits until `pool` has no record of `value`.
    fn await_free(&self, pool: &str, value: &str) {
        self.await_record(pool, value, "free", |r| r.is_none());
    }

    fn await_record(
        &self,
        pool: &str,
        value: &str,
        what: &str,
        ok: impl Fn(Option<&Value>) -> bool,
    ) {
        let started = Instant::now();
        loop {
            let found = self.record(pool, value);
            if ok(found.as_ref()) {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{pool} {value} is not {what}: {found:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every ClusterIP and nodePort a Service of the target carries.
    fn in_use(&self) -> (BTreeSet<IpAddr>, BTreeSet<i64>) {
        let all: Value =
            serde_json::from_str(&self.ok(&["get", "services", "-A", "-o", "json"], None)).unwrap();
        let (mut ips, mut ports) = (BTreeSet::new(), BTreeSet::new());
        for svc in all["items"].as_array().unwrap() {
            ips.extend(
                cluster_ips(svc)
                    .iter()
                    .filter_map(|ip| ip.parse::<IpAddr>().ok()),
            );
            ports.extend(node_ports(svc).into_iter().flatten());
            ports.extend(svc["spec"]["healthCheckNodePort"].as_i64());
        }
        (ips, ports)
    }

    /// Deletes the namespace's Services and waits until the pools hold nothing of theirs.
    fn empty(&self, ns: &str) {
        self.ok(&["-n", ns, "delete", "services", "--all"], None);
        let started = Instant::now();
        for pool in ["ipv4", "ipv6", "nodeport"] {
            loop {
                let left = self
                    .records(pool)
                    .into_iter()
                    .filter(|(_, r)| {
                        r["owner"]["object"]
                            .as_str()
                            .is_some_and(|o| o.starts_with(&format!("{ns}/")))
                    })
                    .count();
                if left == 0 {
                    break;
                }
                assert!(
                    started.elapsed() < PATIENCE * 2,
                    "{left} values of {ns} are still in {pool}\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// On kube-apiserver: its own repair controllers found nothing to mend. Its NodePort
    /// repair's error counters stay at zero, and its IPAddress repair reports nothing but
    /// upstream's own informer race: under a burst of creates it can see a Service before the
    /// IPAddress stored ahead of it and report `ClusterIPNotAllocated` (kube-apiserver does so
    /// with no webhook at all: once in 200 creates here), so each such report must name an
    /// address whose IPAddress does point at the Service, if that Service still carries it.
    fn upstream_repair_found_nothing(&self) {
        let Server::Upstream(setup) = &self.server else {
            return;
        };
        let events: Value = serde_json::from_str(&self.ok(
            &["get", "events.v1.events.k8s.io", "-A", "-o", "json"],
            None,
        ))
        .unwrap();
        for event in events["items"].as_array().unwrap() {
            if !matches!(
                event["reportingController"].as_str(),
                Some("ipallocator-repair-controller" | "portallocator-repair-controller")
            ) {
                continue;
            }
            let note = event["note"].as_str().unwrap_or("");
            let race = event["reason"] == "ClusterIPNotAllocated"
                && note.starts_with("Cluster IP [")
                && note.ends_with(" is not allocated; repairing");
            assert!(race, "kube-apiserver repaired: {event}");
            let ip = note.split_whitespace().nth(3).unwrap();
            let (ns, name) = (
                event["regarding"]["namespace"].as_str().unwrap(),
                event["regarding"]["name"].as_str().unwrap(),
            );
            let out = self.kubectl(&["-n", ns, "get", "service", name, "-o", "json"], None);
            let carried = out.status.success()
                && cluster_ips(&serde_json::from_slice(&out.stdout).unwrap())
                    .contains(&ip.to_string());
            if carried {
                let address: Value =
                    serde_json::from_str(&self.ok(&["get", "ipaddress", ip, "-o", "json"], None))
                        .unwrap();
                assert_eq!(
                    address["spec"]["parentRef"],
                    json!({"resource": "services", "namespace": ns, "name": name}),
                    "{event}"
                );
            }
        }
        for series in [
            "apiserver_nodeport_repair_port_errors_total",
            "apiserver_nodeport_repair_reconcile_errors_total",
        ] {
            assert_eq!(setup.apiserver_metric(series), 0.0, "{series}");
        }
    }

    /// The Warning events on Service `name` in `ns`.
    fn warnings(&self, ns: &str, name: &str) -> Vec<(String, String)> {
        let events: Value =
            serde_json::from_str(&self.ok(&["-n", ns, "get", "events", "-o", "json"], None))
                .unwrap();
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "Warning" && e["involvedObject"]["name"] == name)
            .map(|e| {
                let text = |k: &str| e[k].as_str().unwrap_or("").to_string();
                (text("reason"), text("message"))
            })
            .collect()
    }
}

/// Deletes a namespace's Services if the check filling it fails, so that one failure does not
/// starve the checks after it of values.
struct Emptied<'a> {
    target: &'a Target,
    ns: String,
}

impl Drop for Emptied<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let ns = self.ns.as_str();
            self.target
                .kubectl(&["-n", ns, "delete", "services", "--all"], None);
        }
    }
}

/// `etcdctl` (the peers') against `endpoint`; its stdout.
fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(testkit::peer("etcdctl"))
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .output()
        .expect("run etcdctl");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        support::stderr(&out)
    );
    support::stdout(&out)
}

fn is_allocated(record: &Value) -> bool {
    record.get("heldUntilMs").is_none_or(Value::is_null)
}

fn cluster_ip(svc: &Value) -> String {
    svc["spec"]["clusterIP"].as_str().unwrap_or("").to_string()
}

fn cluster_ips(svc: &Value) -> Vec<String> {
    support::strings(&svc["spec"]["clusterIPs"])
}

fn node_ports(svc: &Value) -> Vec<Option<i64>> {
    svc["spec"]["ports"]
        .as_array()
        .map(|ports| ports.iter().map(|p| p["nodePort"].as_i64()).collect())
        .unwrap_or_default()
}

fn last_octet(ip: &str) -> u8 {
    ip.rsplit('.').next().unwrap().parse().unwrap()
}

/// `count` ports named `p<i>`, numbered from 1.
fn many_ports(count: usize) -> Value {
    json!(
        (0..count)
            .map(|i| json!({"name": format!("p{i}"), "port": i + 1}))
            .collect::<Vec<_>>()
    )
}

/// kubectl's words for a 422 Invalid with its field cause, as for kube-apiserver's own
/// validation: `The Service "<name>" is invalid: <field>: <upstream's text>`.
fn assert_invalid(said: &str, name: &str, detail: &str) {
    let expected = format!("The Service {name:?} is invalid: {detail}");
    assert!(said.contains(&expected), "expected {expected:?} in: {said}");
}

/// kubectl's words for a 500: the reason, then upstream's text, which kube-apiserver prefixes
/// with the name of the webhook that refused.
fn assert_internal(t: &Target, said: &str, detail: &str) {
    let by = if t.webhook {
        "admission webhook \"allocation.svcplane.io\" denied the request: "
    } else {
        ""
    };
    let expected =
        format!("Error from server (InternalError): error when creating \"STDIN\": {by}{detail}");
    assert!(said.contains(&expected), "expected {expected:?} in: {said}");
}

// --- The checks -------------------------------------------------------------------------------

fn check_01(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-01");
    let created = t.create_all(
        &ns,
        (0..40)
            .map(|i| (format!("s{i}"), json!({"ports": [{"port": 80}]})))
            .collect(),
    );
    for (i, svc) in created.iter().enumerate() {
        let got = cluster_ip(svc);
        assert!(got.starts_with("10.96.0."), "{got}");
        assert!(
            (17..=254).contains(&last_octet(&got)),
            "{got} is in the static band"
        );
        assert_eq!(cluster_ips(svc), std::slice::from_ref(&got));
        t.await_allocated("ipv4", &got, &format!("{ns}/s{i}"), "clusterIP");
    }
}

fn check_02(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-02");
    for bad in ["10.96.0.0", "10.96.0.255"] {
        let said = t.refused(
            &ns,
            "edge",
            json!({"clusterIP": bad, "ports": [{"port": 80}]}),
        );
        assert_invalid(
            &said,
            "edge",
            &format!(
                "spec.clusterIPs: Invalid value: [\"{bad}\"]: failed to allocate IP {bad}: the provided IP ({bad}) is not in the valid range. The range of valid IPs is 10.96.0.0/24"
            ),
        );
        assert_eq!(t.record("ipv4", bad), None);
    }
}

/// The /12: offsets 0–255 (10.96.0.1–10.96.1.0) are static; dynamic values stay above them.
fn check_03_wide(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-03");
    let created = t.create_all(
        &ns,
        (0..30)
            .map(|i| (format!("s{i}"), json!({"ports": [{"port": 80}]})))
            .collect(),
    );
    let first_dynamic: u32 = "10.96.1.1".parse::<std::net::Ipv4Addr>().unwrap().into();
    for svc in &created {
        let got: std::net::Ipv4Addr = cluster_ip(svc).parse().unwrap();
        assert!(
            u32::from(got) >= first_dynamic,
            "{got} is in the static band"
        );
        assert!(u32::from(got) < u32::from(std::net::Ipv4Addr::new(10, 112, 0, 0)));
    }
    let svc = t.create(
        &ns,
        "static",
        json!({"clusterIP": "10.96.1.0", "ports": [{"port": 80}]}),
    );
    assert_eq!(cluster_ip(&svc), "10.96.1.0");
    t.await_allocated("ipv4", "10.96.1.0", &format!("{ns}/static"), "clusterIP");
}

/// The /28: no static band — fourteen dynamic creates get all fourteen addresses; a fifteenth
/// finds the range full.
fn check_03_and_05_small(t: &Target) {
    let _room = t.alone();
    let ns = t.namespace("check-03-05");
    let _emptied = Emptied {
        target: t,
        ns: ns.clone(),
    };
    let (ips, _) = t.in_use();
    let free = 14 - ips.len();
    let created = t.create_all(
        &ns,
        (0..free)
            .map(|i| (format!("s{i}"), json!({"ports": [{"port": 80}]})))
            .collect(),
    );
    let mut octets: BTreeSet<u8> = ips.iter().map(|ip| last_octet(&ip.to_string())).collect();
    for svc in &created {
        assert!(
            octets.insert(last_octet(&cluster_ip(svc))),
            "{svc} given twice"
        );
    }
    assert_eq!(octets, (1..=14).collect());
    let said = t.refused(&ns, "full", json!({"ports": [{"port": 80}]}));
    assert_internal(
        t,
        &said,
        "Internal error occurred: failed to allocate a serviceIP: range is full",
    );
    t.empty(&ns);
    // NodePorts: 30000–30015 is sixteen ports, all of them the static band (upstream's band is
    // at least sixteen), so dynamic values fill it from the bottom band too, then it is full.
    let ns = t.namespace("check-05-ports");
    let _emptied_ports = Emptied {
        target: t,
        ns: ns.clone(),
    };
    let (_, ports) = t.in_use();
    let free = 16 - ports.len();
    let svc = t.create(
        &ns,
        "ports",
        json!({"type": "NodePort", "ports": many_ports(free)}),
    );
    let mut all: BTreeSet<i64> = ports.clone();
    for n in node_ports(&svc) {
        assert!(all.insert(n.expect("a nodePort")), "{n:?} given twice");
    }
    assert_eq!(all, (30000..=30015).collect());
    let said = t.refused(
        &ns,
        "full",
        json!({"type": "NodePort", "ports": [{"port": 80}]}),
    );
    assert_internal(
        t,
        &said,
        "Internal error occurred: failed to allocate a nodePort: range is full",
    );
    // The ClusterIP the refused create took first was given back.
    assert_eq!(
        t.values_of("ipv4", &format!("{ns}/full")),
        Vec::<String>::new()
    );
    t.empty(&ns);
}

fn check_04(t: &Target) {
    let _room = t.alone();
    let ns = t.namespace("check-04");
    let _emptied = Emptied {
        target: t,
        ns: ns.clone(),
    };
    let (_, ports) = t.in_use();
    let upper_taken = ports
        .iter()
        .filter(|p| (30086..=32767).contains(*p))
        .count();
    let mut free = 2682 - upper_taken;
    let mut fill = Vec::new();
    while free > 0 {
        let count = free.min(250);
        fill.push((
            format!("fill{}", fill.len()),
            json!({"type": "NodePort", "ports": many_ports(count)}),
        ));
        free -= count;
    }
    let mut upper: BTreeSet<i64> = ports.iter().copied().filter(|p| *p >= 30086).collect();
    for svc in t.create_all(&ns, fill) {
        for n in node_ports(&svc) {
            let n = n.expect("every port gets a nodePort");
            assert!((30086..=32767).contains(&n), "{n} is in the static band");
            assert!(upper.insert(n), "{n} given twice");
        }
    }
    assert_eq!(upper.len(), 2682);
    let late = t.create_all(
        &ns,
        (0..5)
            .map(|i| {
                (
                    format!("late{i}"),
                    json!({"type": "NodePort", "ports": [{"port": 80}]}),
                )
            })
            .collect(),
    );
    let mut lower = BTreeSet::new();
    for svc in late {
        let n = node_ports(&svc)[0].unwrap();
        assert!((30000..=30085).contains(&n), "{n}");
        assert!(!ports.contains(&n) && lower.insert(n), "{n} given twice");
    }
    t.empty(&ns);
}

/// The /24's upper band (.17–.254) fills first, then the static band (.1–.16), then it is full.
fn check_05_dual(t: &Target) {
    let _room = t.alone();
    let ns = t.namespace("check-05");
    let _emptied = Emptied {
        target: t,
        ns: ns.clone(),
    };
    let (ips, _) = t.in_use();
    let v4: BTreeSet<u8> = ips
        .iter()
        .filter(|ip| ip.is_ipv4())
        .map(|ip| last_octet(&ip.to_string()))
        .collect();
    let upper_free = (17..=254).filter(|o| !v4.contains(o)).count();
    let lower_free = (1..=16).filter(|o| !v4.contains(o)).count();
    let created = t.create_all(
        &ns,
        (0..upper_free + lower_free)
            .map(|i| (format!("s{i}"), json!({"ports": [{"port": 80}]})))
            .collect(),
    );
    let octets: Vec<u8> = created.iter().map(|s| last_octet(&cluster_ip(s))).collect();
    let upper: BTreeSet<u8> = octets[..upper_free].iter().copied().collect();
    let lower: BTreeSet<u8> = octets[upper_free..].iter().copied().collect();
    assert_eq!(upper, (17..=254).filter(|o| !v4.contains(o)).collect());
    assert_eq!(lower, (1..=16).filter(|o| !v4.contains(o)).collect());
    let said = t.refused(&ns, "full", json!({"ports": [{"port": 80}]}));
    assert_internal(
        t,
        &said,
        "Internal error occurred: failed to allocate a serviceIP: range is full",
    );
    t.empty(&ns);
}

fn check_06(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-06");
    let svc = t.create(
        &ns,
        "kube-dns",
        json!({"clusterIP": "10.96.0.14", "ports": [{"port": 53, "protocol": "UDP"}]}),
    );
    assert_eq!(cluster_ip(&svc), "10.96.0.14");
    assert_eq!(cluster_ips(&svc), ["10.96.0.14"]);
    // Offset 13 of the /24 (the network address is not an offset): the pool's record of it.
    // (10.96.0.10, the spec's example, is kube-dns's in `svcplane dev`.)
    t.await_allocated("ipv4", "10.96.0.14", &format!("{ns}/kube-dns"), "clusterIP");
    assert_eq!(
        t.values_of("ipv4", &format!("{ns}/kube-dns")),
        ["10.96.0.14"]
    );
    if let Server::Upstream(_) = t.server {
        let address: Value =
            serde_json::from_str(&t.ok(&["get", "ipaddress", "10.96.0.14", "-o", "json"], None))
                .unwrap();
        assert_eq!(
            address["spec"]["parentRef"],
            json!({"resource": "services", "namespace": ns, "name": "kube-dns"})
        );
    }
}

fn check_07(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-07");
    t.create(
        &ns,
        "a",
        json!({"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}),
    );
    let said = t.refused(
        &ns,
        "b",
        json!({"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}),
    );
    assert_invalid(
        &said,
        "b",
        "spec.clusterIPs: Invalid value: [\"10.96.0.11\"]: failed to allocate IP 10.96.0.11: provided IP is already allocated",
    );
    t.await_allocated("ipv4", "10.96.0.11", &format!("{ns}/a"), "clusterIP");
    assert_eq!(
        t.values_of("ipv4", &format!("{ns}/b")),
        Vec::<String>::new()
    );
}

fn check_08(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-08");
    let said = t.refused(
        &ns,
        "np",
        json!({"type": "NodePort", "ports": [
            {"name": "a", "port": 80},
            {"name": "b", "port": 81, "nodePort": 29999},
        ]}),
    );
    assert_invalid(
        &said,
        "np",
        "spec.ports[1].nodePort: Invalid value: 29999: provided port is not in the valid range. The range of valid ports is 30000-32767",
    );
    let owner = format!("{ns}/np");
    assert_eq!(t.values_of("ipv4", &owner), Vec::<String>::new());
    assert_eq!(t.values_of("nodeport", &owner), Vec::<String>::new());
}

fn check_09(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-09");
    let svc = t.create(
        &ns,
        "dns",
        json!({"type": "NodePort", "ports": [
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "dns-udp", "port": 53, "protocol": "UDP"},
        ]}),
    );
    let ports = node_ports(&svc);
    let shared = ports[0].expect("a nodePort");
    assert_eq!(ports, [Some(shared), Some(shared)]);
    let owner = format!("{ns}/dns");
    t.await_allocated("nodeport", &shared.to_string(), &owner, "nodePort");
    assert_eq!(t.values_of("nodeport", &owner), [shared.to_string()]);
}

fn check_10(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-10");
    let svc = t.create(
        &ns,
        "bare",
        json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
            "ports": [{"name": "http", "port": 80}]}),
    );
    assert_eq!(node_ports(&svc), [None]);
    let svc = t.create(
        &ns,
        "mixed",
        json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
            "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443, "nodePort": 30043}]}),
    );
    assert_eq!(node_ports(&svc), [None, Some(30043)]);
    t.await_allocated("nodeport", "30043", &format!("{ns}/mixed"), "nodePort");
    assert_eq!(
        t.values_of("nodeport", &format!("{ns}/bare")),
        Vec::<String>::new()
    );
    assert_eq!(t.values_of("nodeport", &format!("{ns}/mixed")), ["30043"]);
}

fn check_11(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-11");
    let svc = t.create(
        &ns,
        "lb",
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80}]}),
    );
    let hc = svc["spec"]["healthCheckNodePort"]
        .as_i64()
        .expect("a healthCheckNodePort");
    assert!((30000..=32767).contains(&hc), "{hc}");
    let np = node_ports(&svc)[0].unwrap();
    assert_ne!(hc, np);
    let owner = format!("{ns}/lb");
    t.await_allocated("nodeport", &hc.to_string(), &owner, "healthCheckNodePort");
    let patched = t.patch(
        &ns,
        "lb",
        json!({"spec": {"externalTrafficPolicy": "Cluster"}}),
    );
    assert_eq!(patched["spec"]["healthCheckNodePort"], Value::Null);
    assert_eq!(node_ports(&patched), [Some(np)]);
    t.await_free("nodeport", &hc.to_string());
    assert_eq!(t.values_of("nodeport", &owner), [np.to_string()]);
}

fn check_12(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-12");
    let svc = t.create(
        &ns,
        "np",
        json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}),
    );
    let [Some(kept), Some(dropped)] = node_ports(&svc)[..] else {
        panic!("two nodePorts: {svc}");
    };
    let mut current = t.get(&ns, "np");
    current["spec"]["ports"].as_array_mut().unwrap().pop();
    let out = t.replace(&current);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let updated: Value = serde_json::from_str(&support::stdout(&out)).unwrap();
    assert_eq!(node_ports(&updated), [Some(kept)]);
    t.await_free("nodeport", &dropped.to_string());
    let other = t.create(
        &ns,
        "other",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": dropped}]}),
    );
    assert_eq!(node_ports(&other), [Some(dropped)]);
    assert_eq!(
        t.values_of("nodeport", &format!("{ns}/np")),
        [kept.to_string()]
    );
}

fn check_13(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-13");
    let svc = t.create(
        &ns,
        "np",
        json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}),
    );
    let ip = cluster_ip(&svc);
    let numbers: Vec<i64> = node_ports(&svc).into_iter().flatten().collect();
    assert_eq!(numbers.len(), 2);
    let mut current = t.get(&ns, "np");
    current["spec"]["type"] = json!("ClusterIP");
    let out = t.replace(&current);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let updated: Value = serde_json::from_str(&support::stdout(&out)).unwrap();
    assert_eq!(updated["spec"]["type"], "ClusterIP");
    assert_eq!(node_ports(&updated), [None, None]);
    assert_eq!(cluster_ip(&updated), ip);
    for n in numbers {
        t.await_free("nodeport", &n.to_string());
    }
    t.await_allocated("ipv4", &ip, &format!("{ns}/np"), "clusterIP");
}

fn check_14(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-14");
    let svc = t.create(&ns, "db", json!({"ports": [{"port": 5432}]}));
    let ip = cluster_ip(&svc);
    let mut current = t.get(&ns, "db");
    current["spec"]["type"] = json!("ExternalName");
    current["spec"]["externalName"] = json!("db.example.com");
    let out = t.replace(&current);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let updated: Value = serde_json::from_str(&support::stdout(&out)).unwrap();
    let spec = &updated["spec"];
    assert_eq!(spec["type"], "ExternalName");
    for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
        assert_eq!(spec[field], Value::Null, "{field} in {updated}");
    }
    t.await_free("ipv4", &ip);
}

fn check_15(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-15");
    let svc = t.create(
        &ns,
        "db",
        json!({"type": "ExternalName", "externalName": "db.example.com"}),
    );
    assert_eq!(cluster_ip(&svc), "");
    let mut current = t.get(&ns, "db");
    current["spec"]["type"] = json!("ClusterIP");
    current["spec"]
        .as_object_mut()
        .unwrap()
        .remove("externalName");
    current["spec"]["ports"] = json!([{"port": 5432}]);
    let out = t.replace(&current);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let updated: Value = serde_json::from_str(&support::stdout(&out)).unwrap();
    let got = cluster_ip(&updated);
    assert!(!got.is_empty(), "no ClusterIP: {updated}");
    assert_eq!(cluster_ips(&updated), std::slice::from_ref(&got));
    assert_eq!(updated["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(updated["spec"]["ipFamilyPolicy"], "SingleStack");
    t.await_allocated("ipv4", &got, &format!("{ns}/db"), "clusterIP");
}

fn check_16(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-16");
    let svc = t.create(
        &ns,
        "lb",
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80}]}),
    );
    let ip = cluster_ip(&svc);
    let np = node_ports(&svc)[0].unwrap();
    let hc = svc["spec"]["healthCheckNodePort"].as_i64().unwrap();
    let spec = json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "clusterIP": ip,
        "healthCheckNodePort": hc, "ports": [{"name": "http", "port": 80, "nodePort": np}]});
    let values = [
        ("ipv4", ip.clone(), "clusterIP"),
        ("nodeport", np.to_string(), "nodePort"),
        ("nodeport", hc.to_string(), "healthCheckNodePort"),
    ];
    // The same Service, re-created at once, may ask for its values again.
    t.delete(&ns, "lb");
    let again = t.create(&ns, "lb", spec.clone());
    assert_eq!(cluster_ip(&again), ip);
    assert_eq!(node_ports(&again), [Some(np)]);
    assert_eq!(again["spec"]["healthCheckNodePort"], json!(hc));
    for (pool, value, purpose) in &values {
        t.await_allocated(pool, value, &format!("{ns}/lb"), purpose);
    }
    // Deleted for good, its values are free for anyone.
    t.delete(&ns, "lb");
    for (pool, value, _) in &values {
        t.await_free(pool, value);
    }
    let other = t.create(&ns, "other", spec);
    assert_eq!(cluster_ip(&other), ip);
    assert_eq!(node_ports(&other), [Some(np)]);
    assert_eq!(other["spec"]["healthCheckNodePort"], json!(hc));
    for (pool, value, purpose) in &values {
        t.await_allocated(pool, value, &format!("{ns}/other"), purpose);
    }
}

fn check_17(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-17");
    t.create(
        &ns,
        "holder",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30010}]}),
    );
    // The ClusterIP is picked, then the requested nodePort is refused.
    let said = t.refused(
        &ns,
        "victim",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30010}]}),
    );
    assert_invalid(
        &said,
        "victim",
        "spec.ports[0].nodePort: Invalid value: 30010: provided port is already allocated",
    );
    // A dynamic nodePort, then a refused healthCheckNodePort.
    let said = t.refused(
        &ns,
        "victim",
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30010,
            "ports": [{"port": 80}]}),
    );
    assert_internal(
        t,
        &said,
        "Internal error occurred: failed to allocate requested HealthCheck NodePort 30010: provided port is already allocated",
    );
    // The primary family is allocated, then the secondary is refused.
    t.create(
        &ns,
        "holder6",
        json!({"ipFamilies": ["IPv6"], "clusterIP": "fd00:10:96::10", "ports": [{"port": 80}]}),
    );
    let said = t.refused(
        &ns,
        "victim",
        json!({"ipFamilyPolicy": "RequireDualStack", "clusterIPs": ["10.96.0.12", "fd00:10:96::10"],
            "ports": [{"port": 80}]}),
    );
    assert_invalid(
        &said,
        "victim",
        "spec.clusterIPs: Invalid value: [\"10.96.0.12\",\"fd00:10:96::10\"]: failed to allocate IP fd00:10:96::10: provided IP is already allocated",
    );
    assert_eq!(t.record("ipv4", "10.96.0.12"), None);
    let owner = format!("{ns}/victim");
    for pool in ["ipv4", "ipv6", "nodeport"] {
        assert_eq!(t.values_of(pool, &owner), Vec::<String>::new(), "{pool}");
    }
    assert_eq!(t.values_of("nodeport", &format!("{ns}/holder")), ["30010"]);
}

fn check_18(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-18");
    let said = t.refused(
        &ns,
        "ds",
        json!({"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}),
    );
    assert_invalid(
        &said,
        "ds",
        "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services",
    );
    assert_eq!(
        t.values_of("ipv4", &format!("{ns}/ds")),
        Vec::<String>::new()
    );
}

fn check_19(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-19");
    let svc = t.create(
        &ns,
        "web",
        json!({"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}),
    );
    assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
    assert_eq!(svc["spec"]["ipFamilyPolicy"], "PreferDualStack");
    let ips = cluster_ips(&svc);
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert_eq!(cluster_ip(&svc), ips[0]);
    assert!(
        ips[0].starts_with("10.96.0.") && ips[1].starts_with("fd00:10:96::"),
        "{ips:?}"
    );
    let owner = format!("{ns}/web");
    t.await_allocated("ipv4", &ips[0], &owner, "clusterIP");
    t.await_allocated("ipv6", &ips[1], &owner, "clusterIP");
}

fn check_20(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-20");
    let svc = t.create(&ns, "web", json!({"ports": [{"port": 80}]}));
    assert_eq!(svc["spec"]["ipFamilyPolicy"], "SingleStack");
    assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4"]));
    let ips = cluster_ips(&svc);
    assert_eq!(ips.len(), 1, "{ips:?}");
    let owner = format!("{ns}/web");
    t.await_allocated("ipv4", &ips[0], &owner, "clusterIP");
    assert_eq!(t.values_of("ipv6", &owner), Vec::<String>::new());
}

fn check_21(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-21");
    let svc = t.create(
        &ns,
        "web",
        json!({"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}),
    );
    let ips = cluster_ips(&svc);
    assert_eq!(ips.len(), 2);
    let owner = format!("{ns}/web");
    t.await_allocated("ipv6", &ips[1], &owner, "clusterIP");
    // Without SingleStack: refused, nothing changes.
    let mut current = t.get(&ns, "web");
    current["spec"]["clusterIPs"] = json!([ips[0]]);
    let out = t.replace(&current);
    assert!(!out.status.success(), "the secondary IP was dropped");
    assert_invalid(
        &support::stderr(&out),
        "web",
        "spec.ipFamilyPolicy: Invalid value: \"PreferDualStack\": must be 'SingleStack' to release the secondary cluster IP",
    );
    assert_eq!(cluster_ips(&t.get(&ns, "web")), ips);
    t.await_allocated("ipv6", &ips[1], &owner, "clusterIP");
    // With SingleStack the secondary goes, and is released.
    let updated = t.patch(
        &ns,
        "web",
        json!({"spec": {"ipFamilyPolicy": "SingleStack"}}),
    );
    assert_eq!(cluster_ips(&updated), [ips[0].clone()]);
    assert_eq!(updated["spec"]["ipFamilies"], json!(["IPv4"]));
    t.await_free("ipv6", &ips[1]);
    t.await_allocated("ipv4", &ips[0], &owner, "clusterIP");
}

fn check_22(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-22");
    let svc = t.create(
        &ns,
        "peers",
        json!({"clusterIP": "None", "ports": [{"port": 80}]}),
    );
    assert_eq!(svc["spec"]["ipFamilyPolicy"], "RequireDualStack");
    assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
    assert_eq!(cluster_ips(&svc), ["None"]);
    let owner = format!("{ns}/peers");
    assert_eq!(t.values_of("ipv4", &owner), Vec::<String>::new());
    assert_eq!(t.values_of("ipv6", &owner), Vec::<String>::new());
}

/// A recorded value no Service carries is freed by repair (after three runs and the allocation
/// deadline); a value a Service carries that the pool lacks is recorded again, with upstream's
/// event — for a ClusterIP and a nodePort.
fn check_23_and_24(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("check-23");
    let svc = t.create(
        &ns,
        "mended",
        json!({"type": "NodePort", "clusterIP": "10.96.0.13", "ports": [{"port": 80, "nodePort": 30012}]}),
    );
    assert_eq!(node_ports(&svc), [Some(30012)]);
    let owner = format!("{ns}/mended");
    t.await_allocated("ipv4", "10.96.0.13", &owner, "clusterIP");
    t.await_allocated("nodeport", "30012", &owner, "nodePort");
    // Behind svcplane's back: the Service's records removed, and records planted for a
    // Service that was never written (as a create that failed after admission leaves them).
    let planted =
        json!({"owner": {"object": format!("{ns}/never-written"), "purpose": "clusterIP"}})
            .to_string();
    for (pool, value) in [("ipv4", "10.96.0.13"), ("nodeport", "30012")] {
        etcdctl(
            &t.etcd,
            &["del", &format!("{}values/{pool}/{value}", t.pools)],
        );
    }
    for (pool, value) in [("ipv4", "10.96.0.15"), ("nodeport", "30013")] {
        etcdctl(
            &t.etcd,
            &[
                "put",
                &format!("{}values/{pool}/{value}", t.pools),
                &planted,
            ],
        );
    }
    let runs_before = match &t.server {
        Server::Upstream(s) => Some(s.metric("svcplane_ipam_repair_runs_total")),
        Server::Dev(_) => None,
    };
    t.await_allocated("ipv4", "10.96.0.13", &owner, "carried");
    t.await_allocated("nodeport", "30012", &owner, "carried");
    t.await_free("ipv4", "10.96.0.15");
    t.await_free("nodeport", "30013");
    if let (Some(before), Server::Upstream(s)) = (runs_before, &t.server) {
        let runs = s.metric("svcplane_ipam_repair_runs_total") - before;
        assert!(runs >= 3.0, "a leak was freed after {runs} runs");
    }
    let started = Instant::now();
    let wanted = [
        (
            "ClusterIPNotAllocated",
            "Cluster IP [IPv4]:10.96.0.13 is not allocated; repairing",
        ),
        ("PortNotAllocated", "Port 30012 is not allocated; repairing"),
    ];
    loop {
        let told = t.warnings(&ns, "mended");
        if wanted.iter().all(|(r, m)| {
            told.iter()
                .any(|(reason, message)| reason == r && message == m)
        }) {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "events: {told:?}\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `generateName` Services get values and keep them; a server-side dry run leaves nothing.
fn generate_name_and_dry_run(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("generate-name");
    let manifest = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"generateName": "gen-", "namespace": ns},
        "spec": {"type": "NodePort", "ports": [{"port": 80}]}})
    .to_string();
    let created: Value =
        serde_json::from_str(&t.ok(&["create", "-f", "-", "-o", "json"], Some(&manifest))).unwrap();
    let name = created["metadata"]["name"].as_str().unwrap();
    let owner = format!("{ns}/{name}");
    let ip = cluster_ip(&created);
    let np = node_ports(&created)[0].unwrap();
    // Through the webhook, taken before the name existed: the Service's once the watch shows it.
    let (ip_purpose, port_purpose) = match t.webhook {
        true => ("carried", "carried"),
        false => ("clusterIP", "nodePort"),
    };
    t.await_allocated("ipv4", &ip, &owner, ip_purpose);
    t.await_allocated("nodeport", &np.to_string(), &owner, port_purpose);
    let said = t.refused(
        &ns,
        "thief",
        json!({"clusterIP": ip, "ports": [{"port": 80}]}),
    );
    assert_invalid(
        &said,
        "thief",
        &format!(
            "spec.clusterIPs: Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: provided IP is already allocated"
        ),
    );
    assert_eq!(cluster_ip(&t.get(&ns, name)), ip);

    let dry = service(
        &ns,
        "dry",
        json!({"clusterIP": "10.96.0.16", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30030}]}),
    )
    .to_string();
    t.ok(&["apply", "--dry-run=server", "-f", "-"], Some(&dry));
    assert_eq!(t.record("ipv4", "10.96.0.16"), None);
    assert_eq!(t.record("nodeport", "30030"), None);
    let out = t.kubectl(&["-n", &ns, "get", "service", "dry"], None);
    assert!(!out.status.success(), "a dry run stored a Service");
    // An update to NodePort, dry: a nodePort in the answer, none taken.
    let real = t.create(&ns, "real", json!({"ports": [{"port": 80}]}));
    let patch = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30031}]}});
    let answered: Value = serde_json::from_str(&t.ok(
        &[
            "-n",
            &ns,
            "patch",
            "service",
            "real",
            "--dry-run=server",
            "--type=merge",
            "-p",
            &patch.to_string(),
            "-o",
            "json",
        ],
        None,
    ))
    .unwrap();
    assert_eq!(node_ports(&answered), [Some(30031)]);
    assert_eq!(t.record("nodeport", "30031"), None);
    assert_eq!(t.get(&ns, "real")["spec"]["type"], "ClusterIP");
    // A dry delete frees nothing: the releaser follows the watch in order, so once it has freed
    // a later delete's address it has seen whatever the dry one could have caused.
    t.ok(
        &["-n", &ns, "delete", "service", "real", "--dry-run=server"],
        None,
    );
    let marker = cluster_ip(&t.create(&ns, "marker", json!({"ports": [{"port": 80}]})));
    t.delete(&ns, "marker");
    t.await_free("ipv4", &marker);
    t.await_allocated(
        "ipv4",
        &cluster_ip(&real),
        &format!("{ns}/real"),
        "clusterIP",
    );
}

/// A released address is held for its Service: nobody else gets it, dynamically or by asking,
/// while the Service itself gets it back either way.
fn hold(t: &Target) {
    let _room = t.alone();
    let ns = t.namespace("hold");
    let _emptied = Emptied {
        target: t,
        ns: ns.clone(),
    };
    let owner = format!("{ns}/keep");
    let kept = cluster_ip(&t.create(&ns, "keep", json!({"ports": [{"port": 80}]})));
    t.delete(&ns, "keep");
    t.await_record("ipv4", &kept, "held", |r| {
        r.is_some_and(|r| r["owner"]["object"] == owner && !is_allocated(r))
    });
    let (ips, _) = t.in_use();
    let others = t.create_all(
        &ns,
        (0..13 - ips.len())
            .map(|i| (format!("other{i}"), json!({"ports": [{"port": 80}]})))
            .collect(),
    );
    for other in &others {
        assert_ne!(cluster_ip(other), kept);
    }
    let said = t.refused(&ns, "late", json!({"ports": [{"port": 80}]}));
    assert!(
        said.contains("Internal error occurred: failed to allocate a serviceIP: range is full"),
        "{said}"
    );
    let said = t.refused(
        &ns,
        "thief",
        json!({"clusterIP": kept, "ports": [{"port": 80}]}),
    );
    assert_invalid(
        &said,
        "thief",
        &format!(
            "spec.clusterIPs: Invalid value: [\"{kept}\"]: failed to allocate IP {kept}: provided IP is already allocated"
        ),
    );
    // The same Service gets it back without asking...
    let again = t.create(&ns, "keep", json!({"ports": [{"port": 80}]}));
    assert_eq!(cluster_ip(&again), kept);
    // ...and by asking.
    t.delete(&ns, "keep");
    t.await_record("ipv4", &kept, "held", |r| {
        r.is_some_and(|r| !is_allocated(r))
    });
    let again = t.create(
        &ns,
        "keep",
        json!({"clusterIP": kept, "ports": [{"port": 80}]}),
    );
    assert_eq!(cluster_ip(&again), kept);
    t.await_allocated("ipv4", &kept, &owner, "clusterIP");
}

/// A reserved address goes only to its object: refused to others when asked for, never handed
/// out dynamically, given to its object with or without asking.
fn reservation(t: &Target) {
    let _room = t.alone();
    let others_ns = t.namespace("others");
    let _emptied = Emptied {
        target: t,
        ns: others_ns.clone(),
    };
    let said = t.refused(
        &others_ns,
        "other",
        json!({"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}),
    );
    assert_invalid(
        &said,
        "other",
        "spec.clusterIPs: Invalid value: [\"10.96.0.5\"]: failed to allocate IP 10.96.0.5: provided IP is already allocated (reserved for reserved/dns)",
    );
    let (ips, _) = t.in_use();
    // 14 addresses, one reserved.
    let others = t.create_all(
        &others_ns,
        (0..13 - ips.len())
            .map(|i| (format!("other{i}"), json!({"ports": [{"port": 80}]})))
            .collect(),
    );
    for other in &others {
        assert_ne!(cluster_ip(other), "10.96.0.5");
    }
    let said = t.refused(&others_ns, "late", json!({"ports": [{"port": 80}]}));
    assert!(said.contains("range is full"), "{said}");
    let ns = t.namespace("reserved");
    let dns = t.create(&ns, "dns", json!({"ports": [{"port": 53}]}));
    assert_eq!(cluster_ip(&dns), "10.96.0.5");
    t.delete(&ns, "dns");
    t.await_free("ipv4", "10.96.0.5");
    let dns = t.create(
        &ns,
        "dns",
        json!({"clusterIP": "10.96.0.5", "ports": [{"port": 53}]}),
    );
    assert_eq!(cluster_ip(&dns), "10.96.0.5");
    t.await_allocated("ipv4", "10.96.0.5", "reserved/dns", "clusterIP");
    t.delete(&ns, "dns");
    t.empty(&others_ns);
}

/// The in-process allocation runs after the name is checked: a create of a name that exists is
/// refused as such, and neither takes a value nor frees the live Service's.
fn existing_name(t: &Target) {
    let _room = t.shared();
    let ns = t.namespace("existing-name");
    t.create(
        &ns,
        "taken",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30060}]}),
    );
    t.create(
        &ns,
        "a",
        json!({"clusterIP": "10.96.0.3", "ports": [{"port": 80}]}),
    );
    let out = t.kubectl(
        &["create", "-f", "-"],
        Some(
            &service(
                &ns,
                "a",
                json!({"type": "NodePort", "clusterIP": "10.96.0.3",
                    "ports": [{"port": 80, "nodePort": 30060}]}),
            )
            .to_string(),
        ),
    );
    assert!(!out.status.success());
    let said = support::stderr(&out);
    assert!(
        said.contains("Error from server (AlreadyExists): error when creating \"STDIN\": services \"a\" already exists"),
        "{said}"
    );
    t.await_allocated("ipv4", "10.96.0.3", &format!("{ns}/a"), "clusterIP");
    t.await_allocated("nodeport", "30060", &format!("{ns}/taken"), "nodePort");
}

/// Each check on each target, as one test.
macro_rules! checks {
    ($($test:ident: $check:ident on $target:ident;)*) => {
        $(
            #[test]
            fn $test() {
                let target = $target();
                $check(target);
                target.upstream_repair_found_nothing();
            }
        )*
    };
}

/// Checks 1–24 (and `generateName`, dry runs) on a dual-stack and a single-stack target.
macro_rules! spec_checks {
    ($dual:ident, $single:ident) => {
        checks! {
            check_01_a_dynamic_cluster_ip_comes_from_the_upper_band_while_it_has_room: check_01 on $dual;
            check_02_the_network_and_broadcast_addresses_are_refused_when_requested: check_02 on $dual;
            check_03_and_05_a_slash_28_has_no_static_band_and_fills_to_range_is_full: check_03_and_05_small on $single;
            check_04_dynamic_node_ports_fill_30086_to_32767_before_30000_to_30085: check_04 on $dual;
            check_05_a_full_upper_band_falls_back_to_the_static_band_then_range_is_full: check_05_dual on $dual;
            check_06_a_requested_free_cluster_ip_is_allocated_exactly: check_06 on $dual;
            check_07_a_second_service_requesting_a_taken_ip_is_refused_on_cluster_ips: check_07 on $dual;
            check_08_a_node_port_below_the_range_is_refused_naming_the_valid_range: check_08 on $dual;
            check_09_tcp_and_udp_of_one_port_share_one_node_port_recorded_once: check_09 on $dual;
            check_10_a_load_balancer_without_node_port_allocation_gets_only_requested_ones: check_10 on $dual;
            check_11_local_traffic_gets_a_health_check_node_port_freed_when_switched_to_cluster: check_11 on $dual;
            check_12_a_removed_ports_node_port_is_free_for_reuse_after_the_update: check_12 on $dual;
            check_13_a_node_port_service_turned_cluster_ip_loses_its_node_ports_and_keeps_its_ip: check_13 on $dual;
            check_14_a_service_turned_external_name_loses_its_ip_fields_and_its_ip: check_14 on $dual;
            check_15_an_external_name_service_turned_cluster_ip_gets_a_new_ip: check_15 on $dual;
            check_16_a_deleted_services_values_are_free_for_a_re_create: check_16 on $dual;
            check_17_a_failed_create_leaves_nothing_it_allocated: check_17 on $dual;
            check_18_require_dual_stack_on_a_single_stack_cluster_is_refused: check_18 on $single;
            check_19_prefer_dual_stack_gets_both_families_and_ips_in_order: check_19 on $dual;
            check_20_no_policy_on_a_dual_stack_cluster_is_single_stack_of_the_primary_family: check_20 on $dual;
            check_21_dropping_the_secondary_ip_needs_single_stack_and_then_frees_it: check_21 on $dual;
            check_22_headless_without_selector_is_require_dual_stack_and_allocates_nothing: check_22 on $dual;
            check_23_and_24_repair_frees_a_leak_and_restores_a_missing_record_with_its_event: check_23_and_24 on $dual;
            generate_name_services_keep_their_values_and_a_dry_run_allocates_nothing: generate_name_and_dry_run on $dual;
        }
    };
}

mod through_kube_apiserver {
    use super::*;

    spec_checks!(upstream_dual, upstream_single);
}

mod through_svcplane_dev_webhook {
    use super::*;

    spec_checks!(dev_dual, dev_single);
    checks! {
        check_03_a_slash_12_has_a_static_band_of_256: check_03_wide on dev_wide;
    }
}

/// `svcplane dev --allocation=local`: the allocation module called in-process after validation,
/// told of writes that fail. And svcplane's own promises, which kube-apiserver has no word for:
/// holds, named reservations, and a create of a name that exists taking nothing.
mod through_svcplane_dev_local {
    use super::*;

    spec_checks!(local_dual, local_single);
    checks! {
        check_03_a_slash_12_has_a_static_band_of_256: check_03_wide on local_wide;
        a_hold_keeps_an_address_for_its_service_and_refuses_it_to_others: hold on local_held;
        a_named_reservation_gives_its_address_only_to_its_service: reservation on local_reserved;
        a_create_of_an_existing_name_is_refused_before_anything_is_taken_or_freed: existing_name on local_dual;
    }
}
