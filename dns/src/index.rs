//! The record index: for every Service, what its names answer (cluster IPs, ready endpoints by
//! endpoint name, ports), and for every address, the PTR targets it has — rebuilt from each cache
//! snapshot for the Services that changed only, and published whole, so a query is a lookup and
//! never sees half of a change.
//!
//! Kept small, as it is held once per cluster object: dense persistent maps
//! ([`crate::sharded`]), the cache's own Service and port lists shared
//! rather than copied, names inline ([`cache::Name`]), endpoint names found through a sorted
//! permutation instead of a hash map, and PTR targets that point at their entry.

use std::cmp::Ordering as Order;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cache::{EndpointPort, Key, Name, Service, ServicePort, Snapshot};
use smallvec::SmallVec;

use crate::config::Config;
use crate::name::dashed;
use cache::sharded::{Keyed, ShardedMap};

/// What one Service answers.
#[derive(Debug)]
pub struct Entry {
    /// The cache's Service (its key and ports).
    pub service: Arc<Service>,
    /// Ready endpoint addresses of every slice (an address in two slices appears twice).
    pub endpoints: Box<[Ep]>,
    /// Indexes into `endpoints`, sorted by endpoint name (ties in endpoint order).
    by_name: Box<[u32]>,
    /// False when the Service's names must not exist: a headless Service without ready
    /// endpoints, an empty ClusterIP Service under `ignore_empty_service`, an ExternalName that
    /// is an IP address.
    pub exists: bool,
    /// Set once a later index holds another entry for the Service, or none: answers kept as
    /// bytes that read this one are made afresh ([`crate::memo`]).
    replaced: AtomicBool,
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

    /// The endpoints named `name`, in endpoint order.
    pub fn named(&self, name: &str) -> impl Iterator<Item = &Ep> + '_ {
        let of = |i: &u32| self.endpoints[*i as usize].name.as_str();
        let start = self.by_name.partition_point(|i| of(i) < name);
        let len = self.by_name[start..].partition_point(|i| of(i) == name);
        self.by_name[start..start + len]
            .iter()
            .map(|i| &self.endpoints[*i as usize])
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

/// One ready endpoint address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ep {
    /// Its endpoint name: hostname, else (with `endpoint_pod_names`) the pod name, else the
    /// dashed address.
    pub name: Name,
    pub addr: IpAddr,
    /// The ports of its slice (the cache's list, shared).
    pub ports: Arc<[EndpointPort]>,
}

/// Where a PTR query for an address points: a Service's cluster IP, or one of its endpoints.
#[derive(Clone)]
pub struct PtrTarget {
    entry: Arc<Entry>,
    /// Index into the entry's endpoints; `None` for the cluster IP.
    endpoint: Option<u32>,
}

impl PtrTarget {
    pub fn service(&self) -> &Key {
        self.entry.key()
    }

    /// The endpoint's name; `None`: the address is the Service's cluster IP.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint
            .map(|i| self.entry.endpoints[i as usize].name.as_str())
    }
}

impl fmt::Debug for PtrTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.service())?;
        match self.endpoint() {
            Some(e) => write!(f, " endpoint {e}"),
            None => write!(f, " cluster IP"),
        }
    }
}

impl PartialEq for PtrTarget {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Order::Equal
    }
}

impl Eq for PtrTarget {}

impl PartialOrd for PtrTarget {
    fn partial_cmp(&self, other: &Self) -> Option<Order> {
        Some(self.cmp(other))
    }
}

impl Ord for PtrTarget {
    fn cmp(&self, other: &Self) -> Order {
        (self.service(), self.endpoint()).cmp(&(other.service(), other.endpoint()))
    }
}

/// The PTR targets of one address: nearly always one, kept inline.
type Targets = SmallVec<[PtrTarget; 1]>;

/// PTR targets by address, IPv4 addresses (most of a cluster's) keyed by their four bytes.
#[derive(Debug, Clone, Default)]
struct Reverse {
    v4: ShardedMap<(u32, Targets)>,
    v6: ShardedMap<(u128, Targets)>,
}

impl Reverse {
    fn get(&self, ip: IpAddr) -> Option<&Targets> {
        match ip {
            IpAddr::V4(a) => self.v4.get(&a.to_bits()).map(|(_, t)| t),
            IpAddr::V6(a) => self.v6.get(&a.to_bits()).map(|(_, t)| t),
        }
    }

    fn get_or_default(&mut self, ip: IpAddr) -> &mut Targets {
        match ip {
            IpAddr::V4(a) => {
                let k = a.to_bits();
                &mut self.v4.get_or_insert_with(&k, || (k, Targets::new())).1
            }
            IpAddr::V6(a) => {
                let k = a.to_bits();
                &mut self.v6.get_or_insert_with(&k, || (k, Targets::new())).1
            }
        }
    }

