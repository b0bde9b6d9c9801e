//! The cache itself: plain data changed by [`Event`]s and published as immutable [`Snapshot`]s.
//!
//! Each call to [`Cache::apply`] is one atomic step: readers see all of its events or none
//! (a manifests reload, a watch's initial list, and a single watch event are each one step).
//! Maps are persistent ([`crate::sharded`]; `imbl` for the namespaces and the history), so a
//! snapshot costs the shards its step changed, not a copy of the cluster. Objects' port lists
//! are interned.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use imbl::{OrdSet, Vector};
use smallvec::SmallVec;
use tokio::sync::watch;

use crate::sharded::{Keyed, ShardedMap};
use crate::types::{EndpointPort, EndpointSlice, Key, Name, Pod, Service, ServicePort};

/// The kinds of object the cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespaces,
    Services,
    EndpointSlices,
    Pods,
}

/// One object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Namespace(Name),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Pod(Pod),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespaces,
            Object::Service(_) => Kind::Services,
            Object::EndpointSlice(_) => Kind::EndpointSlices,
            Object::Pod(_) => Kind::Pods,
        }
    }
}

/// A change to the cache.
#[derive(Debug, Clone)]
pub enum Event {
    /// Add or replace an object.
    Apply(Object),
    /// Remove an object (a Namespace's key has an empty namespace).
    Delete(Kind, Key),
    /// Replace every object of a kind (a relist, or a manifests reload).
    Reset(Kind, Vec<Object>),
    /// The kind has been listed completely once.
    Synced(Kind),
}

/// An immutable view of the cluster.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Increases with every published change.
    pub generation: u64,
    /// Every kind the cache needs has been listed completely.
    pub synced: bool,
    /// Unix seconds of the last change visible to DNS (the SOA serial).
    pub last_change: u64,
    pub namespaces: OrdSet<Name>,
    /// Maps of the objects by their keys ([`crate::sharded`]: dense, shared between
    /// snapshots but for the shards a step changed).
    pub services: ShardedMap<Arc<Service>>,
    pub slices: ShardedMap<Arc<EndpointSlice>>,
    /// Slice names by the Service they belong to (sorted; usually one, kept inline).
    pub slices_by_service: ShardedMap<(Key, SmallVec<[Name; 1]>)>,
    pub pods: ShardedMap<Arc<Pod>>,
    /// Live pods by namespace and primary IP (a count, as two pods may briefly share an IP).
    pub pod_ips: ShardedMap<((Name, IpAddr), u32)>,
    /// What changed since the previous generation.
    pub changed: Arc<Changed>,
    /// What each of the last [`HISTORY`] generations changed, oldest first, so a reader that
    /// skipped some (it was busy while they were published) still learns what they changed.
    pub history: Vector<(u64, Arc<Changed>)>,
}

/// Objects are held by their keys.
impl Keyed for Service {
    type Key = Key;
    fn key(&self) -> &Key {
        &self.key
    }
}

impl Keyed for EndpointSlice {
    type Key = Key;
    fn key(&self) -> &Key {
        &self.key
    }
}

impl Keyed for Pod {
    type Key = Key;
    fn key(&self) -> &Key {
        &self.key
    }
}

/// Generations whose changes a snapshot remembers.
pub const HISTORY: usize = 1024;

/// Services named in a snapshot's history at most: older generations are forgotten sooner
/// when they changed many, so the history's memory is bounded whatever the churn.
pub const HISTORY_SERVICES: usize = 16384;

/// A step that changes more Services than this is recorded as changing all of them: readers
/// rebuild whole (as after an initial list), and the history keeps no list of them.
pub const MANY_SERVICES: usize = 4096;

/// What a published step (or several) changed, so readers can rebuild only that.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// Every Service or slice may have changed (a step that changed more than
    /// [`MANY_SERVICES`], such as an initial list).
    pub all: bool,
    /// Namespaces came or went (answers read them from the snapshot directly).
    pub namespaces: bool,
    /// Services whose own object or slices changed.
    pub services: BTreeSet<Key>,
    /// Pods changed.
    pub pods: bool,
}

