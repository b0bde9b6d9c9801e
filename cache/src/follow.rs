//! Watches and the stores they feed.
//!
//! - [`Source`]: where a reader's watch events come from: its own kube-runtime watcher, or a
//!   [`SharedWatch`] that fans one watcher out to several readers in one process (the DNS cache
//!   and the controllers in `svcplane dev` share one watch per kind this way).
//! - [`follow`]: the controllers' stores of lean values, converted at the watch boundary, so
//!   the store never holds the API objects, only what its reader needs. Each change is reported
//!   as `(old, new)` once the store holds it, so a worker woken by the report finds what woke
//!   it; a relist reports every object again and the ones gone as deletions.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::mpsc;

use crate::{Error, Result};

/// What a watched kind must be.
pub trait Watched:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Where a reader's watch events come from.
pub enum Source<K> {
    /// Its own watcher of this API.
    Api(Box<Api<K>>),
    /// Its own watcher of the objects of this API a label selector matches (chosen by the API
    /// server).
    Selected(Box<Api<K>>, String),
    /// Its share of a [`SharedWatch`].
    Shared(mpsc::UnboundedReceiver<Event<K>>),
}

impl<K: Watched> Source<K> {
    /// The events, with the errors of an own watcher (a shared watch logs its own).
    pub fn events(self) -> BoxStream<'static, Result<Event<K>, watcher::Error>> {
        match self {
            Source::Api(api) => watcher::watcher(*api, watcher::Config::default())
                .default_backoff()
                .boxed(),
            Source::Selected(api, selector) => {
                watcher::watcher(*api, watcher::Config::default().labels(&selector))
                    .default_backoff()
                    .boxed()
            }
            Source::Shared(receiver) => futures::stream::unfold(receiver, |mut r| async move {
                r.recv().await.map(|event| (Ok(event), r))
            })
            .boxed(),
        }
    }
}

/// One watcher of a kind whose events go to every reader that subscribed before it started.
pub struct SharedWatch<K> {
    api: Api<K>,
    readers: Vec<mpsc::UnboundedSender<Event<K>>>,
}

impl<K: Watched> SharedWatch<K> {
    pub fn new(api: Api<K>) -> SharedWatch<K> {
        SharedWatch {
            api,
            readers: Vec::new(),
        }
    }

    /// A reader's source: every event from the first list on, however late it starts reading.
    pub fn subscribe(&mut self) -> Source<K> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.readers.push(sender);
        Source::Shared(receiver)
    }

    /// Runs the watcher until the process ends (or every reader is gone).
    pub fn start(self) -> tokio::task::JoinHandle<()> {
        let SharedWatch { api, mut readers } = self;
        tokio::spawn(async move {
            let kind = K::kind(&());
            let mut events = Source::Api(Box::new(api)).events();
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        readers.retain(|reader| reader.send(event.clone()).is_ok());
                        if readers.is_empty() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(%kind, error = %e, "shared watch failed; retrying"),
                }
            }
        })
    }
}

/// Namespace (empty for cluster-scoped objects) and name.
pub type ObjectKey = (String, String);

/// The lean values of one kind, by namespace and name.
pub struct LeanStore<T> {
    values: Arc<RwLock<BTreeMap<ObjectKey, Arc<T>>>>,
    ready: tokio::sync::watch::Receiver<bool>,
}

