//! The simulated kubelet behind `svcplane dev` and `svcplane apiserver --simulate-kubelet`. It
//! runs in-process over the [`Registry`] (no HTTP) and plays the scheduler and the kubelets of
//! N nodes:
//!
//! - it registers Node objects `node-1`..`node-N` (hostname, OS and zone labels, Ready, an
//!   InternalIP from 172.30.0.0/16 and/or fd00:172:30::/64) and keeps them registered;
//! - it binds each unscheduled pod (scheduler `default-scheduler`) to the least loaded node that
//!   its `nodeSelector`, cordons and taints allow;
//! - it runs the pods on its nodes: phase Running, pod IPs from the pod CIDR(s) (one per family,
//!   unique among live pods, freed when the pod is deleted), host IPs, container statuses, and
//!   the Ready condition at once — unless the annotation `svcplane.io/ready: "false"` holds the
//!   pod unready;
//! - it leaves a phase a client set to Succeeded or Failed alone (the pod is then not ready);
//! - it removes a gracefully deleted pod once its grace period is over (the registry keeps such
//!   pods, with `deletionTimestamp`, when it is configured with a `max_pod_grace`).
//!
//! It learns about pods from a list and a storage watch from the list's revision, relisting
//! when the watch ends or expires, and writes with the registry's guaranteed updates, so users
//! writing the same pods never lose their changes.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures::StreamExt;
pub use ipnet::IpNet;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::object::{self, FieldValidation, meta_str};
use crate::registry::{DeleteOptions, ListOptions, Part, Registry, WriteOptions};
use crate::resource::Resource;
use crate::storage::{Change, Kv};

/// The pod annotation that holds a pod unready: `svcplane.io/ready: "false"`.
pub const READY_ANNOTATION: &str = "svcplane.io/ready";
/// `status.nodeInfo.kubeletVersion` of the simulated nodes.
pub const KUBELET_VERSION: &str = "v1.37.2+svcplane";
/// The zones nodes are spread over when none are given.
pub const DEFAULT_ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// The most nodes one kubelet simulates (their IPv4 InternalIPs fill 172.30.0.0/16).
pub const MAX_NODES: usize = 65_534;
/// The zone label of nodes.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

const SCHEDULER: &str = "default-scheduler";

/// What the simulated kubelet simulates, and its intervals.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// Nodes `node-1`..`node-N`.
    pub nodes: usize,
    /// Where pod IPs come from: one range, or one per family (dual-stack, in this order).
    pub pod_cidrs: Vec<IpNet>,
    /// Zones the nodes are spread over, round-robin; empty means [`DEFAULT_ZONES`].
    pub zones: Vec<String>,
    /// How often nodes deleted by someone are registered again, their status re-asserted, and
    /// pods that fit no node retried.
    pub node_sync_interval: Duration,
    /// Progress notes of the pod watch (the storage's bookmark period).
    pub watch_progress_interval: Duration,
    /// The wait after a failed list, watch or write before trying again.
    pub retry_backoff: Duration,
}

impl Default for KubeletConfig {
    fn default() -> KubeletConfig {
        KubeletConfig {
            nodes: 1,
            pod_cidrs: vec!["10.244.0.0/16".parse().expect("a valid CIDR")],
            zones: Vec::new(),
            node_sync_interval: Duration::from_secs(10),
            watch_progress_interval: Duration::from_secs(60),
            retry_backoff: Duration::from_secs(1),
        }
    }
}

impl KubeletConfig {
    /// Refuses what cannot be simulated, saying what to give instead.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_NODES).contains(&self.nodes) {
            return Err(format!(
                "--nodes: {} is not between 1 and {MAX_NODES}",
                self.nodes
            ));
        }
        match self.pod_cidrs.as_slice() {
            [] => return Err("--pod-cidr: give at least one pod range".into()),
            [_] => {}
            [a, b] if std::mem::discriminant(a) == std::mem::discriminant(b) => {
                return Err(format!(
                    "--pod-cidr: {a} and {b} are of the same family; dual-stack takes one IPv4 and one IPv6 range"
                ));
            }
            [_, _] => {}
            more => {
                return Err(format!(
                    "--pod-cidr: {} ranges given; give one, or one IPv4 and one IPv6 for dual-stack",
                    more.len()
                ));
            }
        }
        for net in &self.pod_cidrs {
            check_cidr(net)?;
        }
        for zone in &self.zones {
            if !valid_label_value(zone) {
                return Err(format!(
                    "--zones: {zone:?} is not a valid label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
                ));
            }
        }
        for (name, interval) in [
            ("node sync interval", self.node_sync_interval),
            ("watch progress interval", self.watch_progress_interval),
            ("retry backoff", self.retry_backoff),
        ] {
            if interval.is_zero() {
                return Err(format!("the kubelet's {name} must be more than 0"));
            }
        }
        Ok(())
    }

    /// The zones in use.
    pub fn zones(&self) -> Vec<String> {
        if self.zones.is_empty() {
            DEFAULT_ZONES.iter().map(|z| z.to_string()).collect()
        } else {
            self.zones.clone()
        }
    }
}

fn check_cidr(net: &IpNet) -> Result<(), String> {
    if net.trunc() != *net {
        return Err(format!(
            "--pod-cidr: {net} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    let too_small = match net {
        IpNet::V4(v4) => v4.prefix_len() > 30,
        IpNet::V6(v6) => v6.prefix_len() > 126,
    };
    if too_small {
        return Err(format!(
            "--pod-cidr: {net} is too small for pods (at most /30 for IPv4, /126 for IPv6)"
        ));
    }
    Ok(())
}

/// Parses a pod range (`10.244.0.0/16`, `fd00:10:244::/64`), refusing host bits.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let net: IpNet = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a CIDR such as 10.244.0.0/16 or fd00:10:244::/64"))?;
    check_cidr(&net)?;
    Ok(net)
}

fn valid_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    !value.is_empty()
        && value.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The name of node `index` (from 1).
pub fn node_name(index: usize) -> String {
    format!("node-{index}")
}

/// The InternalIPs of node `index` (from 1), one per family of the pod ranges, in their order:
/// 172.30.0.0 + index and fd00:172:30:: + index.
pub fn node_addresses(index: usize, pod_cidrs: &[IpNet]) -> Vec<IpAddr> {
    pod_cidrs
        .iter()
        .map(|net| match net {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(
                u32::from(Ipv4Addr::new(172, 30, 0, 0)) + index as u32,
            )),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(
                u128::from(Ipv6Addr::new(0xfd00, 0x172, 0x30, 0, 0, 0, 0, 0)) + index as u128,
            )),
        })
        .collect()
}

