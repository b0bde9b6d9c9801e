//! The record index: for every Service, what its names answer (cluster IPs, ready endpoints by
//! endpoint name, ports), and for every address, the PTR targets it has — rebuilt from each cache
//! snapshot for the Services that changed only, and published whole, so a query is a lookup and
//! never sees half of a change.
//!
//! Kept small, as it is held once per cluster object: dense persistent maps
//! ([`cache::sharded`]), the cache's own Service and EndpointSlices read in place rather than
//! copied (an endpoint costs the index where it is and its place in the name order), endpoint
//! names made when asked for instead of kept, and PTR targets that point at their entry.

use std::cmp::Ordering as Order;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cache::{EndpointPort, EndpointRef, EndpointSlice, Key, Service, ServicePort, Snapshot};
use smallvec::SmallVec;

use crate::config::Config;
use crate::name::Dashed;
use cache::sharded::{Item, Keyed, ShardedMap};

/// What one Service answers.
#[derive(Debug)]
pub struct Entry {
    /// The cache's Service (its key and ports).
    pub service: Arc<Service>,
    /// The Service's slices that hold a ready endpoint: the cache's own, read in place, so an
    /// endpoint costs the index only where it is.
    slices: SmallVec<[Arc<EndpointSlice>; 1]>,
    /// Every ready endpoint address of every slice, in slice and endpoint order (an address in
    /// two slices appears twice), and the name order beside it.
    ready: Box<[At]>,
    /// Endpoints without a hostname are named by their pod (`endpoint_pod_names`).
    pod_names: bool,
    /// False when the Service's names must not exist: a headless Service without ready
    /// endpoints, an empty ClusterIP Service under `ignore_empty_service`, an ExternalName that
    /// is an IP address.
    pub exists: bool,
    /// Set once a later index holds another entry for the Service, or none: answers kept as
    /// bytes that read this one are made afresh ([`crate::memo`]).
    replaced: AtomicBool,
}

/// Where a ready endpoint address is (slice, endpoint in it, address of the endpoint), and,
/// beside it for want of a second list, the `i`th of the entry's addresses in name order (ties
/// in endpoint order).
#[derive(Debug, Clone, Copy)]
struct At {
    slice: u32,
    endpoint: u32,
    address: u32,
    by_name: u32,
}

impl Entry {
    /// Whether a later index replaced this entry.
    pub fn replaced(&self) -> bool {
        self.replaced.load(Ordering::Acquire)
    }

    fn replace(&self) {
        self.replaced.store(true, Ordering::Release);
    }

    pub fn key(&self) -> &Key {
        &self.service.key
    }

    pub fn kind(&self) -> &EntryKind {
        &self.service.kind
    }

    /// The Service's ports (SRV of ClusterIP Services).
    pub fn ports(&self) -> &[ServicePort] {
        &self.service.ports
    }

    /// The ready endpoint addresses, in slice and endpoint order.
    pub fn endpoints(&self) -> impl ExactSizeIterator<Item = Ep<'_>> + '_ {
        (0..self.ready.len()).map(|i| self.endpoint(i))
    }

    /// The `i`th ready endpoint address.
    fn endpoint(&self, i: usize) -> Ep<'_> {
        let at = self.ready[i];
        let slice = &self.slices[at.slice as usize];
        let endpoint = slice
            .endpoints
            .get(at.endpoint as usize)
            .expect("an index made from this slice");
        Ep {
            addr: endpoint.addresses[at.address as usize],
            ports: &slice.ports,
            endpoint,
            pod_names: self.pod_names,
        }
    }

    /// The endpoints named `name` (in lower case), in endpoint order.
    pub fn named<'a>(&'a self, name: &str) -> impl Iterator<Item = Ep<'a>> + 'a {
        let of = |at: &At| self.endpoint(at.by_name as usize);
        let start = self.ready.partition_point(|at| *of(at).name() < *name);
        let len = self.ready[start..].partition_point(|at| *of(at).name() == *name);
        self.ready[start..start + len].iter().map(of)
    }
}