impl<T> Clone for LeanStore<T> {
    fn clone(&self) -> Self {
        LeanStore {
            values: self.values.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<T> LeanStore<T> {
    /// The value of `namespace/name` (namespace empty for cluster-scoped objects).
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<T>> {
        let values = self.values.read().expect("the store's lock");
        values
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every value, in no particular order.
    pub fn state(&self) -> Vec<Arc<T>> {
        let values = self.values.read().expect("the store's lock");
        values.values().cloned().collect()
    }

    /// The values of one namespace (a range of the ordered store, not a scan of it).
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<T>> {
        let values = self.values.read().expect("the store's lock");
        values
            .range((namespace.to_string(), String::new())..)
            .take_while(|((ns, _), _)| ns == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Waits for the first list to be in the store.
    pub async fn wait_until_ready(&self) -> Result<()> {
        let mut ready = self.ready.clone();
        ready
            .wait_for(|r| *r)
            .await
            .map(|_| ())
            .map_err(|_| Error::Client("the watch ended before its first list".to_string()))
    }
}

fn key_of<K: Resource>(object: &K) -> ObjectKey {
    (object.namespace().unwrap_or_default(), object.name_any())
}

/// The changes one watch event makes, as (what the store held, what it holds now), and
/// whether it ended a list. A list is taken in whole at its end, so a relist never shows a
/// half-filled store.
type Changes<T> = Vec<(Option<Arc<T>>, Option<Arc<T>>)>;

fn apply<K: Resource, T>(
    values: &mut BTreeMap<ObjectKey, Arc<T>>,
    listing: &mut Vec<(ObjectKey, T)>,
    event: Event<K>,
    convert: &impl Fn(&K) -> T,
) -> (Changes<T>, bool) {
    let mut changes = Vec::new();
    match event {
        Event::Apply(object) => {
            let new = Arc::new(convert(&object));
            let old = values.insert(key_of(&object), new.clone());
            changes.push((old, Some(new)));
        }
        Event::Delete(object) => changes.push((values.remove(&key_of(&object)), None)),
        Event::Init => listing.clear(),
        Event::InitApply(object) => listing.push((key_of(&object), convert(&object))),
        Event::InitDone => {
            let names: HashSet<ObjectKey> = listing.iter().map(|(key, _)| key.clone()).collect();
            values.retain(|key, old| {
                let kept = names.contains(key);
                if !kept {
                    changes.push((Some(old.clone()), None));
                }
                kept
            });
            for (key, value) in listing.drain(..) {
                let new = Arc::new(value);
                let old = values.insert(key, new.clone());
                changes.push((old, Some(new)));
            }
            return (changes, true);
        }
    }
    (changes, false)
}

/// Keeps a store of `convert`ed objects from `source` current until the process ends,
/// calling `on_event(old, new)` for each change once the store holds it.
pub fn follow<K, T, C, F>(
    source: Source<K>,
    convert: C,
    on_event: F,
) -> (LeanStore<T>, tokio::task::JoinHandle<()>)
where
    K: Watched,
    T: Send + Sync + 'static,
    C: Fn(&K) -> T + Send + 'static,
    F: Fn(Option<&T>, Option<&T>) + Send + 'static,
{
    let values: Arc<RwLock<BTreeMap<ObjectKey, Arc<T>>>> = Arc::default();
    let (ready_tx, ready) = tokio::sync::watch::channel(false);
    let store = LeanStore {
        values: values.clone(),
        ready,
    };
    let task = tokio::spawn(async move {
        let kind = K::kind(&());
        let mut stream = source.events();
        let mut listing: Vec<(ObjectKey, T)> = Vec::new();
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(%kind, error = %e, "watch failed; retrying");
                    continue;
                }
            };
            let changes = {
                let mut values = values.write().expect("the store's lock");
                let (changes, listed) = apply(&mut values, &mut listing, event, &convert);
                if listed {
                    let _ = ready_tx.send(true);
                }
                changes
            };
            for (old, new) in &changes {
                on_event(old.as_deref(), new.as_deref());
            }
        }
    });
    (store, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(name: &str, phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn phase(p: &Pod) -> String {
        p.status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default()
    }

    #[test]
    fn events_keep_only_the_converted_values_and_report_each_change() {
        let mut values = BTreeMap::new();
        let mut listing = Vec::new();
        let (changes, listed) = apply(&mut values, &mut listing, Event::Init, &phase);
        assert!(changes.is_empty() && !listed);
        apply(
            &mut values,
            &mut listing,
            Event::InitApply(pod("a", "Running")),
            &phase,
        );
        apply(
            &mut values,
            &mut listing,
            Event::InitApply(pod("b", "Pending")),
            &phase,
        );
        assert!(values.is_empty(), "a list is taken in whole at its end");
        let (changes, listed) = apply(&mut values, &mut listing, Event::InitDone, &phase);
        assert!(listed);
        assert_eq!(changes.len(), 2);
        assert_eq!(
            values[&("ns".to_string(), "a".to_string())].as_str(),
            "Running"
        );
        let (changes, _) = apply(
            &mut values,
            &mut listing,
            Event::Apply(pod("b", "Running")),
            &phase,
        );
        assert_eq!(
            changes
                .iter()
                .map(|(o, n)| (o.as_deref().cloned(), n.as_deref().cloned()))
                .collect::<Vec<_>>(),
            [(Some("Pending".to_string()), Some("Running".to_string()))]
        );
        // A relist without `a`: it is reported gone.
        apply(&mut values, &mut listing, Event::Init, &phase);
        apply(
            &mut values,
            &mut listing,
            Event::InitApply(pod("b", "Running")),
            &phase,
        );
        let (changes, _) = apply(&mut values, &mut listing, Event::InitDone, &phase);
        assert!(
            changes
                .iter()
                .any(|(o, n)| o.as_deref().map(String::as_str) == Some("Running") && n.is_none())
        );
        assert_eq!(values.len(), 1);
        let (changes, _) = apply(
            &mut values,
            &mut listing,
            Event::Delete(pod("b", "Running")),
            &phase,
        );
        assert_eq!(changes.len(), 1);
        assert!(values.is_empty());
    }
}
