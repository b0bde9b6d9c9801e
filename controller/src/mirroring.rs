//! The EndpointSlice mirroring controller's plan for one Endpoints object, as
//! kube-controller-manager v1.37 makes it (`pkg/controller/endpointslicemirroring`): the
//! Endpoints of a selectorless Service, written by a user, mirrored into one slice per address
//! type and port set, owned by the Endpoints, with its labels and annotations; at most
//! `--mirroring-max-endpoints-per-subset` addresses per subset, ready ones first; invalid IPs
//! skipped. Pure, over lean views.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::endpoints::{Address, Selector, ServiceView, Subset, repack};
use crate::endpointslices::{
    AddressType, Endpoint, EndpointKey, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, Slice, SlicePort,
};

/// The mirroring controller's managed-by value.
pub const MIRRORING_CONTROLLER: &str = "endpointslicemirroring-controller.k8s.io";
/// An Endpoints object labelled with this set to `"true"` is not mirrored.
pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// The leader-election annotation of Endpoints used as locks; those are not mirrored.
pub const ANNOTATION_LEADER: &str = "control-plane.alpha.kubernetes.io/leader";
/// Default `--mirroring-max-endpoints-per-subset`.
pub const DEFAULT_MAX_PER_SUBSET: usize = 1000;

/// What mirroring reads of an Endpoints object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointsView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub subsets: Vec<Subset>,
    pub deleting: bool,
}

/// Whether an Endpoints object is mirrored: it exists, is not marked skip-mirror nor a leader
/// lock, and its Service exists without a selector.
pub fn mirrored(endpoints: Option<&EndpointsView>, service: Option<&ServiceView>) -> bool {
    let (Some(endpoints), Some(service)) = (endpoints, service) else {
        return false;
    };
    endpoints.labels.get(LABEL_SKIP_MIRROR).map(String::as_str) != Some("true")
        && !endpoints.annotations.contains_key(ANNOTATION_LEADER)
        && !matches!(service.selector, Some(Selector::Spec(_)))
}

/// The writes of one mirroring sync, and what it skipped (for Warning events).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorPlan {
    pub create: Vec<Slice>,
    pub update: Vec<Slice>,
    pub delete: Vec<String>,
    /// Addresses that are not IPs.
    pub invalid: usize,
    /// Addresses over the per-subset limit.
    pub over_limit: usize,
    /// Upstream's per-sync totals: endpoints added, updated and removed.
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    /// Desired endpoints, slices once written, and slices a perfect packing would need.
    pub endpoints: usize,
    pub slices: usize,
    pub desired_slices: usize,
}

fn endpoint_of(address: &Address, ready: bool) -> Option<(AddressType, Endpoint)> {
    let ip: IpAddr = address.ip.parse().ok()?;
    let address_type = if ip.is_ipv4() {
        AddressType::IPv4
    } else {
        AddressType::IPv6
    };
    Some((
        address_type,
        Endpoint {
            addresses: vec![ip.to_string()],
            ready: Some(ready),
            hostname: address.hostname.clone().filter(|h| !h.is_empty()),
            node_name: address.node_name.clone(),
            target: address.target.clone(),
            ..Endpoint::default()
        },
    ))
}

fn mirror_labels(endpoints: &EndpointsView) -> BTreeMap<String, String> {
    let mut labels = endpoints.labels.clone();
    labels.insert(LABEL_SERVICE_NAME.to_string(), endpoints.name.clone());
    labels.insert(
        LABEL_MANAGED_BY.to_string(),
        MIRRORING_CONTROLLER.to_string(),
    );
    labels
}

fn mirror_annotations(endpoints: &EndpointsView) -> BTreeMap<String, String> {
    let mut annotations = endpoints.annotations.clone();
    annotations.remove(crate::endpoints::ANNOTATION_TRIGGER_TIME);
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    annotations
}

type Key = (AddressType, Vec<SlicePort>);