/// Entries are held by their Service's key.
impl Keyed for Entry {
    type Key = Key;
    fn key(&self) -> &Key {
        &self.service.key
    }
}

/// How a Service answers address queries: the cache's own kind (cluster IPs without
/// repeats, the external name in lower case).
pub use cache::ServiceKind as EntryKind;

/// One ready endpoint address, read from its slice.
#[derive(Clone, Copy)]
pub struct Ep<'a> {
    pub addr: IpAddr,
    /// The ports of its slice.
    pub ports: &'a [EndpointPort],
    endpoint: EndpointRef<'a>,
    pod_names: bool,
}

impl<'a> Ep<'a> {
    /// Its endpoint name: hostname, else (with `endpoint_pod_names`) a pod name shorter than
    /// 64 bytes, else the dashed address. The cache keeps hostnames and pod names in lower
    /// case.
    pub fn name(&self) -> EpName<'a> {
        match (self.endpoint.hostname, self.endpoint.pod_name) {
            (Some(h), _) => EpName::Given(h),
            (None, Some(p)) if self.pod_names && p.len() < 64 => EpName::Given(p),
            _ => EpName::Dashed(Dashed::new(self.addr)),
        }
    }
}

impl fmt::Debug for Ep<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {:?}", &*self.name(), self.addr, self.ports)
    }
}

/// An endpoint's name, made without allocating.
pub enum EpName<'a> {
    Given(&'a str),
    Dashed(Dashed),
}

impl std::ops::Deref for EpName<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            EpName::Given(name) => name,
            EpName::Dashed(dashed) => dashed,
        }
    }
}

/// Where a PTR query for an address points: a Service's cluster IP, or one of its endpoints.
#[derive(Clone, Copy)]
pub struct PtrTarget<'a> {
    entry: &'a Entry,
    /// Index into the entry's ready endpoints; [`CLUSTER_IP`] for the cluster IP.
    endpoint: u32,
}

/// The `endpoint` of a PTR target that is the Service's cluster IP.
const CLUSTER_IP: u32 = u32::MAX;

impl<'a> PtrTarget<'a> {
    pub fn service(&self) -> &'a Key {
        self.entry.key()
    }

    /// The endpoint's name; `None`: the address is the Service's cluster IP.
    pub fn endpoint(&self) -> Option<EpName<'a>> {
        (self.endpoint != CLUSTER_IP).then(|| self.entry.endpoint(self.endpoint as usize).name())
    }

    /// PTR targets of one address are kept in this order (Service, then endpoint name), so
    /// the answer depends on the snapshot, not on the order of changes.
    fn order(&self, other: &PtrTarget<'_>) -> Order {
        (self.service(), self.endpoint().as_deref())
            .cmp(&(other.service(), other.endpoint().as_deref()))
    }
}

impl fmt::Debug for PtrTarget<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.service())?;
        match self.endpoint() {
            Some(e) => write!(f, " endpoint {}", &*e),
            None => write!(f, " cluster IP"),
        }
    }
}

/// One PTR target of an address, held by the address (an address with several targets has
/// several): 16 bytes for IPv4.
#[derive(Clone)]
struct Ptr<K> {
    addr: K,
    endpoint: u32,
    entry: Arc<Entry>,
}

impl<K> Ptr<K> {
    fn target(&self) -> PtrTarget<'_> {
        PtrTarget {
            entry: &self.entry,
            endpoint: self.endpoint,
        }
    }
}

impl<K: Ord + std::hash::Hash + Clone> Item for Ptr<K> {
    type Key = K;
    fn key(&self) -> &K {
        &self.addr
    }
}

/// PTR targets by address, IPv4 addresses (most of a cluster's) keyed by their four bytes.
#[derive(Debug, Clone, Default)]
struct Reverse {
    v4: ShardedMap<Ptr<u32>>,
    v6: ShardedMap<Ptr<u128>>,
}

impl<K: fmt::Debug> fmt::Debug for Ptr<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {:?}", self.addr, self.target())
    }
}

