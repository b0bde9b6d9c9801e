//! The EndpointSlice controller's plan for one Service, as kube-controller-manager v1.37 makes
//! it (`k8s.io/endpointslice` reconciler.go, utils.go, util/, trafficdist/): one slice set per
//! address family and port group, endpoints identified by addresses, hostname and pod, existing
//! slices kept where they still hold what is wanted, new endpoints put into slices being updated
//! (fullest first), then into the unchanged slice they fill best, then into new slices; a
//! placeholder slice when nothing else remains; creates recycled into updates of slices being
//! deleted; `trafficDistribution` hints. Pure, over lean views: a reconciler reads its store,
//! calls [`plan`], and writes the result ([`crate::endpoint_controllers`] does). Zone hints of
//! `service.kubernetes.io/topology-mode: Auto` are not computed (such Services get none).
//!
//! Where upstream takes any endpoint of a set or lists a set unsorted (Go map order), this
//! takes them in a fixed order; upstream's result is one of the orders this may produce.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::endpoints::{
    PodRef, PodView, ServiceView, find_port, has_cluster_ip, pod_counts, selects, sets_hostname,
};

/// `kubernetes.io/service-name`.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// `endpointslice.kubernetes.io/managed-by`.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// kube-controller-manager's EndpointSlice controller's managed-by value, which svcplane writes
/// in `--manage=all` mode so that it and upstream hand over to each other.
pub const UPSTREAM_CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// Annotation with the time of the change that caused the write.
pub const ANNOTATION_TRIGGER_TIME: &str = crate::endpoints::ANNOTATION_TRIGGER_TIME;

/// A slice's `addressType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressType {
    IPv4,
    IPv6,
}

impl AddressType {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::IPv4 => "IPv4",
            AddressType::IPv6 => "IPv6",
        }
    }

    fn holds(self, ip: &IpAddr) -> bool {
        ip.is_ipv6() == (self == AddressType::IPv6)
    }
}

/// An `EndpointPort` of a slice (every field optional, as in the API).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlicePort {
    pub name: Option<String>,
    pub port: Option<i32>,
    pub protocol: Option<String>,
    pub app_protocol: Option<String>,
}

/// An endpoint's topology hints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    pub for_zones: Vec<String>,
    pub for_nodes: Vec<String>,
}

/// An `Endpoint` of a slice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Vec<String>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub hostname: Option<String>,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    pub target: Option<PodRef>,
    pub hints: Option<Hints>,
}

/// What identifies an endpoint across syncs: its sorted addresses, hostname and pod.
pub(crate) type EndpointKey = (Vec<String>, String, String, String);

/// A port group's ports and its desired endpoints.
type PortGroup = (Vec<SlicePort>, BTreeMap<EndpointKey, Endpoint>);

impl Endpoint {
    pub(crate) fn key(&self) -> EndpointKey {
        let mut addresses = self.addresses.clone();
        addresses.sort();
        let (namespace, name) = self
            .target
            .as_ref()
            .map(|t| (t.namespace.clone(), t.name.clone()))
            .unwrap_or_default();
        (
            addresses,
            self.hostname.clone().unwrap_or_default(),
            namespace,
            name,
        )
    }

    /// Equal in everything the key leaves out but hints (`EndpointsEqualBeyondHash`).
    pub(crate) fn equal_beyond_key(&self, other: &Endpoint) -> bool {
        self.node_name == other.node_name
            && self.zone == other.zone
            && self.ready == other.ready
            && self.serving == other.serving
            && self.terminating == other.terminating
            && self.target == other.target
    }

    fn is_ready(&self) -> bool {
        self.ready == Some(true)
    }
}

/// An EndpointSlice as it is (from the store: a name, an owner) or is to be (to create: no
/// name, owned by the Service).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slice {
    /// Empty for a slice to create (the API server completes `generateName`).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The UID of the Service (`apiVersion: v1`, `kind: Service`) among its ownerReferences.
    pub service_owner_uid: Option<String>,
    /// The name and UID of the Endpoints object among its ownerReferences (mirrored slices).
    pub endpoints_owner: Option<(String, String)>,
    pub address_type: Option<AddressType>,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<Endpoint>,
}

/// The writes one sync makes: creates, then updates, then deletes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Slices to create with `generateName: <service>-` (none while the Service is deleting).
    pub create: Vec<Slice>,
    /// Slices to replace (by name, with their resourceVersion as the precondition).
    pub update: Vec<Slice>,
    /// Names of slices to delete.
    pub delete: Vec<String>,
    /// Nodes pods were on that the node store does not know; their pods were skipped (unless
    /// the Service publishes not-ready addresses) and the sync should be retried.
    pub missing_nodes: Vec<String>,
    /// Per address type, the counts upstream's metrics observe.
    pub stats: Vec<TypeStats>,
    /// The trafficDistribution the Service is counted under (valid and not overridden by the
    /// topology annotation), and whether it asks for topology hints by annotation: the labels
    /// of `endpointslices_changed_per_sync`.
    pub traffic_distribution: Option<String>,
    pub topology_annotated: bool,
}

