//! Garbage collection by ownerReferences, as kube-controller-manager's garbage collector does
//! it for a cluster (the dev API server has no controller manager): a dependent whose owners
//! are all gone is deleted (background cascade); dangling references beside a live owner are
//! removed; an owner deleted with `propagationPolicy: Foreground` keeps its
//! `foregroundDeletion` finalizer until the dependents that block it are gone; with `Orphan`
//! its `orphan` finalizer stays until no dependent refers to it any more.
//!
//! [`Graph`] is the pure part: what each object owns and is owned by, and the [`Action`]s a
//! change calls for. [`run`] feeds it from one storage watch over every resource and carries
//! the actions out through the registry, with UID preconditions.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::object::{FieldValidation, meta_str};
use crate::registry::{DeleteOptions, Part, Propagation, Registry, WriteOptions};
use crate::resource::{RESOURCES, Resource};
use crate::storage::{Change, Kv};

/// The finalizer of an owner deleted in the foreground.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of an owner whose dependents are orphaned.
pub const ORPHAN: &str = "orphan";

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub name: String,
}

/// One ownerReference, as far as collection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    uid: String,
    block: bool,
}

/// One object in the graph.
#[derive(Debug, Clone)]
struct Item {
    location: Location,
    owners: Vec<Owner>,
    deleting: bool,
    finalizers: Vec<String>,
}

/// What the collector does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Delete the object with this UID (its owners are all gone or going).
    Delete {
        location: Location,
        uid: String,
        propagation: Propagation,
    },
    /// Remove the references to these owners from the object.
    RemoveOwners {
        location: Location,
        uid: String,
        owners: Vec<String>,
    },
    /// Remove this finalizer from the object: what it waited for is done.
    RemoveFinalizer {
        location: Location,
        uid: String,
        finalizer: &'static str,
    },
}

/// Owners and dependents of every stored object, by UID.
#[derive(Debug, Default)]
pub struct Graph {
    items: HashMap<String, Item>,
    dependents: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    /// Records an object as stored now; returns the UIDs whose state may call for action.
    pub fn upsert(&mut self, location: Location, object: &Value) -> Vec<String> {
        let uid = meta_str(object, "uid").to_string();
        if uid.is_empty() {
            return Vec::new();
        }
        let owners: Vec<Owner> = object
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| {
                Some(Owner {
                    uid: r.get("uid")?.as_str()?.to_string(),
                    block: r
                        .get("blockOwnerDeletion")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                })
            })
            .collect();
        let item = Item {
            location,
            owners,
            deleting: object.pointer("/metadata/deletionTimestamp").is_some(),
            finalizers: crate::object::finalizers(object),
        };
        let before = self.items.insert(uid.clone(), item);
        let mut touched = vec![uid.clone()];
        let old_owners: Vec<String> = before
            .map(|b| b.owners.into_iter().map(|o| o.uid).collect())
            .unwrap_or_default();
        for owner in &old_owners {
            if let Some(set) = self.dependents.get_mut(owner) {
                set.remove(&uid);
            }
        }
        for owner in &self.items[&uid].owners {
            self.dependents
                .entry(owner.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        // An owner waiting on this object may now be free to go.
        touched.extend(old_owners);
        touched.extend(self.items[&uid].owners.iter().map(|o| o.uid.clone()));
        touched.extend(self.dependents.get(&uid).into_iter().flatten().cloned());
        touched
    }

    /// Forgets a deleted object; returns the UIDs whose state may call for action.
    pub fn remove(&mut self, uid: &str) -> Vec<String> {
        let Some(item) = self.items.remove(uid) else {
            return Vec::new();
        };
        let mut touched: Vec<String> = Vec::new();
        for owner in item.owners {
            if let Some(set) = self.dependents.get_mut(&owner.uid) {
                set.remove(uid);
            }
            touched.push(owner.uid);
        }
        touched.extend(self.dependents.get(uid).into_iter().flatten().cloned());
        touched
    }

    /// Every UID, for a full pass.
    pub fn uids(&self) -> Vec<String> {
        self.items.keys().cloned().collect()
    }

    /// Is the owner `uid` present for a dependent in `namespace`? A namespaced owner must be
    /// in the dependent's namespace, as upstream looks it up there.
    fn present(&self, uid: &str, namespace: Option<&str>) -> Option<&Item> {
        self.items.get(uid).filter(|owner| {
            owner.location.namespace.is_none() || owner.location.namespace.as_deref() == namespace
        })
    }

    /// What the object `uid` calls for now, as owner and as dependent.
    pub fn actions(&self, uid: &str) -> Vec<Action> {
        let Some(item) = self.items.get(uid) else {
            return Vec::new();
        };
        let mut actions = Vec::new();
        let dependents: Vec<&Item> = self
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.items.get(d))
            .filter(|d| self.present(uid, d.location.namespace.as_deref()).is_some())
            .collect();
        if item.deleting && item.finalizers.iter().any(|f| f == ORPHAN) {
            if dependents.is_empty() {
                actions.push(Action::RemoveFinalizer {
                    location: item.location.clone(),
                    uid: uid.to_string(),
                    finalizer: ORPHAN,
                });
            }
            // The dependents themselves get RemoveOwners from their own evaluation.
        } else if item.deleting && item.finalizers.iter().any(|f| f == FOREGROUND) {
            let blocking = self.dependents.get(uid).into_iter().flatten().any(|d| {
                self.items.get(d).is_some_and(|d| {
                    d.owners.iter().any(|o| o.uid == uid && o.block)
                        && self.present(uid, d.location.namespace.as_deref()).is_some()
                })
            });
            if !blocking {
                actions.push(Action::RemoveFinalizer {
                    location: item.location.clone(),
                    uid: uid.to_string(),
                    finalizer: FOREGROUND,
                });
            }
        }
        if item.owners.is_empty() {
            return actions;
        }
        // As a dependent: owners are solid (present, not going), waiting (going in the
        // foreground), orphaning (going, orphaning this) or dangling (absent).
        let namespace = item.location.namespace.as_deref();
        let mut solid = 0;
        let mut waiting = 0;
        let mut drop: Vec<String> = Vec::new();
        for owner in &item.owners {
            match self.present(&owner.uid, namespace) {
                None => drop.push(owner.uid.clone()),
                Some(o) if o.deleting && o.finalizers.iter().any(|f| f == ORPHAN) => {
                    drop.push(owner.uid.clone());
                    solid += 1;
                }
                Some(o) if o.deleting && o.finalizers.iter().any(|f| f == FOREGROUND) => {
                    waiting += 1;
                    drop.push(owner.uid.clone());
                }
                Some(_) => solid += 1,
            }
        }
        if solid > 0 {
            // Orphaned or beside a live owner: only the references to go are removed.
            if !drop.is_empty() {
                actions.push(Action::RemoveOwners {
                    location: item.location.clone(),
                    uid: uid.to_string(),
                    owners: drop,
                });
            }
        } else if !item.deleting {
            let has_dependents = !dependents.is_empty();
            let propagation = if waiting > 0 && has_dependents {
                Propagation::Foreground
            } else if item.finalizers.iter().any(|f| f == ORPHAN) {
                Propagation::Orphan
            } else if item.finalizers.iter().any(|f| f == FOREGROUND) {
                Propagation::Foreground
            } else {
                Propagation::Background
            };
            actions.push(Action::Delete {
                location: item.location.clone(),
                uid: uid.to_string(),
                propagation,
            });
        }
        actions
    }
}