/// Runs the kubelet until the task is dropped; returns only if `config` is refused.
pub async fn run(registry: Registry, config: KubeletConfig) -> Result<(), ApiError> {
    config.check().map_err(ApiError::bad_request)?;
    Kubelet::new(registry, config).run().await;
    Ok(())
}

/// Checks `config`, then runs the kubelet in a task of its own.
pub fn spawn(
    registry: Registry,
    config: KubeletConfig,
) -> Result<tokio::task::JoinHandle<()>, String> {
    config.check()?;
    Ok(tokio::spawn(async move {
        Kubelet::new(registry, config).run().await;
    }))
}

// ---------------------------------------------------------------------------------------------
// Pod IPs.

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(net: &IpNet, value: u128) -> IpAddr {
    match net {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// One pod range: next-fit from a cursor, so a freed IP is not handed out again at once.
#[derive(Debug)]
struct Pool {
    net: IpNet,
    cursor: u128,
    /// Distinct IPs of this range held by someone.
    used: u128,
}

impl Pool {
    /// The first and one past the last offset a pod may get: never the network address, nor
    /// IPv4's broadcast address.
    fn offsets(&self) -> (u128, u128) {
        let host_bits = u32::from(self.net.max_prefix_len() - self.net.prefix_len());
        let size = 1u128.checked_shl(host_bits).unwrap_or(u128::MAX);
        match self.net {
            IpNet::V4(_) => (1, size - 1),
            IpNet::V6(_) => (1, size),
        }
    }
}

/// The pod IPs in use: who holds which (pods by uid; nodes hold their own addresses, so a
/// range overlapping them never hands them to a pod).
#[derive(Debug, Default)]
struct Ipam {
    pools: Vec<Pool>,
    holders: HashMap<IpAddr, usize>,
    held: HashMap<String, Vec<IpAddr>>,
}

impl Ipam {
    fn new(cidrs: &[IpNet]) -> Ipam {
        Ipam {
            pools: cidrs
                .iter()
                .map(|net| Pool {
                    net: *net,
                    cursor: 1,
                    used: 0,
                })
                .collect(),
            ..Ipam::default()
        }
    }

    fn hold_one(&mut self, ip: IpAddr) {
        let count = self.holders.entry(ip).or_insert(0);
        *count += 1;
        if *count == 1
            && let Some(pool) = self.pools.iter_mut().find(|p| p.net.contains(&ip))
        {
            pool.used += 1;
        }
    }

    fn release_one(&mut self, ip: IpAddr) {
        let Some(count) = self.holders.get_mut(&ip) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.holders.remove(&ip);
            if let Some(pool) = self.pools.iter_mut().find(|p| p.net.contains(&ip)) {
                pool.used -= 1;
            }
        }
    }

    /// From now on `holder` holds exactly `ips`.
    fn set(&mut self, holder: &str, ips: &[IpAddr]) {
        let mut new: Vec<IpAddr> = Vec::new();
        for ip in ips {
            if !new.contains(ip) {
                new.push(*ip);
            }
        }
        let old = self.held.remove(holder).unwrap_or_default();
        for ip in &new {
            if !old.contains(ip) {
                self.hold_one(*ip);
            }
        }
        for ip in &old {
            if !new.contains(ip) {
                self.release_one(*ip);
            }
        }
        if !new.is_empty() {
            self.held.insert(holder.to_string(), new);
        }
    }

    fn release(&mut self, holder: &str) {
        self.set(holder, &[]);
    }

    /// One IP of each range for `holder`, in range order: the one it holds, or a free one.
    fn assign(&mut self, holder: &str) -> Result<Vec<IpAddr>, String> {
        let mut held = self.held.get(holder).cloned().unwrap_or_default();
        let mut out = Vec::new();
        let mut fresh = Vec::new();
        for i in 0..self.pools.len() {
            if let Some(ip) = held.iter().find(|ip| self.pools[i].net.contains(*ip)) {
                out.push(*ip);
                continue;
            }
            match self.next_free(i) {
                Some(ip) => {
                    self.hold_one(ip);
                    fresh.push(ip);
                    out.push(ip);
                }
                None => {
                    for ip in fresh {
                        self.release_one(ip);
                    }
                    return Err(format!(
                        "the pod range {} has no free IP left",
                        self.pools[i].net
                    ));
                }
            }
        }
        held.extend(fresh);
        self.held.insert(holder.to_string(), held);
        Ok(out)
    }

    fn next_free(&mut self, i: usize) -> Option<IpAddr> {
        let pool = &self.pools[i];
        let (first, end) = pool.offsets();
        if pool.used >= end - first {
            return None;
        }
        let base = to_u128(pool.net.network());
        let mut offset = pool.cursor.clamp(first, end - 1);
        // Fewer than `used + 1` addresses in a row can all be taken.
        let mut tries = pool.used + 1;
        while tries > 0 {
            tries -= 1;
            let ip = from_u128(&pool.net, base + offset);
            offset = if offset + 1 >= end { first } else { offset + 1 };
            if !self.holders.contains_key(&ip) {
                self.pools[i].cursor = offset;
                return Some(ip);
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// The objects.

fn ips_json(ips: &[IpAddr]) -> Value {
    Value::Array(ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect())
}

/// The IPs in a pod's status (`podIPs`, else `podIP`).
fn pod_ips(pod: &Value) -> Vec<IpAddr> {
    let listed: Vec<IpAddr> = pod
        .pointer("/status/podIPs")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("ip")?.as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if !listed.is_empty() {
        return listed;
    }
    pod.pointer("/status/podIP")
        .and_then(Value::as_str)
        .and_then(|ip| ip.parse().ok())
        .into_iter()
        .collect()
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn terminal(pod: &Value) -> bool {
    matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
}

fn terminating(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_some()
}

fn held_unready(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations")
        .and_then(|a| a.get(READY_ANNOTATION))
        .and_then(Value::as_str)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
}

/// A condition of `kind`, keeping the times of the old one when its status is unchanged.
fn condition(
    old: &[Value],
    kind: &str,
    status: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: &str,
    heartbeat: bool,
) -> Value {
    let status = if status { "True" } else { "False" };
    let previous = old
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(status));
    let kept = |field: &str| {
        previous
            .and_then(|c| c.get(field))
            .cloned()
            .unwrap_or_else(|| json!(now))
    };
    let mut c =
        json!({"type": kind, "status": status, "lastTransitionTime": kept("lastTransitionTime")});
    if heartbeat {
        c["lastHeartbeatTime"] = kept("lastHeartbeatTime");
    }
    if let Some(reason) = reason {
        c["reason"] = json!(reason);
    }
    if let Some(message) = message {
        c["message"] = json!(message);
    }
    c
}

/// `conditions` with the ones of `owned` types replaced, in that order, the others kept after.
fn merge_conditions(old: &[Value], owned: Vec<Value>) -> Value {
    let types: Vec<&str> = owned
        .iter()
        .map(|c| c["type"].as_str().unwrap_or(""))
        .collect();
    let others = old
        .iter()
        .filter(|c| !types.contains(&c.get("type").and_then(Value::as_str).unwrap_or("")));
    let mut all = owned.clone();
    all.extend(others.cloned());
    Value::Array(all)
}

fn old_conditions(status: &Map<String, Value>) -> Vec<Value> {
    status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The node as registered: labels and an empty spec (status goes through `/status`).
fn node_object(name: &str, zone: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels(name, zone)},
        "spec": {},
    })
}

fn node_labels(name: &str, zone: &str) -> Value {
    json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        ZONE_LABEL: zone,
    })
}

/// The status the kubelet posts for its node, given the current one.
fn node_status(name: &str, addresses: &[IpAddr], old: Option<&Value>, now: &str) -> Value {
    let empty = Map::new();
    let old = old.and_then(Value::as_object).unwrap_or(&empty);
    let conditions = old_conditions(old);
    let owned = vec![
        condition(
            &conditions,
            "MemoryPressure",
            false,
            Some("KubeletHasSufficientMemory"),
            Some("kubelet has sufficient memory available".into()),
            now,
            true,
        ),
        condition(
            &conditions,
            "DiskPressure",
            false,
            Some("KubeletHasNoDiskPressure"),
            Some("kubelet has no disk pressure".into()),
            now,
            true,
        ),
        condition(
            &conditions,
            "PIDPressure",
            false,
            Some("KubeletHasSufficientPID"),
            Some("kubelet has sufficient PID available".into()),
            now,
            true,
        ),
        condition(
            &conditions,
            "Ready",
            true,
            Some("KubeletReady"),
            Some("kubelet is posting ready status (simulated by svcplane)".into()),
            now,
            true,
        ),
    ];
    let mut address_list: Vec<Value> = addresses
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
        .collect();
    address_list.push(json!({"type": "Hostname", "address": name}));
    let resources =
        json!({"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": merge_conditions(&conditions, owned),
        "addresses": address_list,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": format!("svcplane-{name}"),
            "systemUUID": format!("svcplane-{name}"),
            "bootID": format!("svcplane-{name}"),
            "kernelVersion": "simulated",
            "osImage": "svcplane simulated node",
            "containerRuntimeVersion": "svcplane://simulated",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    })
}

/// Upstream's QoS classes, from the cpu and memory requests and limits of every container.
fn qos_class(spec: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for list in ["containers", "initContainers"] {
        for container in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let requests = container.pointer("/resources/requests");
            let limits = container.pointer("/resources/limits");
            for resource in ["cpu", "memory"] {
                let limit = limits.and_then(|l| l.get(resource));
                // A request left out defaults to the limit.
                let request = requests.and_then(|r| r.get(resource)).or(limit);
                any |= request.is_some() || limit.is_some();
                guaranteed &= limit.is_some() && request == limit;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// (name, image) of each container of a list in the spec.
fn containers(spec: &Value, list: &str) -> Vec<(String, String, bool)> {
    spec.get(list)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                c.get("image")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                c.get("restartPolicy").and_then(Value::as_str) == Some("Always"),
            )
        })
        .collect()
}

fn old_container(old: &Map<String, Value>, list: &str, name: &str) -> Option<Value> {
    old.get(list)?
        .as_array()?
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
        .cloned()
}

/// The status of a pod on node `host_ips` given its current one: running with `ips` (kept if
/// it has some), ready unless held by the annotation; or, in a phase a client ended, that phase
/// with nothing ready and the containers terminated.
fn pod_status(pod: &Value, ips: &[IpAddr], host_ips: &[IpAddr], now: &str) -> Value {
    let empty = Map::new();
    let old = pod
        .get("status")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let uid = meta_str(pod, "uid");
    let phase = str_at(pod, "/status/phase").to_string();
    let finished = terminal(pod);
    let mut status = old.clone();
    let start_time = old.get("startTime").cloned().unwrap_or_else(|| json!(now));
    if !finished {
        status.insert("phase".into(), json!("Running"));
        let existing = pod_ips(pod);
        let ips = if existing.is_empty() { ips } else { &existing };
        if let Some(first) = ips.first() {
            status.insert("podIP".into(), json!(first.to_string()));
            status.insert("podIPs".into(), ips_json(ips));
        }
        status.insert("startTime".into(), start_time.clone());
    }
    if let Some(first) = host_ips.first() {
        status.insert("hostIP".into(), json!(first.to_string()));
        status.insert("hostIPs".into(), ips_json(host_ips));
    }
    status.insert("qosClass".into(), json!(qos_class(spec)));

    let ready = !finished && !held_unready(pod);
    let running_state = |old: &Option<Value>| {
        let started = old
            .as_ref()
            .and_then(|c| c.pointer("/state/running/startedAt"))
            .cloned()
            .unwrap_or_else(|| start_time.clone());
        json!({"running": {"startedAt": started}})
    };
    let ended_state = |old: &Option<Value>, completed: bool| {
        if let Some(state) = old
            .as_ref()
            .and_then(|c| c.get("state"))
            .filter(|s| s.get("terminated").is_some())
        {
            return state.clone();
        }
        let started = old
            .as_ref()
            .and_then(|c| c.pointer("/state/running/startedAt"))
            .cloned()
            .unwrap_or_else(|| start_time.clone());
        let (code, reason) = if completed {
            (0, "Completed")
        } else {
            (1, "Error")
        };
        json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now}})
    };
    let container_status = |name: &str, image: &str, old: &Option<Value>| {
        let field = |f: &str, default: Value| {
            old.as_ref()
                .and_then(|c| c.get(f))
                .cloned()
                .unwrap_or(default)
        };
        json!({
            "name": name,
            "image": image,
            "imageID": field("imageID", json!(image)),
            "containerID": field("containerID", json!(format!("svcplane://{uid}/{name}"))),
            "restartCount": field("restartCount", json!(0)),
        })
    };

    let mut regular = containers(spec, "containers");
    regular.sort();
    let mut statuses = Vec::new();
    for (name, image, _) in &regular {
        let previous = old_container(old, "containerStatuses", name);
        let mut s = container_status(name, image, &previous);
        if finished {
            s["state"] = ended_state(&previous, phase == "Succeeded");
            s["ready"] = json!(false);
            s["started"] = json!(false);
        } else {
            s["state"] = running_state(&previous);
            s["ready"] = json!(ready);
            s["started"] = json!(true);
        }
        statuses.push(s);
    }
    status.insert("containerStatuses".into(), Value::Array(statuses));
    let init = containers(spec, "initContainers");
    if init.is_empty() {
        status.remove("initContainerStatuses");
    } else {
        let mut statuses = Vec::new();
        for (name, image, sidecar) in &init {
            let previous = old_container(old, "initContainerStatuses", name);
            let mut s = container_status(name, image, &previous);
            if *sidecar && !finished {
                s["state"] = running_state(&previous);
                s["ready"] = json!(ready);
                s["started"] = json!(true);
            } else if *sidecar {
                s["state"] = ended_state(&previous, phase == "Succeeded");
                s["ready"] = json!(false);
                s["started"] = json!(false);
            } else {
                s["state"] = ended_state(&previous, true);
                s["ready"] = json!(true);
                s["started"] = json!(false);
            }
            statuses.push(s);
        }
        status.insert("initContainerStatuses".into(), Value::Array(statuses));
    }

    let conditions = old_conditions(old);
    let unready: Vec<&str> = if ready {
        Vec::new()
    } else {
        regular.iter().map(|(n, _, _)| n.as_str()).collect()
    };
    let (containers_reason, containers_message) = if phase == "Succeeded" {
        (Some("PodCompleted"), None)
    } else if ready {
        (None, None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    // Readiness gates: conditions others set, all True for the pod to be ready.
    let mut gate_problem = None;
    for gate in spec
        .get("readinessGates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = gate
            .get("conditionType")
            .and_then(Value::as_str)
            .unwrap_or("");
        match conditions
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
        {
            None => {
                gate_problem = Some(format!(
                    "corresponding condition of pod readiness gate \"{kind}\" does not exist."
                ));
                break;
            }
            Some(c) if c.get("status").and_then(Value::as_str) != Some("True") => {
                gate_problem = Some(format!(
                    "the status of pod readiness gate \"{kind}\" is not \"True\", but {}",
                    c.get("status").and_then(Value::as_str).unwrap_or("")
                ));
                break;
            }
            Some(_) => {}
        }
    }
    let pod_ready = ready && gate_problem.is_none();
    let (ready_reason, ready_message) = if ready {
        match gate_problem {
            Some(message) => (Some("ReadinessGatesNotReady"), Some(message)),
            None => (None, None),
        }
    } else {
        (containers_reason, containers_message.clone())
    };
    let owned = vec![
        condition(
            &conditions,
            "PodReadyToStartContainers",
            !finished,
            None,
            None,
            now,
            false,
        ),
        condition(&conditions, "Initialized", true, None, None, now, false),
        condition(
            &conditions,
            "Ready",
            pod_ready,
            ready_reason,
            ready_message,
            now,
            false,
        ),
        condition(
            &conditions,
            "ContainersReady",
            ready,
            containers_reason,
            containers_message,
            now,
            false,
        ),
        condition(&conditions, "PodScheduled", true, None, None, now, false),
    ];
    status.insert("conditions".into(), merge_conditions(&conditions, owned));
    Value::Object(status)
}

/// The status of a pod no node can take: Pending, PodScheduled False.
fn unschedulable_status(pod: &Value, message: &str, now: &str) -> Value {
    let empty = Map::new();
    let old = pod
        .get("status")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut status = old.clone();
    status.insert("phase".into(), json!("Pending"));
    let conditions = old_conditions(old);
    let owned = vec![condition(
        &conditions,
        "PodScheduled",
        false,
        Some("Unschedulable"),
        Some(message.to_string()),
        now,
        false,
    )];
    status.insert("conditions".into(), merge_conditions(&conditions, owned));
    Value::Object(status)
}

/// Whether the pod's tolerations allow a taint.
fn tolerates(pod: &Value, taint: &Value) -> bool {
    let field = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).unwrap_or("").to_string();
    pod.pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|t| {
            let exists = field(t, "operator") == "Exists";
            let key_ok = if field(t, "key").is_empty() {
                exists
            } else {
                field(t, "key") == field(taint, "key")
            };
            let effect_ok =
                field(t, "effect").is_empty() || field(t, "effect") == field(taint, "effect");
            let value_ok = exists || field(t, "value") == field(taint, "value");
            key_ok && effect_ok && value_ok
        })
}

