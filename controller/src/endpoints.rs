//! The Endpoints controller's decision for one Service, as kube-controller-manager v1.37 makes it
//! (`pkg/controller/endpoint/endpoints_controller.go`, `pkg/api/v1/endpoints/util.go`): which
//! pods count, each pod's address and resolved ports, the subsets repacked by the set of
//! addresses that serve each port, the 1000-address cap, and the labels and annotations of the
//! object — pure, over lean views, so a reconciler only reads its store and writes what
//! [`decide`] returns ([`crate::endpoint_controllers`] does).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::mirroring::LABEL_SKIP_MIRROR;

/// Addresses (ready and not ready, over all subsets) an Endpoints object may hold.
pub const MAX_CAPACITY: usize = 1000;
/// Label upstream puts on every Endpoints object its controller writes.
pub const LABEL_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
/// Its value for kube-controller-manager's Endpoints controller.
pub const CONTROLLER_NAME: &str = "endpoint-controller";
/// The managed-by value of the Endpoints svcplane writes for [`ANNOTATION_SELECTOR`].
pub const SVCPLANE_CONTROLLER_NAME: &str = "endpoint-controller.svcplane.io";
/// svcplane's set-based label selector, on a Service without `spec.selector`.
pub const ANNOTATION_SELECTOR: &str = "svcplane.io/selector";
/// Label of objects that belong to a Service without a ClusterIP.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Annotation set while an Endpoints object is truncated to [`MAX_CAPACITY`].
pub const ANNOTATION_OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// Annotation with the time of the change that caused the write.
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// What the Endpoints controller reads of a Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The selector this controller manages the Service by: `spec.selector` or the
    /// [`ANNOTATION_SELECTOR`] annotation. `None` (selectorless, or not this controller's) is
    /// not the same as an empty `spec.selector` (matches every pod).
    pub selector: Option<Selector>,
    pub external_name: bool,
    /// `spec.clusterIP`: empty or `None` means the Service has no ClusterIP.
    pub cluster_ip: String,
    /// `spec.ipFamilies`, `true` for IPv6.
    pub ipv6_families: Vec<bool>,
    pub publish_not_ready_addresses: bool,
    pub ports: Vec<ServicePort>,
}

/// Which pods a Service selects, and where that comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `spec.selector`: every key equal to its value.
    Spec(BTreeMap<String, String>),
    /// The [`ANNOTATION_SELECTOR`] annotation of a Service without `spec.selector`, set-based.
    Annotation(cache::selector::LabelSelector),
}

impl Selector {
    /// Whether the objects written for this selector are svcplane's own (the annotation's)
    /// rather than upstream's.
    pub fn by_annotation(&self) -> bool {
        matches!(self, Selector::Annotation(_))
    }
}

/// One `spec.ports` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub protocol: String,
    pub app_protocol: Option<String>,
    pub target_port: TargetPort,
}

/// `spec.ports[].targetPort`, defaulted by the API server to the port when omitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(i32),
    Name(String),
}

/// What the Endpoints controller reads of a Pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub node_name: Option<String>,
    pub hostname: String,
    pub subdomain: String,
    /// `status.podIP`.
    pub pod_ip: Option<IpAddr>,
    /// `status.podIPs`, in order.
    pub pod_ips: Vec<IpAddr>,
    /// Phase `Succeeded` or `Failed`.
    pub terminal: bool,
    /// Has a `deletionTimestamp`.
    pub terminating: bool,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// Ports of `spec.containers`, then of restartable (sidecar) init containers, in order.
    pub container_ports: Vec<ContainerPort>,
}

/// A named container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: String,
    pub port: i32,
    pub protocol: String,
}

/// An `EndpointAddress`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub ip: String,
    pub hostname: Option<String>,
    pub node_name: Option<String>,
    pub target: Option<PodRef>,
}

/// A `targetRef` to a pod (kind Pod, no resourceVersion).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// An `EndpointPort`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub name: String,
    pub port: i32,
    pub protocol: String,
    pub app_protocol: Option<String>,
}

/// An `EndpointSubset`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subset {
    pub addresses: Vec<Address>,
    pub not_ready_addresses: Vec<Address>,
    pub ports: Vec<Port>,
}