/// The resource and place of a stored key, from the registry's key layout.
fn locate(prefix: &str, key: &str) -> Option<Location> {
    let rest = key.strip_prefix(prefix)?;
    let (storage, rest) = rest.split_once('/')?;
    let resource = RESOURCES.iter().find(|r| r.storage == storage)?;
    let (namespace, name) = if resource.namespaced {
        let (ns, name) = rest.split_once('/')?;
        (Some(ns.to_string()), name)
    } else {
        (None, rest)
    };
    Some(Location {
        resource,
        namespace,
        name: name.to_string(),
    })
}

fn decode(kv: &Kv) -> Option<Value> {
    serde_json::from_slice(&kv.value).ok()
}

/// Runs the collector until the process ends: lists everything, watches from there, and
/// relists when the watch fails; after a failed action, a full pass follows the registry's
/// `gc_retry_interval`.
pub async fn run(registry: Registry) {
    let prefix = registry.prefix().to_string();
    let retry = registry.gc_retry_interval();
    loop {
        if let Err(e) = collect(&registry, &prefix, retry).await {
            tracing::warn!(error = %e, "garbage collector: watch failed; relisting");
            tokio::time::sleep(retry).await;
        }
    }
}

async fn collect(registry: &Registry, prefix: &str, retry: Duration) -> Result<(), ApiError> {
    let mut graph = Graph::default();
    let mut start = String::new();
    let revision = loop {
        let page = registry
            .storage()
            .range(prefix, &start, None, Some(500))
            .await?;
        for kv in &page.kvs {
            if let (Some(location), Some(object)) = (locate(prefix, &kv.key), decode(kv)) {
                graph.upsert(location, &object);
            }
        }
        match (page.more, page.kvs.last()) {
            (true, Some(last)) => start = format!("{}\u{0}", last.key),
            _ => break page.revision,
        }
    };
    let mut failed = !act(registry, &graph, graph.uids()).await;
    let mut changes = registry
        .storage()
        .watch(prefix, revision, Duration::from_secs(60))
        .await?;
    loop {
        let change = if failed {
            match tokio::time::timeout(retry, changes.next()).await {
                Ok(change) => change,
                Err(_) => {
                    failed = !act(registry, &graph, graph.uids()).await;
                    continue;
                }
            }
        } else {
            changes.next().await
        };
        let Some(change) = change else {
            return Err(ApiError::unavailable("the storage watch ended"));
        };
        let touched = match change? {
            Change::Put { kv, .. } => match (locate(prefix, &kv.key), decode(&kv)) {
                (Some(location), Some(object)) => graph.upsert(location, &object),
                _ => Vec::new(),
            },
            Change::Delete { prev, .. } => decode(&prev)
                .map(|object| graph.remove(meta_str(&object, "uid")))
                .unwrap_or_default(),
            Change::Progress { .. } => Vec::new(),
        };
        failed |= !act(registry, &graph, touched).await;
    }
}

