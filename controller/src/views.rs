//! Conversions at the API boundary of the endpoint controllers: Services, Pods, Nodes,
//! Endpoints and EndpointSlices from the API into the lean views [`crate::endpoints`] and
//! [`crate::endpointslices`] decide on, and the decided objects back into API objects.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints as ApiEndpoints, Node,
    ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as ApiEndpoint, EndpointConditions, EndpointHints, EndpointPort as ApiSlicePort,
    EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use cache::selector::LabelSelector;

use crate::endpoint_controllers::Manage;
use crate::endpoints::{
    ANNOTATION_SELECTOR, Address, ContainerPort, Endpoints, PodRef, PodView, Port, Selector,
    ServicePort, ServiceView, Subset, TargetPort,
};
use crate::endpointslices::{AddressType, Endpoint, Hints, Slice, SlicePort, SliceServiceView};

/// What a Service's [`ANNOTATION_SELECTOR`] annotation amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectorAnnotation {
    /// The Service has none.
    Absent,
    /// It selects the Service's pods.
    InUse,
    /// `spec.selector` is set too, and wins.
    Ignored,
    /// It does not parse: the message says why and where.
    Malformed(String),
}

/// Parses a [`ANNOTATION_SELECTOR`] value: kubectl's label-selector syntax with set-based
/// operators. An empty selector is refused (it would select every pod of the namespace).
pub fn parse_selector_annotation(value: &str) -> Result<LabelSelector, String> {
    let quoted = format!("{ANNOTATION_SELECTOR} {value:?}");
    match LabelSelector::parse_located(value) {
        Ok(selector) if selector.is_empty() => Err(format!(
            "{quoted} is empty, which would select every pod of the namespace; write at least one requirement, e.g. \"app=web\""
        )),
        Ok(selector) => Ok(selector),
        Err(e) => Err(format!(
            "{quoted} does not parse: {e}; write a label selector as kubectl takes it, e.g. \"app in (a,b),tier notin (cache),!legacy,release\""
        )),
    }
}

/// The selector of a Service and what its annotation amounts to: `spec.selector` when set,
/// else the annotation when it parses.
fn selector_of(svc: &Service) -> (Option<Selector>, SelectorAnnotation) {
    let spec = svc.spec.as_ref().and_then(|s| s.selector.clone());
    let annotation = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_SELECTOR));
    match (spec, annotation) {
        (Some(map), None) => (Some(Selector::Spec(map)), SelectorAnnotation::Absent),
        (Some(map), Some(_)) => (Some(Selector::Spec(map)), SelectorAnnotation::Ignored),
        (None, None) => (None, SelectorAnnotation::Absent),
        (None, Some(value)) => match parse_selector_annotation(value) {
            Ok(set) => (Some(Selector::Annotation(set)), SelectorAnnotation::InUse),
            Err(message) => (None, SelectorAnnotation::Malformed(message)),
        },
    }
}

/// The Endpoints controller's view of a Service.
pub fn service(svc: &Service) -> ServiceView {
    let meta = &svc.metadata;
    let spec = svc.spec.clone().unwrap_or_default();
    ServiceView {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        selector: selector_of(svc).0,
        external_name: spec.type_.as_deref() == Some("ExternalName"),
        cluster_ip: spec.cluster_ip.clone().unwrap_or_default(),
        ipv6_families: spec
            .ip_families
            .iter()
            .flatten()
            .map(|f| f == "IPv6")
            .collect(),
        publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
        ports: spec
            .ports
            .iter()
            .flatten()
            .map(|p| ServicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                app_protocol: p.app_protocol.clone(),
                target_port: match &p.target_port {
                    Some(IntOrString::Int(n)) => TargetPort::Number(*n),
                    Some(IntOrString::String(s)) => match s.parse::<i32>() {
                        Ok(n) => TargetPort::Number(n),
                        Err(_) => TargetPort::Name(s.clone()),
                    },
                    None => TargetPort::Number(p.port),
                },
            })
            .collect(),
    }
}

