//! The releaser: follows the Service watch and releases, with the pool's hold, the values a
//! Service stopped carrying — a port or a family dropped, a type or policy changed, the Service
//! deleted. It works on states, not events: after every (re)list it diffs what it knew against
//! what the API has, so a delete missed while it was away is still released, and a replayed
//! event cannot release a value the live Service carries.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use ipam::store::Store;
use ipam::{Allocation, Allocator, Owner, Release, Released, Value};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::plan::carried;
use crate::service::Svc;

type Values = BTreeSet<(&'static str, Value)>;

/// The values each Service carries, by `namespace/name`.
#[derive(Debug, Default)]
pub struct Carried {
    known: HashMap<String, Values>,
    /// Released by us, per Service, in case a later state carries them again.
    released: HashMap<String, Values>,
}

/// What to do after a state change of one Service.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Actions {
    pub release: Vec<(&'static str, Value)>,
    /// Values released earlier that the Service carries again: claim them back.
    pub reclaim: Vec<(&'static str, Value)>,
}

impl Carried {
    /// Records the Service `key`'s new state (None: deleted) and says what to release.
    pub fn update(&mut self, key: &str, now: Option<Values>) -> Actions {
        let before = self.known.remove(key).unwrap_or_default();
        let after = now.clone().unwrap_or_default();
        let release: Vec<_> = before.difference(&after).cloned().collect();
        let mut reclaim = Vec::new();
        if let Some(released) = self.released.get_mut(key) {
            reclaim = released.intersection(&after).cloned().collect();
            for value in &reclaim {
                released.remove(value);
            }
        }
        self.released
            .entry(key.to_string())
            .or_default()
            .extend(release.iter().cloned());
        if let Some(values) = now {
            self.known.insert(key.to_string(), values);
        }
        Actions { release, reclaim }
    }

    /// Replaces everything with a fresh list; actions for every Service that changed.
    pub fn relist(&mut self, listed: HashMap<String, Values>) -> Vec<(String, Actions)> {
        let mut keys: BTreeSet<String> = self.known.keys().cloned().collect();
        keys.extend(listed.keys().cloned());
        let mut out = Vec::new();
        let mut listed = listed;
        for key in keys {
            let actions = self.update(&key, listed.remove(&key));
            if actions != Actions::default() {
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

/// Follows Services through `api` until the watch ends, releasing dropped values.
pub async fn run<S: Store>(
    allocator: Arc<Allocator<S>>,
    api: Api<Service>,
    config: watcher::Config,
) -> crate::Result<()> {
    let mut state = Carried::default();
    let mut listing: Option<HashMap<String, Values>> = None;
    let mut events = watcher(api.clone(), config).default_backoff().boxed();
    while let Some(event) = events.next().await {
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
            watcher::Event::Apply(svc) => vec![(
                key_of(&svc),
                state.update(&key_of(&svc), Some(values_of(&svc))),
            )],
            watcher::Event::Delete(svc) => vec![(key_of(&svc), state.update(&key_of(&svc), None))],
        };
        for (key, actions) in actions {
            act(&allocator, &api, &key, actions).await;
        }
    }
    let _ = events.try_next().await;
    Ok(())
}

async fn act<S: Store>(allocator: &Allocator<S>, api: &Api<Service>, key: &str, actions: Actions) {
    let live = if actions.release.is_empty() {
        Values::new()
    } else {
        // The API's current state wins over the event's: a replayed or late event must not
        // release what the live Service (perhaps recreated) carries.
        let (namespace, name) = key.split_once('/').unwrap_or(("", key));
        match Api::<Service>::namespaced(api.clone().into_client(), namespace)
            .get_opt(name)
            .await
        {
            Ok(Some(svc)) => values_of(&svc),
            Ok(None) => Values::new(),
            Err(e) => {
                tracing::warn!(key, error = %e, "cannot read the Service; not releasing its values now");
                return;
            }
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
            Ok(outcome) => tracing::info!(key, pool, %value, ?outcome, "released"),
            Err(e) => tracing::warn!(key, pool, %value, error = %e, "release failed; repair will"),
        }
    }
    for (pool, value) in actions.reclaim {
        let owner = Owner::new(key, "reclaimed");
        match allocator.allocate(pool, &owner, Some(value)).await {
            Ok(Allocation::Allocated(_)) => {
                tracing::info!(key, pool, %value, "reclaimed a value the Service carries again")
            }
            Ok(Allocation::Refused(r)) => {
                tracing::warn!(key, pool, %value, refusal = %r, "a value the Service carries is taken")
            }
            Err(e) => tracing::warn!(key, pool, %value, error = %e, "reclaim failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(list: &[u16]) -> Values {
        list.iter()
            .map(|n| (ipam::spec::NODEPORT, Value::Port(*n)))
            .collect()
    }

    #[test]
    fn a_dropped_value_is_released_and_claimed_back_if_it_returns() {
        let mut state = Carried::default();
        assert_eq!(
            state.update("ns/a", Some(values(&[30001, 30002]))),
            Actions::default()
        );
        let dropped = state.update("ns/a", Some(values(&[30001])));
        assert_eq!(
            dropped.release,
            values(&[30002]).into_iter().collect::<Vec<_>>()
        );
        let back = state.update("ns/a", Some(values(&[30001, 30002])));
        assert_eq!(
            back.reclaim,
            values(&[30002]).into_iter().collect::<Vec<_>>()
        );
        let deleted = state.update("ns/a", None);
        assert_eq!(
            deleted.release,
            values(&[30001, 30002]).into_iter().collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_relist_releases_what_was_deleted_while_away_and_nothing_else() {
        let mut state = Carried::default();
        state.update("ns/gone", Some(values(&[30005])));
        state.update("ns/kept", Some(values(&[30006])));
        let listed = HashMap::from([
            ("ns/kept".to_string(), values(&[30006])),
            ("ns/new".to_string(), values(&[30007])),
        ]);
        let actions = state.relist(listed);
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].0, "ns/gone");
        assert_eq!(
            actions[0].1.release,
            values(&[30005]).into_iter().collect::<Vec<_>>()
        );
    }
}
