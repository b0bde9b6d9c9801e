//! The in-memory backend: etcd's semantics in one process. One global revision counter; every
//! write keeps a snapshot of the whole keyspace (persistent maps share structure, so a snapshot
//! costs a path, not a copy) and an event, both for a bounded history of revisions, so lists at
//! a past revision and watches from a past revision work until the history moves past them —
//! then they get the same 410 Expired etcd gives after a compaction.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use imbl::OrdMap;
use tokio::sync::broadcast;

use super::{Cas, Change, Changes, Kv, Page};
use crate::error::ApiError;

type Map = OrdMap<Arc<str>, Kv>;

/// In-memory storage; clones share the same data.
#[derive(Clone)]
pub struct MemoryStorage {
    inner: Arc<Mutex<State>>,
    events: broadcast::Sender<Arc<Change>>,
}

struct State {
    revision: u64,
    data: Map,
    /// `(revision, keyspace after that revision)`, oldest first.
    snapshots: VecDeque<(u64, Map)>,
    /// Changes, oldest first; the revisions in `(compacted, revision]`.
    history: VecDeque<Arc<Change>>,
    /// Revisions up to this one are no longer in history.
    compacted: u64,
    capacity: usize,
}

impl MemoryStorage {
    /// A store that keeps the last `history` revisions (at least 1).
    pub fn new(history: usize) -> MemoryStorage {
        let capacity = history.max(1);
        let (events, _) = broadcast::channel(capacity.clamp(1024, 65_536));
        MemoryStorage {
            inner: Arc::new(Mutex::new(State {
                revision: 1,
                data: Map::new(),
                snapshots: VecDeque::from([(1, Map::new())]),
                history: VecDeque::new(),
                compacted: 1,
                capacity,
            })),
            events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn get(&self, key: &str) -> (Option<Kv>, u64) {
        let state = self.lock();
        (state.data.get(key).cloned(), state.revision)
    }

    pub(super) fn revision(&self) -> u64 {
        self.lock().revision
    }

    pub(super) fn range(
        &self,
        prefix: &str,
        start: &str,
        revision: Option<u64>,
        limit: Option<usize>,
    ) -> Result<Page, ApiError> {
        let state = self.lock();
        let (at, map) = match revision {
            None => (state.revision, &state.data),
            Some(r) if r >= state.revision => (state.revision, &state.data),
            Some(r) => {
                if r < state.snapshots.front().map_or(0, |s| s.0) {
                    return Err(ApiError::expired(format!(
                        "The resourceVersion for the provided list is too old: {r} ({})",
                        state.compacted + 1
                    )));
                }
                let index = state.snapshots.partition_point(|s| s.0 <= r) - 1;
                (r, &state.snapshots[index].1)
            }
        };
        let from: Arc<str> = Arc::from(if start.is_empty() { prefix } else { start });
        let mut kvs = Vec::new();
        let mut more = false;
        for (key, kv) in map.range(from..) {
            if !key.starts_with(prefix) {
                break;
            }
            if limit.is_some_and(|l| kvs.len() >= l) {
                more = true;
                break;
            }
            kvs.push(kv.clone());
        }
        Ok(Page {
            kvs,
            revision: at,
            more,
        })
    }

    fn commit(&self, state: &mut State, change: Change) -> u64 {
        let change = Arc::new(change);
        state
            .snapshots
            .push_back((state.revision, state.data.clone()));
        state.history.push_back(change.clone());
        while state.history.len() > state.capacity {
            if let Some(old) = state.history.pop_front() {
                state.compacted = old.revision();
            }
        }
        while state.snapshots.len() > state.capacity {
            state.snapshots.pop_front();
        }
        // Nobody listening is fine.
        let _ = self.events.send(change);
        state.revision
    }

    pub(super) fn create(&self, key: &str, value: Bytes) -> Cas {
        let mut state = self.lock();
        if let Some(existing) = state.data.get(key) {
            return Cas::Failed(Some(existing.clone()));
        }
        state.revision += 1;
        let kv = Kv {
            key: Arc::from(key),
            value,
            create_revision: state.revision,
            mod_revision: state.revision,
        };
        state.data.insert(kv.key.clone(), kv.clone());
        Cas::Done(self.commit(&mut state, Change::Put { kv, prev: None }))
    }

    pub(super) fn update(&self, key: &str, value: Bytes, expected: u64) -> Cas {
        let mut state = self.lock();
        let Some(prev) = state.data.get(key).cloned() else {
            return Cas::Failed(None);
        };
        if prev.mod_revision != expected {
            return Cas::Failed(Some(prev));
        }
        state.revision += 1;
        let kv = Kv {
            key: prev.key.clone(),
            value,
            create_revision: prev.create_revision,
            mod_revision: state.revision,
        };
        state.data.insert(kv.key.clone(), kv.clone());
        Cas::Done(self.commit(
            &mut state,
            Change::Put {
                kv,
                prev: Some(prev),
            },
        ))
    }

    pub(super) fn delete(&self, key: &str, expected: u64) -> Cas {
        let mut state = self.lock();
        let Some(prev) = state.data.get(key).cloned() else {
            return Cas::Failed(None);
        };
        if prev.mod_revision != expected {
            return Cas::Failed(Some(prev));
        }
        state.revision += 1;
        state.data.remove(key);
        let revision = state.revision;
        Cas::Done(self.commit(&mut state, Change::Delete { prev, revision }))
    }

    pub(super) fn watch(
        &self,
        prefix: &str,
        after: u64,
        progress: Duration,
    ) -> Result<Changes, ApiError> {
        let (backlog, receiver, current) = {
            let state = self.lock();
            if after < state.compacted {
                return Err(ApiError::too_old(after, state.compacted + 1));
            }
            // A revision this store never reached (it restarted empty, or the client watched
            // another store): its changes up to there would be skipped. Expired makes the
            // client relist, as upstream's watch cache does.
            if after > state.revision {
                return Err(ApiError::expired(format!(
                    "too large resource version: {after}, current: {}",
                    state.revision
                )));
            }
            let backlog: Vec<Arc<Change>> = state
                .history
                .iter()
                .filter(|c| c.revision() > after)
                .cloned()
                .collect();
            (backlog, self.events.subscribe(), state.revision)
        };
        let prefix: Arc<str> = Arc::from(prefix);
        let state = WatchState {
            prefix,
            backlog: backlog.into(),
            receiver,
            last: after,
            current,
            ticker: tokio::time::interval_at(tokio::time::Instant::now() + progress, progress),
            done: false,
        };
        Ok(futures::stream::unfold(state, next_change).boxed())
    }
}

struct WatchState {
    prefix: Arc<str>,
    backlog: VecDeque<Arc<Change>>,
    receiver: broadcast::Receiver<Arc<Change>>,
    /// The revision of the last change delivered or skipped.
    last: u64,
    /// The store's revision when the watch started.
    current: u64,
    ticker: tokio::time::Interval,
    done: bool,
}

fn key_of(change: &Change) -> Option<&str> {
    match change {
        Change::Put { kv, .. } => Some(&kv.key),
        Change::Delete { prev, .. } => Some(&prev.key),
        Change::Progress { .. } => None,
    }
}

async fn next_change(mut s: WatchState) -> Option<(Result<Change, ApiError>, WatchState)> {
    if s.done {
        return None;
    }
    loop {
        let change = if let Some(change) = s.backlog.pop_front() {
            change
        } else {
            tokio::select! {
                received = s.receiver.recv() => match received {
                    Ok(change) => change,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        s.done = true;
                        let e = ApiError::too_old(s.last, s.last + 1);
                        return Some((Err(e), s));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = s.ticker.tick() => {
                    let revision = s.last.max(s.current);
                    // Everything up to the start revision was in the backlog, and every later
                    // change up to `last` has been seen.
                    if s.receiver.is_empty() {
                        return Some((Ok(Change::Progress { revision }), s));
                    }
                    continue;
                }
            }
        };
        if change.revision() <= s.last {
            continue;
        }
        s.last = change.revision();
        if key_of(&change).is_some_and(|k| k.starts_with(&*s.prefix)) {
            return Some((Ok((*change).clone()), s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(cas: Cas) -> u64 {
        match cas {
            Cas::Done(r) => r,
            Cas::Failed(kv) => panic!("write failed: {kv:?}"),
        }
    }

    #[test]
    fn revisions_are_one_global_counter_and_old_snapshots_stay_readable() {
        let store = MemoryStorage::new(100);
        let r1 = done(store.create("/a/1", Bytes::from_static(b"one")));
        let r2 = done(store.create("/b/1", Bytes::from_static(b"two")));
        let r3 = done(store.update("/a/1", Bytes::from_static(b"uno"), r1));
        assert!(r1 < r2 && r2 < r3);
        let then = store.range("/a/", "", Some(r2), None).unwrap();
        assert_eq!(then.kvs[0].value, Bytes::from_static(b"one"));
        let now = store.range("/a/", "", None, None).unwrap();
        assert_eq!(now.kvs[0].value, Bytes::from_static(b"uno"));
        assert_eq!(now.revision, r3);
        assert!(matches!(
            store.update("/a/1", Bytes::new(), r1),
            Cas::Failed(Some(_))
        ));
        assert!(matches!(
            store.create("/a/1", Bytes::new()),
            Cas::Failed(Some(_))
        ));
    }

    #[tokio::test]
    async fn a_watch_replays_history_and_expires_once_history_moves_past_it() {
        let store = MemoryStorage::new(3);
        let r1 = done(store.create("/a/1", Bytes::from_static(b"1")));
        done(store.create("/b/1", Bytes::from_static(b"x")));
        let r3 = done(store.delete("/a/1", r1));
        let mut changes = store.watch("/a/", r1 - 1, Duration::from_secs(60)).unwrap();
        assert!(matches!(changes.next().await, Some(Ok(Change::Put { .. }))));
        match changes.next().await {
            Some(Ok(Change::Delete { revision, .. })) => assert_eq!(revision, r3),
            other => panic!("expected the delete, got {other:?}"),
        }
        for i in 0..5 {
            done(store.create(&format!("/c/{i}"), Bytes::new()));
        }
        let expired = store
            .watch("/a/", r1, Duration::from_secs(60))
            .err()
            .unwrap();
        assert_eq!(expired.code, 410);
        assert!(store.range("/a/", "", Some(r1), None).is_err());
    }
}
