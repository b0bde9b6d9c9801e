//! `meta.k8s.io/v1 Table` rendering for `kubectl get`: per-kind column definitions and row
//! cells mirroring kube-apiserver's printers (pkg/printers/internalversion/printers.go, run
//! server-side with `Wide: true`), `duration.HumanDuration` ages, and `PartialObjectMetadata`
//! row objects (`includeObject=Metadata`).

use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};

/// Builds the Table for `objects` (each a full JSON object of `kind`): `resource_version` is
/// the list's resourceVersion, `continue_token` its continue token, `now` the clock for ages.
/// Each row's `object` is the object's metadata as a `PartialObjectMetadata`.
pub fn table(
    kind: &str,
    objects: &[Value],
    resource_version: &str,
    continue_token: Option<&str>,
    now: Timestamp,
) -> Value {
    let mut metadata = Map::new();
    if !resource_version.is_empty() {
        metadata.insert("resourceVersion".into(), Value::from(resource_version));
    }
    if let Some(token) = continue_token.filter(|t| !t.is_empty()) {
        metadata.insert("continue".into(), Value::from(token));
    }
    let rows: Vec<Value> = objects.iter().map(|o| row(kind, o, now)).collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions(kind),
        "rows": rows,
    })
}

/// The column definitions alone, as the JSON array a Table carries.
pub fn column_definitions(kind: &str) -> Value {
    Value::Array(
        columns(kind)
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.ty,
                    "format": c.format,
                    "description": c.description,
                    "priority": c.priority,
                })
            })
            .collect(),
    )
}

/// k8s.io/apimachinery's `duration.HumanDuration`: `45s`, `2m5s`, `15m`, `3h20m`, `10h`,
/// `3d4h`, `30d`, `2y15d`, `9y`; up to one second in the future is `0s`, beyond `<invalid>`.
pub fn human_duration(d: SignedDuration) -> String {
    let seconds = d.as_secs();
    if seconds < -1 {
        return "<invalid>".to_string();
    } else if seconds < 0 {
        return "0s".to_string();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        }
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        }
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

// ---------------------------------------------------------------------------------------------
// Columns
// ---------------------------------------------------------------------------------------------

struct Column {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    priority: u8,
    description: &'static str,
}

const fn col(name: &'static str, priority: u8, description: &'static str) -> Column {
    Column {
        name,
        ty: "string",
        format: "",
        priority,
        description,
    }
}

const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    priority: 0,
    description: NAME_DOC,
};
const AGE: Column = col("Age", 0, AGE_DOC);

const SERVICE_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Type",
        0,
        "type determines how the Service is exposed. Defaults to ClusterIP. Valid options are ExternalName, ClusterIP, NodePort, and LoadBalancer.",
    ),
    col(
        "Cluster-IP",
        0,
        "clusterIP is the IP address of the service and is usually assigned randomly.",
    ),
    col(
        "External-IP",
        0,
        "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
    ),
    col(
        "Port(s)",
        0,
        "The list of ports that are exposed by this service.",
    ),
    AGE,
    col(
        "Selector",
        1,
        "Route service traffic to pods with label keys and values matching this selector.",
    ),
];

const POD_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Ready",
        0,
        "The aggregate readiness state of this pod for accepting traffic.",
    ),
    col(
        "Status",
        0,
        "The aggregate status of the containers in this pod.",
    ),
    col(
        "Restarts",
        0,
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
    ),
    AGE,
    col(
        "IP",
        1,
        "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
    ),
    col(
        "Node",
        1,
        "NodeName indicates in which node this pod is scheduled.",
    ),
    col(
        "Nominated Node",
        1,
        "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods.",
    ),
    col(
        "Readiness Gates",
        1,
        "If specified, all readiness gates will be evaluated for pod readiness.",
    ),
];

const ENDPOINT_SLICE_COLUMNS: &[Column] = &[
    NAME,
    col(
        "AddressType",
        0,
        "addressType specifies the type of address carried by this EndpointSlice. All addresses in this slice must be the same type.",
    ),
    col(
        "Ports",
        0,
        "ports specifies the list of network ports exposed by each endpoint in this slice.",
    ),
    col(
        "Endpoints",
        0,
        "endpoints is a list of unique endpoints in this slice.",
    ),
    AGE,
];

const ENDPOINTS_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Endpoints",
        0,
        "The set of all endpoints is the union of all subsets.",
    ),
    AGE,
];