impl Reverse {
    fn get(&self, ip: IpAddr) -> impl Iterator<Item = PtrTarget<'_>> + '_ {
        let (v4, v6) = match ip {
            IpAddr::V4(a) => (self.v4.get_all(&a.to_bits()), &[][..]),
            IpAddr::V6(a) => (&[][..], self.v6.get_all(&a.to_bits())),
        };
        v4.iter().map(Ptr::target).chain(v6.iter().map(Ptr::target))
    }

    fn insert(&mut self, ip: IpAddr, entry: &Arc<Entry>, endpoint: u32) {
        fn order<K>(a: &Ptr<K>, b: &Ptr<K>) -> Order {
            a.target().order(&b.target())
        }
        match ip {
            IpAddr::V4(a) => self.v4.insert_among(
                Ptr {
                    addr: a.to_bits(),
                    endpoint,
                    entry: entry.clone(),
                },
                order,
            ),
            IpAddr::V6(a) => self.v6.insert_among(
                Ptr {
                    addr: a.to_bits(),
                    endpoint,
                    entry: entry.clone(),
                },
                order,
            ),
        };
    }

    /// Removes the targets of `ip` that are `service`'s.
    fn remove(&mut self, ip: IpAddr, service: &Key) {
        match ip {
            IpAddr::V4(a) => self
                .v4
                .retain_among(&a.to_bits(), |t| t.entry.key() != service),
            IpAddr::V6(a) => self
                .v6
                .retain_among(&a.to_bits(), |t| t.entry.key() != service),
        }
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = (IpAddr, PtrTarget<'_>)> + '_ {
        let v4 = self.v4.iter().map(|p| {
            (
                IpAddr::from(std::net::Ipv4Addr::from_bits(p.addr)),
                p.target(),
            )
        });
        let v6 = self.v6.iter().map(|p| {
            (
                IpAddr::from(std::net::Ipv6Addr::from_bits(p.addr)),
                p.target(),
            )
        });
        v4.chain(v6)
    }
}

/// The index of one snapshot.
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub snapshot: Arc<Snapshot>,
    /// The generation at which the namespaces last changed (or this index was built whole).
    pub namespaces_since: u64,
    /// This index was built whole, not from the previous one and what changed since.
    pub whole: bool,
    services: ShardedMap<Arc<Entry>>,
    reverse: Reverse,
}

/// Builds the entry of one Service.
pub fn entry(snapshot: &Snapshot, svc: &Arc<Service>, config: &Config) -> Entry {
    let kind = &svc.kind;
    // Every ready address of every slice, duplicates included: an address present in two
    // slices (during skew) counts twice in SRV weights, as upstream counts candidates before
    // removing duplicates; answers remove them.
    let mut slices = SmallVec::new();
    let mut ready = Vec::new();
    if !config.noendpoints && !matches!(kind, EntryKind::ExternalName(_)) {
        for slice in snapshot.slices_of(&svc.key) {
            let before = ready.len();
            for (e, endpoint) in slice.endpoints.iter().enumerate() {
                if endpoint.ready {
                    ready.extend((0..endpoint.addresses.len()).map(|a| At {
                        slice: slices.len() as u32,
                        endpoint: e as u32,
                        address: a as u32,
                        by_name: 0,
                    }));
                }
            }
            if ready.len() > before {
                slices.push(slice.clone());
            }
        }
    }
    let mut entry = Entry {
        service: svc.clone(),
        slices,
        ready: ready.into(),
        pod_names: config.endpoint_pod_names,
        exists: false,
        replaced: AtomicBool::new(false),
    };
    // Sorted by names made once each.
    let names: Vec<EpName<'_>> = entry.endpoints().map(|ep| ep.name()).collect();
    let mut by_name: Vec<u32> = (0..names.len() as u32).collect();
    by_name.sort_by(|a, b| (*names[*a as usize]).cmp(&*names[*b as usize]));
    drop(names);
    for (at, i) in entry.ready.iter_mut().zip(by_name) {
        at.by_name = i;
    }
    entry.exists = match kind {
        EntryKind::ClusterIp(_) => {
            !(config.ignore_empty_service && !config.noendpoints && entry.ready.is_empty())
        }
        EntryKind::Headless => !entry.ready.is_empty(),
        EntryKind::ExternalName(name) => name.parse::<IpAddr>().is_err(),
    };
    entry
}

impl Index {
    /// Indexes every Service of `snapshot`.
    pub fn build(snapshot: Arc<Snapshot>, config: &Config) -> Index {
        let mut index = Index {
            snapshot: snapshot.clone(),
            namespaces_since: snapshot.generation,
            whole: true,
            ..Index::default()
        };
        for svc in snapshot.services.iter() {
            index.insert(entry(&snapshot, svc, config));
        }
        index
    }