impl Changed {
    /// Adds what `other` changed.
    pub fn merge(&mut self, other: &Changed) {
        self.all |= other.all;
        self.namespaces |= other.namespaces;
        self.pods |= other.pods;
        if self.all {
            self.services.clear();
        } else {
            self.services.extend(other.services.iter().cloned());
        }
    }
}

impl Snapshot {
    /// What changed after `generation` up to this snapshot, when this snapshot still
    /// remembers every generation since (`None`: too long ago, or not an earlier generation).
    pub fn changed_since(&self, generation: u64) -> Option<Changed> {
        if generation >= self.generation {
            return (generation == self.generation).then(Changed::default);
        }
        let first = self.history.front()?.0;
        if generation + 1 < first {
            return None;
        }
        let mut changed = Changed::default();
        for (g, step) in self.history.iter() {
            if *g > generation {
                changed.merge(step);
            }
        }
        Some(changed)
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        self.services.get(&Key::new(namespace, name))
    }

    /// The slices of a Service.
    pub fn slices_of<'a>(
        &'a self,
        service: &Key,
    ) -> impl Iterator<Item = &'a Arc<EndpointSlice>> + 'a {
        let namespace = service.namespace.clone();
        self.slices_by_service
            .get(service)
            .into_iter()
            .flat_map(|(_, names)| names.iter())
            .filter_map(move |n| self.slices.get(&Key::new(namespace.clone(), n.clone())))
    }

    pub fn namespace_exists(&self, name: &str) -> bool {
        self.namespaces.contains(name)
    }

    /// A live pod in `namespace` has `ip` as its primary IP.
    pub fn pod_has_ip(&self, namespace: &str, ip: IpAddr) -> bool {
        self.pod_ips.contains_key(&(Name::new(namespace), ip))
    }

    fn insert_slice(&mut self, slice: EndpointSlice, changed: &mut Changed) {
        self.remove_slice(&slice.key, changed);
        if let Some(svc) = &slice.service {
            let owner = Key::new(&slice.key.namespace, svc);
            changed.services.insert(owner.clone());
            let (_, names) = self
                .slices_by_service
                .get_or_insert_with(&owner, || (owner.clone(), SmallVec::new()));
            if let Err(at) = names.binary_search(&slice.key.name) {
                names.insert(at, slice.key.name.clone());
            }
        }
        self.slices.insert(Arc::new(slice));
    }

    fn remove_slice(&mut self, key: &Key, changed: &mut Changed) {
        let Some(old) = self.slices.remove(key) else {
            return;
        };
        if let Some(svc) = &old.service {
            let owner = Key::new(&key.namespace, svc);
            changed.services.insert(owner.clone());
            if let Some((_, names)) = self.slices_by_service.get_mut(&owner) {
                names.retain(|n| *n != key.name);
                if names.is_empty() {
                    self.slices_by_service.remove(&owner);
                }
            }
        }
    }

    fn insert_pod(&mut self, pod: Pod) {
        self.remove_pod(&pod.key);
        if pod.live {
            for ip in &pod.ips {
                let k = (pod.key.namespace.clone(), *ip);
                self.pod_ips.get_or_insert_with(&k, || (k.clone(), 0)).1 += 1;
            }
        }
        self.pods.insert(Arc::new(pod));
    }

    fn remove_pod(&mut self, key: &Key) {
        let Some(old) = self.pods.remove(key) else {
            return;
        };
        if !old.live {
            return;
        }
        for ip in &old.ips {
            let k = (key.namespace.clone(), *ip);
            match self.pod_ips.get(&k).map(|(_, n)| *n) {
                Some(n) if n > 1 => {
                    self.pod_ips.insert((k, n - 1));
                }
                _ => {
                    self.pod_ips.remove(&k);
                }
            }
        }
    }

    /// Applies one event to this (working) snapshot; returns whether anything changed.
    fn apply(&mut self, event: Event, changed: &mut Changed) -> bool {
        match event {
            Event::Apply(Object::Namespace(name)) => {
                let fresh = self.namespaces.insert(name).is_none();
                changed.namespaces |= fresh;
                fresh
            }
            Event::Apply(Object::Service(svc)) => {
                if self.services.get(&svc.key).is_some_and(|old| **old == svc) {
                    return false;
                }
                changed.services.insert(svc.key.clone());
                self.services.insert(Arc::new(svc));
                true
            }
            Event::Apply(Object::EndpointSlice(slice)) => {
                if self
                    .slices
                    .get(&slice.key)
                    .is_some_and(|old| **old == slice)
                {
                    return false;
                }
                self.insert_slice(slice, changed);
                true
            }
            Event::Apply(Object::Pod(pod)) => {
                if self.pods.get(&pod.key).is_some_and(|old| **old == pod) {
                    return false;
                }
                changed.pods = true;
                self.insert_pod(pod);
                true
            }
            Event::Delete(Kind::Namespaces, key) => {
                let gone = self.namespaces.remove(&key.name).is_some();
                changed.namespaces |= gone;
                gone
            }
            Event::Delete(Kind::Services, key) => {
                let gone = self.services.remove(&key).is_some();
                if gone {
                    changed.services.insert(key);
                }
                gone
            }
            Event::Delete(Kind::EndpointSlices, key) => {
                let had = self.slices.contains_key(&key);
                self.remove_slice(&key, changed);
                had
            }
            Event::Delete(Kind::Pods, key) => {
                let had = self.pods.contains_key(&key);
                self.remove_pod(&key);
                changed.pods |= had;
                had
            }
            Event::Reset(kind, objects) => {
                // Applied as the differences it brings: an object equal to the one held keeps
                // the one held (no second copy of the cluster while a relist replaces it), a
                // relist or reload that brings nothing new changes nothing (and does not move
                // the SOA serial), and readers learn exactly which Services changed.
                let mut listed = BTreeSet::new();
                let mut any = false;
                for o in objects.into_iter().filter(|o| o.kind() == kind) {
                    listed.insert(match &o {
                        Object::Namespace(name) => Key::new("", name),
                        Object::Service(svc) => svc.key.clone(),
                        Object::EndpointSlice(slice) => slice.key.clone(),
                        Object::Pod(pod) => pod.key.clone(),
                    });
                    any |= self.apply(Event::Apply(o), changed);
                }
                let held: Vec<Key> = match kind {
                    Kind::Namespaces => self.namespaces.iter().map(|n| Key::new("", n)).collect(),
                    Kind::Services => self.services.iter().map(|s| s.key.clone()).collect(),
                    Kind::EndpointSlices => self.slices.iter().map(|s| s.key.clone()).collect(),
                    Kind::Pods => self.pods.iter().map(|p| p.key.clone()).collect(),
                };
                for key in held.into_iter().filter(|k| !listed.contains(k)) {
                    any |= self.apply(Event::Delete(kind, key), changed);
                }
                any
            }
            Event::Synced(_) => false,
        }
    }
}