/// The plan for one mirrored Endpoints object over its existing mirrored slices.
pub fn plan(endpoints: &EndpointsView, existing: &[Slice], max_per_subset: usize) -> MirrorPlan {
    let mut out = MirrorPlan::default();
    // Desired endpoints per (address type, ports); both types get a key per subset.
    let mut desired: BTreeMap<Key, BTreeMap<EndpointKey, Endpoint>> = BTreeMap::new();
    let mut ports_of: BTreeMap<Key, Vec<SlicePort>> = BTreeMap::new();
    for subset in repack(&endpoints.subsets) {
        let ports: Vec<SlicePort> = subset
            .ports
            .iter()
            .map(|p| SlicePort {
                name: Some(p.name.clone()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone()),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let mut sorted = ports.clone();
        sorted.sort();
        for t in [AddressType::IPv4, AddressType::IPv6] {
            desired.entry((t, sorted.clone())).or_default();
            ports_of.insert((t, sorted.clone()), ports.clone());
        }
        let total = subset.addresses.len() + subset.not_ready_addresses.len();
        let mut added = 0;
        let mut invalid = 0;
        let candidates = subset
            .addresses
            .iter()
            .map(|a| (a, true))
            .chain(subset.not_ready_addresses.iter().map(|a| (a, false)));
        for (address, ready) in candidates {
            if added >= max_per_subset {
                break;
            }
            match endpoint_of(address, ready) {
                Some((t, endpoint)) => {
                    let key = endpoint.key();
                    desired
                        .entry((t, sorted.clone()))
                        .or_default()
                        .insert(key, endpoint);
                    added += 1;
                }
                None => invalid += 1,
            }
        }
        out.invalid += invalid;
        out.over_limit += total - added - invalid;
    }
    let mut existing_by_key: BTreeMap<Key, Vec<&Slice>> = BTreeMap::new();
    for slice in existing {
        let mut ports = slice.ports.clone();
        ports.sort();
        let t = slice.address_type.unwrap_or(AddressType::IPv4);
        existing_by_key.entry((t, ports)).or_default().push(slice);
    }
    let mut to_create: Vec<Slice> = Vec::new();
    let mut to_delete: Vec<Slice> = Vec::new();
    for (key, wanted) in &desired {
        let slices = existing_by_key.get(key).cloned().unwrap_or_default();
        // Upstream's efficiency counts per key: existing + created - deleted slices.
        out.endpoints += wanted.len();
        out.desired_slices += wanted.len().div_ceil(max_per_subset.max(1));
        out.slices += usize::from(!wanted.is_empty());
        if wanted.is_empty() {
            out.removed += slices.iter().map(|s| s.endpoints.len()).sum::<usize>();
            to_delete.extend(slices.into_iter().cloned());
            continue;
        }
        let first = slices.first().copied();
        to_delete.extend(slices.iter().skip(1).map(|s| (*s).clone()));
        match first {
            None => out.added += wanted.len(),
            Some(first) => {
                let mut matches = 0;
                for e in &first.endpoints {
                    match wanted.get(&e.key()) {
                        None => out.removed += 1,
                        Some(w) => {
                            matches += 1;
                            if !w.equal_beyond_key(e) {
                                out.updated += 1;
                            }
                        }
                    }
                }
                out.added += wanted.len() - matches;
            }
        }
        if let Some(first) = first {
            let mut labels = first.labels.clone();
            labels.remove(LABEL_MANAGED_BY);
            labels.remove(LABEL_SERVICE_NAME);
            let same_endpoints = first.endpoints.len() == wanted.len()
                && first
                    .endpoints
                    .iter()
                    .all(|e| wanted.get(&e.key()).is_some_and(|w| w.equal_beyond_key(e)));
            let rebuild = first
                .endpoints_owner
                .as_ref()
                .is_some_and(|(name, uid)| *name == endpoints.name && *uid != endpoints.uid);
            if same_endpoints
                && labels == endpoints.labels
                && first.annotations == mirror_annotations(endpoints)
                && !rebuild
            {
                continue;
            }
        }
        let slice = Slice {
            name: first.map(|s| s.name.clone()).unwrap_or_default(),
            labels: mirror_labels(endpoints),
            annotations: mirror_annotations(endpoints),
            service_owner_uid: None,
            endpoints_owner: Some((endpoints.name.clone(), endpoints.uid.clone())),
            address_type: Some(key.0),
            ports: ports_of[key].clone(),
            endpoints: wanted.values().take(max_per_subset).cloned().collect(),
        };
        if slice.name.is_empty() {
            to_create.push(slice);
        } else {
            out.update.push(slice);
        }
    }
    for (key, slices) in &existing_by_key {
        if !desired.contains_key(key) {
            to_delete.extend(slices.iter().map(|s| (*s).clone()));
        }
    }
    // Recycle: per address type, creates take the names of deletes.
    for t in [AddressType::IPv4, AddressType::IPv6] {
        loop {
            let c = to_create.iter().position(|s| s.address_type == Some(t));
            let d = to_delete.iter().position(|s| s.address_type == Some(t));
            let (Some(c), Some(d)) = (c, d) else { break };
            let mut slice = to_create.remove(c);
            slice.name = to_delete.remove(d).name;
            out.update.push(slice);
        }
    }
    if !endpoints.deleting {
        out.create = to_create;
    }
    out.delete = to_delete.into_iter().map(|s| s.name).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::Port;

    fn address(ip: &str) -> Address {
        Address {
            ip: ip.into(),
            hostname: None,
            node_name: None,
            target: None,
        }
    }

    fn manual() -> EndpointsView {
        EndpointsView {
            namespace: "ns".into(),
            name: "manual".into(),
            uid: "ep-uid".into(),
            labels: BTreeMap::from([("team".into(), "a".into())]),
            annotations: BTreeMap::from([
                ("note".into(), "kept".into()),
                (crate::endpoints::ANNOTATION_TRIGGER_TIME.into(), "t".into()),
            ]),
            subsets: vec![Subset {
                addresses: vec![address("192.0.2.1"), address("fd00::1"), address("nope")],
                not_ready_addresses: vec![address("192.0.2.2")],
                ports: vec![Port {
                    name: "http".into(),
                    port: 80,
                    protocol: "TCP".into(),
                    app_protocol: None,
                }],
            }],
            deleting: false,
        }
    }

    #[test]
    fn each_address_type_gets_a_slice_with_the_endpoints_labels_and_annotations() {
        let plan = plan(&manual(), &[], DEFAULT_MAX_PER_SUBSET);
        assert_eq!(plan.invalid, 1);
        assert_eq!(plan.create.len(), 2);
        let v4 = plan
            .create
            .iter()
            .find(|s| s.address_type == Some(AddressType::IPv4))
            .unwrap();
        assert_eq!(v4.endpoints.len(), 2);
        assert_eq!(v4.labels[LABEL_MANAGED_BY], MIRRORING_CONTROLLER);
        assert_eq!(v4.labels[LABEL_SERVICE_NAME], "manual");
        assert_eq!(v4.labels["team"], "a");
        assert_eq!(
            v4.annotations,
            BTreeMap::from([("note".to_string(), "kept".to_string())])
        );
        let readiness: Vec<Option<bool>> = v4.endpoints.iter().map(|e| e.ready).collect();
        assert!(readiness.contains(&Some(true)) && readiness.contains(&Some(false)));
        assert_eq!(v4.endpoints_owner, Some(("manual".into(), "ep-uid".into())));
    }

    fn first_totals() -> MirrorPlan {
        plan(&manual(), &[], DEFAULT_MAX_PER_SUBSET)
    }

    #[test]
    fn a_mirrored_slice_that_matches_is_left_alone_and_one_that_does_not_is_rewritten() {
        let first = plan(&manual(), &[], DEFAULT_MAX_PER_SUBSET);
        let existing: Vec<Slice> = first
            .create
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                s.name = format!("manual-{i}");
                s
            })
            .collect();
        let again = plan(&manual(), &existing, DEFAULT_MAX_PER_SUBSET);
        let totals = |p: &MirrorPlan| (p.added, p.updated, p.removed, p.endpoints, p.slices);
        assert_eq!(totals(&first_totals()), (3, 0, 0, 3, 2));
        assert_eq!(totals(&again), (0, 0, 0, 3, 2));
        assert!(again.create.is_empty() && again.update.is_empty() && again.delete.is_empty());
        let mut changed = manual();
        changed.subsets[0].addresses.remove(1);
        let next = plan(&changed, &existing, DEFAULT_MAX_PER_SUBSET);
        // fd00::1 went: its key's slice is deleted with its one endpoint.
        assert_eq!((next.added, next.removed, next.slices), (0, 1, 1));
        // The IPv6 slice has nothing left: deleted; the IPv4 one is unchanged.
        assert_eq!(next.delete.len(), 1);
        assert!(next.update.is_empty());
    }

    #[test]
    fn only_selectorless_services_endpoints_are_mirrored() {
        let selectorless = ServiceView::default();
        assert!(mirrored(Some(&manual()), Some(&selectorless)));
        let selected = ServiceView {
            selector: Some(Selector::Spec(BTreeMap::new())),
            ..ServiceView::default()
        };
        assert!(!mirrored(Some(&manual()), Some(&selected)));
        // As for kube-controller-manager, only `spec.selector` counts: the Endpoints svcplane
        // writes for the annotation carry the skip-mirror label instead.
        let annotated = ServiceView {
            selector: Some(Selector::Annotation(
                cache::selector::LabelSelector::parse("app").unwrap(),
            )),
            ..ServiceView::default()
        };
        assert!(mirrored(Some(&manual()), Some(&annotated)));
        assert!(!mirrored(Some(&manual()), None));
        let mut skip = manual();
        skip.labels.insert(LABEL_SKIP_MIRROR.into(), "true".into());
        assert!(!mirrored(Some(&skip), Some(&selectorless)));
    }

    #[test]
    fn at_most_the_limit_is_mirrored_ready_first() {
        let mut many = manual();
        many.subsets[0].addresses = (1..=5).map(|i| address(&format!("192.0.2.{i}"))).collect();
        many.subsets[0].not_ready_addresses = vec![address("192.0.2.9")];
        let plan = plan(&many, &[], 3);
        let v4 = &plan.create[0];
        assert_eq!(v4.endpoints.len(), 3);
        assert!(v4.endpoints.iter().all(|e| e.ready == Some(true)));
        assert_eq!(plan.over_limit, 3);
    }
}