    /// The index of `snapshot`, made from this one and what changed since its generation —
    /// however many generations that is, as long as the snapshot remembers them — and built
    /// whole only after a step the cache records as changing everything (more than
    /// `cache::store::MANY_SERVICES` Services: an initial list, most of a reload), or a gap
    /// longer than the snapshot's history.
    pub fn next(&self, snapshot: Arc<Snapshot>, config: &Config) -> Index {
        let changed = if snapshot.generation == self.snapshot.generation + 1 {
            Some(std::borrow::Cow::Borrowed(&*snapshot.changed))
        } else {
            snapshot
                .changed_since(self.snapshot.generation)
                .map(std::borrow::Cow::Owned)
        };
        let Some(changed) = changed.filter(|c| !c.all) else {
            for entry in self.services.iter() {
                entry.replace();
            }
            return Index::build(snapshot, config);
        };
        let mut index = self.clone();
        index.snapshot = snapshot.clone();
        index.whole = false;
        if changed.namespaces {
            index.namespaces_since = snapshot.generation;
        }
        for key in &changed.services {
            index.remove(key);
            if let Some(svc) = snapshot.services.get(key) {
                index.insert(entry(&snapshot, svc, config));
            }
        }
        index
    }

    fn insert(&mut self, entry: Entry) {
        let entry = Arc::new(entry);
        let cluster = match entry.kind() {
            EntryKind::ClusterIp(ips) => &ips[..],
            _ => &[],
        };
        let targets = cluster.iter().map(|ip| (*ip, CLUSTER_IP)).chain(
            entry
                .endpoints()
                .enumerate()
                .map(|(i, ep)| (ep.addr, i as u32)),
        );
        for (ip, endpoint) in targets {
            self.reverse.insert(ip, &entry, endpoint);
        }
        self.services.insert(entry);
    }

    fn remove(&mut self, key: &Key) {
        let Some(old) = self.services.remove(key) else {
            return;
        };
        old.replace();
        let ips = match old.kind() {
            EntryKind::ClusterIp(ips) => &ips[..],
            _ => &[],
        };
        for ip in ips.iter().copied().chain(old.endpoints().map(|e| e.addr)) {
            self.reverse.remove(ip, key);
        }
    }

    /// The entry of a Service.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Entry>> {
        self.services.get(&Key::new(namespace, name))
    }

