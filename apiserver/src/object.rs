//! Objects as the API server handles them: JSON values checked against the typed Kubernetes
//! structs (k8s-openapi), with strict-decoding diagnostics, metadata accessors, the system
//! fields the server owns, and the plain server-side defaults of each kind.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::resource::Resource;

/// How unknown fields in a body are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Reject unknown fields with 400 BadRequest.
    Strict,
    /// Accept, drop them and warn in a `Warning` header.
    Warn,
    /// Accept and drop them silently.
    Ignore,
}

impl FieldValidation {
    pub fn parse(text: Option<&str>) -> Result<FieldValidation, ApiError> {
        match text {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: \"{other}\": supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(value: Value) -> Result<Value, String> {
    let typed: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// The value as the typed struct of `kind` sees it: known fields only, in canonical form.
fn normalize(kind_of: &Resource, value: Value) -> Result<Value, String> {
    use k8s_openapi::api::{coordination, core::v1 as core, discovery, events};
    match (kind_of.group, kind_of.kind) {
        ("", "Namespace") => roundtrip::<core::Namespace>(value),
        ("", "Service") => roundtrip::<core::Service>(value),
        ("", "Endpoints") => roundtrip::<core::Endpoints>(value),
        ("", "Pod") => roundtrip::<core::Pod>(value),
        ("", "Node") => roundtrip::<core::Node>(value),
        ("", "Event") => roundtrip::<core::Event>(value),
        ("discovery.k8s.io", _) => roundtrip::<discovery::v1::EndpointSlice>(value),
        ("coordination.k8s.io", _) => roundtrip::<coordination::v1::Lease>(value),
        ("events.k8s.io", _) => roundtrip::<events::v1::Event>(value),
        _ => Ok(value),
    }
}

/// Paths of fields in `given` that `known` lacks (`spec.foo`, `spec.ports[0].bar`).
fn unknown_fields(given: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (given, known) {
        (Value::Object(g), Value::Object(k)) => {
            for (key, value) in g {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    Some(known_value) => unknown_fields(value, known_value, &child, out),
                    None if value.is_null() => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(g), Value::Array(k)) => {
            for (i, (value, known_value)) in g.iter().zip(k).enumerate() {
                unknown_fields(value, known_value, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes a request body for `resource`: checks its kind and apiVersion, then its fields.
/// Returns the canonical object and the warnings for dropped unknown fields.
pub fn decode(
    resource: &Resource,
    body: Value,
    validation: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let Value::Object(mut map) = body else {
        return Err(ApiError::bad_request(format!(
            "the body of the request is not a JSON object; send a {} object",
            resource.kind
        )));
    };
    let api_version = resource.api_version();
    match map.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("kind".into(), json!(resource.kind));
        }
        Some(kind) if kind == resource.kind => {}
        Some(kind) => {
            let version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
            return Err(ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {}: this URL serves {} objects ({api_version})",
                resource.kind, resource.kind
            )));
        }
    }
    match map.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("apiVersion".into(), json!(api_version));
        }
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    let given = Value::Object(map);
    let known = normalize(resource, given.clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            resource.kind, resource.version, resource.kind
        ))
    })?;
    let mut unknown = Vec::new();
    unknown_fields(&given, &known, "", &mut unknown);
    let warnings: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    if validation == FieldValidation::Strict && !warnings.is_empty() {
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            warnings.join(", ")
        )));
    }
    let warnings = if validation == FieldValidation::Warn {
        warnings
    } else {
        Vec::new()
    };
    Ok((known, warnings))
}

/// Re-checks a stored or patched object against its type (no unknown-field handling).
pub fn canonical(resource: &Resource, value: Value) -> Result<Value, ApiError> {
    normalize(resource, value).map_err(|e| {
        ApiError::new(
            422,
            "Invalid",
            format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                resource.kind, resource.version, resource.kind
            ),
        )
    })
}

/// `metadata` of an object, created if absent.
pub fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    let Value::Object(map) = object else {
        unreachable!("objects are JSON objects (checked when decoded)");
    };
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("metadata is an object")
}

