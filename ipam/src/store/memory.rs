//! The in-memory store: the same semantics as etcd (one global revision, compare-and-swap per
//! key, ordered watch with a bounded history) inside one process.
//!
//! Holds have no lease here: a held record stays until it is taken again, and its `heldUntilMs`
//! alone decides whether it still holds, exactly as readers of the etcd store decide.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::broadcast;

use super::{
    Cas, Change, PoolWrite, Read, Snapshot, Store, StoredValue, WatchItem, WatchStream, Write,
};
use crate::Result;
use crate::occupancy::{Expect, Record, Rev};
use crate::spec::PoolSpec;

/// How many changes a watch may replay from; older starting points get [`WatchItem::Compacted`].
const HISTORY: usize = 16_384;

/// An in-memory store; clones share the same data.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<(Vec<Change>, Rev)>,
}

#[derive(Debug, Default)]
struct Inner {
    rev: Rev,
    pools: BTreeMap<String, (PoolSpec, Rev)>,
    values: BTreeMap<(String, String), (Record, Rev)>,
    history: VecDeque<Change>,
    /// The newest revision dropped from `history`: watches must start after it.
    compacted: Rev,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

fn change_rev(c: &Change) -> Rev {
    match c {
        Change::Pool { rev, .. } | Change::Value { rev, .. } => *rev,
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        let (events, _) = broadcast::channel(1024);
        MemoryStore {
            inner: Arc::new(Mutex::new(Inner::default())),
            events,
        }
    }

    fn commit(&self, inner: &mut Inner, changes: Vec<Change>) {
        for c in &changes {
            inner.history.push_back(c.clone());
            if inner.history.len() > HISTORY
                && let Some(old) = inner.history.pop_front()
            {
                inner.compacted = change_rev(&old);
            }
        }
        let _ = self.events.send((changes, inner.rev));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn matches(expect: Expect, current: Option<Rev>) -> bool {
    match (expect, current) {
        (Expect::Absent, None) => true,
        (Expect::Rev(want), Some(have)) => want == have,
        _ => false,
    }
}

impl Store for MemoryStore {
    async fn snapshot(&self) -> Result<Snapshot> {
        let inner = self.lock();
        Ok(Snapshot {
            rev: inner.rev,
            pools: inner.pools.values().cloned().collect(),
            values: inner
                .values
                .iter()
                .map(|((pool, value), (record, rev))| StoredValue {
                    pool: pool.clone(),
                    value: value.clone(),
                    record: record.clone(),
                    rev: *rev,
                })
                .collect(),
        })
    }

    async fn pool(&self, name: &str) -> Result<Option<(PoolSpec, Rev)>> {
        Ok(self.lock().pools.get(name).cloned())
    }

    async fn get(&self, pool: &str, value: &str) -> Result<Read> {
        let inner = self.lock();
        let current = inner
            .values
            .get(&(pool.to_string(), value.to_string()))
            .cloned();
        Ok((current, inner.rev))
    }

    async fn cas(
        &self,
        pool: &str,
        pool_rev: Option<Rev>,
        value: &str,
        expect: Expect,
        write: Write,
    ) -> Result<Cas> {
        let mut inner = self.lock();
        let pool_changed =
            pool_rev.is_some_and(|want| inner.pools.get(pool).map(|(_, r)| *r) != Some(want));
        let key = (pool.to_string(), value.to_string());
        let current = inner.values.get(&key).cloned();
        if pool_changed || !matches(expect, current.as_ref().map(|(_, r)| *r)) {
            return Ok(Cas::Failed {
                current,
                pool_changed,
            });
        }
        inner.rev += 1;
        let rev = inner.rev;
        let record = match write {
            Write::Put { record, .. } => {
                inner.values.insert(key, (record.clone(), rev));
                Some(record)
            }
            Write::Delete => {
                inner.values.remove(&key);
                None
            }
        };
        let change = Change::Value {
            pool: pool.to_string(),
            value: value.to_string(),
            record,
            rev,
        };
        self.commit(&mut inner, vec![change]);
        Ok(Cas::Done(rev))
    }

    async fn put_pools(&self, writes: &[PoolWrite], values_since: Rev) -> Result<bool> {
        let mut inner = self.lock();
        for w in writes {
            if !matches(w.expect, inner.pools.get(&w.spec.name).map(|(_, r)| *r)) {
                return Ok(false);
            }
            let changed_since = inner
                .values
                .iter()
                .any(|((p, _), (_, r))| *p == w.spec.name && *r > values_since);
            if changed_since {
                return Ok(false);
            }
        }
        inner.rev += 1;
        let rev = inner.rev;
        let mut changes = Vec::new();
        for w in writes {
            inner
                .pools
                .insert(w.spec.name.clone(), (w.spec.clone(), rev));
            changes.push(Change::Pool {
                name: w.spec.name.clone(),
                spec: Some(w.spec.clone()),
                rev,
            });
        }
        self.commit(&mut inner, changes);
        Ok(true)
    }

    async fn watch(&self, from: Rev) -> Result<WatchStream> {
        let inner = self.lock();
        if from <= inner.compacted {
            return Ok(futures::stream::iter([Ok(WatchItem::Compacted)]).boxed());
        }
        // Subscribe under the lock, so nothing committed after the replay is missed.
        let receiver = self.events.subscribe();
        let replay: Vec<Change> = inner
            .history
            .iter()
            .filter(|c| change_rev(c) >= from)
            .cloned()
            .collect();
        let seen = inner.rev;
        drop(inner);
        let first = futures::stream::iter([Ok(WatchItem::Changes(replay, seen))]);
        let live = futures::stream::unfold(Some(receiver), move |rx| async move {
            let mut rx = rx?;
            loop {
                match rx.recv().await {
                    Ok((_, rev)) if rev <= seen => continue,
                    Ok((changes, rev)) => {
                        return Some((Ok(WatchItem::Changes(changes, rev)), Some(rx)));
                    }
                    // Fell behind the broadcast buffer: the reader must relist.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some((Ok(WatchItem::Compacted), None));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(first.chain(live).boxed())
    }

    fn describe(&self) -> String {
        "memory".to_string()
    }
}