/// The EndpointSlice controller's view of a Service.
pub fn slice_service(svc: &Service) -> SliceServiceView {
    SliceServiceView {
        service: service(svc),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        annotations: svc.metadata.annotations.clone().unwrap_or_default(),
        traffic_distribution: svc
            .spec
            .as_ref()
            .and_then(|s| s.traffic_distribution.clone()),
        deleting: svc.metadata.deletion_timestamp.is_some(),
    }
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse().ok()
}

/// The view of a Pod.
pub fn pod(pod: &Pod) -> PodView {
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let mut container_ports = Vec::new();
    let ports_of = |ports: &Option<Vec<k8s_openapi::api::core::v1::ContainerPort>>| {
        ports
            .iter()
            .flatten()
            .map(|p| ContainerPort {
                name: p.name.clone().unwrap_or_default(),
                port: p.container_port,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
            })
            .collect::<Vec<_>>()
    };
    for container in &spec.containers {
        container_ports.extend(ports_of(&container.ports));
    }
    for container in spec.init_containers.iter().flatten() {
        if container.restart_policy.as_deref() == Some("Always") {
            container_ports.extend(ports_of(&container.ports));
        }
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    PodView {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        node_name: spec.node_name.clone(),
        hostname: spec.hostname.clone().unwrap_or_default(),
        subdomain: spec.subdomain.clone().unwrap_or_default(),
        pod_ip: status.pod_ip.as_deref().and_then(parse_ip),
        pod_ips: status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|p| parse_ip(&p.ip))
            .collect(),
        terminal: matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")),
        terminating: meta.deletion_timestamp.is_some(),
        ready,
        container_ports,
    }
}

/// The time of a pod's Ready condition's last transition (its trigger time), RFC 3339.
pub fn pod_trigger_time(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0.to_string())
}

/// What the controllers keep of a Service, converted as the watch delivers it: what both
/// reconcilers read of it, and its creation time (the trigger time of a first sync).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// Its view; `service.selector` is `None` unless the controller manages it in its mode.
    pub slice: SliceServiceView,
    pub created_at: String,
    pub resource_version: Option<String>,
    pub annotation: SelectorAnnotation,
    /// Whether `spec.selector` is set (upstream's controllers manage it).
    pub spec_selector: bool,
}

/// A Service as the controllers keep it when they manage `manage`.
pub fn service_record(svc: &Service, manage: Manage) -> ServiceRecord {
    let mut slice = slice_service(svc);
    let spec_selector = matches!(slice.service.selector, Some(Selector::Spec(_)));
    if manage == Manage::Annotated && spec_selector {
        slice.service.selector = None;
    }
    ServiceRecord {
        slice,
        annotation: selector_of(svc).1,
        spec_selector,
        created_at: svc
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        resource_version: svc.metadata.resource_version.clone(),
    }
}

/// What the controllers keep of a pod: its view and its trigger time, converted as the watch
/// delivers it (the pod object itself is not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    pub view: PodView,
    pub trigger: Option<String>,
}

/// A pod as the controllers keep it.
pub fn pod_record(object: &Pod) -> PodRecord {
    PodRecord {
        view: pod(object),
        trigger: pod_trigger_time(object),
    }
}

/// What the controllers keep of a node: its name and zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    pub zone: String,
}

/// A node as the controllers keep it.
pub fn node_record(node: &Node) -> NodeRecord {
    NodeRecord {
        name: node.metadata.name.clone().unwrap_or_default(),
        zone: node_zone(node),
    }
}

/// A node's zone label, empty when it has none.
pub fn node_zone(node: &Node) -> String {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("topology.kubernetes.io/zone"))
        .cloned()
        .unwrap_or_default()
}

