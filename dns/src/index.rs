//! The record index: for every Service, what its names answer (cluster IPs, ready endpoints by
//! endpoint name, ports), and for every address, the PTR targets it has — rebuilt from each cache
//! snapshot for the Services that changed only, and published whole, so a query is a lookup and
//! never sees half of a change.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cache::{EndpointPort, Key, Service, ServiceKind, ServicePort, Snapshot};

use crate::config::Config;
use crate::name::dashed;

/// What one Service answers.
#[derive(Debug)]
pub struct Entry {
    pub kind: EntryKind,
    /// The Service's ports (SRV of ClusterIP Services).
    pub ports: Vec<ServicePort>,
    /// Ready endpoint addresses of every slice (an address in two slices appears twice).
    pub endpoints: Vec<Ep>,
    /// Endpoint indexes by endpoint name.
    pub by_name: HashMap<String, Vec<usize>>,
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
}

/// How a Service answers address queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Cluster(Vec<IpAddr>),
    Headless,
    /// The external name, lower-case, without a trailing dot.
    External(String),
}

/// One ready endpoint address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ep {
    /// Its endpoint name: hostname, else (with `endpoint_pod_names`) the pod name, else the
    /// dashed address.
    pub name: String,
    pub addr: IpAddr,
    /// The ports of its slice.
    pub ports: Arc<Vec<EndpointPort>>,
}

/// Where a PTR query for an address points.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PtrTarget {
    pub service: Key,
    /// `None`: the address is the Service's cluster IP.
    pub endpoint: Option<String>,
}

/// The index of one snapshot.
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub snapshot: Arc<Snapshot>,
    /// The generation at which the namespaces last changed (or this index was built whole).
    pub namespaces_since: u64,
    /// This index was built whole, not from the previous one and what changed since.
    pub whole: bool,
    services: imbl::HashMap<Key, Arc<Entry>>,
    /// Small vectors as values: most addresses have one target.
    reverse: imbl::HashMap<IpAddr, Vec<PtrTarget>>,
}

fn endpoint_name(
    config: &Config,
    hostname: Option<&str>,
    pod: Option<&str>,
    addr: IpAddr,
) -> String {
    match (hostname, pod) {
        (Some(h), _) => h.to_ascii_lowercase(),
        (None, Some(p)) if config.endpoint_pod_names && p.len() < 64 => p.to_ascii_lowercase(),
        _ => dashed(addr),
    }
}