/// Carries out what the objects `uids` call for; false if anything failed (to retry).
async fn act(registry: &Registry, graph: &Graph, mut uids: Vec<String>) -> bool {
    uids.sort();
    uids.dedup();
    let mut ok = true;
    for uid in uids {
        for action in graph.actions(&uid) {
            if let Err(e) = apply(registry, &action).await
                && e.code != 404
                && e.code != 409
            {
                tracing::warn!(?action, error = %e, "garbage collector: action failed");
                ok = false;
            }
        }
    }
    ok
}

async fn apply(registry: &Registry, action: &Action) -> Result<(), ApiError> {
    match action {
        Action::Delete {
            location,
            uid,
            propagation,
        } => {
            let options = DeleteOptions {
                uid: Some(uid.clone()),
                propagation: Some(*propagation),
                ..DeleteOptions::default()
            };
            registry
                .delete(
                    location.resource,
                    location.namespace.as_deref(),
                    &location.name,
                    &options,
                )
                .await?;
        }
        Action::RemoveOwners {
            location,
            uid,
            owners,
        } => {
            change(registry, location, uid, |meta| {
                if let Some(refs) = meta
                    .get_mut("ownerReferences")
                    .and_then(Value::as_array_mut)
                {
                    refs.retain(|r| !owners.iter().any(|o| r.get("uid") == Some(&json!(o))));
                    if refs.is_empty() {
                        meta.remove("ownerReferences");
                    }
                }
            })
            .await?;
        }
        Action::RemoveFinalizer {
            location,
            uid,
            finalizer,
        } => {
            change(registry, location, uid, |meta| {
                if let Some(list) = meta.get_mut("finalizers").and_then(Value::as_array_mut) {
                    list.retain(|f| f.as_str() != Some(finalizer));
                }
            })
            .await?;
        }
    }
    Ok(())
}