const NODE_COLUMNS: &[Column] = &[
    NAME,
    col("Status", 0, "The status of the node"),
    col("Roles", 0, "The roles of the node"),
    AGE,
    col("Version", 0, "Kubelet Version reported by the node."),
    col("Internal-IP", 1, "List of addresses reachable to the node."),
    col("External-IP", 1, "List of addresses reachable to the node."),
    col(
        "OS-Image",
        1,
        "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
    ),
    col(
        "Kernel-Version",
        1,
        "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
    ),
    col(
        "Container-Runtime",
        1,
        "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
    ),
];

const NAMESPACE_COLUMNS: &[Column] = &[NAME, col("Status", 0, "The status of the namespace"), AGE];

const LEASE_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Holder",
        0,
        "holderIdentity contains the identity of the holder of a current lease.",
    ),
    AGE,
];

const EVENT_COLUMNS: &[Column] = &[
    col(
        "Last Seen",
        0,
        "The time at which the most recent occurrence of this event was recorded.",
    ),
    col(
        "Type",
        0,
        "Type of this event (Normal, Warning), new types could be added in the future",
    ),
    col(
        "Reason",
        0,
        "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
    ),
    col("Object", 0, "The object that this event is about."),
    col(
        "Subobject",
        1,
        "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2].",
    ),
    col(
        "Source",
        1,
        "The component reporting this event. Should be a short machine understandable string.",
    ),
    col(
        "Message",
        0,
        "A human-readable description of the status of this operation.",
    ),
    col(
        "First Seen",
        1,
        "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
    ),
    col("Count", 1, "The number of times this event has occurred."),
    Column {
        name: "Name",
        ty: "string",
        format: "name",
        priority: 1,
        description: NAME_DOC,
    },
];

const DEFAULT_COLUMNS: &[Column] = &[NAME, AGE];

fn columns(kind: &str) -> &'static [Column] {
    match kind {
        "Service" => SERVICE_COLUMNS,
        "Pod" => POD_COLUMNS,
        "EndpointSlice" => ENDPOINT_SLICE_COLUMNS,
        "Endpoints" => ENDPOINTS_COLUMNS,
        "Node" => NODE_COLUMNS,
        "Namespace" => NAMESPACE_COLUMNS,
        "Lease" => LEASE_COLUMNS,
        "Event" => EVENT_COLUMNS,
        _ => DEFAULT_COLUMNS,
    }
}

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

fn row(kind: &str, obj: &Value, now: Timestamp) -> Value {
    let mut conditions = None;
    let cells = match kind {
        "Service" => service_cells(obj, now),
        "Pod" => {
            let (cells, conds) = pod_cells(obj, now);
            conditions = conds;
            cells
        }
        "EndpointSlice" => endpoint_slice_cells(obj, now),
        "Endpoints" => endpoints_cells(obj, now),
        "Node" => node_cells(obj, now),
        "Namespace" => vec![
            name(obj).into(),
            text(obj, &["status", "phase"]).into(),
            age(obj, now).into(),
        ],
        "Lease" => {
            vec![
                name(obj).into(),
                text(obj, &["spec", "holderIdentity"]).into(),
                age(obj, now).into(),
            ]
        }
        "Event" => event_cells(obj, now),
        _ => vec![name(obj).into(), age(obj, now).into()],
    };
    let metadata = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let mut row = json!({
        "cells": cells,
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": metadata,
        },
    });
    if let Some(c) = conditions {
        row["conditions"] = c;
    }
    row
}

/// The value at `path`, when present and not null.
fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    (!cur.is_null()).then_some(cur)
}

/// The string at `path`, or "".
fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).and_then(Value::as_str).unwrap_or("")
}

fn int(v: &Value, path: &[&str]) -> i64 {
    at(v, path).and_then(Value::as_i64).unwrap_or(0)
}

fn array<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn name(obj: &Value) -> &str {
    text(obj, &["metadata", "name"])
}

/// `or` when `s` is empty.
fn or<'a>(s: &'a str, or: &'a str) -> &'a str {
    if s.is_empty() { or } else { s }
}