/// What one address type's reconcile counted, for upstream's metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStats {
    /// Desired endpoints no existing slice held (`endpoints_added_per_sync`).
    pub added: usize,
    /// Endpoints dropped from existing slices (`endpoints_removed_per_sync`).
    pub removed: usize,
    /// Desired endpoints (`endpoints_desired`).
    pub endpoints: usize,
    /// Slices once the plan is written (`num_endpoint_slices`).
    pub slices: usize,
    /// Slices a perfect packing would need, at least one (`desired_endpoint_slices`).
    pub desired_slices: usize,
}

/// What the plan needs besides the Service, its pods and its slices.
#[derive(Debug, Clone)]
pub struct Settings<'a> {
    /// `--max-endpoints-per-slice`.
    pub max_endpoints_per_slice: usize,
    /// The managed-by value written and looked for.
    pub controller_name: &'a str,
    /// Whether `PreferSameZone` and `PreferSameNode` count (the PreferSameTrafficDistribution
    /// feature).
    pub prefer_same_traffic_distribution: bool,
}

/// The Service fields only slices need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceServiceView {
    pub service: ServiceView,
    pub uid: String,
    pub annotations: BTreeMap<String, String>,
    pub traffic_distribution: Option<String>,
    pub deleting: bool,
}

/// The address types of a Service's slices: its families, else its ClusterIP's, else (a
/// headless Service without families) both.
pub fn address_types(service: &ServiceView) -> BTreeSet<AddressType> {
    let from_families: BTreeSet<AddressType> = service
        .ipv6_families
        .iter()
        .map(|v6| {
            if *v6 {
                AddressType::IPv6
            } else {
                AddressType::IPv4
            }
        })
        .collect();
    if !from_families.is_empty() {
        return from_families;
    }
    if has_cluster_ip(service) {
        let v6 = service
            .cluster_ip
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_ipv6());
        return [if v6 {
            AddressType::IPv6
        } else {
            AddressType::IPv4
        }]
        .into();
    }
    [AddressType::IPv4, AddressType::IPv6].into()
}

/// The ports of a pod's endpoints (`getEndpointPorts`): each Service port it resolves.
fn endpoint_ports(service: &ServiceView, pod: &PodView) -> Vec<SlicePort> {
    service
        .ports
        .iter()
        .filter_map(|port| {
            find_port(pod, port).map(|number| SlicePort {
                name: Some(port.name.clone()),
                port: Some(number),
                protocol: Some(port.protocol.clone()),
                app_protocol: port.app_protocol.clone(),
            })
        })
        .collect()
}

/// The endpoint of a pod for one address type (`podToEndpoint`).
fn pod_endpoint(
    pod: &PodView,
    zone: Option<&str>,
    service: &ServiceView,
    address_type: AddressType,
) -> Endpoint {
    let serving = pod.ready;
    let terminating = pod.terminating;
    let ready = service.publish_not_ready_addresses || (serving && !terminating);
    Endpoint {
        addresses: pod
            .pod_ips
            .iter()
            .filter(|ip| address_type.holds(ip))
            .map(ToString::to_string)
            .collect(),
        ready: Some(ready),
        serving: Some(serving),
        terminating: Some(terminating),
        hostname: sets_hostname(pod, service).then(|| pod.hostname.clone()),
        node_name: pod.node_name.clone().filter(|n| !n.is_empty()),
        zone: zone.filter(|z| !z.is_empty()).map(str::to_string),
        target: Some(PodRef {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        }),
        hints: None,
    }
}