    /// The PTR targets of an address.
    pub fn ptr(&self, ip: IpAddr) -> impl Iterator<Item = PtrTarget<'_>> + '_ {
        self.reverse.get(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache::{Cache, EndpointSlice, Event, Kind, Object, ServiceKind};

    fn service(name: &str, ip: &str) -> Object {
        Object::Service(Service {
            key: Key::new("d", name),
            kind: ServiceKind::ClusterIp([ip.parse().unwrap()].into()),
            ports: Default::default(),
        })
    }

    fn slice(service: &str, ips: &[&str]) -> Object {
        Object::EndpointSlice(EndpointSlice {
            key: Key::new("d", format!("{service}-1")),
            service: Some(service.into()),
            ports: Vec::new().into(),
            last_change_trigger: None,
            endpoints: ips
                .iter()
                .map(|ip| cache::Endpoint {
                    addresses: [ip.parse().unwrap()].into(),
                    ready: true,
                    hostname: None,
                    pod_name: None,
                })
                .collect(),
        })
    }

    /// What an index answers, as text: every Service's entry and every address's PTR targets.
    fn contents(index: &Index) -> String {
        let mut out = String::new();
        for (key, entry) in index
            .services
            .iter()
            .map(|e| (e.key(), e))
            .collect::<std::collections::BTreeMap<_, _>>()
        {
            out.push_str(&format!(
                "{key:?} {:?} {:?} {:?} {}\n",
                entry.kind(),
                entry.ports(),
                entry.endpoints().collect::<Vec<_>>(),
                entry.exists
            ));
        }
        // By address; an address's targets in the order kept.
        let mut targets: Vec<_> = index.reverse.iter().collect();
        targets.sort_by_key(|(ip, _)| *ip);
        for (ip, target) in targets {
            out.push_str(&format!("{ip} {target:?}\n"));
        }
        out
    }

    #[test]
    fn an_index_that_skipped_generations_is_updated_for_what_they_changed() {
        let config = Config::default();
        let cache = Cache::new(&[]);
        cache.apply([
            Event::Apply(service("a", "10.0.0.1")),
            Event::Apply(service("b", "10.0.0.2")),
            Event::Apply(slice("b", &["10.1.0.1"])),
        ]);
        let first = Index::build(cache.current(), &config);
        assert!(first.whole);
        let (kept, changed) = (
            first.service("d", "a").unwrap().clone(),
            first.service("d", "b").unwrap().clone(),
        );
        // Three generations pass before the index follows.
        cache.apply([Event::Apply(slice("b", &["10.1.0.1", "10.1.0.2"]))]);
        cache.apply([Event::Apply(service("c", "10.0.0.3"))]);
        cache.apply([Event::Delete(Kind::Services, Key::new("d", "c"))]);
        let next = first.next(cache.current(), &config);
        assert!(!next.whole, "not rebuilt because it fell behind");
        assert_eq!(
            contents(&next),
            contents(&Index::build(cache.current(), &config))
        );
        assert!(Arc::ptr_eq(next.service("d", "a").unwrap(), &kept));
        assert!(!kept.replaced(), "an unchanged Service keeps its entry");
        assert!(changed.replaced(), "a changed one's entry is replaced");
        // A relist is applied as the differences it brings: followed, not rebuilt.
        cache.apply([Event::Reset(Kind::Services, vec![service("a", "10.0.0.9")])]);
        let relisted = next.next(cache.current(), &config);
        assert!(!relisted.whole && kept.replaced());
        assert_eq!(
            contents(&relisted),
            contents(&Index::build(cache.current(), &config))
        );
    }

    #[test]
    fn an_address_of_several_services_points_at_each_in_order_until_one_lets_it_go() {
        let config = Config::default();
        let cache = Cache::new(&[]);
        let targets = |index: &Index, ip: &str| {
            index
                .ptr(ip.parse().unwrap())
                .map(|t| format!("{t:?}"))
                .collect::<Vec<_>>()
        };
        cache.apply([
            Event::Apply(service("c", "10.0.0.3")),
            Event::Apply(slice("c", &["10.1.0.1"])),
            Event::Apply(service("b", "10.1.0.1")),
            Event::Apply(slice("b", &["10.1.0.1", "10.1.0.2"])),
        ]);
        let first = Index::build(cache.current(), &config);
        assert_eq!(
            targets(&first, "10.1.0.1"),
            [
                "d/b cluster IP",
                "d/b endpoint 10-1-0-1",
                "d/c endpoint 10-1-0-1"
            ]
        );
        cache.apply([Event::Delete(Kind::Services, Key::new("d", "b"))]);
        let next = first.next(cache.current(), &config);
        assert!(!next.whole);
        assert_eq!(targets(&next, "10.1.0.1"), ["d/c endpoint 10-1-0-1"]);
        assert!(targets(&next, "10.1.0.2").is_empty());
        assert_eq!(
            contents(&next),
            contents(&Index::build(cache.current(), &config))
        );
    }
}