fn timestamp(v: &Value, path: &[&str]) -> Option<Timestamp> {
    at(v, path)
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

/// Upstream's `translateTimestampSince`: `<unknown>` for a zero (missing) time.
fn since(t: Option<Timestamp>, now: Timestamp) -> String {
    match t {
        Some(t) => human_duration(now.duration_since(t)),
        None => "<unknown>".to_string(),
    }
}

fn age(obj: &Value, now: Timestamp) -> String {
    since(timestamp(obj, &["metadata", "creationTimestamp"]), now)
}

fn service_cells(svc: &Value, now: Timestamp) -> Vec<Value> {
    let svc_type = text(svc, &["spec", "type"]);
    let cluster_ip = array(svc, &["spec", "clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| or(text(svc, &["spec", "clusterIP"]), "<none>"));
    let ports: Vec<String> = array(svc, &["spec", "ports"])
        .iter()
        .map(|p| {
            let port = int(p, &["port"]);
            let proto = or(text(p, &["protocol"]), "TCP");
            match int(p, &["nodePort"]) {
                n if n > 0 => format!("{port}:{n}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    let selector = at(svc, &["spec", "selector"])
        .and_then(Value::as_object)
        .map(format_labels)
        .unwrap_or_else(|| "<none>".to_string());
    vec![
        name(svc).into(),
        svc_type.into(),
        cluster_ip.into(),
        service_external_ip(svc, svc_type).into(),
        ports.into(),
        age(svc, now).into(),
        selector.into(),
    ]
}

/// Upstream's `getServiceExternalIP` (wide: no truncation of load-balancer addresses).
fn service_external_ip(svc: &Value, svc_type: &str) -> String {
    let external: Vec<&str> = array(svc, &["spec", "externalIPs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match svc_type {
        "ClusterIP" | "NodePort" => {
            if external.is_empty() {
                "<none>".to_string()
            } else {
                external.join(",")
            }
        }
        "LoadBalancer" => {
            let mut ingress: Vec<&str> = array(svc, &["status", "loadBalancer", "ingress"])
                .iter()
                .filter_map(|i| {
                    let ip = text(i, &["ip"]);
                    let host = text(i, &["hostname"]);
                    (!ip.is_empty())
                        .then_some(ip)
                        .or((!host.is_empty()).then_some(host))
                })
                .collect();
            ingress.sort_unstable();
            ingress.dedup();
            ingress.extend(external);
            if ingress.is_empty() {
                "<pending>".to_string()
            } else {
                ingress.join(",")
            }
        }
        "ExternalName" => text(svc, &["spec", "externalName"]).to_string(),
        _ => "<unknown>".to_string(),
    }
}

/// `labels.FormatLabels`: sorted `k=v` joined by ",", `<none>` when empty.
fn format_labels(m: &Map<String, Value>) -> String {
    if m.is_empty() {
        return "<none>".to_string();
    }
    let mut pairs: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    pairs.sort();
    pairs.join(",")
}

fn has_condition(status: &Value, kind: &str) -> bool {
    array(status, &["conditions"])
        .iter()
        .any(|c| text(c, &["type"]) == kind && text(c, &["status"]) == "True")
}

/// The `Ready`, `Status` and `Restarts` logic of upstream's `printPod`.
fn pod_cells(pod: &Value, now: Timestamp) -> (Vec<Value>, Option<Value>) {
    let spec = at(pod, &["spec"]).unwrap_or(&Value::Null);
    let status = at(pod, &["status"]).unwrap_or(&Value::Null);
    let mut total = array(spec, &["containers"]).len();
    let mut ready = 0usize;
    let mut restarts = 0i64;
    let mut restartable_init_restarts = 0i64;
    let mut last_restart: Option<Timestamp> = None;
    let mut last_restartable_init_restart: Option<Timestamp> = None;

    let phase = text(status, &["phase"]);
    let mut reason = or(text(status, &["reason"]), phase).to_string();
    if array(status, &["conditions"])
        .iter()
        .any(|c| text(c, &["type"]) == "PodScheduled" && text(c, &["reason"]) == "SchedulingGated")
    {
        reason = "SchedulingGated".to_string();
    }
    let conditions = match phase {
        "Succeeded" => Some(
            json!([{"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}]),
        ),
        "Failed" => Some(
            json!([{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]),
        ),
        _ => None,
    };

    let init_containers = array(spec, &["initContainers"]);
    let restartable = |name: &str| {
        init_containers
            .iter()
            .any(|c| text(c, &["name"]) == name && text(c, &["restartPolicy"]) == "Always")
    };
    total += init_containers
        .iter()
        .filter(|c| text(c, &["restartPolicy"]) == "Always")
        .count();
    let finished = |c: &Value| timestamp(c, &["lastState", "terminated", "finishedAt"]);

    let mut initializing = false;
    for (i, c) in array(status, &["initContainerStatuses"]).iter().enumerate() {
        let count = int(c, &["restartCount"]);
        restarts += count;
        last_restart = last_restart.max(finished(c));
        let is_restartable = restartable(text(c, &["name"]));
        if is_restartable {
            restartable_init_restarts += count;
            last_restartable_init_restart = last_restartable_init_restart.max(finished(c));
        }
        let terminated = at(c, &["state", "terminated"]);
        let waiting_reason = text(c, &["state", "waiting", "reason"]);
        if terminated.is_some_and(|t| int(t, &["exitCode"]) == 0) {
            continue;
        }
        if is_restartable && at(c, &["started"]).and_then(Value::as_bool) == Some(true) {
            if at(c, &["ready"]).and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            let why = text(t, &["reason"]);
            reason = if !why.is_empty() {
                format!("Init:{why}")
            } else if int(t, &["signal"]) != 0 {
                format!("Init:Signal:{}", int(t, &["signal"]))
            } else {
                format!("Init:ExitCode:{}", int(t, &["exitCode"]))
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{i}/{}", init_containers.len());
        }
        initializing = true;
        break;
    }

    if !initializing || has_condition(status, "Initialized") {
        restarts = restartable_init_restarts;
        last_restart = last_restartable_init_restart;
        let mut has_running = false;
        for c in array(status, &["containerStatuses"]).iter().rev() {
            restarts += int(c, &["restartCount"]);
            last_restart = last_restart.max(finished(c));
            let waiting_reason = text(c, &["state", "waiting", "reason"]);
            let terminated = at(c, &["state", "terminated"]);
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if let Some(t) = terminated {
                let why = text(t, &["reason"]);
                reason = if !why.is_empty() {
                    why.to_string()
                } else if int(t, &["signal"]) != 0 {
                    format!("Signal:{}", int(t, &["signal"]))
                } else {
                    format!("ExitCode:{}", int(t, &["exitCode"]))
                };
            } else if at(c, &["ready"]).and_then(Value::as_bool) == Some(true)
                && at(c, &["state", "running"]).is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if has_condition(status, "Ready") {
                "Running"
            } else {
                "NotReady"
            }
            .to_string();
        }
    }

    if at(pod, &["metadata", "deletionTimestamp"]).is_some() {
        if text(status, &["reason"]) == "NodeLost" {
            reason = "Unknown".to_string();
        } else if phase != "Failed" && phase != "Succeeded" {
            reason = "Terminating".to_string();
        }
    }

    let restarts_cell = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", since(Some(t), now)),
        _ => restarts.to_string(),
    };

    let pod_ip = array(status, &["podIPs"])
        .first()
        .map(|p| text(p, &["ip"]))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| text(status, &["podIP"]));
    let gates = array(spec, &["readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = array(status, &["conditions"]);
        let true_count = gates
            .iter()
            .filter(|g| {
                let kind = text(g, &["conditionType"]);
                conds
                    .iter()
                    .find(|c| text(c, &["type"]) == kind)
                    .is_some_and(|c| text(c, &["status"]) == "True")
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };

    let cells = vec![
        name(pod).into(),
        format!("{ready}/{total}").into(),
        reason.into(),
        restarts_cell.into(),
        age(pod, now).into(),
        or(pod_ip, "<none>").into(),
        or(text(spec, &["nodeName"]), "<none>").into(),
        or(text(status, &["nominatedNodeName"]), "<none>").into(),
        readiness_gates.into(),
    ];
    (cells, conditions)
}

/// Upstream's `listWithMoreString`.
fn list_with_more(list: &[String], count: usize, max: usize) -> String {
    let joined = list.join(",");
    if count > max {
        format!("{joined} + {} more...", count - max)
    } else if joined.is_empty() {
        "<unset>".to_string()
    } else {
        joined
    }
}

fn endpoint_slice_cells(slice: &Value, now: Timestamp) -> Vec<Value> {
    const MAX: usize = 3;
    let ports = array(slice, &["ports"]);
    let port_list: Vec<String> = ports
        .iter()
        .take(MAX)
        .map(|p| match at(p, &["port"]).and_then(Value::as_i64) {
            Some(n) => n.to_string(),
            None => at(p, &["name"])
                .and_then(Value::as_str)
                .unwrap_or("*")
                .to_string(),
        })
        .collect();
    let addresses: Vec<&str> = array(slice, &["endpoints"])
        .iter()
        .flat_map(|e| array(e, &["addresses"]).iter().filter_map(Value::as_str))
        .collect();
    let address_list: Vec<String> = addresses.iter().take(MAX).map(|s| s.to_string()).collect();
    vec![
        name(slice).into(),
        text(slice, &["addressType"]).into(),
        list_with_more(&port_list, ports.len(), MAX).into(),
        list_with_more(&address_list, addresses.len(), MAX).into(),
        age(slice, now).into(),
    ]
}

/// `net.JoinHostPort`: brackets around an IPv6 host.
fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Upstream's `formatEndpoints` with no port filter.
fn format_endpoints(ep: &Value) -> String {
    const MAX: usize = 3;
    let subsets = array(ep, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    let mut list: Vec<String> = Vec::new();
    let mut count = 0usize;
    for ss in subsets {
        let addresses: Vec<&str> = array(ss, &["addresses"])
            .iter()
            .map(|a| text(a, &["ip"]))
            .collect();
        let ports = array(ss, &["ports"]);
        if ports.is_empty() {
            count += addresses.len();
            for ip in &addresses {
                if list.len() == MAX {
                    break;
                }
                list.push(ip.to_string());
            }
            continue;
        }
        for port in ports {
            count += addresses.len();
            for ip in &addresses {
                if list.len() == MAX {
                    break;
                }
                list.push(join_host_port(ip, int(port, &["port"])));
            }
        }
    }
    let joined = list.join(",");
    if count > MAX {
        format!("{joined} + {} more...", count - MAX)
    } else {
        joined
    }
}

fn endpoints_cells(ep: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(ep).into(),
        format_endpoints(ep).into(),
        age(ep, now).into(),
    ]
}

fn node_cells(node: &Value, now: Timestamp) -> Vec<Value> {
    // The last Ready condition wins, as upstream's map does.
    let mut status: Vec<&str> = Vec::new();
    if let Some(c) = array(node, &["status", "conditions"])
        .iter()
        .rev()
        .find(|c| text(c, &["type"]) == "Ready")
    {
        status.push(if text(c, &["status"]) == "True" {
            "Ready"
        } else {
            "NotReady"
        });
    }
    if status.is_empty() {
        status.push("Unknown");
    }
    if at(node, &["spec", "unschedulable"]).and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled");
    }
    let mut roles: Vec<&str> = at(node, &["metadata", "labels"])
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| {
                    if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                        (!role.is_empty()).then_some(role)
                    } else if k == "kubernetes.io/role" {
                        v.as_str().filter(|v| !v.is_empty())
                    } else {
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    roles.sort_unstable();
    roles.dedup();
    let address = |kind: &str| {
        array(node, &["status", "addresses"])
            .iter()
            .find(|a| text(a, &["type"]) == kind)
            .map(|a| text(a, &["address"]))
            .unwrap_or("<none>")
    };
    let info = |field: &str| or(text(node, &["status", "nodeInfo", field]), "<unknown>");
    vec![
        name(node).into(),
        status.join(",").into(),
        or(&roles.join(","), "<none>").into(),
        age(node, now).into(),
        text(node, &["status", "nodeInfo", "kubeletVersion"]).into(),
        address("InternalIP").into(),
        address("ExternalIP").into(),
        info("osImage").into(),
        info("kernelVersion").into(),
        info("containerRuntimeVersion").into(),
    ]
}

/// Upstream's `printEvent`, reading core/v1 or events.k8s.io/v1 field names.
fn event_cells(ev: &Value, now: Timestamp) -> Vec<Value> {
    let new_api = text(ev, &["apiVersion"]).starts_with("events.k8s.io/");
    let (regarding, first_ts, last_ts, count_f, source_f, controller_f, message_f) = if new_api {
        (
            "regarding",
            "deprecatedFirstTimestamp",
            "deprecatedLastTimestamp",
            "deprecatedCount",
            "deprecatedSource",
            "reportingController",
            "note",
        )
    } else {
        (
            "involvedObject",
            "firstTimestamp",
            "lastTimestamp",
            "count",
            "source",
            "reportingComponent",
            "message",
        )
    };
    let first = match timestamp(ev, &[first_ts]) {
        Some(t) => since(Some(t), now),
        None => since(timestamp(ev, &["eventTime"]), now),
    };
    let mut last = match timestamp(ev, &[last_ts]) {
        Some(t) => since(Some(t), now),
        None => first.clone(),
    };
    let mut count = int(ev, &[count_f]);
    if let Some(series) = at(ev, &["series"]) {
        last = since(timestamp(series, &["lastObservedTime"]), now);
        count = int(series, &["count"]);
    } else if count == 0 {
        count = 1;
    }
    let kind = text(ev, &[regarding, "kind"]).to_lowercase();
    let obj_name = text(ev, &[regarding, "name"]);
    let target = if obj_name.is_empty() {
        kind
    } else {
        format!("{kind}/{obj_name}")
    };
    let component = or(
        text(ev, &[source_f, "component"]),
        text(ev, &[controller_f]),
    );
    let instance = or(
        text(ev, &[source_f, "host"]),
        text(ev, &["reportingInstance"]),
    );
    let source = if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    };
    vec![
        last.into(),
        text(ev, &["type"]).into(),
        text(ev, &["reason"]).into(),
        target.into(),
        text(ev, &[regarding, "fieldPath"]).into(),
        source.into(),
        text(ev, &[message_f]).trim().into(),
        first.into(),
        count.into(),
        name(ev).into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2024-06-01T12:00:00Z".parse().unwrap()
    }

    fn cells(kind: &str, obj: Value) -> Vec<Value> {
        let t = table(kind, &[obj], "42", None, now());
        t["rows"][0]["cells"].as_array().unwrap().clone()
    }

    fn strs(cells: &[Value]) -> Vec<String> {
        cells
            .iter()
            .map(|c| {
                c.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| c.to_string())
            })
            .collect()
    }

    #[test]
    fn human_duration_matches_upstream() {
        let cases: &[(i64, &str)] = &[
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (1, "1s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (599, "9m59s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 20 * 60 + 5, "3h20m"),
            (8 * 3600, "8h"),
            (47 * 3600 + 59 * 60, "47h"),
            (48 * 3600, "2d"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (2 * 365 * 86400 + 15 * 86400, "2y15d"),
            (8 * 365 * 86400, "8y"),
            (20 * 365 * 86400, "20y"),
        ];
        for (secs, want) in cases {
            assert_eq!(
                human_duration(SignedDuration::from_secs(*secs)),
                *want,
                "{secs}s"
            );
        }
        assert_eq!(human_duration(SignedDuration::from_millis(-1500)), "0s");
        assert_eq!(
            human_duration(SignedDuration::from_millis(-2500)),
            "<invalid>"
        );
    }

    #[test]
    fn a_table_has_upstreams_envelope() {
        let svc = json!({"metadata": {"name": "a", "namespace": "ns", "uid": "u1", "creationTimestamp": "2024-06-01T11:59:15Z"}, "spec": {"type": "ClusterIP", "clusterIP": "10.0.0.1", "ports": [{"port": 80, "protocol": "TCP"}]}});
        let t = table("Service", &[svc], "17", Some("tok"), now());
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(
            t["metadata"],
            json!({"resourceVersion": "17", "continue": "tok"})
        );
        assert_eq!(t["columnDefinitions"][0]["name"], "Name");
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(t["columnDefinitions"][6]["name"], "Selector");
        assert_eq!(t["columnDefinitions"][6]["priority"], 1);
        assert_eq!(
            t["rows"][0]["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"name": "a", "namespace": "ns", "uid": "u1", "creationTimestamp": "2024-06-01T11:59:15Z"}})
        );
        assert_eq!(strs(t["rows"][0]["cells"].as_array().unwrap())[5], "45s");
        let empty = table("Service", &[], "3", None, now());
        assert_eq!(empty["metadata"], json!({"resourceVersion": "3"}));
        assert_eq!(empty["rows"], json!([]));
        assert_eq!(column_definitions("Service"), t["columnDefinitions"]);
    }

    #[test]
    fn a_node_port_service_row_shows_node_ports_and_selector() {
        let svc = json!({
            "metadata": {"name": "web", "creationTimestamp": "2024-06-01T11:00:00Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"port": 80, "nodePort": 30008, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
                     "selector": {"tier": "front", "app": "web"}}
        });
        assert_eq!(
            strs(&cells("Service", svc)),
            [
                "web",
                "NodePort",
                "10.96.0.10",
                "<none>",
                "80:30008/TCP,53/UDP",
                "60m",
                "app=web,tier=front"
            ]
        );
    }

    #[test]
    fn a_load_balancer_service_without_ingress_is_pending() {
        let svc = json!({
            "metadata": {"name": "lb"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.11", "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}]}
        });
        assert_eq!(
            strs(&cells("Service", svc)),
            [
                "lb",
                "LoadBalancer",
                "10.96.0.11",
                "<pending>",
                "443:31443/TCP",
                "<unknown>",
                "<none>"
            ]
        );
        let svc = json!({
            "metadata": {"name": "lb"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.11", "externalIPs": ["192.0.2.9"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}, {"hostname": "lb.example.com"}]}}
        });
        assert_eq!(
            strs(&cells("Service", svc))[3],
            "203.0.113.7,lb.example.com,192.0.2.9"
        );
    }

    #[test]
    fn an_external_name_service_shows_its_external_name() {
        let svc = json!({
            "metadata": {"name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "db.example.com"}
        });
        assert_eq!(
            strs(&cells("Service", svc)),
            [
                "ext",
                "ExternalName",
                "<none>",
                "db.example.com",
                "<none>",
                "<unknown>",
                "<none>"
            ]
        );
    }

    #[test]
    fn a_headless_service_shows_none_as_its_cluster_ip() {
        let svc = json!({
            "metadata": {"name": "headless"},
            "spec": {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 5432, "protocol": "TCP"}], "selector": {"app": "pg"}}
        });
        assert_eq!(
            strs(&cells("Service", svc)),
            [
                "headless",
                "ClusterIP",
                "None",
                "<none>",
                "5432/TCP",
                "<unknown>",
                "app=pg"
            ]
        );
    }

    #[test]
    fn a_running_pod_row_shows_readiness_ip_and_node() {
        let pod = json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2024-06-01T09:00:00Z"},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "podIPs": [{"ip": "10.244.0.5"}],
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2024-06-01T09:00:05Z"}}}]}
        });
        let t = table("Pod", &[pod], "1", None, now());
        assert_eq!(
            strs(t["rows"][0]["cells"].as_array().unwrap()),
            [
                "web-1",
                "1/1",
                "Running",
                "0",
                "3h",
                "10.244.0.5",
                "node-a",
                "<none>",
                "<none>"
            ]
        );
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Ready",
                "Status",
                "Restarts",
                "Age",
                "IP",
                "Node",
                "Nominated Node",
                "Readiness Gates"
            ]
        );
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        assert_eq!(t["columnDefinitions"][4]["priority"], 0);
        assert!(t["rows"][0].get("conditions").is_none());
    }

    #[test]
    fn a_terminating_pod_shows_terminating() {
        let pod = json!({
            "metadata": {"name": "web-2", "creationTimestamp": "2024-06-01T11:58:00Z", "deletionTimestamp": "2024-06-01T11:59:50Z"},
            "spec": {"nodeName": "node-b", "containers": [{"name": "app"}, {"name": "side"}]},
            "status": {"phase": "Running", "podIP": "10.244.1.9",
                       "containerStatuses": [
                           {"name": "app", "ready": true, "restartCount": 2, "state": {"running": {}},
                            "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-06-01T11:55:00Z"}}},
                           {"name": "side", "ready": false, "restartCount": 1, "state": {"running": {}}}]}
        });
        assert_eq!(
            strs(&cells("Pod", pod)),
            [
                "web-2",
                "1/2",
                "Terminating",
                "3 (5m ago)",
                "2m",
                "10.244.1.9",
                "node-b",
                "<none>",
                "<none>"
            ]
        );
    }

    #[test]
    fn pod_status_follows_container_and_init_states() {
        let waiting = json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "app", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
        });
        assert_eq!(
            strs(&cells("Pod", waiting))[1..4],
            ["0/1", "CrashLoopBackOff", "4"]
        );
        let init = json!({
            "metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "app"}]},
            "status": {"phase": "Pending",
                       "initContainerStatuses": [{"name": "i1", "state": {"terminated": {"exitCode": 0}}}, {"name": "i2", "state": {"running": {}}}],
                       "containerStatuses": [{"name": "app", "state": {"waiting": {"reason": "PodInitializing"}}}]}
        });
        assert_eq!(strs(&cells("Pod", init))[1..3], ["0/1", "Init:1/2"]);
        let done = json!({
            "metadata": {"name": "job", "deletionTimestamp": "2024-06-01T11:00:00Z"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Succeeded", "containerStatuses": [{"name": "app", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}
        });
        let t = table("Pod", &[done], "1", None, now());
        assert_eq!(t["rows"][0]["cells"][2], "Completed");
        assert_eq!(t["rows"][0]["conditions"][0]["reason"], "Succeeded");
        let gated = json!({
            "metadata": {"name": "g"},
            "spec": {"containers": [{"name": "app"}], "readinessGates": [{"conditionType": "example.com/ok"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}
        });
        let gated = strs(&cells("Pod", gated));
        assert_eq!(gated[2], "SchedulingGated");
        assert_eq!(gated[8], "0/1");
    }

    #[test]
    fn an_endpoint_slice_with_five_endpoints_lists_three_and_more() {
        let eps: Vec<Value> = (1..=5)
            .map(|i| json!({"addresses": [format!("10.0.0.{i}")]}))
            .collect();
        let slice = json!({
            "metadata": {"name": "web-abc12", "creationTimestamp": "2024-05-30T12:00:00Z"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "https", "port": 443, "protocol": "TCP"}],
            "endpoints": eps
        });
        assert_eq!(
            strs(&cells("EndpointSlice", slice)),
            [
                "web-abc12",
                "IPv4",
                "80,443",
                "10.0.0.1,10.0.0.2,10.0.0.3 + 2 more...",
                "2d"
            ]
        );
        let empty =
            json!({"metadata": {"name": "e"}, "addressType": "IPv6", "ports": [{"name": "x"}, {}]});
        assert_eq!(
            strs(&cells("EndpointSlice", empty))[2..4],
            ["x,*", "<unset>"]
        );
        let none = json!({"metadata": {"name": "n"}, "addressType": "IPv4"});
        assert_eq!(
            strs(&cells("EndpointSlice", none))[2..4],
            ["<unset>", "<unset>"]
        );
    }

    #[test]
    fn endpoints_rows_join_addresses_and_ports() {
        let ep = json!({
            "metadata": {"name": "web"},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "fd00::2"}], "ports": [{"port": 80}, {"port": 443}]}]
        });
        assert_eq!(
            strs(&cells("Endpoints", ep)),
            [
                "web",
                "10.0.0.1:80,[fd00::2]:80,10.0.0.1:443 + 1 more...",
                "<unknown>"
            ]
        );
        assert_eq!(
            strs(&cells("Endpoints", json!({"metadata": {"name": "x"}})))[1],
            "<none>"
        );
    }

    #[test]
    fn node_rows_show_status_roles_and_wide_columns() {
        let node = json!({
            "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "master"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}],
                       "nodeInfo": {"kubeletVersion": "v1.31.0", "osImage": "Debian", "kernelVersion": "6.1", "containerRuntimeVersion": "containerd://1.7"}}
        });
        assert_eq!(
            strs(&cells("Node", node)),
            [
                "n1",
                "Ready,SchedulingDisabled",
                "control-plane,master",
                "<unknown>",
                "v1.31.0",
                "192.168.1.10",
                "<none>",
                "Debian",
                "6.1",
                "containerd://1.7"
            ]
        );
        let bare = json!({"metadata": {"name": "n2"}});
        assert_eq!(strs(&cells("Node", bare))[1..3], ["Unknown", "<none>"]);
    }

    #[test]
    fn namespace_lease_and_other_rows_are_short() {
        let ns = json!({"metadata": {"name": "default"}, "status": {"phase": "Active"}});
        assert_eq!(
            strs(&cells("Namespace", ns)),
            ["default", "Active", "<unknown>"]
        );
        let lease = json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "svcplane-1"}});
        assert_eq!(
            strs(&cells("Lease", lease)),
            ["l", "svcplane-1", "<unknown>"]
        );
        let secret =
            json!({"metadata": {"name": "s", "creationTimestamp": "2024-06-01T11:59:59Z"}});
        assert_eq!(strs(&cells("Secret", secret)), ["s", "1s"]);
    }

    #[test]
    fn event_rows_follow_upstream_for_both_event_apis() {
        let core = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "web-1.17a"},
            "involvedObject": {"kind": "Pod", "name": "web-1", "fieldPath": "spec.containers{app}"},
            "reason": "Started", "type": "Normal", "message": " Started container app ",
            "source": {"component": "kubelet", "host": "node-a"},
            "firstTimestamp": "2024-06-01T11:50:00Z", "lastTimestamp": "2024-06-01T11:59:00Z", "count": 3
        });
        assert_eq!(
            strs(&cells("Event", core)),
            [
                "60s",
                "Normal",
                "Started",
                "pod/web-1",
                "spec.containers{app}",
                "kubelet, node-a",
                "Started container app",
                "10m",
                "3",
                "web-1.17a"
            ]
        );
        let new = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e2"},
            "regarding": {"kind": "Service", "name": "web"},
            "reason": "Allocated", "type": "Normal", "note": "ok",
            "reportingController": "svcplane", "eventTime": "2024-06-01T11:59:30.000000Z"
        });
        assert_eq!(
            strs(&cells("Event", new)),
            [
                "30s",
                "Normal",
                "Allocated",
                "service/web",
                "",
                "svcplane",
                "ok",
                "30s",
                "1",
                "e2"
            ]
        );
    }
}