/// The cache: a working snapshot, and the channel that publishes it.
#[derive(Debug)]
pub struct Cache {
    state: Mutex<State>,
    tx: watch::Sender<Arc<Snapshot>>,
}

#[derive(Debug)]
struct State {
    working: Snapshot,
    /// Kinds that must report [`Event::Synced`] before the snapshot is synced.
    pending: BTreeSet<Kind>,
    service_ports: Interned<ServicePort>,
    slice_ports: Interned<EndpointPort>,
}

/// Port lists shared by the objects that have the same: most Services of a cluster have one
/// of a few.
#[derive(Debug)]
struct Interned<T> {
    lists: HashSet<Arc<[T]>>,
    /// Lists held when unused ones were last dropped: they are dropped again at twice as many.
    after_pruning: usize,
}

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            lists: HashSet::new(),
            after_pruning: 0,
        }
    }
}

impl<T: Eq + std::hash::Hash> Interned<T> {
    /// The shared list equal to `list`.
    fn share(&mut self, list: &mut Arc<[T]>) {
        if let Some(shared) = self.lists.get(&**list) {
            *list = shared.clone();
            return;
        }
        if self.lists.len() >= 2 * self.after_pruning.max(64) {
            self.lists.retain(|l| Arc::strong_count(l) > 1);
            self.after_pruning = self.lists.len();
        }
        self.lists.insert(list.clone());
    }
}