/// The Endpoints object as it is (from the store) or as it should be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub subsets: Vec<Subset>,
}

/// What to do for one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The object is right, or the Service is not this controller's to serve.
    Nothing,
    /// The Service is gone: delete its Endpoints (a missing one is fine).
    Delete,
    /// Create the object under the Service's name.
    Create(Endpoints),
    /// Replace the current object (keep its resourceVersion as the precondition).
    Update(Endpoints),
}

/// Whether a pod's IPs count for the Service at all (`ShouldPodBeInEndpoints`): not terminal,
/// with an IP, and not terminating unless the Service publishes not-ready addresses.
pub fn pod_counts(pod: &PodView, include_terminating: bool) -> bool {
    !pod.terminal
        && (pod.pod_ip.is_some() || !pod.pod_ips.is_empty())
        && (include_terminating || !pod.terminating)
}

/// Whether the endpoint carries the pod's hostname: it has one and its subdomain names the
/// Service, in the Service's namespace (`ShouldSetHostname`).
pub fn sets_hostname(pod: &PodView, service: &ServiceView) -> bool {
    !pod.hostname.is_empty() && pod.subdomain == service.name && pod.namespace == service.namespace
}

/// The container port a Service port targets on `pod` (`FindPort`): a number as is; a name
/// matched by name and protocol over containers, then sidecars. `None` when nothing matches.
pub fn find_port(pod: &PodView, port: &ServicePort) -> Option<i32> {
    match &port.target_port {
        TargetPort::Number(n) => Some(*n),
        TargetPort::Name(name) => pod
            .container_ports
            .iter()
            .find(|c| c.name == *name && c.protocol == port.protocol)
            .map(|c| c.port),
    }
}

/// Whether a Service has a ClusterIP (`IsServiceIPSet`).
pub fn has_cluster_ip(service: &ServiceView) -> bool {
    !service.cluster_ip.is_empty() && service.cluster_ip != "None"
}

/// The address of `pod` for the Service (`podToEndpointAddressForService`): the first
/// `podIPs` entry of the Service's first family (else the family of its ClusterIP, else of the
/// pod's `podIP`); `None` when the pod has no such IP.
fn pod_address(service: &ServiceView, pod: &PodView) -> Option<Address> {
    let want_v6 = match service.ipv6_families.first() {
        Some(v6) => *v6,
        None if has_cluster_ip(service) => service
            .cluster_ip
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_ipv6()),
        None => pod.pod_ip.is_some_and(|ip| ip.is_ipv6()),
    };
    let ip = pod.pod_ips.iter().find(|ip| ip.is_ipv6() == want_v6)?;
    Some(Address {
        ip: ip.to_string(),
        hostname: sets_hostname(pod, service).then(|| pod.hostname.clone()),
        node_name: pod.node_name.clone(),
        target: Some(PodRef {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        }),
    })
}

/// Whether `selector` selects `labels` (an empty selector selects everything).
pub fn selects(selector: &Selector, labels: &BTreeMap<String, String>) -> bool {
    match selector {
        Selector::Spec(map) => map.iter().all(|(k, v)| labels.get(k) == Some(v)),
        Selector::Annotation(set) => set.matches_labels(labels),
    }
}

/// The subsets for `service` over the pods of its namespace (those its selector does not
/// select are skipped here), repacked. `None` when the Service is not this controller's
/// (ExternalName, or no selector).
pub fn desired_subsets(service: &ServiceView, pods: &[&PodView]) -> Option<Vec<Subset>> {
    if service.external_name {
        return None;
    }
    let selector = service.selector.as_ref()?;
    let mut subsets = Vec::new();
    for pod in pods {
        if pod.namespace != service.namespace
            || !selects(selector, &pod.labels)
            || !pod_counts(pod, service.publish_not_ready_addresses)
        {
            continue;
        }
        let Some(address) = pod_address(service, pod) else {
            continue;
        };
        let ready = service.publish_not_ready_addresses || pod.ready;
        let subset = |ports: Vec<Port>| {
            if ready {
                Subset {
                    addresses: vec![address.clone()],
                    not_ready_addresses: vec![],
                    ports,
                }
            } else {
                Subset {
                    addresses: vec![],
                    not_ready_addresses: vec![address.clone()],
                    ports,
                }
            }
        };
        if service.ports.is_empty() {
            // A headless Service may have no ports; a ClusterIP one without ports gets nothing.
            if service.cluster_ip == "None" {
                subsets.push(subset(vec![]));
            }
            continue;
        }
        for port in &service.ports {
            let Some(number) = find_port(pod, port) else {
                continue;
            };
            subsets.push(subset(vec![Port {
                name: port.name.clone(),
                port: number,
                protocol: port.protocol.clone(),
                app_protocol: port.app_protocol.clone(),
            }]));
        }
    }
    Some(repack(&subsets))
}

