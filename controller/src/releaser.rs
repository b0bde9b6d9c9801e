//! The releaser: follows the Service watch and releases, with the pool's hold, the values a
//! Service stopped carrying — a port or a family dropped, a type or policy changed, the Service
//! deleted — and records every value a Service carries as allocated to it. It works on states, not events: after every (re)list it diffs what it knew against
//! what the API has, so a delete missed while it was away is still released, and a replayed
//! event cannot release a value the live Service carries.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use ipam::store::Store;
use ipam::{Allocator, Claimed, Owner, Release, Released, Value};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::metrics::Metrics;
use crate::plan::carried;
use crate::service::Svc;

type Values = BTreeSet<(&'static str, Value)>;

/// The values each Service carries, by `namespace/name`.
#[derive(Debug, Default)]
pub struct Carried {
    known: HashMap<String, Values>,
}

/// What to do after a state change of one Service.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Actions {
    /// Values the Service no longer carries.
    pub release: Vec<(&'static str, Value)>,
    /// Every value the Service carries now: each must be allocated to it (a value handed out
    /// while admission was bypassed, or given back by a failed write that raced a successful
    /// one, is recorded again).
    pub carry: Vec<(&'static str, Value)>,
}

impl Actions {
    fn is_empty(&self) -> bool {
        self.release.is_empty() && self.carry.is_empty()
    }
}

impl Carried {
    /// Whether the Service `key`, as last seen, carries `value` of `pool`.
    pub fn carries(&self, key: &str, pool: &str, value: Value) -> bool {
        self.known
            .get(key)
            .is_some_and(|values| values.iter().any(|(p, v)| *p == pool && *v == value))
    }

    /// Records the Service `key`'s new state (None: deleted) and says what to do.
    pub fn update(&mut self, key: &str, now: Option<Values>) -> Actions {
        let before = self.known.remove(key).unwrap_or_default();
        let after = now.clone().unwrap_or_default();
        let release = before.difference(&after).cloned().collect();
        let carry = after.iter().cloned().collect();
        if let Some(values) = now {
            self.known.insert(key.to_string(), values);
        }
        Actions { release, carry }
    }

    /// Replaces everything with a fresh list; actions for every Service.
    pub fn relist(&mut self, listed: HashMap<String, Values>) -> Vec<(String, Actions)> {
        let mut keys: BTreeSet<String> = self.known.keys().cloned().collect();
        keys.extend(listed.keys().cloned());
        let mut out = Vec::new();
        let mut listed = listed;
        for key in keys {
            let actions = self.update(&key, listed.remove(&key));
            if !actions.is_empty() {
                out.push((key, actions));
            }
        }
        out
    }
}

fn key_of(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or(""),
        svc.metadata.name.as_deref().unwrap_or("")
    )
}

fn values_of(svc: &Service) -> Values {
    let json = serde_json::to_value(svc).unwrap_or_default();
    carried(&Svc::from_json(&json))
}

/// Follows Services through `api` until the watch ends, releasing dropped values and
/// recording carried ones; actions that fail (the API or the pools unreachable) are retried
/// every `retry_interval`.
///
/// `synced` is told once the first list has been taken in.
pub async fn run<S: Store>(
    allocator: Arc<Allocator<S>>,
    api: Api<Service>,
    config: watcher::Config,
    retry_interval: std::time::Duration,
    mut synced: Option<tokio::sync::oneshot::Sender<()>>,
    metrics: Option<Arc<Metrics>>,
) -> crate::Result<()> {
    let metrics = metrics.as_deref();
    let mut state = Carried::default();
    let mut listing: Option<HashMap<String, Values>> = None;
    let mut pending: HashMap<String, Actions> = HashMap::new();
    let mut events = watcher(api.clone(), config).default_backoff().boxed();
    let mut retry = tokio::time::interval(retry_interval.max(std::time::Duration::from_millis(10)));
    loop {
        let event = tokio::select! {
            event = events.next() => match event {
                Some(event) => event,
                None => break,
            },
            _ = retry.tick() => {
                for (key, actions) in std::mem::take(&mut pending) {
                    if let Err(left) = act(&allocator, &api, &state, metrics, &key, actions).await {
                        pending.insert(key, left);
                    }
                }
                continue;
            }
        };
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "Service watch failed; retrying");
                continue;
            }
        };
        let actions: Vec<(String, Actions)> = match event {
            watcher::Event::Init => {
                listing = Some(HashMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(svc) => {
                if let Some(list) = listing.as_mut() {
                    list.insert(key_of(&svc), values_of(&svc));
                }
                Vec::new()
            }
            watcher::Event::InitDone => state.relist(listing.take().unwrap_or_default()),
            watcher::Event::Apply(svc) => {
                vec![(
                    key_of(&svc),
                    state.update(&key_of(&svc), Some(values_of(&svc))),
                )]
            }
            watcher::Event::Delete(svc) => vec![(key_of(&svc), state.update(&key_of(&svc), None))],
        };
        for (key, actions) in actions {
            // A newer state supersedes what was pending for the Service.
            pending.remove(&key);
            if let Err(left) = act(&allocator, &api, &state, metrics, &key, actions).await {
                pending.insert(key, left);
            }
        }
        if listing.is_none()
            && let Some(tell) = synced.take()
        {
            let _ = tell.send(());
        }
    }
    let _ = events.try_next().await;
    Ok(())
}