/// Builds the entry of one Service.
pub fn entry(snapshot: &Snapshot, svc: &Service, config: &Config) -> Entry {
    let kind = match &svc.kind {
        ServiceKind::ClusterIp(ips) => {
            let mut ips = ips.clone();
            ips.dedup();
            EntryKind::Cluster(ips)
        }
        ServiceKind::Headless => EntryKind::Headless,
        ServiceKind::ExternalName(name) => EntryKind::External(name.to_ascii_lowercase()),
    };
    // Every ready address of every slice, duplicates included: an address present in two
    // slices (during skew) counts twice in SRV weights, as upstream counts candidates before
    // removing duplicates; answers remove them.
    let mut endpoints: Vec<Ep> = Vec::new();
    if !config.noendpoints && !matches!(kind, EntryKind::External(_)) {
        for slice in snapshot.slices_of(&svc.key) {
            let ports = Arc::new(slice.ports.clone());
            for e in slice.endpoints.iter().filter(|e| e.ready) {
                for addr in &e.addresses {
                    let name =
                        endpoint_name(config, e.hostname.as_deref(), e.pod_name.as_deref(), *addr);
                    endpoints.push(Ep {
                        name,
                        addr: *addr,
                        ports: ports.clone(),
                    });
                }
            }
        }
    }
    let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, ep) in endpoints.iter().enumerate() {
        by_name.entry(ep.name.clone()).or_default().push(i);
    }
    let exists = match &kind {
        EntryKind::Cluster(_) => {
            !(config.ignore_empty_service && !config.noendpoints && endpoints.is_empty())
        }
        EntryKind::Headless => !endpoints.is_empty(),
        EntryKind::External(name) => name.parse::<IpAddr>().is_err(),
    };
    Entry {
        kind,
        ports: svc.ports.clone(),
        endpoints,
        by_name,
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
        for svc in snapshot.services.values() {
            index.insert(entry(&snapshot, svc, config), svc.key.clone());
        }
        index
    }

    /// The index of `snapshot`, made from this one and what changed since its generation —
    /// however many generations that is, as long as the snapshot remembers them — and built
    /// whole only after a relist or reload that may have changed everything, or a gap longer
    /// than the snapshot's history.
    pub fn next(&self, snapshot: Arc<Snapshot>, config: &Config) -> Index {
        let changed = if snapshot.generation == self.snapshot.generation + 1 {
            Some(std::borrow::Cow::Borrowed(&*snapshot.changed))
        } else {
            snapshot
                .changed_since(self.snapshot.generation)
                .map(std::borrow::Cow::Owned)
        };
        let Some(changed) = changed.filter(|c| !c.all) else {
            for entry in self.services.values() {
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
                index.insert(entry(&snapshot, svc, config), key.clone());
            }
        }
        index
    }

    fn insert(&mut self, entry: Entry, key: Key) {
        let cluster = match &entry.kind {
            EntryKind::Cluster(ips) => ips.clone(),
            _ => Vec::new(),
        };
        let targets = cluster
            .into_iter()
            .map(|ip| {
                (
                    ip,
                    PtrTarget {
                        service: key.clone(),
                        endpoint: None,
                    },
                )
            })
            .chain(entry.endpoints.iter().map(|ep| {
                (
                    ep.addr,
                    PtrTarget {
                        service: key.clone(),
                        endpoint: Some(ep.name.clone()),
                    },
                )
            }));
        for (ip, target) in targets {
            // Kept sorted, so the answer depends on the snapshot, not on the order of changes.
            let list = self.reverse.entry(ip).or_default();
            if let Err(at) = list.binary_search(&target) {
                list.insert(at, target);
            }
        }
        self.services.insert(key, Arc::new(entry));
    }

    fn remove(&mut self, key: &Key) {
        let Some(old) = self.services.remove(key) else {
            return;
        };
        old.replace();
        let ips = match &old.kind {
            EntryKind::Cluster(ips) => ips.clone(),
            _ => Vec::new(),
        };
        for ip in ips.into_iter().chain(old.endpoints.iter().map(|e| e.addr)) {
            if let Some(list) = self.reverse.get_mut(&ip) {
                list.retain(|t| t.service != *key);
                if list.is_empty() {
                    self.reverse.remove(&ip);
                }
            }
        }
    }

    /// The entry of a Service.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Entry>> {
        self.services.get(&Key::new(namespace, name))
    }

    /// The PTR targets of an address.
    pub fn ptr(&self, ip: IpAddr) -> Option<&Vec<PtrTarget>> {
        self.reverse.get(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache::{Cache, EndpointSlice, Event, Kind, Object};

    fn service(name: &str, ip: &str) -> Object {
        Object::Service(Service {
            key: Key::new("d", name),
            kind: ServiceKind::ClusterIp(vec![ip.parse().unwrap()]),
            ports: vec![],
        })
    }

    fn slice(service: &str, ips: &[&str]) -> Object {
        Object::EndpointSlice(EndpointSlice {
            key: Key::new("d", format!("{service}-1")),
            service: Some(service.into()),
            ports: vec![],
            last_change_trigger: None,
            endpoints: ips
                .iter()
                .map(|ip| cache::Endpoint {
                    addresses: vec![ip.parse().unwrap()],
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
            .collect::<std::collections::BTreeMap<_, _>>()
        {
            out.push_str(&format!(
                "{key:?} {:?} {:?} {:?} {}\n",
                entry.kind, entry.ports, entry.endpoints, entry.exists
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
        // A relist may change anything: built whole, every old entry replaced.
        cache.apply([Event::Reset(Kind::Services, vec![service("a", "10.0.0.9")])]);
        let relisted = next.next(cache.current(), &config);
        assert!(relisted.whole && kept.replaced());
        assert_eq!(
            contents(&relisted),
            contents(&Index::build(cache.current(), &config))
        );
    }
}