/// Regroups subsets so that each holds the ports served by exactly one set of (address, ready)
/// (`RepackSubsets`): addresses are one per (IP, pod UID), and an address not ready for a port
/// in any input is not ready for it. Addresses are sorted by IP (bytes) then UID; ports and
/// subsets in a fixed order of this crate's own (upstream orders them by a hash of their Go
/// representation, so consumers compare them as sets).
pub fn repack(subsets: &[Subset]) -> Vec<Subset> {
    // The sentinel port -1 keeps the addresses of port-less subsets.
    let sentinel = Port {
        name: String::new(),
        port: -1,
        protocol: String::new(),
        app_protocol: None,
    };
    type Key = (String, String);
    let key = |a: &Address| {
        (
            a.ip.clone(),
            a.target.as_ref().map(|t| t.uid.clone()).unwrap_or_default(),
        )
    };
    // The first full address seen for each key; per port, each key's readiness.
    let mut addresses: BTreeMap<Key, Address> = BTreeMap::new();
    let mut by_port: BTreeMap<Port, BTreeMap<Key, bool>> = BTreeMap::new();
    for subset in subsets {
        let ports: Vec<&Port> = if subset.ports.is_empty() {
            vec![&sentinel]
        } else {
            subset.ports.iter().collect()
        };
        for port in ports {
            let entry = by_port.entry(port.clone()).or_default();
            for (list, ready) in [
                (&subset.addresses, true),
                (&subset.not_ready_addresses, false),
            ] {
                for address in list {
                    let k = key(address);
                    addresses
                        .entry(k.clone())
                        .or_insert_with(|| address.clone());
                    // Not ready wins.
                    let was = entry.entry(k).or_insert(ready);
                    *was = *was && ready;
                }
            }
        }
    }
    // Group ports by their exact address set.
    let mut groups: BTreeMap<Vec<(Key, bool)>, Vec<Port>> = BTreeMap::new();
    for (port, set) in by_port {
        let members: Vec<(Key, bool)> = set.into_iter().collect();
        let ports = groups.entry(members).or_default();
        if port.port > 0 {
            ports.push(port);
        }
    }
    let mut out: Vec<Subset> = groups
        .into_iter()
        .map(|(members, ports)| {
            let mut subset = Subset {
                ports,
                ..Subset::default()
            };
            for (k, ready) in members {
                let address = addresses[&k].clone();
                if ready {
                    subset.addresses.push(address);
                } else {
                    subset.not_ready_addresses.push(address);
                }
            }
            sort_subset(&mut subset);
            subset
        })
        .collect();
    out.sort_by(|a, b| subset_order(a).cmp(&subset_order(b)));
    out
}

/// Upstream's address order: IP as bytes, then pod UID.
type AddressOrder<'a> = (&'a [u8], &'a str);

fn address_order(a: &Address) -> AddressOrder<'_> {
    (
        a.ip.as_bytes(),
        a.target.as_ref().map(|t| t.uid.as_str()).unwrap_or(""),
    )
}

fn sort_subset(subset: &mut Subset) {
    subset
        .addresses
        .sort_by(|a, b| address_order(a).cmp(&address_order(b)));
    subset
        .not_ready_addresses
        .sort_by(|a, b| address_order(a).cmp(&address_order(b)));
    subset.ports.sort();
}

fn subset_order(s: &Subset) -> (Vec<Port>, Vec<AddressOrder<'_>>, Vec<AddressOrder<'_>>) {
    (
        s.ports.clone(),
        s.addresses.iter().map(address_order).collect(),
        s.not_ready_addresses.iter().map(address_order).collect(),
    )
}