// ---------------------------------------------------------------------------------------------
// The kubelet.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The pod's grace period is over: delete it.
    Remove,
    /// A write failed: look at the pod again.
    Retry,
}

/// What the kubelet knows of a live pod.
#[derive(Debug)]
struct PodEntry {
    uid: String,
    /// The latest revision seen (events at or below it are old news).
    revision: u64,
    node: String,
    /// When the pod is to be removed, once it is terminating.
    removal: Option<Instant>,
    finalizers: bool,
    /// No node fits it; retried at each node sync.
    unschedulable: bool,
}

struct Kubelet {
    registry: Registry,
    config: KubeletConfig,
    zones: Vec<String>,
    pods_resource: &'static Resource,
    nodes_resource: &'static Resource,
    pods: HashMap<String, PodEntry>,
    ipam: Ipam,
    timers: BTreeSet<(Instant, String, Timer)>,
}

fn write_options() -> WriteOptions {
    WriteOptions {
        dry_run: false,
        validation: FieldValidation::Ignore,
    }
}

fn decode(kv: &Kv) -> Result<Value, ApiError> {
    let object: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is not JSON: {e}", kv.key)))?;
    Ok(object::with_revision(object, kv.mod_revision))
}

fn revision(object: &Value) -> u64 {
    meta_str(object, "resourceVersion").parse().unwrap_or(0)
}