/// A string field of `metadata` ("" when absent).
pub fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.finalizers`.
pub fn finalizers(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether an update moves `metadata.generation` on: a change of `spec`, or for an
/// EndpointSlice (which has none) of anything but metadata, or of its labels, as upstream's
/// endpointslice strategy counts.
pub fn generation_changes(resource: &Resource, current: &Value, next: &Value) -> bool {
    if resource.kind != "EndpointSlice" {
        return next.get("spec") != current.get("spec");
    }
    let without_meta = |v: &Value| {
        let mut v = v.clone();
        if let Value::Object(map) = &mut v {
            map.remove("metadata");
        }
        v
    };
    without_meta(current) != without_meta(next)
        || current.pointer("/metadata/labels") != next.pointer("/metadata/labels")
}

/// The object with `metadata.resourceVersion` set.
pub fn with_revision(mut object: Value, revision: u64) -> Value {
    meta_mut(&mut object).insert("resourceVersion".into(), json!(revision.to_string()));
    object
}

/// A random RFC 4122 version-4 UUID.
pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `generateName` plus five characters from upstream's alphabet.
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    // Upstream truncates the prefix so the name stays within 63 characters.
    let prefix: String = prefix.chars().take(58).collect();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

/// The server's clock as a Kubernetes `Time` (RFC 3339, seconds).
pub fn now() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .expect("now is a valid time")
        .to_string()
}

/// Plain defaults a create or update gets before validation and admission.
pub fn apply_defaults(resource: &Resource, object: &mut Value) {
    match (resource.group, resource.kind) {
        ("", "Service") => default_service(object),
        ("", "Pod") => default_pod(object),
        _ => {}
    }
}

fn default_service(object: &mut Value) {
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        object["spec"] = json!({"type": "ClusterIP", "sessionAffinity": "None"});
        return;
    };
    let service_type = spec
        .entry("type")
        .or_insert_with(|| json!("ClusterIP"))
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    spec.entry("sessionAffinity")
        .or_insert_with(|| json!("None"));
    if spec.get("sessionAffinity") == Some(&json!("ClientIP")) {
        let config = spec
            .entry("sessionAffinityConfig")
            .or_insert_with(|| json!({}));
        let client_ip = &mut config["clientIP"];
        if client_ip.get("timeoutSeconds").is_none() {
            client_ip["timeoutSeconds"] = json!(10800);
        }
    }
    if service_type != "ExternalName" {
        spec.entry("internalTrafficPolicy")
            .or_insert_with(|| json!("Cluster"));
    }
    if service_type == "NodePort" || service_type == "LoadBalancer" {
        spec.entry("externalTrafficPolicy")
            .or_insert_with(|| json!("Cluster"));
    }
    if service_type == "LoadBalancer" {
        spec.entry("allocateLoadBalancerNodePorts")
            .or_insert_with(|| json!(true));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.entry("protocol").or_insert_with(|| json!("TCP"));
            let unset = match port.get("targetPort") {
                None | Some(Value::Null) => true,
                Some(Value::Number(n)) => n.as_i64() == Some(0),
                Some(Value::String(s)) => s.is_empty(),
                _ => false,
            };
            if unset && let Some(number) = port.get("port").cloned() {
                port.insert("targetPort".into(), number);
            }
        }
    }
}

fn default_pod(object: &mut Value) {
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.entry("restartPolicy")
        .or_insert_with(|| json!("Always"));
    spec.entry("dnsPolicy")
        .or_insert_with(|| json!("ClusterFirst"));
    spec.entry("terminationGracePeriodSeconds")
        .or_insert_with(|| json!(30));
    spec.entry("schedulerName")
        .or_insert_with(|| json!("default-scheduler"));
    spec.entry("enableServiceLinks")
        .or_insert_with(|| json!(true));
}

/// What a Service's type asks of it (upstream's `needsClusterIP`, `needsNodePort`,
/// `needsHCNodePort`).
struct Shape {
    type_: String,
    local: bool,
}

impl Shape {
    fn of(service: &Value) -> Shape {
        let text = |pointer: &str| service.pointer(pointer).and_then(Value::as_str);
        Shape {
            type_: text("/spec/type").unwrap_or("ClusterIP").to_string(),
            local: text("/spec/externalTrafficPolicy") == Some("Local"),
        }
    }

    fn needs_cluster_ip(&self) -> bool {
        self.type_ != "ExternalName"
    }

    fn needs_node_port(&self) -> bool {
        self.type_ == "NodePort" || self.type_ == "LoadBalancer"
    }

    fn needs_health_check_node_port(&self) -> bool {
        self.type_ == "LoadBalancer" && self.local
    }
}

/// Upstream's `dropTypeDependentFields`: when a Service update changes its type, fields the
/// old type needed and the new one does not are dropped — if the client left them as they
/// were — so a type change does not have to clear them by hand.
pub fn drop_type_dependent_fields(resource: &Resource, old: &Value, new: &mut Value) {
    if !resource.is_service() {
        return;
    }
    let (was, is) = (Shape::of(old), Shape::of(new));
    let same = |field: &str, new: &Value| old.pointer(field) == new.pointer(field);
    let mut drop = Vec::new();
    if was.needs_cluster_ip() && !is.needs_cluster_ip() {
        if same("/spec/clusterIP", new) && same("/spec/clusterIPs", new) {
            drop.extend(["clusterIP", "clusterIPs"]);
        }
        if same("/spec/ipFamilies", new) {
            drop.push("ipFamilies");
        }
        if same("/spec/ipFamilyPolicy", new) {
            drop.push("ipFamilyPolicy");
        }
    }
    if was.needs_health_check_node_port()
        && !is.needs_health_check_node_port()
        && same("/spec/healthCheckNodePort", new)
    {
        drop.push("healthCheckNodePort");
    }
    if is.type_ != "LoadBalancer" {
        for field in ["allocateLoadBalancerNodePorts", "loadBalancerClass"] {
            if same(&format!("/spec/{field}"), new) {
                drop.push(field);
            }
        }
    }
    if !is.needs_node_port() && same("/spec/externalTrafficPolicy", new) {
        drop.push("externalTrafficPolicy");
    }
    let node_ports = |v: &Value| -> Vec<Value> {
        v.pointer("/spec/ports")
            .and_then(Value::as_array)
            .map(|ports| {
                ports
                    .iter()
                    .map(|p| p.get("nodePort").cloned().unwrap_or(Value::Null))
                    .collect()
            })
            .unwrap_or_default()
    };
    let clear_node_ports =
        was.needs_node_port() && !is.needs_node_port() && node_ports(old) == node_ports(new);
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for field in drop {
        spec.remove(field);
    }
    if clear_node_ports && let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.remove("nodePort");
        }
    }
}

/// Upstream's `patchAllocatedValues`: a Service update that leaves out values the Service
/// already has (a `kubectl replace` of the original manifest) keeps them — its cluster IPs
/// (and so its families and policy), the nodePorts of ports of the same name, its
/// healthCheckNodePort — where the new type still needs them.
pub fn patch_allocated_values(resource: &Resource, old: &Value, new: &mut Value) {
    if !resource.is_service() {
        return;
    }
    let (was, is) = (Shape::of(old), Shape::of(new));
    let unset = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Number(n)) => n.as_i64() == Some(0),
        _ => false,
    };
    let old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
    let hc_needed = was.needs_health_check_node_port() && is.needs_health_check_node_port();
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if was.needs_cluster_ip() && is.needs_cluster_ip() {
        for field in ["clusterIP", "clusterIPs", "ipFamilyPolicy"] {
            if unset(spec.get(field)) && !unset(old_spec.get(field)) {
                spec.insert(field.into(), old_spec[field].clone());
            }
        }
        if unset(spec.get("ipFamilies"))
            && spec.get("clusterIPs") == old_spec.get("clusterIPs")
            && !unset(old_spec.get("ipFamilies"))
        {
            spec.insert("ipFamilies".into(), old_spec["ipFamilies"].clone());
        }
    }
    if was.needs_node_port() && is.needs_node_port() {
        let node_ports = |ports: Option<&Value>| -> Vec<(String, i64)> {
            ports
                .and_then(Value::as_array)
                .map(|ports| {
                    ports
                        .iter()
                        .map(|p| {
                            let name = p
                                .get("name")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string();
                            (name, p.get("nodePort").and_then(Value::as_i64).unwrap_or(0))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let before = node_ports(old_spec.get("ports"));
        let after = node_ports(spec.get("ports"));
        let used: Vec<i64> = after
            .iter()
            .map(|(_, n)| *n)
            .filter(|n| *n != 0 && before.iter().any(|(_, b)| b == n))
            .collect();
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                if !unset(port.get("nodePort")) {
                    continue;
                }
                let name = port.get("name").and_then(Value::as_str).unwrap_or("");
                if let Some((_, previous)) = before.iter().find(|(n, p)| n == name && *p != 0)
                    && !used.contains(previous)
                {
                    port.insert("nodePort".into(), json!(previous));
                }
            }
        }
    }
    if hc_needed
        && unset(spec.get("healthCheckNodePort"))
        && !unset(old_spec.get("healthCheckNodePort"))
    {
        spec.insert(
            "healthCheckNodePort".into(),
            old_spec["healthCheckNodePort"].clone(),
        );
    }
}

/// Upstream's `trimFieldsForDualStackDowngrade`: an update to `ipFamilyPolicy: SingleStack`
/// that leaves a dual-stack Service's clusterIPs and ipFamilies as they were keeps only the
/// primary ones (the releaser frees the secondary IP once the write lands).
pub fn trim_for_single_stack(resource: &Resource, old: &Value, new: &mut Value) {
    if !resource.is_service() {
        return;
    }
    let single = new.pointer("/spec/ipFamilyPolicy").and_then(Value::as_str) == Some("SingleStack");
    let was_dual = old
        .pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .is_some_and(|ips| ips.len() == 2);
    if !single || !was_dual {
        return;
    }
    for field in ["clusterIPs", "ipFamilies"] {
        let pointer = format!("/spec/{field}");
        if new.pointer(&pointer) == old.pointer(&pointer)
            && let Some(list) = new.pointer_mut(&pointer).and_then(Value::as_array_mut)
        {
            list.truncate(1);
        }
    }
}

/// What a create resets: the status a client may not set, and each kind's initial status.
pub fn prepare_create(resource: &Resource, object: &mut Value) {
    let Value::Object(map) = object else { return };
    match (resource.group, resource.kind) {
        ("", "Service") => {
            map.insert("status".into(), json!({"loadBalancer": {}}));
        }
        ("", "Pod") => {
            map.insert(
                "status".into(),
                json!({"phase": "Pending", "qosClass": "BestEffort"}),
            );
        }
        ("", "Namespace") => {
            map.insert("status".into(), json!({"phase": "Active"}));
            map.insert("spec".into(), json!({"finalizers": ["kubernetes"]}));
            let name = meta_str(object, "name").to_string();
            let meta = meta_mut(object);
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            labels["kubernetes.io/metadata.name"] = json!(name);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::find;

    #[test]
    fn an_endpoint_slice_generation_moves_with_its_endpoints_and_labels_only() {
        let slices = find("discovery.k8s.io", "v1", "endpointslices").unwrap();
        let slice = json!({"metadata": {"name": "s", "labels": {"a": "1"}}, "addressType": "IPv4", "endpoints": []});
        let mut annotated = slice.clone();
        annotated["metadata"]["annotations"] = json!({"x": "y"});
        assert!(!generation_changes(slices, &slice, &annotated));
        let mut relabelled = slice.clone();
        relabelled["metadata"]["labels"]["a"] = json!("2");
        assert!(generation_changes(slices, &slice, &relabelled));
        let mut grown = slice.clone();
        grown["endpoints"] = json!([{"addresses": ["10.0.0.1"]}]);
        assert!(generation_changes(slices, &slice, &grown));
        let services = find("", "v1", "services").unwrap();
        assert!(
            !generation_changes(services, &slice, &grown),
            "no spec, no change"
        );
    }

    #[test]
    fn strict_decoding_names_every_unknown_field() {
        let svc = find("", "v1", "services").unwrap();
        let body = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
            "spec": {"foo": 1, "ports": [{"port": 80, "bar": true}]}});
        let e = decode(svc, body.clone(), FieldValidation::Strict).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "strict decoding error: unknown field \"spec.foo\", unknown field \"spec.ports[0].bar\""
        );
        let (object, warnings) = decode(svc, body, FieldValidation::Warn).unwrap();
        assert_eq!(warnings.len(), 2);
        assert_eq!(object["spec"], json!({"ports": [{"port": 80}]}));
    }

    #[test]
    fn a_body_of_another_kind_is_refused() {
        let svc = find("", "v1", "services").unwrap();
        let e = decode(
            svc,
            json!({"apiVersion": "v1", "kind": "Pod"}),
            FieldValidation::Strict,
        )
        .unwrap_err();
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        assert!(
            e.message
                .starts_with("Pod in version \"v1\" cannot be handled as a Service")
        );
        let e = decode(
            svc,
            json!({"kind": "Service", "spec": {"ports": "x"}}),
            FieldValidation::Ignore,
        )
        .unwrap_err();
        assert!(e.message.contains("spec.ports"), "{}", e.message);
    }

    #[test]
    fn services_get_the_plain_defaults() {
        let svc = find("", "v1", "services").unwrap();
        let mut object = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}]}});
        apply_defaults(svc, &mut object);
        assert_eq!(
            object["spec"],
            json!({"type": "NodePort", "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
                "externalTrafficPolicy": "Cluster",
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80},
                          {"port": 53, "protocol": "UDP", "targetPort": "dns"}]})
        );
    }

    #[test]
    fn uids_are_version_4() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
        assert_ne!(uid, new_uid());
        assert_eq!(generate_name("web-").len(), 9);
    }
}