/// Cuts subsets to [`MAX_CAPACITY`] addresses (`truncateEndpoints`); returns whether it cut.
/// Ready addresses are kept before not-ready ones; each subset keeps its share, rounded up, of
/// what may be kept (the first ones in its sorted order), the last subsets getting what is left.
pub fn truncate(subsets: &mut [Subset]) -> bool {
    let total_ready: usize = subsets.iter().map(|s| s.addresses.len()).sum();
    let total_not_ready: usize = subsets.iter().map(|s| s.not_ready_addresses.len()).sum();
    if total_ready + total_not_ready <= MAX_CAPACITY {
        return false;
    }
    let truncate_ready = total_ready > MAX_CAPACITY;
    let (max, total) = if truncate_ready {
        (MAX_CAPACITY, total_ready)
    } else {
        (MAX_CAPACITY - total_ready, total_not_ready)
    };
    let mut can_be_added = max;
    for subset in subsets.iter_mut() {
        let in_subset = if truncate_ready {
            subset.addresses.len()
        } else {
            subset.not_ready_addresses.len()
        };
        // Upstream's float arithmetic, so that rounding agrees with it exactly.
        let share = ((in_subset as f64 / total as f64) * max as f64).ceil() as usize;
        let share = share.min(can_be_added);
        if truncate_ready {
            subset.addresses.truncate(share);
            subset.not_ready_addresses.clear();
            can_be_added -= subset.addresses.len();
        } else {
            subset.not_ready_addresses.truncate(share);
            can_be_added -= subset.not_ready_addresses.len();
        }
    }
    true
}

/// The labels upstream writes: the Service's, [`LABEL_HEADLESS`] without a ClusterIP, and
/// [`LABEL_MANAGED_BY`]; for a Service selected by [`ANNOTATION_SELECTOR`], svcplane's
/// managed-by value and `endpointslice.kubernetes.io/skip-mirror: "true"` (so no mirroring
/// controller copies them into slices of its own).
pub fn labels(service: &ServiceView) -> BTreeMap<String, String> {
    let mut labels = service.labels.clone();
    if has_cluster_ip(service) {
        labels.remove(LABEL_HEADLESS);
    } else {
        labels.insert(LABEL_HEADLESS.to_string(), String::new());
    }
    let by_annotation = service
        .selector
        .as_ref()
        .is_some_and(Selector::by_annotation);
    labels.insert(
        LABEL_MANAGED_BY.to_string(),
        managed_by(by_annotation).to_string(),
    );
    if by_annotation {
        labels.insert(LABEL_SKIP_MIRROR.to_string(), "true".to_string());
    }
    labels
}

/// The managed-by value of the Endpoints written for a Service.
fn managed_by(by_annotation: bool) -> &'static str {
    if by_annotation {
        SVCPLANE_CONTROLLER_NAME
    } else {
        CONTROLLER_NAME
    }
}

/// Whether an object's labels are what the Service's give (`labelsCorrectForEndpoints`): the
/// managed-by label set, and otherwise exactly the Service's labels, the headless label aside
/// (and, for the annotation, the skip-mirror label set).
pub fn labels_correct(
    current: &BTreeMap<String, String>,
    service: &BTreeMap<String, String>,
    by_annotation: bool,
) -> bool {
    if current.get(LABEL_MANAGED_BY).map(String::as_str) != Some(managed_by(by_annotation)) {
        return false;
    }
    let mut own: BTreeSet<&str> = [LABEL_HEADLESS, LABEL_MANAGED_BY].into();
    if by_annotation {
        if current.get(LABEL_SKIP_MIRROR).map(String::as_str) != Some("true") {
            return false;
        }
        own.insert(LABEL_SKIP_MIRROR);
    }
    let rest: BTreeMap<&String, &String> = current
        .iter()
        .filter(|(k, _)| !own.contains(k.as_str()))
        .collect();
    rest.len() == service.len() && rest.iter().all(|(k, v)| service.get(*k) == Some(*v))
}