/// The labels of a slice of `service` (`setEndpointSliceLabels`), and whether the slice's
/// Service-derived labels differ from them.
pub fn slice_labels(
    current: &BTreeMap<String, String>,
    service: &ServiceView,
    controller_name: &str,
) -> (BTreeMap<String, String>, bool) {
    let reserved = |k: &str| {
        k == LABEL_SERVICE_NAME || k == LABEL_MANAGED_BY || k == crate::endpoints::LABEL_HEADLESS
    };
    let own: BTreeMap<String, String> = current
        .iter()
        .filter(|(k, _)| !reserved(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut labels: BTreeMap<String, String> = service
        .labels
        .iter()
        .filter(|(k, _)| !reserved(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let changed = own != labels;
    if !has_cluster_ip(service) {
        labels.insert(crate::endpoints::LABEL_HEADLESS.to_string(), String::new());
    }
    labels.insert(LABEL_SERVICE_NAME.to_string(), service.name.clone());
    labels.insert(LABEL_MANAGED_BY.to_string(), controller_name.to_string());
    (labels, changed)
}

fn new_slice(
    service: &SliceServiceView,
    ports: Vec<SlicePort>,
    address_type: AddressType,
    controller_name: &str,
) -> Slice {
    let (labels, _) = slice_labels(&BTreeMap::new(), &service.service, controller_name);
    Slice {
        name: String::new(),
        labels,
        annotations: BTreeMap::new(),
        service_owner_uid: Some(service.uid.clone()),
        endpoints_owner: None,
        address_type: Some(address_type),
        ports,
        endpoints: Vec::new(),
    }
}

/// Whether a slice is an unchanged placeholder (`placeholderSliceCompare`): same labels,
/// owner, address type, no ports and no endpoints.
fn same_placeholder(existing: &Slice, placeholder: &Slice) -> bool {
    existing.labels == placeholder.labels
        && existing.service_owner_uid == placeholder.service_owner_uid
        && existing.address_type == placeholder.address_type
        && existing.ports.is_empty()
        && existing.endpoints.is_empty()
}

fn port_key(ports: &[SlicePort]) -> Vec<SlicePort> {
    let mut key = ports.to_vec();
    key.sort();
    key
}

/// Whether the Service's `trafficDistribution` asks for hints this controller gives.
fn valid_traffic_distribution(service: &SliceServiceView, settings: &Settings<'_>) -> bool {
    match service.traffic_distribution.as_deref() {
        Some("PreferClose") => true,
        Some("PreferSameZone" | "PreferSameNode") => settings.prefer_same_traffic_distribution,
        _ => false,
    }
}

/// Whether the Service asks for topology-aware hints by annotation.
fn topology_hints_annotated(service: &SliceServiceView) -> bool {
    let value = service
        .annotations
        .get("service.kubernetes.io/topology-aware-hints")
        .or_else(|| {
            service
                .annotations
                .get("service.kubernetes.io/topology-mode")
        });
    matches!(value.map(String::as_str), Some("Auto" | "auto"))
}

/// The plan for one Service: `pods` are the pods of its namespace, `existing` the slices
/// labelled with its name and this controller's managed-by value (those being deleted left
/// out), `zones` each known node's `topology.kubernetes.io/zone` label (empty when it has
/// none), `trigger_time` the RFC 3339 time written to every created or updated slice.
/// `None` when the Service is not this controller's (ExternalName or no selector).
pub fn plan(
    service: &SliceServiceView,
    pods: &[&PodView],
    existing: &[Slice],
    zones: &BTreeMap<String, String>,
    trigger_time: Option<&str>,
    settings: &Settings<'_>,
) -> Option<Plan> {
    let svc = &service.service;
    if svc.external_name {
        return None;
    }
    let selector = svc.selector.as_ref()?;
    let selected: Vec<&PodView> = pods
        .iter()
        .copied()
        .filter(|p| p.namespace == svc.namespace && selects(selector, &p.labels))
        .collect();
    let types = address_types(svc);
    let mut out = Plan::default();
    let mut by_type: BTreeMap<AddressType, Vec<&Slice>> = BTreeMap::new();
    let mut stale_family = Vec::new();
    for slice in existing {
        match slice.address_type {
            Some(t) if types.contains(&t) => by_type.entry(t).or_default().push(slice),
            _ => stale_family.push(slice.name.clone()),
        }
    }
    for address_type in types {
        let slices = by_type.remove(&address_type).unwrap_or_default();
        by_address_type(
            service,
            &selected,
            &slices,
            zones,
            address_type,
            trigger_time,
            settings,
            &mut out,
        );
    }
    out.delete.extend(stale_family);
    out.topology_annotated = topology_hints_annotated(service);
    if valid_traffic_distribution(service, settings) && !out.topology_annotated {
        out.traffic_distribution = service.traffic_distribution.clone();
    }
    out.missing_nodes.sort();
    out.missing_nodes.dedup();
    Some(out)
}

#[allow(clippy::too_many_arguments)]
fn by_address_type(
    service: &SliceServiceView,
    pods: &[&PodView],
    existing: &[&Slice],
    zones: &BTreeMap<String, String>,
    address_type: AddressType,
    trigger_time: Option<&str>,
    settings: &Settings<'_>,
    out: &mut Plan,
) {
    let svc = &service.service;
    let mut to_create: Vec<Slice> = Vec::new();
    let mut to_update: Vec<Slice> = Vec::new();
    let mut to_delete: Vec<Slice> = Vec::new();
    let mut existing_by_ports: BTreeMap<Vec<SlicePort>, Vec<&Slice>> = BTreeMap::new();
    for slice in existing {
        if slice.service_owner_uid.as_deref() == Some(service.uid.as_str()) {
            existing_by_ports
                .entry(port_key(&slice.ports))
                .or_default()
                .push(slice);
        } else {
            to_delete.push((*slice).clone());
        }
    }
    // The desired endpoints, by port group.
    let mut desired: BTreeMap<Vec<SlicePort>, PortGroup> = BTreeMap::new();
    for pod in pods {
        if !pod_counts(pod, true) {
            continue;
        }
        let ports = endpoint_ports(svc, pod);
        let group = desired
            .entry(port_key(&ports))
            .or_insert_with(|| (port_key(&ports), BTreeMap::new()));
        let node = pod.node_name.clone().unwrap_or_default();
        let zone = zones.get(&node);
        if zone.is_none() && !svc.publish_not_ready_addresses {
            out.missing_nodes.push(node);
            continue;
        }
        let endpoint = pod_endpoint(pod, zone.map(String::as_str), svc, address_type);
        if !endpoint.addresses.is_empty() {
            group.1.insert(endpoint.key(), endpoint);
        }
    }
    let mut stats = TypeStats::default();
    let max = settings.max_endpoints_per_slice.max(1);
    for (key, (ports, endpoints)) in desired.iter_mut() {
        let group_existing = existing_by_ports.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let wanted = endpoints.len();
        let (create, update, delete, added, removed) = by_port_group(
            service,
            group_existing,
            endpoints,
            ports,
            address_type,
            settings,
        );
        stats.added += added;
        stats.removed += removed;
        stats.endpoints += wanted;
        stats.slices += group_existing.len() + create.len() - delete.len();
        stats.desired_slices += wanted.div_ceil(max);
        to_create.extend(create);
        to_update.extend(update);
        to_delete.extend(delete);
    }
    for (key, slices) in &existing_by_ports {
        if !desired.contains_key(key) {
            to_delete.extend(slices.iter().map(|s| (*s).clone()));
        }
    }
    // A Service with a selector always has a slice per address type.
    if existing.len() == to_delete.len() && to_create.is_empty() {
        let placeholder = new_slice(service, Vec::new(), address_type, settings.controller_name);
        if to_delete.len() == 1 && same_placeholder(&to_delete[0], &placeholder) {
            to_delete.clear();
        } else {
            to_create.push(placeholder);
        }
        // Upstream counts the placeholder as the port group `[]`'s one slice.
        stats.slices = 1;
    }
    stats.desired_slices = stats.desired_slices.max(1);
    out.stats.push(stats);
    // Hints: trafficDistribution's, or none (topology-mode Auto is not computed).
    let unchanged: Vec<Slice> = existing
        .iter()
        .filter(|s| {
            !to_update.iter().any(|u| u.name == s.name)
                && !to_delete.iter().any(|d| d.name == s.name)
        })
        .map(|s| (*s).clone())
        .collect();
    let annotated = topology_hints_annotated(service);
    if valid_traffic_distribution(service, settings) && !annotated {
        let same_node = service.traffic_distribution.as_deref() == Some("PreferSameNode");
        for slice in unchanged {
            if prefer_close_needs_update(&slice, same_node) {
                to_update.push(slice);
            }
        }
        for slice in to_create.iter_mut().chain(to_update.iter_mut()) {
            prefer_close_update(slice, same_node);
        }
    } else if !annotated {
        for slice in unchanged {
            if slice.endpoints.iter().any(|e| e.hints.is_some()) {
                to_update.push(slice);
            }
        }
        for slice in to_create.iter_mut().chain(to_update.iter_mut()) {
            for endpoint in &mut slice.endpoints {
                endpoint.hints = None;
            }
        }
    }
    // Recycle: a slice to create takes the name of a slice of this Service to delete.
    let mut i = 0;
    while i < to_delete.len() && !to_create.is_empty() {
        if to_delete[i].address_type == Some(address_type)
            && to_delete[i].service_owner_uid.as_deref() == Some(service.uid.as_str())
        {
            let mut slice = to_create.pop().expect("a slice to create");
            slice.name = to_delete.remove(i).name;
            to_update.push(slice);
        } else {
            i += 1;
        }
    }
    let annotate = |slice: &mut Slice| match trigger_time {
        Some(time) => {
            slice
                .annotations
                .insert(ANNOTATION_TRIGGER_TIME.to_string(), time.to_string());
        }
        None => {
            slice.annotations.remove(ANNOTATION_TRIGGER_TIME);
        }
    };
    if !service.deleting {
        for mut slice in to_create {
            annotate(&mut slice);
            out.create.push(slice);
        }
    }
    for mut slice in to_update {
        annotate(&mut slice);
        out.update.push(slice);
    }
    out.delete.extend(to_delete.into_iter().map(|s| s.name));
}

/// One port group (`reconcileByPortMapping`): returns slices to create, update and delete,
/// how many desired endpoints no existing slice held, and how many were dropped from existing
/// slices.
fn by_port_group(
    service: &SliceServiceView,
    existing: &[&Slice],
    desired: &mut BTreeMap<EndpointKey, Endpoint>,
    ports: &[SlicePort],
    address_type: AddressType,
    settings: &Settings<'_>,
) -> (Vec<Slice>, Vec<Slice>, Vec<Slice>, usize, usize) {
    let mut removed = 0;
    let max = settings.max_endpoints_per_slice;
    let mut by_name: BTreeMap<String, Slice> = BTreeMap::new();
    let mut unchanged: BTreeSet<String> = BTreeSet::new();
    let mut to_update: BTreeSet<String> = BTreeSet::new();
    let mut to_delete: BTreeSet<String> = BTreeSet::new();
    for slice in existing {
        let mut kept = Vec::new();
        let mut endpoint_updated = false;
        for endpoint in &slice.endpoints {
            if let Some(want) = desired.remove(&endpoint.key()) {
                if !want.equal_beyond_key(endpoint) {
                    endpoint_updated = true;
                }
                kept.push(want);
            }
        }
        let (labels, labels_changed) =
            slice_labels(&slice.labels, &service.service, settings.controller_name);
        let mut slice = (*slice).clone();
        if endpoint_updated || kept.len() != slice.endpoints.len() {
            removed += slice.endpoints.len() - kept.len();
            if kept.is_empty() {
                to_delete.insert(slice.name.clone());
            } else {
                slice.endpoints = kept;
                slice.labels = labels;
                to_update.insert(slice.name.clone());
            }
        } else if labels_changed {
            slice.labels = labels;
            to_update.insert(slice.name.clone());
        } else {
            unchanged.insert(slice.name.clone());
        }
        by_name.insert(slice.name.clone(), slice);
    }
    let added = desired.len();
    let pop = |desired: &mut BTreeMap<EndpointKey, Endpoint>| desired.pop_first().map(|(_, e)| e);
    // New endpoints go first into the slices being updated, fullest first.
    if !desired.is_empty() && !to_update.is_empty() {
        let mut names: Vec<String> = to_update.iter().cloned().collect();
        names.sort_by_key(|n| std::cmp::Reverse(by_name[n].endpoints.len()));
        for name in names {
            let slice = by_name.get_mut(&name).expect("a slice being updated");
            while !desired.is_empty() && slice.endpoints.len() < max {
                slice.endpoints.extend(pop(desired));
            }
        }
    }
    // Then into the unchanged slice they fill best, else into new slices.
    let mut to_create = Vec::new();
    while !desired.is_empty() {
        let mut fill: Option<Slice> = None;
        if desired.len() < max && !unchanged.is_empty() {
            let mut closest = max;
            for name in &unchanged {
                let size = by_name[name].endpoints.len();
                if desired.len() + size <= max && max - (desired.len() + size) < closest {
                    closest = max - (desired.len() + size);
                    fill = Some(by_name[name].clone());
                    if closest == 0 {
                        break;
                    }
                }
            }
        }
        let mut slice = fill.unwrap_or_else(|| {
            new_slice(
                service,
                ports.to_vec(),
                address_type,
                settings.controller_name,
            )
        });
        while !desired.is_empty() && slice.endpoints.len() < max {
            slice.endpoints.extend(pop(desired));
        }
        if slice.name.is_empty() {
            to_create.push(slice);
        } else {
            unchanged.remove(&slice.name);
            to_update.insert(slice.name.clone());
            by_name.insert(slice.name.clone(), slice);
        }
    }
    let update = to_update.iter().map(|n| by_name[n].clone()).collect();
    let delete = to_delete.iter().map(|n| by_name[n].clone()).collect();
    (to_create, update, delete, added, removed)
}

/// Whether a slice's hints differ from what PreferClose (and PreferSameNode) give.
fn prefer_close_needs_update(slice: &Slice, same_node: bool) -> bool {
    slice.endpoints.iter().filter(|e| e.is_ready()).any(|e| {
        let zones = e
            .hints
            .as_ref()
            .map(|h| h.for_zones.as_slice())
            .unwrap_or(&[]);
        let nodes = e
            .hints
            .as_ref()
            .map(|h| h.for_nodes.as_slice())
            .unwrap_or(&[]);
        let zone_wrong = match &e.zone {
            Some(zone) => e.hints.is_none() || zones.len() != 1 || zones[0] != *zone,
            None => !zones.is_empty(),
        };
        let node_wrong = match (&e.node_name, same_node) {
            (Some(node), true) => e.hints.is_none() || nodes.len() != 1 || nodes[0] != *node,
            _ => !nodes.is_empty(),
        };
        zone_wrong || node_wrong
    })
}

/// Gives each ready endpoint hints for its own zone (and node, for PreferSameNode).
fn prefer_close_update(slice: &mut Slice, same_node: bool) {
    for endpoint in slice.endpoints.iter_mut().filter(|e| e.is_ready()) {
        let for_zones: Vec<String> = endpoint.zone.iter().cloned().collect();
        let for_nodes: Vec<String> = if same_node {
            endpoint.node_name.iter().cloned().collect()
        } else {
            Vec::new()
        };
        endpoint.hints = if for_zones.is_empty() && for_nodes.is_empty() {
            None
        } else {
            Some(Hints {
                for_zones,
                for_nodes,
            })
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::{ContainerPort, ServicePort, TargetPort};

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn svc() -> SliceServiceView {
        SliceServiceView {
            service: ServiceView {
                namespace: "ns".into(),
                name: "web".into(),
                labels: map(&[("app", "web")]),
                selector: Some(crate::endpoints::Selector::Spec(map(&[("app", "web")]))),
                cluster_ip: "10.96.0.20".into(),
                ipv6_families: vec![false],
                ports: vec![ServicePort {
                    name: "http".into(),
                    protocol: "TCP".into(),
                    app_protocol: None,
                    target_port: TargetPort::Name("web".into()),
                }],
                ..ServiceView::default()
            },
            uid: "svc-uid".into(),
            ..SliceServiceView::default()
        }
    }

    fn pod(i: usize, ready: bool) -> PodView {
        let ip: IpAddr = format!("10.1.{}.{}", i / 250, i % 250 + 1).parse().unwrap();
        PodView {
            namespace: "ns".into(),
            name: format!("web-{i}"),
            uid: format!("uid-{i}"),
            labels: map(&[("app", "web")]),
            node_name: Some(
                if i.is_multiple_of(2) {
                    "node-a"
                } else {
                    "node-b"
                }
                .into(),
            ),
            pod_ip: Some(ip),
            pod_ips: vec![ip],
            ready,
            container_ports: vec![ContainerPort {
                name: "web".into(),
                port: 8080,
                protocol: "TCP".into(),
            }],
            ..PodView::default()
        }
    }

    fn zones() -> BTreeMap<String, String> {
        map(&[("node-a", "zone-a"), ("node-b", "zone-b")])
    }

    const MAX: usize = 10;

    fn settings() -> Settings<'static> {
        Settings {
            max_endpoints_per_slice: MAX,
            controller_name: UPSTREAM_CONTROLLER,
            prefer_same_traffic_distribution: true,
        }
    }

    /// Applies a plan to `slices` as the API server would (names for creates).
    fn apply(slices: &mut Vec<Slice>, plan: Plan, next_name: &mut usize) {
        slices.retain(|s| !plan.delete.contains(&s.name));
        for updated in plan.update {
            let slot = slices
                .iter_mut()
                .find(|s| s.name == updated.name)
                .expect("an update of an existing slice");
            *slot = updated;
        }
        for mut created in plan.create {
            *next_name += 1;
            created.name = format!("web-{next_name}");
            slices.push(created);
        }
    }

    fn run(pods: &[PodView], slices: &mut Vec<Slice>, names: &mut usize) -> (usize, usize, usize) {
        let refs: Vec<&PodView> = pods.iter().collect();
        let plan = plan(&svc(), &refs, slices, &zones(), Some("t"), &settings()).unwrap();
        let counts = (plan.create.len(), plan.update.len(), plan.delete.len());
        apply(slices, plan, names);
        counts
    }

    #[test]
    fn a_plan_counts_added_and_removed_endpoints_and_the_slices_as_upstreams_metrics_do() {
        let stats = |pods: &[PodView], slices: &mut Vec<Slice>, names: &mut usize| {
            let refs: Vec<&PodView> = pods.iter().collect();
            let plan = plan(&svc(), &refs, slices, &zones(), None, &settings()).unwrap();
            let stats = plan.stats.clone();
            apply(slices, plan, names);
            stats
        };
        let (mut slices, mut names) = (Vec::new(), 0);
        let pods: Vec<PodView> = (0..12).map(|i| pod(i, true)).collect();
        let s = stats(&pods, &mut slices, &mut names);
        let expected = |added, removed, endpoints, slices, desired_slices| TypeStats {
            added,
            removed,
            endpoints,
            slices,
            desired_slices,
        };
        assert_eq!(s, [expected(12, 0, 12, 2, 2)]);
        let s = stats(&pods[..9], &mut slices, &mut names);
        assert_eq!(s, [expected(0, 3, 9, 2, 1)]);
        // No pods left: the placeholder is the one slice; one slice is still desired. As
        // upstream, a port group no longer desired does not count its endpoints as removed.
        let s = stats(&[], &mut slices, &mut names);
        assert_eq!(s, [expected(0, 0, 0, 1, 1)]);
    }

    #[test]
    fn endpoints_carry_conditions_zone_node_and_target() {
        let mut leaving = pod(1, true);
        leaving.terminating = true;
        let pods = [pod(0, true), leaving, pod(2, false)];
        let (mut slices, mut names) = (Vec::new(), 0);
        assert_eq!(run(&pods, &mut slices, &mut names), (1, 0, 0));
        let slice = &slices[0];
        assert_eq!(slice.labels[LABEL_SERVICE_NAME], "web");
        assert_eq!(slice.labels[LABEL_MANAGED_BY], UPSTREAM_CONTROLLER);
        assert_eq!(slice.labels["app"], "web");
        assert_eq!(slice.annotations[ANNOTATION_TRIGGER_TIME], "t");
        assert_eq!(slice.address_type, Some(AddressType::IPv4));
        assert_eq!(slice.ports[0].port, Some(8080));
        let by_pod = |name: &str| {
            slice
                .endpoints
                .iter()
                .find(|e| e.target.as_ref().unwrap().name == name)
                .unwrap()
        };
        // (ready, serving, terminating): terminating pods stay in slices, not ready.
        let conditions = |e: &Endpoint| (e.ready, e.serving, e.terminating);
        assert_eq!(
            conditions(by_pod("web-0")),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(
            conditions(by_pod("web-1")),
            (Some(false), Some(true), Some(true))
        );
        assert_eq!(
            conditions(by_pod("web-2")),
            (Some(false), Some(false), Some(false))
        );
        assert_eq!(by_pod("web-1").zone.as_deref(), Some("zone-b"));
        assert_eq!(by_pod("web-1").node_name.as_deref(), Some("node-b"));
    }

    #[test]
    fn a_sync_that_changes_nothing_writes_nothing() {
        let pods: Vec<PodView> = (0..25).map(|i| pod(i, true)).collect();
        let (mut slices, mut names) = (Vec::new(), 0);
        assert_eq!(run(&pods, &mut slices, &mut names), (3, 0, 0));
        let mut sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
        sizes.sort();
        assert_eq!(sizes, [5, 10, 10]);
        assert_eq!(run(&pods, &mut slices, &mut names), (0, 0, 0));
    }

    #[test]
    fn new_endpoints_fill_the_slice_they_fit_best_before_a_new_one() {
        let mut pods: Vec<PodView> = (0..25).map(|i| pod(i, true)).collect();
        let (mut slices, mut names) = (Vec::new(), 0);
        run(&pods, &mut slices, &mut names);
        // Three more fit into the slice of five: one update, no create.
        pods.extend((25..28).map(|i| pod(i, true)));
        assert_eq!(run(&pods, &mut slices, &mut names), (0, 1, 0));
        let mut sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
        sizes.sort();
        assert_eq!(sizes, [8, 10, 10]);
        // Twelve more: a full new slice, and the two left over go to the slice of eight.
        pods.extend((28..40).map(|i| pod(i, true)));
        assert_eq!(run(&pods, &mut slices, &mut names), (1, 1, 0));
        let mut sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
        sizes.sort();
        assert_eq!(sizes, [10, 10, 10, 10]);
    }

    #[test]
    fn removed_endpoints_leave_sparse_slices_and_empty_ones_are_recycled() {
        let pods: Vec<PodView> = (0..20).map(|i| pod(i, true)).collect();
        let (mut slices, mut names) = (Vec::new(), 0);
        run(&pods, &mut slices, &mut names);
        // Drop the pods of one slice and one pod of the other: one delete, one update, and
        // no rebalancing.
        let first: BTreeSet<String> = slices[0]
            .endpoints
            .iter()
            .map(|e| e.target.as_ref().unwrap().name.clone())
            .collect();
        let second = slices[1].endpoints[0].target.as_ref().unwrap().name.clone();
        let left: Vec<PodView> = pods
            .iter()
            .filter(|p| !first.contains(&p.name) && p.name != second)
            .cloned()
            .collect();
        assert_eq!(run(&left, &mut slices, &mut names), (0, 1, 1));
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].endpoints.len(), 9);
        // Scale to zero: the last slice becomes the placeholder in place, by recycling.
        assert_eq!(run(&[], &mut slices, &mut names), (0, 1, 0));
        assert_eq!(slices.len(), 1);
        assert!(slices[0].endpoints.is_empty() && slices[0].ports.is_empty());
        // And stays as it is.
        assert_eq!(run(&[], &mut slices, &mut names), (0, 0, 0));
    }

    #[test]
    fn named_ports_resolved_differently_make_separate_port_groups() {
        let mut other = pod(1, true);
        other.container_ports[0].port = 9090;
        let pods = [pod(0, true), other];
        let (mut slices, mut names) = (Vec::new(), 0);
        assert_eq!(run(&pods, &mut slices, &mut names), (2, 0, 0));
        let mut ports: Vec<Option<i32>> = slices.iter().map(|s| s.ports[0].port).collect();
        ports.sort();
        assert_eq!(ports, [Some(8080), Some(9090)]);
    }

    #[test]
    fn dual_stack_services_get_a_slice_set_per_family_and_lose_a_dropped_one() {
        let mut service = svc();
        service.service.ipv6_families = vec![false, true];
        let mut dual = pod(0, true);
        dual.pod_ips.push("fd00::1".parse().unwrap());
        let refs = [&dual];
        let plan1 = plan(&service, &refs, &[], &zones(), None, &settings()).unwrap();
        let mut types: Vec<Option<AddressType>> =
            plan1.create.iter().map(|s| s.address_type).collect();
        types.sort();
        assert_eq!(types, [Some(AddressType::IPv4), Some(AddressType::IPv6)]);
        let v6 = plan1
            .create
            .iter()
            .find(|s| s.address_type == Some(AddressType::IPv6))
            .unwrap();
        assert_eq!(v6.endpoints[0].addresses, ["fd00::1"]);
        // Back to single-stack: the IPv6 slices go.
        let mut existing = plan1.create.clone();
        for (i, s) in existing.iter_mut().enumerate() {
            s.name = format!("web-{i}");
        }
        let v6_name = existing
            .iter()
            .find(|s| s.address_type == Some(AddressType::IPv6))
            .unwrap()
            .name
            .clone();
        let plan2 = plan(&svc(), &refs, &existing, &zones(), None, &settings()).unwrap();
        assert_eq!(plan2.delete, [v6_name]);
        assert!(plan2.create.is_empty() && plan2.update.is_empty());
    }

    #[test]
    fn pods_on_unknown_nodes_are_skipped_and_reported() {
        let mut lost = pod(1, true);
        lost.node_name = Some("node-z".into());
        let pods = [pod(0, true), lost.clone()];
        let refs: Vec<&PodView> = pods.iter().collect();
        let plan1 = plan(&svc(), &refs, &[], &zones(), None, &settings()).unwrap();
        assert_eq!(plan1.missing_nodes, ["node-z"]);
        assert_eq!(plan1.create[0].endpoints.len(), 1);
        // Unless the Service publishes not-ready addresses.
        let mut publish = svc();
        publish.service.publish_not_ready_addresses = true;
        let plan2 = plan(&publish, &refs, &[], &zones(), None, &settings()).unwrap();
        assert!(plan2.missing_nodes.is_empty());
        assert_eq!(plan2.create[0].endpoints.len(), 2);
    }

    #[test]
    fn slices_owned_by_another_service_uid_are_deleted_and_replaced() {
        let pods = [pod(0, true)];
        let (mut slices, mut names) = (Vec::new(), 0);
        run(&pods, &mut slices, &mut names);
        // The Service was deleted and recreated: same name, new UID.
        slices[0].service_owner_uid = Some("old-uid".into());
        let refs: Vec<&PodView> = pods.iter().collect();
        let plan = plan(&svc(), &refs, &slices, &zones(), None, &settings()).unwrap();
        assert_eq!(plan.delete, [slices[0].name.clone()]);
        assert_eq!(plan.create.len(), 1);
    }

    #[test]
    fn prefer_close_hints_each_ready_endpoint_to_its_zone() {
        let mut service = svc();
        service.traffic_distribution = Some("PreferSameNode".into());
        let pods = [pod(0, true), pod(1, false)];
        let refs: Vec<&PodView> = pods.iter().collect();
        let created = plan(&service, &refs, &[], &zones(), None, &settings())
            .unwrap()
            .create;
        let hints = |name: &str| {
            created[0]
                .endpoints
                .iter()
                .find(|e| e.target.as_ref().unwrap().name == name)
                .unwrap()
                .hints
                .clone()
        };
        assert_eq!(
            hints("web-0"),
            Some(Hints {
                for_zones: vec!["zone-a".into()],
                for_nodes: vec!["node-a".into()],
            })
        );
        assert_eq!(hints("web-1"), None);
        // Dropping trafficDistribution removes hints from slices that did not change otherwise.
        let mut existing = created.clone();
        existing[0].name = "web-1".into();
        let plan = plan(&svc(), &refs, &existing, &zones(), None, &settings()).unwrap();
        assert_eq!(plan.update.len(), 1);
        assert!(plan.update[0].endpoints.iter().all(|e| e.hints.is_none()));
    }

    #[test]
    fn labels_follow_the_service_and_reserved_keys_are_ignored() {
        let mut service = svc();
        service
            .service
            .labels
            .insert(LABEL_MANAGED_BY.into(), "someone-else".into());
        service.service.cluster_ip = "None".into();
        let (labels, changed) =
            slice_labels(&BTreeMap::new(), &service.service, UPSTREAM_CONTROLLER);
        assert!(changed);
        assert_eq!(
            labels,
            map(&[
                ("app", "web"),
                (crate::endpoints::LABEL_HEADLESS, ""),
                (LABEL_MANAGED_BY, UPSTREAM_CONTROLLER),
                (LABEL_SERVICE_NAME, "web"),
            ])
        );
        let (_, changed) = slice_labels(&labels, &service.service, UPSTREAM_CONTROLLER);
        assert!(!changed);
    }
}