fn address_from_api(a: &EndpointAddress) -> Address {
    Address {
        ip: a.ip.clone(),
        hostname: a.hostname.clone(),
        node_name: a.node_name.clone(),
        target: a.target_ref.as_ref().map(|t| PodRef {
            namespace: t.namespace.clone().unwrap_or_default(),
            name: t.name.clone().unwrap_or_default(),
            uid: t.uid.clone().unwrap_or_default(),
        }),
    }
}

/// Mirroring's view of an Endpoints object.
pub fn mirrored_endpoints(object: &ApiEndpoints) -> crate::mirroring::EndpointsView {
    let view = endpoints(object);
    crate::mirroring::EndpointsView {
        namespace: object.metadata.namespace.clone().unwrap_or_default(),
        name: object.metadata.name.clone().unwrap_or_default(),
        uid: object.metadata.uid.clone().unwrap_or_default(),
        labels: view.labels,
        annotations: view.annotations,
        subsets: view.subsets,
        deleting: object.metadata.deletion_timestamp.is_some(),
    }
}

/// The view of an Endpoints object.
pub fn endpoints(object: &ApiEndpoints) -> Endpoints {
    Endpoints {
        labels: object.metadata.labels.clone().unwrap_or_default(),
        annotations: object.metadata.annotations.clone().unwrap_or_default(),
        subsets: object
            .subsets
            .iter()
            .flatten()
            .map(|s| Subset {
                addresses: s.addresses.iter().flatten().map(address_from_api).collect(),
                not_ready_addresses: s
                    .not_ready_addresses
                    .iter()
                    .flatten()
                    .map(address_from_api)
                    .collect(),
                ports: s
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| Port {
                        name: p.name.clone().unwrap_or_default(),
                        port: p.port,
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                        app_protocol: p.app_protocol.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn pod_ref(target: &Option<PodRef>) -> Option<ObjectReference> {
    target.as_ref().map(|t| ObjectReference {
        kind: Some("Pod".to_string()),
        namespace: Some(t.namespace.clone()),
        name: Some(t.name.clone()),
        uid: Some(t.uid.clone()).filter(|u| !u.is_empty()),
        ..ObjectReference::default()
    })
}

fn address_to_api(a: &Address) -> EndpointAddress {
    EndpointAddress {
        ip: a.ip.clone(),
        hostname: a.hostname.clone(),
        node_name: a.node_name.clone(),
        target_ref: pod_ref(&a.target),
    }
}

/// An Endpoints object named `name` in `namespace` from its view; `base` (the current object)
/// keeps its resourceVersion and the metadata the view does not hold.
pub fn endpoints_to_api(
    namespace: &str,
    name: &str,
    view: &Endpoints,
    base: Option<&ApiEndpoints>,
) -> ApiEndpoints {
    let mut metadata = base
        .map(|b| b.metadata.clone())
        .unwrap_or_else(|| ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        });
    metadata.labels = Some(view.labels.clone());
    metadata.annotations = (!view.annotations.is_empty()).then(|| view.annotations.clone());
    ApiEndpoints {
        metadata,
        subsets: Some(
            view.subsets
                .iter()
                .map(|s| EndpointSubset {
                    addresses: (!s.addresses.is_empty())
                        .then(|| s.addresses.iter().map(address_to_api).collect()),
                    not_ready_addresses: (!s.not_ready_addresses.is_empty())
                        .then(|| s.not_ready_addresses.iter().map(address_to_api).collect()),
                    ports: (!s.ports.is_empty()).then(|| {
                        s.ports
                            .iter()
                            .map(|p| EndpointPort {
                                name: Some(p.name.clone()).filter(|n| !n.is_empty()),
                                port: p.port,
                                protocol: Some(p.protocol.clone()),
                                app_protocol: p.app_protocol.clone(),
                            })
                            .collect()
                    }),
                })
                .collect(),
        ),
    }
}

/// The view of an EndpointSlice.
pub fn slice(object: &EndpointSlice) -> Slice {
    let owner = object
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Service" && o.api_version == "v1")
        .map(|o| o.uid.clone());
    let endpoints_owner = object
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Endpoints" && o.api_version == "v1")
        .map(|o| (o.name.clone(), o.uid.clone()));
    Slice {
        name: object.metadata.name.clone().unwrap_or_default(),
        labels: object.metadata.labels.clone().unwrap_or_default(),
        annotations: object.metadata.annotations.clone().unwrap_or_default(),
        service_owner_uid: owner,
        endpoints_owner,
        address_type: match object.address_type.as_str() {
            "IPv4" => Some(AddressType::IPv4),
            "IPv6" => Some(AddressType::IPv6),
            _ => None,
        },
        ports: object
            .ports
            .iter()
            .flatten()
            .map(|p| SlicePort {
                name: p.name.clone(),
                port: p.port,
                protocol: p.protocol.clone(),
                app_protocol: p.app_protocol.clone(),
            })
            .collect(),
        endpoints: object
            .endpoints
            .iter()
            .flatten()
            .map(|e| {
                let conditions = e.conditions.clone().unwrap_or_default();
                Endpoint {
                    addresses: e.addresses.clone(),
                    ready: conditions.ready,
                    serving: conditions.serving,
                    terminating: conditions.terminating,
                    hostname: e.hostname.clone(),
                    node_name: e.node_name.clone(),
                    zone: e.zone.clone(),
                    target: e.target_ref.as_ref().map(|t| PodRef {
                        namespace: t.namespace.clone().unwrap_or_default(),
                        name: t.name.clone().unwrap_or_default(),
                        uid: t.uid.clone().unwrap_or_default(),
                    }),
                    hints: e.hints.as_ref().map(|h| Hints {
                        for_zones: h
                            .for_zones
                            .iter()
                            .flatten()
                            .map(|z| z.name.clone())
                            .collect(),
                        for_nodes: h
                            .for_nodes
                            .iter()
                            .flatten()
                            .map(|n| n.name.clone())
                            .collect(),
                    }),
                }
            })
            .collect(),
    }
}

/// An EndpointSlice of `service` from its view: a slice to create gets `generateName` and the
/// Service as its controller owner; `base` (the current object) keeps its name,
/// resourceVersion and the metadata the view does not hold.
pub fn slice_to_api(
    service: &ServiceRecord,
    view: &Slice,
    base: Option<&EndpointSlice>,
) -> EndpointSlice {
    let svc = &service.slice.service;
    let owner = ("Service", svc.name.clone(), service.slice.uid.clone());
    owned_slice_to_api(&svc.namespace, owner, view, base)
}

/// An EndpointSlice of a mirrored Endpoints object from its view, owned by the Endpoints.
pub fn mirrored_slice_to_api(
    endpoints: &ApiEndpoints,
    view: &Slice,
    base: Option<&EndpointSlice>,
) -> EndpointSlice {
    let owner = (
        "Endpoints",
        endpoints.metadata.name.clone().unwrap_or_default(),
        endpoints.metadata.uid.clone().unwrap_or_default(),
    );
    let namespace = endpoints.metadata.namespace.clone().unwrap_or_default();
    // Upstream rewrites a mirrored slice from scratch: only its name (and, here, the
    // resourceVersion precondition) carries over, so `generateName` goes.
    let mut slice = owned_slice_to_api(&namespace, owner, view, None);
    if let Some(base) = base {
        slice.metadata.generate_name = None;
        slice.metadata.resource_version = base.metadata.resource_version.clone();
    }
    slice
}

fn owned_slice_to_api(
    namespace: &str,
    (kind, owner_name, owner_uid): (&str, String, String),
    view: &Slice,
    base: Option<&EndpointSlice>,
) -> EndpointSlice {
    let mut metadata = match base {
        Some(b) => b.metadata.clone(),
        None => ObjectMeta {
            namespace: Some(namespace.to_string()),
            generate_name: Some(generate_name(&owner_name)),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_string(),
                kind: kind.to_string(),
                name: owner_name,
                uid: owner_uid,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
    };
    if !view.name.is_empty() {
        metadata.name = Some(view.name.clone());
    }
    metadata.labels = Some(view.labels.clone());
    metadata.annotations = (!view.annotations.is_empty()).then(|| view.annotations.clone());
    EndpointSlice {
        metadata,
        address_type: view
            .address_type
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        ports: Some(
            view.ports
                .iter()
                .map(|p| ApiSlicePort {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: p.protocol.clone(),
                    app_protocol: p.app_protocol.clone(),
                })
                .collect(),
        ),
        endpoints: Some(
            view.endpoints
                .iter()
                .map(|e| ApiEndpoint {
                    addresses: e.addresses.clone(),
                    conditions: Some(EndpointConditions {
                        ready: e.ready,
                        serving: e.serving,
                        terminating: e.terminating,
                    }),
                    hostname: e.hostname.clone(),
                    node_name: e.node_name.clone(),
                    zone: e.zone.clone(),
                    target_ref: pod_ref(&e.target),
                    hints: e.hints.as_ref().map(|h| EndpointHints {
                        for_zones: (!h.for_zones.is_empty()).then(|| {
                            h.for_zones
                                .iter()
                                .map(|z| ForZone { name: z.clone() })
                                .collect()
                        }),
                        for_nodes: (!h.for_nodes.is_empty()).then(|| {
                            h.for_nodes
                                .iter()
                                .map(|n| ForNode { name: n.clone() })
                                .collect()
                        }),
                    }),
                    ..ApiEndpoint::default()
                })
                .collect(),
        ),
    }
}

/// `<service>-`, or the bare name when the dash would make it too long (`getEndpointSlicePrefix`).
pub fn generate_name(service: &str) -> String {
    if service.len() < 253 {
        format!("{service}-")
    } else {
        service.to_string()
    }
}

/// The label map of a Service's key, for finding its slices.
pub fn slice_selector(service: &str, controller_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            crate::endpointslices::LABEL_SERVICE_NAME.to_string(),
            service.to_string(),
        ),
        (
            crate::endpointslices::LABEL_MANAGED_BY.to_string(),
            controller_name.to_string(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_becomes_its_view_with_sidecar_ports_and_readiness() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "web"},
                         "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "hostname": "h", "subdomain": "web",
                "containers": [{"name": "a", "ports": [{"name": "web", "containerPort": 8080}]}],
                "initContainers": [
                    {"name": "side", "restartPolicy": "Always", "ports": [{"name": "metrics", "containerPort": 9090}]},
                    {"name": "once", "ports": [{"name": "skip", "containerPort": 1}]}]},
            "status": {"phase": "Running", "podIP": "10.1.0.2",
                "podIPs": [{"ip": "10.1.0.2"}, {"ip": "fd00::2"}],
                "conditions": [{"type": "Ready", "status": "True",
                                "lastTransitionTime": "2026-01-01T00:00:05Z"}]},
        }))
        .unwrap();
        let view = super::pod(&pod);
        assert!(view.ready && view.terminating && !view.terminal);
        assert_eq!(view.pod_ips.len(), 2);
        let names: Vec<&str> = view
            .container_ports
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["web", "metrics"]);
        assert_eq!(view.container_ports[0].protocol, "TCP");
        assert_eq!(
            pod_trigger_time(&pod).as_deref(),
            Some("2026-01-01T00:00:05Z")
        );
    }

    #[test]
    fn a_service_keeps_nil_and_empty_selectors_apart_and_numeric_target_port_strings() {
        let svc = |selector: serde_json::Value| -> Service {
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "ns"},
                "spec": {"selector": selector, "ports": [
                    {"port": 80, "targetPort": "8080"}, {"name": "m", "port": 90, "targetPort": "metrics"},
                    {"name": "d", "port": 100}]},
            }))
            .unwrap()
        };
        assert_eq!(service(&svc(json!(null))).selector, None);
        assert_eq!(
            service(&svc(json!({}))).selector,
            Some(Selector::Spec(BTreeMap::new()))
        );
        let ports = service(&svc(json!({}))).ports;
        assert_eq!(ports[0].target_port, TargetPort::Number(8080));
        assert_eq!(ports[1].target_port, TargetPort::Name("metrics".into()));
        assert_eq!(ports[2].target_port, TargetPort::Number(100));
    }

    #[test]
    fn the_selector_annotation_selects_only_where_the_mode_and_spec_let_it() {
        let svc = |selector: serde_json::Value, annotation: Option<&str>| -> Service {
            let mut object = json!({
                "metadata": {"name": "web", "namespace": "ns"},
                "spec": {"selector": selector}});
            if let Some(a) = annotation {
                object["metadata"]["annotations"] = json!({ANNOTATION_SELECTOR: a});
            }
            serde_json::from_value(object).unwrap()
        };
        let set = "app in (a,b),tier notin (cache),!legacy,release";
        let annotated = service_record(&svc(json!(null), Some(set)), Manage::Annotated);
        assert_eq!(annotated.annotation, SelectorAnnotation::InUse);
        let Some(Selector::Annotation(parsed)) = &annotated.slice.service.selector else {
            panic!("the annotation selects");
        };
        assert_eq!(
            parsed.to_string(),
            "app in (a,b),!legacy,release,tier notin (cache)"
        );
        // Beside kube-controller-manager, `spec.selector` is not svcplane's.
        let spec = service_record(&svc(json!({"app": "a"}), None), Manage::Annotated);
        assert_eq!(spec.slice.service.selector, None);
        assert!(spec.spec_selector);
        let spec = service_record(&svc(json!({"app": "a"}), None), Manage::All);
        assert!(matches!(
            spec.slice.service.selector,
            Some(Selector::Spec(_))
        ));
        // With both, `spec.selector` wins and the annotation is reported as ignored.
        let both = service_record(&svc(json!({"app": "a"}), Some("app")), Manage::All);
        assert!(matches!(
            both.slice.service.selector,
            Some(Selector::Spec(_))
        ));
        assert_eq!(both.annotation, SelectorAnnotation::Ignored);
        // A malformed or empty annotation selects nothing and says why and where.
        let bad = service_record(&svc(json!(null), Some("app in (a")), Manage::All);
        assert_eq!(bad.slice.service.selector, None);
        let SelectorAnnotation::Malformed(message) = bad.annotation else {
            panic!("a malformed annotation is reported");
        };
        assert!(message.starts_with("svcplane.io/selector \"app in (a\" does not parse: "));
        assert!(message.contains("(at column 10)"), "{message}");
        let SelectorAnnotation::Malformed(empty) =
            service_record(&svc(json!(null), Some(" ")), Manage::All).annotation
        else {
            panic!("an empty annotation is refused");
        };
        assert!(empty.contains("would select every pod"), "{empty}");
    }

    #[test]
    fn a_slice_survives_the_round_trip_through_its_view() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid"}}))
        .unwrap();
        let api: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-abcde", "namespace": "ns", "resourceVersion": "7",
                "labels": {"kubernetes.io/service-name": "web"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web",
                                     "uid": "svc-uid", "controller": true, "blockOwnerDeletion": true}]},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.1.0.2"],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": "n1", "zone": "z1",
                "targetRef": {"kind": "Pod", "namespace": "ns", "name": "p", "uid": "u"},
                "hints": {"forZones": [{"name": "z1"}]}}],
        }))
        .unwrap();
        let view = slice(&api);
        assert_eq!(view.service_owner_uid.as_deref(), Some("svc-uid"));
        let svc = service_record(&svc, Manage::All);
        let back = slice_to_api(&svc, &view, Some(&api));
        assert_eq!(back, api);
        // A slice to create gets generateName and the Service as controller owner.
        let mut fresh = view.clone();
        fresh.name.clear();
        let created = slice_to_api(&svc, &fresh, None);
        assert_eq!(created.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(created.metadata.name, None);
        let owner = &created.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("svc-uid", Some(true))
        );
    }
}