    /// Keeps the targets of `ip` that `keep` accepts; the address goes with the last.
    fn retain(&mut self, ip: IpAddr, keep: impl FnMut(&PtrTarget) -> bool) {
        fn go<K: Ord + std::hash::Hash + Clone>(
            map: &mut ShardedMap<(K, Targets)>,
            k: K,
            mut keep: impl FnMut(&PtrTarget) -> bool,
        ) {
            if let Some((_, list)) = map.get_mut(&k) {
                list.retain(|t| keep(t));
                if list.is_empty() {
                    map.remove(&k);
                }
            }
        }
        match ip {
            IpAddr::V4(a) => go(&mut self.v4, a.to_bits(), keep),
            IpAddr::V6(a) => go(&mut self.v6, a.to_bits(), keep),
        }
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = (IpAddr, &Targets)> + '_ {
        let v4 = self
            .v4
            .iter()
            .map(|(k, t)| (IpAddr::from(std::net::Ipv4Addr::from_bits(*k)), t));
        let v6 = self
            .v6
            .iter()
            .map(|(k, t)| (IpAddr::from(std::net::Ipv6Addr::from_bits(*k)), t));
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

fn endpoint_name(config: &Config, hostname: Option<&str>, pod: Option<&str>, addr: IpAddr) -> Name {
    match (hostname, pod) {
        (Some(h), _) => h.to_ascii_lowercase().into(),
        (None, Some(p)) if config.endpoint_pod_names && p.len() < 64 => {
            p.to_ascii_lowercase().into()
        }
        _ => dashed(addr).into(),
    }
}

/// Builds the entry of one Service.
pub fn entry(snapshot: &Snapshot, svc: &Arc<Service>, config: &Config) -> Entry {
    let kind = &svc.kind;
    // Every ready address of every slice, duplicates included: an address present in two
    // slices (during skew) counts twice in SRV weights, as upstream counts candidates before
    // removing duplicates; answers remove them.
    let mut endpoints: Vec<Ep> = Vec::new();
    if !config.noendpoints && !matches!(kind, EntryKind::ExternalName(_)) {
        for slice in snapshot.slices_of(&svc.key) {
            for e in slice.endpoints.iter().filter(|e| e.ready) {
                for addr in &e.addresses {
                    let name =
                        endpoint_name(config, e.hostname.as_deref(), e.pod_name.as_deref(), *addr);
                    endpoints.push(Ep {
                        name,
                        addr: *addr,
                        ports: slice.ports.clone(),
                    });
                }
            }
        }
    }
    let mut by_name: Vec<u32> = (0..endpoints.len() as u32).collect();
    by_name.sort_by(|a, b| {
        endpoints[*a as usize]
            .name
            .cmp(&endpoints[*b as usize].name)
    });
    let exists = match kind {
        EntryKind::ClusterIp(_) => {
            !(config.ignore_empty_service && !config.noendpoints && endpoints.is_empty())
        }
        EntryKind::Headless => !endpoints.is_empty(),
        EntryKind::ExternalName(name) => name.parse::<IpAddr>().is_err(),
    };
    Entry {
        service: svc.clone(),
        endpoints: endpoints.into(),
        by_name: by_name.into(),
        exists,
        replaced: AtomicBool::new(false),
    }
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
        let targets = cluster.iter().map(|ip| (*ip, None)).chain(
            entry
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, ep)| (ep.addr, Some(i as u32))),
        );
        for (ip, endpoint) in targets {
            let target = PtrTarget {
                entry: entry.clone(),
                endpoint,
            };
            // Kept sorted, so the answer depends on the snapshot, not on the order of changes.
            let list = self.reverse.get_or_default(ip);
            if let Err(at) = list.binary_search(&target) {
                list.insert(at, target);
            }
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
        for ip in ips
            .iter()
            .copied()
            .chain(old.endpoints.iter().map(|e| e.addr))
        {
            self.reverse.retain(ip, |t| t.service() != key);
        }
    }

    /// The entry of a Service.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Entry>> {
        self.services.get(&Key::new(namespace, name))
    }

    /// The PTR targets of an address.
    pub fn ptr(&self, ip: IpAddr) -> Option<&[PtrTarget]> {
        self.reverse.get(ip).map(|t| &t[..])
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
                entry.endpoints,
                entry.exists
            ));
        }
        for (ip, targets) in index
            .reverse
            .iter()
            .collect::<std::collections::BTreeMap<_, _>>()
        {
            out.push_str(&format!("{ip} {targets:?}\n"));
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
}