fn pod_key(pod: &Value) -> String {
    format!("{}/{}", meta_str(pod, "namespace"), meta_str(pod, "name"))
}

/// When a terminating pod is to go: `deletionGracePeriodSeconds` after the kubelet saw the
/// delete (as a real kubelet gives the containers that long), and never before
/// `deletionTimestamp`; a pod found terminating in a list (a restart, a relist) goes at
/// `deletionTimestamp`.
fn removal_time(pod: &Value, listed: bool) -> Option<Instant> {
    let at: jiff::Timestamp = str_at(pod, "/metadata/deletionTimestamp").parse().ok()?;
    let grace = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .max(0);
    let until = Duration::try_from(at.duration_since(jiff::Timestamp::now())).unwrap_or_default();
    let wait = if listed {
        until
    } else {
        until.max(Duration::from_secs(grace as u64))
    };
    Some(Instant::now() + wait)
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Kubelet {
    fn new(registry: Registry, config: KubeletConfig) -> Kubelet {
        let mut ipam = Ipam::new(&config.pod_cidrs);
        for index in 1..=config.nodes {
            ipam.set(
                &format!("node/{}", node_name(index)),
                &node_addresses(index, &config.pod_cidrs),
            );
        }
        Kubelet {
            registry,
            zones: config.zones(),
            config,
            pods_resource: crate::resource::find("", "v1", "pods").expect("pods are served"),
            nodes_resource: crate::resource::find("", "v1", "nodes").expect("nodes are served"),
            pods: HashMap::new(),
            ipam,
            timers: BTreeSet::new(),
        }
    }

    /// Node `name`'s index, if it is one of ours.
    fn node_index(&self, name: &str) -> Option<usize> {
        let index: usize = name.strip_prefix("node-")?.parse().ok()?;
        (node_name(index) == name && (1..=self.config.nodes).contains(&index)).then_some(index)
    }

    async fn run(mut self) {
        while let Err(e) = self.sync_nodes().await {
            tracing::warn!(error = %e, "simulated kubelet: registering the nodes failed; retrying");
            tokio::time::sleep(self.config.retry_backoff).await;
        }
        tracing::info!(
            nodes = self.config.nodes,
            pod_cidrs = ?self.config.pod_cidrs,
            "simulated kubelet: nodes registered"
        );
        loop {
            match self.session().await {
                Ok(()) => tracing::debug!("simulated kubelet: the pod watch ended; relisting"),
                Err(e) if e.code == 410 => {
                    tracing::debug!(error = %e, "simulated kubelet: the pod watch expired; relisting")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "simulated kubelet: watching pods failed; retrying");
                    tokio::time::sleep(self.config.retry_backoff).await;
                }
            }
        }
    }

    /// Registers every node that is missing and posts their labels and status.
    async fn sync_nodes(&mut self) -> Result<(), ApiError> {
        let now = object::now();
        for index in 1..=self.config.nodes {
            let name = node_name(index);
            let zone = self.zones[(index - 1) % self.zones.len()].clone();
            match self.registry.get(self.nodes_resource, None, &name).await {
                Ok(_) => {}
                Err(e) if e.code == 404 => {
                    match self
                        .registry
                        .create(
                            self.nodes_resource,
                            None,
                            node_object(&name, &zone),
                            write_options(),
                        )
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(node = name, zone, "simulated kubelet: node registered")
                        }
                        Err(e) if e.reason == "AlreadyExists" => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
            let labels = node_labels(&name, &zone);
            let resource = self.nodes_resource;
            self.registry
                .update_with(
                    resource,
                    None,
                    &name,
                    Part::Main,
                    write_options(),
                    |current| {
                        let mut next = current.clone();
                        for (key, value) in labels.as_object().expect("labels are an object") {
                            next["metadata"]["labels"][key] = value.clone();
                        }
                        Ok((next, Vec::new()))
                    },
                )
                .await?;
            let addresses = node_addresses(index, &self.config.pod_cidrs);
            self.registry
                .update_with(
                    resource,
                    None,
                    &name,
                    Part::Status,
                    write_options(),
                    |current| {
                        let mut next = current.clone();
                        next["status"] =
                            node_status(&name, &addresses, current.get("status"), &now);
                        Ok((object::canonical(resource, next)?, Vec::new()))
                    },
                )
                .await?;
        }
        Ok(())
    }

    /// One list and the watch that follows it, until the watch ends or fails.
    async fn session(&mut self) -> Result<(), ApiError> {
        let listed = self
            .registry
            .list(self.pods_resource, None, &ListOptions::default())
            .await?;
        // Forget the pods gone while nobody watched.
        let live: HashMap<String, String> = listed
            .items
            .iter()
            .map(|p| (pod_key(p), meta_str(p, "uid").to_string()))
            .collect();
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(key, entry)| live.get(*key) != Some(&entry.uid))
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            self.forget(&key);
        }
        // Every IP in use is known before any pod gets one.
        let fresh: Vec<Value> = listed
            .items
            .into_iter()
            .filter_map(|pod| self.observe(&pod, true).then_some(pod))
            .collect();
        for pod in fresh {
            self.reconcile(pod).await;
        }
        let prefix = self.registry.collection_key(self.pods_resource, None);
        let mut changes = self
            .registry
            .storage()
            .watch(
                &prefix,
                listed.revision,
                self.config.watch_progress_interval,
            )
            .await?;
        let period = self.config.node_sync_interval;
        let mut sync = tokio::time::interval_at(Instant::now() + period, period);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_timer = self.timers.first().map(|(at, _, _)| *at);
            tokio::select! {
                change = changes.next() => match change {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(change)) => self.on_change(change).await,
                },
                _ = until(next_timer) => self.fire_timers().await,
                _ = sync.tick() => self.periodic().await,
            }
        }
    }

    async fn on_change(&mut self, change: Change) {
        match change {
            Change::Put { kv, .. } => match decode(&kv) {
                Ok(pod) => {
                    if self.observe(&pod, false) {
                        self.reconcile(pod).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "simulated kubelet: skipping a pod"),
            },
            Change::Delete { prev, .. } => {
                if let Ok(pod) = decode(&prev) {
                    let key = pod_key(&pod);
                    if self
                        .pods
                        .get(&key)
                        .is_some_and(|e| e.uid == meta_str(&pod, "uid"))
                    {
                        self.forget(&key);
                    }
                }
            }
            Change::Progress { .. } => {}
        }
    }

    /// Records what a pod's state says (node, IPs held, removal time); false if it is older
    /// than what the kubelet has seen already.
    fn observe(&mut self, pod: &Value, listed: bool) -> bool {
        let key = pod_key(pod);
        let uid = meta_str(pod, "uid").to_string();
        let rev = revision(pod);
        if let Some(entry) = self.pods.get(&key) {
            if entry.uid == uid && rev <= entry.revision {
                return false;
            }
            if entry.uid != uid {
                self.forget(&key);
            }
        }
        self.ipam.set(&uid, &pod_ips(pod));
        let entry = self.pods.entry(key.clone()).or_insert_with(|| PodEntry {
            uid: uid.clone(),
            revision: 0,
            node: String::new(),
            removal: None,
            finalizers: false,
            unschedulable: false,
        });
        entry.revision = rev;
        entry.node = str_at(pod, "/spec/nodeName").to_string();
        entry.finalizers = !object::finalizers(pod).is_empty();
        if !entry.node.is_empty() {
            entry.unschedulable = false;
        }
        let kept = pod
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0;
        if terminating(pod) && kept && !entry.node.is_empty() {
            match entry.removal {
                None => {
                    if let Some(at) = removal_time(pod, listed) {
                        entry.removal = Some(at);
                        self.timers.insert((at, key, Timer::Remove));
                    }
                }
                // Its time came while finalizers held it: try again now they may be gone.
                Some(at) if at <= Instant::now() && !entry.finalizers => {
                    self.timers.insert((Instant::now(), key, Timer::Remove));
                }
                Some(_) => {}
            }
        }
        true
    }

    fn forget(&mut self, key: &str) {
        if let Some(entry) = self.pods.remove(key) {
            self.ipam.release(&entry.uid);
            self.timers.retain(|(_, k, _)| k != key);
        }
    }

    fn retry_later(&mut self, key: String) {
        self.timers.insert((
            Instant::now() + self.config.retry_backoff,
            key,
            Timer::Retry,
        ));
    }

    async fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(first) = self.timers.first().cloned() {
            if first.0 > now {
                break;
            }
            self.timers.remove(&first);
            let (_, key, timer) = first;
            match timer {
                Timer::Remove => self.remove(&key).await,
                Timer::Retry => self.look_again(&key).await,
            }
        }
    }

    /// The grace period is over: the pod goes (the registry keeps it while finalizers remain).
    async fn remove(&mut self, key: &str) {
        let Some(entry) = self.pods.get(key) else {
            return;
        };
        let (namespace, name) = key.split_once('/').expect("keys are namespace/name");
        let options = DeleteOptions {
            uid: Some(entry.uid.clone()),
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        };
        match self
            .registry
            .delete(self.pods_resource, Some(namespace), name, &options)
            .await
        {
            Ok(_) => tracing::debug!(pod = key, "simulated kubelet: pod removed"),
            Err(e) if e.code == 404 || e.code == 409 => {}
            Err(e) => {
                tracing::warn!(pod = key, error = %e, "simulated kubelet: removing a pod failed; retrying");
                self.timers.insert((
                    Instant::now() + self.config.retry_backoff,
                    key.to_string(),
                    Timer::Remove,
                ));
            }
        }
    }

    /// Reads the pod again and reconciles it, whatever revision the kubelet saw last.
    async fn look_again(&mut self, key: &str) {
        let (namespace, name) = key.split_once('/').expect("keys are namespace/name");
        match self
            .registry
            .get(self.pods_resource, Some(namespace), name)
            .await
        {
            Ok(pod) => {
                self.observe(&pod, false);
                self.reconcile(pod).await;
            }
            Err(e) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(pod = key, error = %e, "simulated kubelet: reading a pod failed; retrying");
                self.retry_later(key.to_string());
            }
        }
    }

    async fn periodic(&mut self) {
        if let Err(e) = self.sync_nodes().await {
            tracing::warn!(error = %e, "simulated kubelet: syncing the nodes failed");
        }
        let waiting: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, e)| e.unschedulable)
            .map(|(k, _)| k.clone())
            .collect();
        for key in waiting {
            self.look_again(&key).await;
        }
    }

    /// Schedules and runs a pod as far as its state asks.
    async fn reconcile(&mut self, pod: Value) {
        let key = pod_key(&pod);
        match self.try_reconcile(pod).await {
            Ok(()) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(pod = key, error = %e, "simulated kubelet: updating a pod failed; retrying");
                self.retry_later(key);
            }
        }
    }

    async fn try_reconcile(&mut self, mut pod: Value) -> Result<(), ApiError> {
        if terminating(&pod) {
            // Containers keep running (and the pod keeps its readiness) through the grace
            // period, so terminating endpoints can be observed.
            return Ok(());
        }
        if str_at(&pod, "/spec/nodeName").is_empty() {
            let scheduler = str_at(&pod, "/spec/schedulerName");
            if !(scheduler.is_empty() || scheduler == SCHEDULER) {
                return Ok(());
            }
            match self.schedule(&pod).await? {
                Some(bound) => pod = bound,
                None => return Ok(()),
            }
        }
        let Some(index) = self.node_index(str_at(&pod, "/spec/nodeName")) else {
            // Another node's pod: not ours to run.
            return Ok(());
        };
        let host_ips = node_addresses(index, &self.config.pod_cidrs);
        let uid = meta_str(&pod, "uid").to_string();
        let ips = if terminal(&pod) || !pod_ips(&pod).is_empty() {
            Vec::new()
        } else if pod.pointer("/spec/hostNetwork") == Some(&json!(true)) {
            host_ips.clone()
        } else {
            match self.ipam.assign(&uid) {
                Ok(ips) => ips,
                Err(e) => {
                    tracing::warn!(pod = pod_key(&pod), error = %e, "simulated kubelet: the pod waits for an IP");
                    self.retry_later(pod_key(&pod));
                    return Ok(());
                }
            }
        };
        let node = str_at(&pod, "/spec/nodeName").to_string();
        let now = object::now();
        let resource = self.pods_resource;
        let written = self
            .registry
            .update_with(
                resource,
                Some(meta_str(&pod, "namespace")),
                meta_str(&pod, "name"),
                Part::Status,
                write_options(),
                |current| {
                    // Changed since: leave a pod that is no longer this one's to run alone.
                    if meta_str(current, "uid") != uid
                        || terminating(current)
                        || str_at(current, "/spec/nodeName") != node
                    {
                        return Ok((current.clone(), Vec::new()));
                    }
                    let mut next = current.clone();
                    next["status"] = pod_status(current, &ips, &host_ips, &now);
                    Ok((object::canonical(resource, next)?, Vec::new()))
                },
            )
            .await?;
        self.observe(&written.object, false);
        // An assignment the write did not use is free again; a pod recreated under the same
        // name meanwhile is another pod, whose IPs are not this uid's.
        if meta_str(&written.object, "uid") == uid {
            let used = pod_ips(&written.object);
            self.ipam.set(&uid, &used);
        } else {
            self.ipam.release(&uid);
        }
        Ok(())
    }

    /// Binds the pod to the least loaded node that takes it; None if none does (the pod is
    /// then marked Unschedulable).
    async fn schedule(&mut self, pod: &Value) -> Result<Option<Value>, ApiError> {
        let nodes = self
            .registry
            .list(self.nodes_resource, None, &ListOptions::default())
            .await?
            .items;
        let selector = pod
            .pointer("/spec/nodeSelector")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let (mut cordoned, mut mismatched, mut tainted) = (0, 0, 0);
        let mut fit = Vec::new();
        for node in &nodes {
            let name = meta_str(node, "name");
            let Some(index) = self.node_index(name) else {
                continue;
            };
            if node.pointer("/spec/unschedulable") == Some(&json!(true)) {
                cordoned += 1;
                continue;
            }
            let labels = node.pointer("/metadata/labels");
            if !selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            {
                mismatched += 1;
                continue;
            }
            let blocked = node
                .pointer("/spec/taints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|t| {
                    matches!(
                        t.get("effect").and_then(Value::as_str),
                        Some("NoSchedule" | "NoExecute")
                    )
                })
                .any(|t| !tolerates(pod, t));
            if blocked {
                tainted += 1;
                continue;
            }
            fit.push((index, name.to_string()));
        }
        let key = pod_key(pod);
        let Some((_, chosen)) = fit.into_iter().min_by_key(|(index, name)| {
            let load = self.pods.values().filter(|e| &e.node == name).count();
            (load, *index)
        }) else {
            let total = nodes
                .iter()
                .filter(|n| self.node_index(meta_str(n, "name")).is_some())
                .count();
            let mut why = Vec::new();
            for (count, text) in [
                (mismatched, "didn't match Pod's node affinity/selector"),
                (cordoned, "were unschedulable"),
                (tainted, "had untolerated taint(s)"),
            ] {
                if count > 0 {
                    why.push(format!("{count} node(s) {text}"));
                }
            }
            let message = if why.is_empty() {
                format!("0/{total} nodes are available.")
            } else {
                format!("0/{total} nodes are available: {}.", why.join(", "))
            };
            let uid = meta_str(pod, "uid").to_string();
            let now = object::now();
            let resource = self.pods_resource;
            let written = self
                .registry
                .update_with(
                    resource,
                    Some(meta_str(pod, "namespace")),
                    meta_str(pod, "name"),
                    Part::Status,
                    write_options(),
                    |current| {
                        if meta_str(current, "uid") != uid
                            || terminating(current)
                            || !str_at(current, "/spec/nodeName").is_empty()
                        {
                            return Ok((current.clone(), Vec::new()));
                        }
                        let mut next = current.clone();
                        next["status"] = unschedulable_status(current, &message, &now);
                        Ok((object::canonical(resource, next)?, Vec::new()))
                    },
                )
                .await?;
            self.observe(&written.object, false);
            if let Some(entry) = self.pods.get_mut(&key)
                && entry.node.is_empty()
            {
                entry.unschedulable = true;
            }
            return Ok(None);
        };
        let uid = meta_str(pod, "uid").to_string();
        let resource = self.pods_resource;
        let written = self
            .registry
            .update_with(
                resource,
                Some(meta_str(pod, "namespace")),
                meta_str(pod, "name"),
                Part::Main,
                write_options(),
                |current| {
                    let mut next = current.clone();
                    if meta_str(current, "uid") == uid
                        && !terminating(current)
                        && str_at(current, "/spec/nodeName").is_empty()
                    {
                        next["spec"]["nodeName"] = json!(chosen);
                    }
                    Ok((next, Vec::new()))
                },
            )
            .await?;
        tracing::debug!(
            pod = key,
            node = str_at(&written.object, "/spec/nodeName"),
            "simulated kubelet: pod scheduled"
        );
        self.observe(&written.object, false);
        if terminating(&written.object) {
            return Ok(None);
        }
        Ok(Some(written.object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegistryConfig;
    use crate::storage::{Storage, memory::MemoryStorage};

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn pod_ips_skip_the_network_and_broadcast_addresses_and_stay_unique() {
        let mut ipam = Ipam::new(&[net("10.1.0.0/30")]);
        assert_eq!(ipam.assign("a").unwrap(), vec![ip("10.1.0.1")]);
        assert_eq!(ipam.assign("a").unwrap(), vec![ip("10.1.0.1")], "kept");
        assert_eq!(ipam.assign("b").unwrap(), vec![ip("10.1.0.2")]);
        assert_eq!(
            ipam.assign("c").unwrap_err(),
            "the pod range 10.1.0.0/30 has no free IP left"
        );
        ipam.release("a");
        assert_eq!(ipam.assign("c").unwrap(), vec![ip("10.1.0.1")]);
    }

    #[test]
    fn freed_ips_are_not_handed_out_again_at_once() {
        let mut ipam = Ipam::new(&[net("10.1.0.0/24")]);
        assert_eq!(ipam.assign("a").unwrap(), vec![ip("10.1.0.1")]);
        ipam.release("a");
        assert_eq!(ipam.assign("b").unwrap(), vec![ip("10.1.0.2")]);
    }

    #[test]
    fn seeded_ips_are_skipped_and_dual_stack_takes_one_of_each_family() {
        let mut ipam = Ipam::new(&[net("10.1.0.0/24"), net("fd00:1::/64")]);
        ipam.set("old", &[ip("10.1.0.1"), ip("fd00:1::1")]);
        ipam.set("node/node-1", &[ip("10.1.0.2")]);
        assert_eq!(
            ipam.assign("new").unwrap(),
            vec![ip("10.1.0.3"), ip("fd00:1::2")]
        );
        // A second holder of one IP keeps it held when the first lets go.
        ipam.set("dup", &[ip("10.1.0.3")]);
        ipam.release("new");
        assert!(ipam.holders.contains_key(&ip("10.1.0.3")));
        assert!(!ipam.holders.contains_key(&ip("fd00:1::2")));
        assert_eq!(ipam.pools[0].used, 3);
        assert_eq!(ipam.pools[1].used, 1);
    }

    #[test]
    fn the_config_refuses_what_cannot_be_simulated() {
        let ok = KubeletConfig::default();
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(
            ok.zones(),
            vec!["zone-a".to_string(), "zone-b".into(), "zone-c".into()]
        );
        let same_family = KubeletConfig {
            pod_cidrs: vec![net("10.1.0.0/16"), net("10.2.0.0/16")],
            ..KubeletConfig::default()
        };
        assert_eq!(
            same_family.check().unwrap_err(),
            "--pod-cidr: 10.1.0.0/16 and 10.2.0.0/16 are of the same family; dual-stack takes one IPv4 and one IPv6 range"
        );
        assert_eq!(
            parse_cidr("10.244.1.0/16").unwrap_err(),
            "--pod-cidr: 10.244.1.0/16 has host bits set; did you mean 10.244.0.0/16?"
        );
        assert!(parse_cidr("10.0.0.0/31").is_err());
        assert!(parse_cidr("nonsense").is_err());
        let no_nodes = KubeletConfig {
            nodes: 0,
            ..KubeletConfig::default()
        };
        assert!(no_nodes.check().is_err());
        let bad_zone = KubeletConfig {
            zones: vec!["-x".into()],
            ..KubeletConfig::default()
        };
        assert!(bad_zone.check().is_err());
    }

    #[test]
    fn node_addresses_follow_the_pod_range_families() {
        assert_eq!(
            node_addresses(3, &[net("fd00::/64"), net("10.0.0.0/8")]),
            vec![ip("fd00:172:30::3"), ip("172.30.0.3")]
        );
    }

    #[test]
    fn qos_classes_follow_requests_and_limits() {
        let c = |resources: Value| json!({"containers": [{"name": "a", "resources": resources}]});
        assert_eq!(qos_class(&c(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&c(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&c(json!({"requests": {"cpu": "1"}}))),
            "Burstable"
        );
    }

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "nginx"}, {"name": "log", "image": "busybox"}]},
            "status": {"phase": "Pending", "qosClass": "BestEffort"}})
    }

    #[test]
    fn a_running_pod_status_is_a_fixed_point() {
        let mut pod = pod();
        let ips = [ip("10.244.0.1")];
        let hosts = [ip("172.30.0.1")];
        pod["status"] = pod_status(&pod, &ips, &hosts, "2025-01-01T00:00:00Z");
        let first = pod["status"].clone();
        assert_eq!(first["phase"], "Running");
        assert_eq!(first["podIPs"], json!([{"ip": "10.244.0.1"}]));
        assert_eq!(
            first["containerStatuses"][0]["name"], "log",
            "sorted by name"
        );
        assert_eq!(
            first["conditions"][2],
            json!({"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"})
        );
        // Later passes change nothing, not even the times.
        pod["status"] = pod_status(&pod, &[ip("10.244.0.9")], &hosts, "2025-01-02T00:00:00Z");
        assert_eq!(pod["status"], first);
        // The annotation holds it unready, and only the readiness moves.
        pod["metadata"]["annotations"] = json!({READY_ANNOTATION: "false"});
        let held = pod_status(&pod, &ips, &hosts, "2025-01-03T00:00:00Z");
        assert_eq!(
            held["conditions"][2],
            json!({"type": "Ready", "status": "False", "lastTransitionTime": "2025-01-03T00:00:00Z",
                "reason": "ContainersNotReady", "message": "containers with unready status: [log web]"})
        );
        assert_eq!(held["containerStatuses"][1]["ready"], false);
        assert_eq!(
            held["containerStatuses"][1]["state"],
            first["containerStatuses"][1]["state"]
        );
    }

    #[test]
    fn a_finished_pod_keeps_its_phase_and_is_not_ready() {
        let mut pod = pod();
        let hosts = [ip("172.30.0.1")];
        pod["status"] = pod_status(&pod, &[ip("10.244.0.1")], &hosts, "2025-01-01T00:00:00Z");
        pod["status"]["phase"] = json!("Succeeded");
        let status = pod_status(&pod, &[], &hosts, "2025-01-02T00:00:00Z");
        assert_eq!(status["phase"], "Succeeded");
        assert_eq!(status["podIP"], "10.244.0.1");
        assert_eq!(
            status["conditions"][2],
            json!({"type": "Ready", "status": "False", "lastTransitionTime": "2025-01-02T00:00:00Z", "reason": "PodCompleted"})
        );
        assert_eq!(
            status["containerStatuses"][0]["state"],
            json!({"terminated": {"exitCode": 0, "reason": "Completed",
                "startedAt": "2025-01-01T00:00:00Z", "finishedAt": "2025-01-02T00:00:00Z"}})
        );
    }

    async fn wait_for(registry: &Registry, name: &str, check: impl Fn(&Value) -> bool) -> Value {
        let pods = crate::resource::find("", "v1", "pods").unwrap();
        for _ in 0..400 {
            if let Ok(pod) = registry.get(pods, Some("default"), name).await
                && check(&pod)
            {
                return pod;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("pod {name} never got there");
    }

    #[tokio::test]
    async fn pods_in_a_memory_registry_are_scheduled_run_and_removed_after_their_grace() {
        let registry = Registry::new(
            Storage::Memory(MemoryStorage::new(1000)),
            RegistryConfig {
                prefix: "/registry/".into(),
                admission: Vec::new(),
                max_pod_grace: Some(Duration::from_secs(1)),
                namespace_cleanup_interval: Duration::from_millis(100),
                gc_retry_interval: Duration::from_millis(100),
            },
        );
        registry.bootstrap().await.unwrap();
        let config = KubeletConfig {
            nodes: 2,
            pod_cidrs: vec![net("10.9.0.0/24")],
            ..KubeletConfig::default()
        };
        let task = spawn(registry.clone(), config).unwrap();
        let pods = crate::resource::find("", "v1", "pods").unwrap();
        let options = WriteOptions {
            dry_run: false,
            validation: FieldValidation::Strict,
        };
        for name in ["a", "b"] {
            let body = json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
            registry
                .create(pods, Some("default"), body, options)
                .await
                .unwrap();
        }
        let ready = |p: &Value| {
            p.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        };
        let a = wait_for(&registry, "a", ready).await;
        let b = wait_for(&registry, "b", ready).await;
        assert_eq!(
            (str_at(&a, "/spec/nodeName"), str_at(&b, "/spec/nodeName")),
            ("node-1", "node-2")
        );
        assert_eq!(
            (str_at(&a, "/status/podIP"), str_at(&b, "/status/podIP")),
            ("10.9.0.1", "10.9.0.2")
        );
        assert_eq!(str_at(&b, "/status/hostIP"), "172.30.0.2");
        let nodes = crate::resource::find("", "v1", "nodes").unwrap();
        let node = registry.get(nodes, None, "node-2").await.unwrap();
        assert_eq!(
            str_at(&node, "/metadata/labels/topology.kubernetes.io~1zone"),
            "zone-b"
        );
        let deleted = registry
            .delete(pods, Some("default"), "a", &DeleteOptions::default())
            .await
            .unwrap();
        assert_eq!(
            deleted.pointer("/metadata/deletionGracePeriodSeconds"),
            Some(&json!(1))
        );
        let pods_left = async {
            for _ in 0..200 {
                if registry.get(pods, Some("default"), "a").await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            false
        };
        assert!(
            pods_left.await,
            "the kubelet removed the pod after its grace"
        );
        task.abort();
    }
}