impl State {
    /// `event` with its objects' port lists shared.
    fn intern(&mut self, mut event: Event) -> Event {
        let mut share = |object: &mut Object| match object {
            Object::Service(svc) => self.service_ports.share(&mut svc.ports),
            Object::EndpointSlice(slice) => self.slice_ports.share(&mut slice.ports),
            _ => {}
        };
        match &mut event {
            Event::Apply(object) => share(object),
            Event::Reset(_, objects) => objects.iter_mut().for_each(share),
            _ => {}
        }
        event
    }
}

impl Cache {
    /// A cache that is synced once every kind in `required` has been listed.
    pub fn new(required: &[Kind]) -> Cache {
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        let pending: BTreeSet<Kind> = required.iter().copied().collect();
        let working = Snapshot {
            synced: pending.is_empty(),
            ..Snapshot::default()
        };
        Cache {
            state: Mutex::new(State {
                working,
                pending,
                service_ports: Interned::default(),
                slice_ports: Interned::default(),
            }),
            tx,
        }
    }

    /// The latest snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// The kinds not yet listed completely (empty once synced).
    pub fn pending(&self) -> Vec<Kind> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.pending.iter().copied().collect()
    }

    /// A receiver notified at every published snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Applies `events` as one atomic step and publishes the result if anything changed.
    pub fn apply(&self, events: impl IntoIterator<Item = Event>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = Changed::default();
        let mut any = false;
        let mut next = state.working.clone();
        for event in events {
            let event = state.intern(event);
            if let Event::Synced(kind) = &event {
                any |= state.pending.remove(kind);
            }
            any |= next.apply(event, &mut changed);
        }
        if !any {
            return;
        }
        next.synced = state.pending.is_empty();
        next.generation += 1;
        if changed.all || changed.namespaces || !changed.services.is_empty() || changed.pods {
            next.last_change = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
        }
        if changed.services.len() > MANY_SERVICES {
            changed.all = true;
        }
        if changed.all {
            changed.services.clear();
        }
        next.changed = Arc::new(changed);
        next.history
            .push_back((next.generation, next.changed.clone()));
        let mut named: usize = next.history.iter().map(|(_, c)| c.services.len()).sum();
        while next.history.len() > HISTORY || named > HISTORY_SERVICES {
            if let Some((_, c)) = next.history.pop_front() {
                named -= c.services.len();
            }
        }
        state.working = next.clone();
        self.tx.send_replace(Arc::new(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Endpoint, ServiceKind};

    fn svc(ns: &str, name: &str, ip: &str) -> Object {
        Object::Service(Service {
            key: Key::new(ns, name),
            kind: ServiceKind::ClusterIp([ip.parse().unwrap()].into()),
            ports: vec![].into(),
        })
    }

    fn slice(ns: &str, name: &str, svc: &str, ips: &[&str]) -> Object {
        Object::EndpointSlice(EndpointSlice {
            key: Key::new(ns, name),
            service: Some(svc.into()),
            ports: vec![].into(),
            last_change_trigger: None,
            endpoints: ips
                .iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.parse().unwrap()].into(),
                    ready: true,
                    hostname: None,
                    pod_name: None,
                })
                .collect(),
        })
    }

    #[test]
    fn the_cache_is_synced_only_when_every_required_kind_has_been_listed() {
        let cache = Cache::new(&[Kind::Services, Kind::EndpointSlices]);
        assert!(!cache.current().synced);
        cache.apply([
            Event::Reset(Kind::Services, vec![svc("d", "web", "10.0.0.1")]),
            Event::Synced(Kind::Services),
        ]);
        assert!(!cache.current().synced);
        assert!(
            cache.current().service("d", "web").is_some(),
            "partial data is visible before sync"
        );
        cache.apply([Event::Synced(Kind::EndpointSlices)]);
        assert!(cache.current().synced);
    }

    #[test]
    fn slices_are_indexed_by_their_service_and_changes_name_the_service() {
        let cache = Cache::new(&[]);
        cache.apply([
            Event::Apply(slice("d", "web-1", "web", &["10.1.0.1"])),
            Event::Apply(slice("d", "web-2", "web", &["10.1.0.2"])),
        ]);
        let snap = cache.current();
        assert_eq!(snap.slices_of(&Key::new("d", "web")).count(), 2);
        assert_eq!(
            snap.changed.services,
            BTreeSet::from([Key::new("d", "web")])
        );
        cache.apply([Event::Delete(Kind::EndpointSlices, Key::new("d", "web-1"))]);
        let snap = cache.current();
        assert_eq!(snap.slices_of(&Key::new("d", "web")).count(), 1);
        assert!(!snap.changed.all);
    }

    #[test]
    fn a_reader_that_skipped_generations_learns_what_they_changed() {
        let cache = Cache::new(&[]);
        cache.apply([Event::Apply(svc("d", "a", "10.0.0.1"))]);
        let seen = cache.current().generation;
        cache.apply([Event::Apply(svc("d", "b", "10.0.0.2"))]);
        cache.apply([Event::Apply(slice("d", "c-1", "c", &["10.1.0.1"]))]);
        cache.apply([Event::Apply(Object::Namespace("e".into()))]);
        let now = cache.current();
        let changed = now.changed_since(seen).unwrap();
        assert_eq!(
            changed.services,
            BTreeSet::from([Key::new("d", "b"), Key::new("d", "c")])
        );
        assert!(changed.namespaces && !changed.all && !changed.pods);
        assert_eq!(now.changed_since(now.generation), Some(Changed::default()));
        assert_eq!(now.changed_since(now.generation + 1), None);
        // Beyond what the snapshot remembers: unknown.
        for i in 0..HISTORY {
            cache.apply([Event::Apply(svc(
                "d",
                "b",
                &format!("10.0.{}.{}", i / 256, i % 256),
            ))]);
        }
        assert_eq!(cache.current().changed_since(seen), None);
        let recent = cache.current().generation - 5;
        assert_eq!(
            cache.current().changed_since(recent).unwrap().services,
            BTreeSet::from([Key::new("d", "b")])
        );
    }

    #[test]
    fn a_reader_holding_a_snapshot_never_sees_a_later_step() {
        let cache = Cache::new(&[]);
        cache.apply([Event::Apply(svc("d", "a", "10.0.0.1"))]);
        let before = cache.current();
        cache.apply([Event::Reset(
            Kind::Services,
            vec![svc("d", "b", "10.0.0.2")],
        )]);
        assert!(before.service("d", "a").is_some() && before.service("d", "b").is_none());
        let after = cache.current();
        assert!(after.service("d", "a").is_none() && after.service("d", "b").is_some());
        assert_eq!(after.generation, before.generation + 1);
        // The relist is applied as its differences: exactly the two Services changed.
        assert!(!after.changed.all);
        assert_eq!(
            after.changed.services,
            BTreeSet::from([Key::new("d", "a"), Key::new("d", "b")])
        );
    }

    #[test]
    fn services_with_the_same_ports_share_one_list() {
        let cache = Cache::new(&[]);
        let with_ports = |name: &str, port: u16| {
            Object::Service(Service {
                key: Key::new("d", name),
                kind: ServiceKind::Headless,
                ports: vec![crate::types::ServicePort {
                    name: "http".into(),
                    protocol: crate::types::Protocol::Tcp,
                    port,
                }]
                .into(),
            })
        };
        cache.apply([Event::Apply(with_ports("a", 80))]);
        cache.apply([Event::Reset(
            Kind::Services,
            vec![
                with_ports("a", 80),
                with_ports("b", 80),
                with_ports("c", 81),
            ],
        )]);
        let now = cache.current();
        let ports = |name| now.service("d", name).unwrap().ports.clone();
        assert!(Arc::ptr_eq(&ports("a"), &ports("b")));
        assert!(!Arc::ptr_eq(&ports("a"), &ports("c")));
        assert_eq!(ports("c")[0].port, 81);
    }

    #[test]
    fn a_relist_keeps_the_objects_it_did_not_change_and_one_that_changes_many_changes_all() {
        let cache = Cache::new(&[]);
        let list = |n: usize, last: &str| -> Vec<Object> {
            (0..n)
                .map(|i| {
                    svc(
                        "d",
                        &format!("s{i}"),
                        if i + 1 == n { last } else { "10.0.0.1" },
                    )
                })
                .collect()
        };
        cache.apply([Event::Reset(Kind::Services, list(10, "10.0.0.1"))]);
        let before = cache.current();
        cache.apply([Event::Reset(Kind::Services, list(10, "10.0.0.2"))]);
        let after = cache.current();
        assert!(Arc::ptr_eq(
            before.service("d", "s0").unwrap(),
            after.service("d", "s0").unwrap()
        ));
        assert_eq!(
            after.changed.services,
            BTreeSet::from([Key::new("d", "s9")])
        );
        // More than MANY_SERVICES at once: recorded as all, with no list kept.
        cache.apply([Event::Reset(
            Kind::Services,
            list(MANY_SERVICES + 20, "10.0.0.3"),
        )]);
        let many = cache.current();
        assert!(many.changed.all && many.changed.services.is_empty());
        assert!(
            many.history
                .iter()
                .all(|(_, c)| c.services.len() <= MANY_SERVICES)
        );
    }

    #[test]
    fn a_relist_that_brings_nothing_new_publishes_nothing() {
        let cache = Cache::new(&[]);
        cache.apply([Event::Reset(
            Kind::Services,
            vec![svc("d", "a", "10.0.0.1")],
        )]);
        let before = cache.current();
        cache.apply([Event::Reset(
            Kind::Services,
            vec![svc("d", "a", "10.0.0.1")],
        )]);
        assert_eq!(
            cache.current().generation,
            before.generation,
            "same content: no step"
        );
        cache.apply([Event::Apply(Object::Namespace("n".into()))]);
        let after = cache.current();
        assert!(
            after.changed.namespaces && !after.changed.all,
            "a namespace does not invalidate every Service"
        );
    }

    #[test]
    fn a_repeated_identical_object_publishes_nothing() {
        let cache = Cache::new(&[]);
        cache.apply([Event::Apply(svc("d", "a", "10.0.0.1"))]);
        let generation = cache.current().generation;
        cache.apply([Event::Apply(svc("d", "a", "10.0.0.1"))]);
        assert_eq!(cache.current().generation, generation);
    }

    #[test]
    fn live_pods_are_indexed_by_namespace_and_ip() {
        let cache = Cache::new(&[]);
        let pod = |name: &str, live: bool| {
            Object::Pod(Pod {
                key: Key::new("d", name),
                ips: vec!["10.1.0.5".parse().unwrap()].into(),
                live,
            })
        };
        cache.apply([Event::Apply(pod("a", true)), Event::Apply(pod("b", false))]);
        let ip = "10.1.0.5".parse().unwrap();
        assert!(cache.current().pod_has_ip("d", ip));
        assert!(!cache.current().pod_has_ip("other", ip));
        cache.apply([Event::Delete(Kind::Pods, Key::new("d", "a"))]);
        assert!(
            !cache.current().pod_has_ip("d", ip),
            "the remaining pod is finished"
        );
    }
}