fn capacity_annotation_correct(current: &Endpoints) -> bool {
    let count: usize = current
        .subsets
        .iter()
        .map(|s| s.addresses.len() + s.not_ready_addresses.len())
        .sum();
    count <= MAX_CAPACITY && !current.annotations.contains_key(ANNOTATION_OVER_CAPACITY)
}

fn same_subsets(a: &[Subset], b: &[Subset]) -> bool {
    // Upstream compares its hash-ordered lists; with this crate's own order, comparing the
    // repacked forms is the same test.
    a == b || repack(a) == b
}

/// The decision for one Service key. `service` is `None` when it is gone; `pods` are the pods of
/// its namespace; `current` the Endpoints object of the same name, if any; `trigger_time` the
/// RFC 3339 time of the change behind this sync, if one moved forward.
pub fn decide(
    service: Option<&ServiceView>,
    pods: &[&PodView],
    current: Option<&Endpoints>,
    trigger_time: Option<&str>,
) -> Decision {
    let Some(service) = service else {
        return Decision::Delete;
    };
    let Some(subsets) = desired_subsets(service, pods) else {
        return Decision::Nothing;
    };
    if let Some(current) = current
        && same_subsets(&current.subsets, &subsets)
        && labels_correct(
            &current.labels,
            &service.labels,
            service
                .selector
                .as_ref()
                .is_some_and(Selector::by_annotation),
        )
        && capacity_annotation_correct(current)
    {
        return Decision::Nothing;
    }
    let mut next = current.cloned().unwrap_or_default();
    next.subsets = subsets;
    match trigger_time {
        Some(time) => {
            next.annotations
                .insert(ANNOTATION_TRIGGER_TIME.to_string(), time.to_string());
        }
        None => {
            next.annotations.remove(ANNOTATION_TRIGGER_TIME);
        }
    }
    if truncate(&mut next.subsets) {
        next.annotations.insert(
            ANNOTATION_OVER_CAPACITY.to_string(),
            "truncated".to_string(),
        );
    } else {
        next.annotations.remove(ANNOTATION_OVER_CAPACITY);
    }
    next.labels = labels(service);
    match current {
        None => Decision::Create(next),
        Some(_) => Decision::Update(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn svc(name: &str) -> ServiceView {
        ServiceView {
            namespace: "ns".into(),
            name: name.into(),
            labels: map(&[("app", "web")]),
            selector: Some(Selector::Spec(map(&[("app", "web")]))),
            cluster_ip: "10.96.0.20".into(),
            ipv6_families: vec![false],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: "TCP".into(),
                app_protocol: None,
                target_port: TargetPort::Name("web".into()),
            }],
            ..ServiceView::default()
        }
    }

    fn pod(name: &str, ip: &str, ready: bool) -> PodView {
        let ip: IpAddr = ip.parse().unwrap();
        PodView {
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            labels: map(&[("app", "web")]),
            node_name: Some("node-a".into()),
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

    fn ips(addresses: &[Address]) -> Vec<&str> {
        addresses.iter().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn ready_and_not_ready_pods_share_a_subset_per_port_set() {
        let (a, b, c) = (
            pod("a", "10.1.0.2", true),
            pod("b", "10.1.0.10", true),
            pod("c", "10.1.0.3", false),
        );
        let subsets = desired_subsets(&svc("web"), &[&a, &b, &c]).unwrap();
        assert_eq!(subsets.len(), 1);
        // Sorted by IP as bytes: "10.1.0.10" < "10.1.0.2".
        assert_eq!(ips(&subsets[0].addresses), ["10.1.0.10", "10.1.0.2"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.1.0.3"]);
        assert_eq!(subsets[0].ports[0].port, 8080);
        assert_eq!(subsets[0].ports[0].name, "http");
        let target = subsets[0].addresses[1].target.as_ref().unwrap();
        assert_eq!((target.name.as_str(), target.uid.as_str()), ("a", "uid-a"));
        assert_eq!(subsets[0].addresses[1].node_name.as_deref(), Some("node-a"));
    }

    #[test]
    fn a_named_port_resolved_to_different_numbers_splits_the_subsets() {
        let a = pod("a", "10.1.0.2", true);
        let mut b = pod("b", "10.1.0.3", true);
        b.container_ports[0].port = 9090;
        // A pod whose named port has another protocol serves nothing for it.
        let mut c = pod("c", "10.1.0.4", true);
        c.container_ports[0].protocol = "UDP".into();
        let subsets = desired_subsets(&svc("web"), &[&a, &b, &c]).unwrap();
        let mut seen: Vec<(Vec<&str>, i32)> = subsets
            .iter()
            .map(|s| (ips(&s.addresses), s.ports[0].port))
            .collect();
        seen.sort();
        assert_eq!(seen, [(vec!["10.1.0.2"], 8080), (vec!["10.1.0.3"], 9090)]);
    }

    #[test]
    fn terminal_terminating_ip_less_and_unselected_pods_are_left_out() {
        let mut done = pod("done", "10.1.0.2", true);
        done.terminal = true;
        let mut leaving = pod("leaving", "10.1.0.3", true);
        leaving.terminating = true;
        let mut no_ip = pod("no-ip", "10.1.0.4", true);
        no_ip.pod_ip = None;
        no_ip.pod_ips.clear();
        let mut other = pod("other", "10.1.0.5", true);
        other.labels = map(&[("app", "db")]);
        let kept = pod("kept", "10.1.0.6", true);
        let pods = [&done, &leaving, &no_ip, &other, &kept];
        let subsets = desired_subsets(&svc("web"), &pods).unwrap();
        assert_eq!(ips(&subsets[0].addresses), ["10.1.0.6"]);
        // publishNotReadyAddresses keeps terminating pods, and every address is ready.
        let mut publish = svc("web");
        publish.publish_not_ready_addresses = true;
        let unready = pod("unready", "10.1.0.7", false);
        let subsets = desired_subsets(&publish, &[&leaving, &unready, &kept]).unwrap();
        assert_eq!(
            ips(&subsets[0].addresses),
            ["10.1.0.3", "10.1.0.6", "10.1.0.7"]
        );
        assert!(subsets[0].not_ready_addresses.is_empty());
    }

    #[test]
    fn the_address_is_the_first_pod_ip_of_the_services_first_family() {
        let mut dual = pod("dual", "10.1.0.2", true);
        dual.pod_ips = vec!["10.1.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        let mut v6_first = svc("web");
        v6_first.ipv6_families = vec![true, false];
        let subsets = desired_subsets(&v6_first, &[&dual]).unwrap();
        assert_eq!(ips(&subsets[0].addresses), ["fd00::2"]);
        // Without families: the ClusterIP's family; a v4-only pod then has nothing for v6.
        let mut by_cluster_ip = svc("web");
        by_cluster_ip.ipv6_families.clear();
        by_cluster_ip.cluster_ip = "fd00:96::1".into();
        let v4 = pod("v4", "10.1.0.3", true);
        let subsets = desired_subsets(&by_cluster_ip, &[&dual, &v4]).unwrap();
        assert_eq!(ips(&subsets[0].addresses), ["fd00::2"]);
    }

    #[test]
    fn hostname_is_set_only_when_the_subdomain_names_the_service() {
        let mut named = pod("a", "10.1.0.2", true);
        named.hostname = "web-0".into();
        named.subdomain = "web".into();
        let mut elsewhere = pod("b", "10.1.0.3", true);
        elsewhere.hostname = "web-1".into();
        elsewhere.subdomain = "other".into();
        let subsets = desired_subsets(&svc("web"), &[&named, &elsewhere]).unwrap();
        let hostnames: Vec<Option<&str>> = subsets[0]
            .addresses
            .iter()
            .map(|a| a.hostname.as_deref())
            .collect();
        assert_eq!(hostnames, [Some("web-0"), None]);
    }

    #[test]
    fn a_portless_service_lists_addresses_only_when_headless() {
        let a = pod("a", "10.1.0.2", true);
        let mut headless = svc("web");
        headless.ports.clear();
        headless.cluster_ip = "None".into();
        let subsets = desired_subsets(&headless, &[&a]).unwrap();
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["10.1.0.2"]);
        assert!(subsets[0].ports.is_empty());
        let mut cluster = svc("web");
        cluster.ports.clear();
        assert!(desired_subsets(&cluster, &[&a]).unwrap().is_empty());
    }

    #[test]
    fn not_ready_for_one_port_wins_over_ready_for_it() {
        let address = |ip: &str| Address {
            ip: ip.into(),
            hostname: None,
            node_name: None,
            target: None,
        };
        let port = |n: i32| Port {
            name: format!("p{n}"),
            port: n,
            protocol: "TCP".into(),
            app_protocol: None,
        };
        let subsets = [
            Subset {
                addresses: vec![address("10.0.0.1")],
                not_ready_addresses: vec![],
                ports: vec![port(80)],
            },
            Subset {
                addresses: vec![],
                not_ready_addresses: vec![address("10.0.0.1")],
                ports: vec![port(80)],
            },
            Subset {
                addresses: vec![address("10.0.0.1")],
                not_ready_addresses: vec![],
                ports: vec![port(443)],
            },
        ];
        let repacked = repack(&subsets);
        assert_eq!(repacked.len(), 2);
        let for_port = |n: i32| repacked.iter().find(|s| s.ports[0].port == n).unwrap();
        assert!(for_port(80).addresses.is_empty());
        assert_eq!(ips(&for_port(80).not_ready_addresses), ["10.0.0.1"]);
        assert_eq!(ips(&for_port(443).addresses), ["10.0.0.1"]);
        // Ports served by the same addresses share one subset.
        let same = [Subset {
            addresses: vec![address("10.0.0.2")],
            not_ready_addresses: vec![],
            ports: vec![port(443), port(80)],
        }];
        let repacked = repack(&same);
        assert_eq!(repacked.len(), 1);
        assert_eq!(repacked[0].ports, [port(443), port(80)]);
    }

    #[test]
    fn over_capacity_keeps_ready_addresses_first_and_shares_the_rest() {
        let address = |i: usize| Address {
            ip: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            hostname: None,
            node_name: None,
            target: None,
        };
        // 900 ready and 300 not ready in two subsets: 100 not ready are kept, 50 from each.
        let mut subsets = vec![
            Subset {
                addresses: (0..600).map(address).collect(),
                not_ready_addresses: (1000..1150).map(address).collect(),
                ports: vec![],
            },
            Subset {
                addresses: (2000..2300).map(address).collect(),
                not_ready_addresses: (3000..3150).map(address).collect(),
                ports: vec![],
            },
        ];
        assert!(truncate(&mut subsets));
        let counts: Vec<(usize, usize)> = subsets
            .iter()
            .map(|s| (s.addresses.len(), s.not_ready_addresses.len()))
            .collect();
        assert_eq!(counts, [(600, 50), (300, 50)]);
        // More than 1000 ready: not-ready ones all go; 1001 and 500 ready share 1000 rounded
        // up in order, the last subset getting what is left.
        let mut subsets = vec![
            Subset {
                addresses: (0..1001).map(address).collect(),
                not_ready_addresses: (2000..2010).map(address).collect(),
                ports: vec![],
            },
            Subset {
                addresses: (3000..3500).map(address).collect(),
                not_ready_addresses: vec![],
                ports: vec![],
            },
        ];
        assert!(truncate(&mut subsets));
        let counts: Vec<(usize, usize)> = subsets
            .iter()
            .map(|s| (s.addresses.len(), s.not_ready_addresses.len()))
            .collect();
        // ceil(1001/1501*1000) = 667, then min(ceil(500/1501*1000) = 334, 333) = 333.
        assert_eq!(counts, [(667, 0), (333, 0)]);
        let mut small = vec![Subset {
            addresses: (0..1000).map(address).collect(),
            ..Subset::default()
        }];
        assert!(!truncate(&mut small));
    }

    #[test]
    fn labels_follow_the_service_with_headless_and_managed_by() {
        let mut headless = svc("web");
        headless.cluster_ip = "None".into();
        assert_eq!(
            labels(&headless),
            map(&[
                ("app", "web"),
                (LABEL_HEADLESS, ""),
                (LABEL_MANAGED_BY, CONTROLLER_NAME)
            ])
        );
        let service = svc("web");
        let written = labels(&service);
        assert!(labels_correct(&written, &service.labels, false));
        assert!(labels_correct(&labels(&headless), &service.labels, false));
        let mut extra = written.clone();
        extra.insert("x".into(), "y".into());
        assert!(!labels_correct(&extra, &service.labels, false));
        let mut unmanaged = written;
        unmanaged.remove(LABEL_MANAGED_BY);
        assert!(!labels_correct(&unmanaged, &service.labels, false));
    }

    #[test]
    fn endpoints_of_an_annotated_service_are_svcplanes_and_skip_mirroring() {
        let mut service = svc("web");
        service.selector = Some(Selector::Annotation(
            cache::selector::LabelSelector::parse("app in (web,api),!legacy").unwrap(),
        ));
        let written = labels(&service);
        assert_eq!(written[LABEL_MANAGED_BY], SVCPLANE_CONTROLLER_NAME);
        assert_eq!(written[LABEL_SKIP_MIRROR], "true");
        assert!(labels_correct(&written, &service.labels, true));
        assert!(!labels_correct(&written, &service.labels, false));
        let mut mirrored = written.clone();
        mirrored.remove(LABEL_SKIP_MIRROR);
        assert!(!labels_correct(&mirrored, &service.labels, true));
        // The set-based selector picks its pods; the others are left out.
        let a = pod("a", "10.1.0.2", true);
        let mut legacy = pod("b", "10.1.0.3", true);
        legacy.labels.insert("legacy".into(), "yes".into());
        let Decision::Create(created) = decide(Some(&service), &[&a, &legacy], None, None) else {
            panic!("a missing object is created");
        };
        let ips: Vec<&str> = created.subsets[0]
            .addresses
            .iter()
            .map(|a| a.ip.as_str())
            .collect();
        assert_eq!(ips, ["10.1.0.2"]);
    }

    #[test]
    fn a_sync_that_changes_nothing_writes_nothing() {
        let service = svc("web");
        let a = pod("a", "10.1.0.2", true);
        let Decision::Create(created) = decide(Some(&service), &[&a], None, Some("t1")) else {
            panic!("a missing object is created");
        };
        assert_eq!(created.annotations[ANNOTATION_TRIGGER_TIME], "t1");
        assert_eq!(created.labels[LABEL_MANAGED_BY], CONTROLLER_NAME);
        assert_eq!(
            decide(Some(&service), &[&a], Some(&created), Some("t2")),
            Decision::Nothing
        );
        // A change rewrites it, clearing the trigger time when none moved forward and keeping
        // annotations it does not own.
        let mut current = created.clone();
        current.annotations.insert("keep".into(), "me".into());
        let b = pod("b", "10.1.0.3", true);
        let Decision::Update(updated) = decide(Some(&service), &[&a, &b], Some(&current), None)
        else {
            panic!("a new pod updates the object");
        };
        assert!(!updated.annotations.contains_key(ANNOTATION_TRIGGER_TIME));
        assert_eq!(updated.annotations["keep"], "me");
        assert_eq!(ips(&updated.subsets[0].addresses), ["10.1.0.2", "10.1.0.3"]);
    }

    #[test]
    fn gone_selectorless_and_external_name_services_are_told_apart() {
        assert_eq!(decide(None, &[], None, None), Decision::Delete);
        let mut selectorless = svc("web");
        selectorless.selector = None;
        let user_written = Endpoints::default();
        assert_eq!(
            decide(Some(&selectorless), &[], Some(&user_written), None),
            Decision::Nothing
        );
        let mut external = svc("web");
        external.external_name = true;
        assert_eq!(decide(Some(&external), &[], None, None), Decision::Nothing);
        // An empty selector selects every pod of the namespace.
        let mut everything = svc("web");
        everything.selector = Some(Selector::Spec(BTreeMap::new()));
        let mut db = pod("db", "10.1.0.9", true);
        db.labels = map(&[("app", "db")]);
        let Decision::Create(created) = decide(Some(&everything), &[&db], None, None) else {
            panic!("created");
        };
        assert_eq!(ips(&created.subsets[0].addresses), ["10.1.0.9"]);
        // A selector that matches nothing still gets an object, with no subsets.
        let Decision::Create(empty) = decide(Some(&svc("web")), &[&db], None, None) else {
            panic!("created");
        };
        assert!(empty.subsets.is_empty());
    }
}