/// Carries out one Service's actions; returns what failed, to retry.
async fn act<S: Store>(
    allocator: &Allocator<S>,
    api: &Api<Service>,
    state: &Carried,
    metrics: Option<&Metrics>,
    key: &str,
    actions: Actions,
) -> Result<(), Actions> {
    let mut left = Actions::default();
    for (pool, value) in &actions.carry {
        let recorded = allocator.view().record(pool, *value).ok().flatten();
        if recorded.is_some_and(|r| r.owner.object == key && r.is_allocated()) {
            continue;
        }
        // The value becomes this Service's, whoever the pool records (a hold, a request's
        // placeholder, an object gone), unless another live Service carries it too.
        let owner = Owner::new(key, "carried");
        let live_elsewhere = |recorded: &Owner| {
            recorded.object != key && state.carries(&recorded.object, pool, *value)
        };
        match allocator.claim(pool, &owner, *value, live_elsewhere).await {
            Ok(Claimed::Already) => {}
            Ok(Claimed::Recorded { from }) => {
                if let Some(m) = metrics {
                    m.imports.inc(&[pool]);
                }
                let from = from
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "nobody".into());
                tracing::info!(key, pool, %value, %from, "recorded a value the Service carries")
            }
            Ok(Claimed::Kept(other)) => {
                tracing::warn!(key, pool, %value, other = %other.object, "a value the Service carries belongs to another Service too; recreate one of them")
            }
            Ok(Claimed::OutOfRange) => {
                tracing::warn!(key, pool, %value, "a value the Service carries lies outside the pool")
            }
            Err(e) => {
                tracing::warn!(key, pool, %value, error = %e, "cannot record a carried value; will retry");
                left.carry.push((pool, *value));
            }
        }
    }
    if actions.release.is_empty() {
        return if left.is_empty() { Ok(()) } else { Err(left) };
    }
    // The API's current state wins over the event's: a replayed or late event must not
    // release what the live Service (perhaps recreated) carries.
    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
    let live = match Api::<Service>::namespaced(api.clone().into_client(), namespace)
        .get_opt(name)
        .await
    {
        Ok(Some(svc)) => values_of(&svc),
        Ok(None) => Values::new(),
        Err(e) => {
            tracing::warn!(key, error = %e, "cannot read the Service; will retry its releases");
            left.release = actions.release;
            return Err(left);
        }
    };
    for (pool, value) in actions.release {
        if live.contains(&(pool, value)) {
            continue;
        }
        match allocator.release(pool, value, key, Release::Hold).await {
            Ok(Released::OwnedBy(owner)) => {
                tracing::warn!(key, pool, %value, owner = %owner.object, "not released: it belongs to another object");
            }
            Ok(outcome) => {
                let how = match outcome {
                    Released::Held => Some("held"),
                    Released::Freed => Some("freed"),
                    _ => None,
                };
                if let (Some(m), Some(how)) = (metrics, how) {
                    m.releases.inc(&[pool, how]);
                }
                tracing::info!(key, pool, %value, ?outcome, "released")
            }
            Err(e) => {
                tracing::warn!(key, pool, %value, error = %e, "release failed; will retry");
                left.release.push((pool, value));
            }
        }
    }
    if left.is_empty() { Ok(()) } else { Err(left) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(list: &[u16]) -> Values {
        list.iter()
            .map(|n| (ipam::spec::NODEPORT, Value::Port(*n)))
            .collect()
    }

    fn list(values: Values) -> Vec<(&'static str, Value)> {
        values.into_iter().collect()
    }

    #[test]
    fn a_dropped_value_is_released_and_every_carried_one_recorded() {
        let mut state = Carried::default();
        let first = state.update("ns/a", Some(values(&[30001, 30002])));
        assert_eq!(
            first,
            Actions {
                release: vec![],
                carry: list(values(&[30001, 30002]))
            }
        );
        let dropped = state.update("ns/a", Some(values(&[30001])));
        assert_eq!(
            dropped,
            Actions {
                release: list(values(&[30002])),
                carry: list(values(&[30001]))
            }
        );
        let deleted = state.update("ns/a", None);
        assert_eq!(
            deleted,
            Actions {
                release: list(values(&[30001])),
                carry: vec![]
            }
        );
    }

    #[test]
    fn a_relist_releases_what_was_deleted_while_away() {
        let mut state = Carried::default();
        state.update("ns/gone", Some(values(&[30005])));
        state.update("ns/kept", Some(values(&[30006])));
        let listed = HashMap::from([
            ("ns/kept".to_string(), values(&[30006])),
            ("ns/new".to_string(), values(&[30007])),
        ]);
        let actions: HashMap<String, Actions> = state.relist(listed).into_iter().collect();
        assert_eq!(
            actions["ns/gone"],
            Actions {
                release: list(values(&[30005])),
                carry: vec![]
            }
        );
        assert_eq!(
            actions["ns/kept"],
            Actions {
                release: vec![],
                carry: list(values(&[30006]))
            }
        );
        assert_eq!(
            actions["ns/new"],
            Actions {
                release: vec![],
                carry: list(values(&[30007]))
            }
        );
    }
}