/// Changes the metadata of the object at `location`, if it is still the one with `uid`.
async fn change(
    registry: &Registry,
    location: &Location,
    uid: &str,
    edit: impl Fn(&mut serde_json::Map<String, Value>),
) -> Result<(), ApiError> {
    let options = WriteOptions {
        dry_run: false,
        validation: FieldValidation::Ignore,
    };
    registry
        .update_with(
            location.resource,
            location.namespace.as_deref(),
            &location.name,
            Part::Main,
            options,
            |current| {
                let mut next = current.clone();
                let meta = crate::object::meta_mut(&mut next);
                meta.insert("uid".into(), json!(uid));
                edit(meta);
                Ok((next, Vec::new()))
            },
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(kind: &str, name: &str) -> Location {
        let resource = RESOURCES.iter().find(|r| r.kind == kind).unwrap();
        Location {
            resource,
            namespace: resource.namespaced.then(|| "default".to_string()),
            name: name.to_string(),
        }
    }

    fn object(uid: &str, owners: &[(&str, bool)], deleting: bool, finalizers: &[&str]) -> Value {
        let mut meta = json!({"uid": uid, "name": uid});
        if !owners.is_empty() {
            meta["ownerReferences"] = owners
                .iter()
                .map(|(u, block)| json!({"uid": u, "blockOwnerDeletion": block, "kind": "Service", "name": u, "apiVersion": "v1"}))
                .collect();
        }
        if deleting {
            meta["deletionTimestamp"] = json!("2026-12-03T10:00:00Z");
        }
        if !finalizers.is_empty() {
            meta["finalizers"] = json!(finalizers);
        }
        json!({"metadata": meta})
    }

    fn all_actions(graph: &Graph) -> Vec<Action> {
        let mut uids = graph.uids();
        uids.sort();
        uids.iter().flat_map(|u| graph.actions(u)).collect()
    }

    #[test]
    fn a_dependent_of_a_deleted_owner_is_deleted_in_the_background() {
        let mut graph = Graph::default();
        graph.upsert(location("Service", "svc"), &object("svc", &[], false, &[]));
        graph.upsert(
            location("EndpointSlice", "slice"),
            &object("slice", &[("svc", true)], false, &[]),
        );
        assert_eq!(all_actions(&graph), vec![]);
        let touched = graph.remove("svc");
        assert_eq!(touched, vec!["slice".to_string()]);
        assert_eq!(
            graph.actions("slice"),
            vec![Action::Delete {
                location: location("EndpointSlice", "slice"),
                uid: "slice".into(),
                propagation: Propagation::Background,
            }]
        );
    }

    #[test]
    fn a_dependent_with_a_live_owner_only_loses_the_dangling_reference() {
        let mut graph = Graph::default();
        graph.upsert(location("Service", "a"), &object("a", &[], false, &[]));
        graph.upsert(
            location("EndpointSlice", "slice"),
            &object("slice", &[("a", false), ("gone", false)], false, &[]),
        );
        assert_eq!(
            graph.actions("slice"),
            vec![Action::RemoveOwners {
                location: location("EndpointSlice", "slice"),
                uid: "slice".into(),
                owners: vec!["gone".into()],
            }]
        );
    }

    #[test]
    fn a_foreground_owner_waits_for_its_blocking_dependents() {
        let mut graph = Graph::default();
        graph.upsert(
            location("Service", "svc"),
            &object("svc", &[], true, &[FOREGROUND]),
        );
        graph.upsert(
            location("EndpointSlice", "blocking"),
            &object("blocking", &[("svc", true)], false, &[]),
        );
        graph.upsert(
            location("EndpointSlice", "free"),
            &object("free", &[("svc", false)], false, &[]),
        );
        // Both dependents are deleted; the owner keeps its finalizer meanwhile.
        let actions = all_actions(&graph);
        assert_eq!(actions.len(), 2, "{actions:?}");
        assert!(actions.iter().all(|a| matches!(a, Action::Delete { .. })));
        // The non-blocking one going does not free the owner; the blocking one does.
        graph.remove("free");
        assert_eq!(graph.actions("svc"), vec![]);
        graph.remove("blocking");
        assert_eq!(
            graph.actions("svc"),
            vec![Action::RemoveFinalizer {
                location: location("Service", "svc"),
                uid: "svc".into(),
                finalizer: FOREGROUND,
            }]
        );
    }

    #[test]
    fn an_orphaning_owner_releases_its_dependents_then_goes() {
        let mut graph = Graph::default();
        graph.upsert(
            location("Service", "svc"),
            &object("svc", &[], true, &[ORPHAN]),
        );
        graph.upsert(
            location("EndpointSlice", "slice"),
            &object("slice", &[("svc", true)], false, &[]),
        );
        assert_eq!(
            all_actions(&graph),
            vec![Action::RemoveOwners {
                location: location("EndpointSlice", "slice"),
                uid: "slice".into(),
                owners: vec!["svc".into()],
            }]
        );
        let touched = graph.upsert(
            location("EndpointSlice", "slice"),
            &object("slice", &[], false, &[]),
        );
        assert!(touched.contains(&"svc".to_string()));
        assert_eq!(
            graph.actions("svc"),
            vec![Action::RemoveFinalizer {
                location: location("Service", "svc"),
                uid: "svc".into(),
                finalizer: ORPHAN,
            }]
        );
    }

    #[test]
    fn an_owner_in_another_namespace_does_not_count() {
        let mut graph = Graph::default();
        let mut elsewhere = location("Service", "svc");
        elsewhere.namespace = Some("other".into());
        graph.upsert(elsewhere, &object("svc", &[], false, &[]));
        graph.upsert(
            location("EndpointSlice", "slice"),
            &object("slice", &[("svc", false)], false, &[]),
        );
        assert!(matches!(
            graph.actions("slice").as_slice(),
            [Action::Delete { .. }]
        ));
    }

    #[test]
    fn keys_are_located_by_the_registry_layout() {
        let located = locate("/r/", "/r/endpointslices/default/web-abc").unwrap();
        assert_eq!(located.resource.kind, "EndpointSlice");
        assert_eq!(located.namespace.as_deref(), Some("default"));
        assert_eq!(located.name, "web-abc");
        let node = locate("/r/", "/r/nodes/n1").unwrap();
        assert_eq!((node.resource.kind, node.namespace), ("Node", None));
        let event = locate("/r/", "/r/events/default/e").unwrap();
        assert_eq!(event.resource.group, "", "events are stored as core events");
        assert!(locate("/r/", "/other/x").is_none());
    }
}
