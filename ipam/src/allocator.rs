//! Allocation and release over a [`Store`], with a watch-fed occupancy index per pool.
//!
//! The index proposes a candidate; the store's compare-and-swap decides; a lost race teaches the
//! index the winner and the next candidate is tried. No leader: any number of allocators (in one
//! process or many) share a store and never hand out one value twice.
//!
//! Lost replies: when the store cannot be reached, a write is retried (same key, same record)
//! until it gets a definite answer or `retry_timeout` passes; a record carrying the writer's own
//! nonce proves an earlier attempt succeeded, so within that time nothing is allocated twice or
//! left behind.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;

use crate::occupancy::{Counts, Decision, Expect, Occupancy, Record, Rev};
use crate::pool::{Owner, Pool, Refusal, Value};
use crate::spec::PoolSpec;
use crate::store::{Cas, Change, Snapshot, Store, WatchItem, Write};
use crate::{Error, Result};

/// Timeouts of an allocator; every one is a flag of the commands that use it.
#[derive(Debug, Clone)]
pub struct AllocatorOptions {
    /// How long a write keeps being retried while the store is unreachable.
    pub retry_timeout: Duration,
    /// Longest pause between retries (they start at 50 ms and double).
    pub max_backoff: Duration,
    /// How often at most a pool that looks full is relisted to be sure (the watch keeps the
    /// index current; the relist only guards against a lagging one).
    pub full_relist_interval: Duration,
}

impl Default for AllocatorOptions {
    fn default() -> Self {
        AllocatorOptions {
            retry_timeout: Duration::from_secs(30),
            max_backoff: Duration::from_secs(1),
            full_relist_interval: Duration::from_secs(1),
        }
    }
}

/// The outcome of an allocation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    /// The value is now allocated to the owner (or already was).
    Allocated(Value),
    /// No value was allocated, for an expected reason.
    Refused(Refusal),
}

impl Allocation {
    pub fn value(&self) -> Option<Value> {
        match self {
            Allocation::Allocated(v) => Some(*v),
            Allocation::Refused(_) => None,
        }
    }
}

/// How to release a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Hold it for its owner for the pool's hold time (frees it at once when the hold is 0).
    Hold,
    /// Free it at once.
    Now,
}

/// The outcome of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// Held for its owner until the hold ends.
    Held,
    /// Free for anyone.
    Freed,
    /// It was not allocated (releasing is idempotent).
    NotAllocated,
    /// It belongs to another object and was left alone.
    OwnedBy(Owner),
}

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The store already recorded the value as allocated to the claimant.
    Already,
    /// Now recorded for the claimant, replacing `from` (a hold, a request's placeholder, an
    /// object that no longer carries it), or no record.
    Recorded { from: Option<Owner> },
    /// Left to its recorded owner, which the caller said to keep (another live object
    /// carrying the same value: a duplicate).
    Kept(Owner),
    /// The value lies outside the pool.
    OutOfRange,
}

/// One pool's state: its spec's revision and its index.
#[derive(Debug, Clone)]
struct PoolState {
    rev: Rev,
    spec: PoolSpec,
    occ: Occupancy,
}

/// Every pool's index, and how far the watch has got.
#[derive(Debug, Default)]
struct State {
    pools: BTreeMap<String, PoolState>,
    seen: Rev,
}

impl State {
    fn from_snapshot(snap: &Snapshot, now: u64) -> State {
        let mut state = State {
            pools: BTreeMap::new(),
            seen: snap.rev,
        };
        for (spec, rev) in &snap.pools {
            state.apply(
                Change::Pool {
                    name: spec.name.clone(),
                    spec: Some(spec.clone()),
                    rev: *rev,
                },
                now,
            );
        }
        for v in &snap.values {
            state.apply(
                Change::Value {
                    pool: v.pool.clone(),
                    value: v.value.clone(),
                    record: Some(v.record.clone()),
                    rev: v.rev,
                },
                now,
            );
        }
        state
    }

    fn apply(&mut self, change: Change, now: u64) {
        match change {
            Change::Pool {
                name,
                spec: Some(spec),
                rev,
            } => {
                if self.pools.get(&name).is_some_and(|p| p.rev >= rev) {
                    return;
                }
                let pool = match spec.validate() {
                    Ok(pool) => pool,
                    Err(e) => {
                        tracing::warn!(pool = %name, error = %e, "ignoring an invalid stored pool spec");
                        return;
                    }
                };
                let occ = match self.pools.remove(&name) {
                    Some(old) => old.occ.with_pool(pool, now),
                    None => Occupancy::new(pool),
                };
                self.pools.insert(name, PoolState { rev, spec, occ });
            }
            Change::Pool {
                name,
                spec: None,
                rev,
            } => {
                if self.pools.get(&name).is_some_and(|p| p.rev < rev) {
                    self.pools.remove(&name);
                }
            }
            Change::Value {
                pool,
                value,
                record,
                rev,
            } => {
                let Some(ps) = self.pools.get_mut(&pool) else {
                    return;
                };
                let pool = ps.occ.pool();
                match pool.parse_value(&value).and_then(|v| pool.raw(v)) {
                    Some(raw) => ps.occ.observe(raw, rev, record, now),
                    None => {
                        tracing::warn!(pool = %pool.name, value = %value, "ignoring a stored value of the wrong kind")
                    }
                }
            }
        }
    }

    fn pool_mut(&mut self, name: &str) -> Result<&mut PoolState> {
        if !self.pools.contains_key(name) {
            let known = self.pools.keys().cloned().collect::<Vec<_>>().join(", ");
            let known = if known.is_empty() {
                "none".to_string()
            } else {
                known
            };
            return Err(Error::UnknownPool {
                name: name.to_string(),
                known,
            });
        }
        Ok(self.pools.get_mut(name).expect("present: checked above"))
    }
}

/// A read-only view of the pools an allocator (or a snapshot) knows: for metrics and `show`.
#[derive(Debug, Clone)]
pub struct PoolsView {
    state: Arc<Mutex<State>>,
    /// How often the index was rebuilt from a full read (a watch fell behind, or "full" was
    /// double-checked).
    relists: Arc<AtomicU64>,
}

/// One pool as seen by a [`PoolsView`].
#[derive(Debug, Clone)]
pub struct PoolStatus {
    pub pool: Pool,
    pub spec: PoolSpec,
    pub counts: Counts,
}

impl PoolsView {
    /// A view of a snapshot, with no watch behind it.
    pub fn from_snapshot(snap: &Snapshot) -> PoolsView {
        PoolsView {
            state: Arc::new(Mutex::new(State::from_snapshot(snap, now_ms()))),
            relists: Arc::new(AtomicU64::new(0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces everything with a fresh snapshot.
    fn replace(&self, snap: &Snapshot) {
        *self.lock() = State::from_snapshot(snap, now_ms());
        self.relists.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times the index was rebuilt from a full read of the store.
    pub fn relists(&self) -> u64 {
        self.relists.load(Ordering::Relaxed)
    }

    /// Every pool with its counts now.
    pub fn pools(&self) -> Vec<PoolStatus> {
        let now = now_ms();
        let mut state = self.lock();
        state
            .pools
            .values_mut()
            .map(|ps| {
                ps.occ.expire(now);
                PoolStatus {
                    pool: ps.occ.pool().clone(),
                    spec: ps.spec.clone(),
                    counts: ps.occ.counts(now),
                }
            })
            .collect()
    }

    /// The record of one value as the index knows it (it may lag the store by a watch event).
    pub fn record(&self, pool: &str, value: Value) -> Result<Option<Record>> {
        let mut state = self.lock();
        let ps = state.pool_mut(pool)?;
        let Some(raw) = ps.occ.pool().raw(value) else {
            return Ok(None);
        };
        Ok(ps.occ.record(raw).map(|(record, _)| record.clone()))
    }

    /// Every record of one pool, by value.
    pub fn records(&self, pool: &str) -> Result<Vec<(Value, Record)>> {
        let mut state = self.lock();
        let ps = state.pool_mut(pool)?;
        let mut out: Vec<_> = ps
            .occ
            .records()
            .map(|(v, r, _)| (ps.occ.pool().value(v), r.clone()))
            .collect();
        out.sort_by_key(|a| a.0);
        Ok(out)
    }
}

/// Allocates and releases values of the pools in a store.
pub struct Allocator<S: Store> {
    store: Arc<S>,
    state: PoolsView,
    options: AllocatorOptions,
    watch: tokio::task::JoinHandle<()>,
    /// When a full-looking pool was last relisted; held while one is relisting.
    full_relist: tokio::sync::Mutex<Option<Instant>>,
}

impl<S: Store> Drop for Allocator<S> {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl<S: Store> Allocator<S> {
    /// Reads every pool and allocation, then keeps the index current with a watch.
    pub async fn start(store: S, options: AllocatorOptions) -> Result<Allocator<S>> {
        let store = Arc::new(store);
        let snap = store.snapshot().await?;
        let state = PoolsView::from_snapshot(&snap);
        let watch = tokio::spawn(watch_loop(
            store.clone(),
            state.clone(),
            snap.rev + 1,
            options.max_backoff,
        ));
        Ok(Allocator {
            store,
            state,
            options,
            watch,
            full_relist: tokio::sync::Mutex::new(None),
        })
    }

    /// The store this allocator writes to.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// A view of the pools, for metrics and reports.
    pub fn view(&self) -> PoolsView {
        self.state.clone()
    }

    /// Allocates `want` (a requested value) or, with `None`, any value, to `owner`.
    ///
    /// A requested value is judged on a fresh read of its key, never on the index alone, so a
    /// lagging watch cannot make the allocator say "yours" or "taken" wrongly. Before answering
    /// "full", the allocator relists the store once: the values it lacks may have been freed.
    /// Under a flood of requests to a full pool that relist is shared: one per
    /// [`AllocatorOptions::full_relist_interval`] at most, and none when another request
    /// relisted after this one looked.
    pub async fn allocate(
        &self,
        pool: &str,
        owner: &Owner,
        want: Option<Value>,
    ) -> Result<Allocation> {
        let deadline = Instant::now() + self.options.retry_timeout;
        self.allocate_until(pool, owner, want, deadline).await
    }

    /// [`Allocator::allocate`], retrying an unreachable store only until `deadline`.
    pub async fn allocate_until(
        &self,
        pool: &str,
        owner: &Owner,
        want: Option<Value>,
        deadline: Instant,
    ) -> Result<Allocation> {
        let mut relisted = false;
        loop {
            let (raw, value, expect, pool_rev) = match want {
                Some(value) => match self.decide_request(pool, owner, value, deadline).await? {
                    Ok(pick) => pick,
                    Err(answer) => return Ok(answer),
                },
                None => {
                    let pick = {
                        let now = now_ms();
                        let mut state = self.state.lock();
                        let ps = state.pool_mut(pool)?;
                        ps.occ.expire(now);
                        let rev = ps.rev;
                        ps.occ
                            .candidate(owner, &mut rand::rng())
                            .map(|(raw, expect)| (raw, ps.occ.pool().value(raw), expect, rev))
                    };
                    match pick {
                        Some(pick) => pick,
                        None if relisted => return Ok(Allocation::Refused(Refusal::Full)),
                        None => {
                            if !self.relist_when_full(pool, deadline).await? {
                                return Ok(Allocation::Refused(Refusal::Full));
                            }
                            relisted = true;
                            continue;
                        }
                    }
                }
            };
            let record = Record::allocated(owner.clone());
            let write = Write::Put {
                record: record.clone(),
                ttl: None,
            };
            let text = value.to_string();
            match self
                .cas(pool, Some(pool_rev), &text, expect, write, deadline)
                .await?
            {
                (Cas::Done(rev), _) => {
                    self.observe(pool, raw, rev, Some(record));
                    return Ok(Allocation::Allocated(value));
                }
                (
                    Cas::Failed {
                        current,
                        pool_changed,
                    },
                    _,
                ) => {
                    self.learn(pool, raw, expect, current);
                    if pool_changed {
                        self.refresh_pool(pool, pool_rev, deadline).await?;
                    }
                }
            }
        }
    }

    /// Judges a request for one value: `Ok` with what to write, or `Err` with the answer.
    async fn decide_request(
        &self,
        pool: &str,
        owner: &Owner,
        value: Value,
        deadline: Instant,
    ) -> Result<Result<(u128, Value, Expect, Rev), Allocation>> {
        let raw = {
            let mut state = self.state.lock();
            let p = state.pool_mut(pool)?.occ.pool();
            let Some(raw) = p.raw(value) else {
                let refusal = Refusal::OutOfRange {
                    value,
                    kind: p.kind,
                    valid: p.ranges_text(),
                };
                return Ok(Err(Allocation::Refused(refusal)));
            };
            raw
        };
        let text = value.to_string();
        let (current, read_rev) = self.retry(deadline, || self.store.get(pool, &text)).await?;
        let now = now_ms();
        let mut state = self.state.lock();
        let ps = state.pool_mut(pool)?;
        match current {
            Some((record, rev)) => ps.occ.observe(raw, rev, Some(record), now),
            // Absent as of the read: anything the index still holds for it is older.
            None => ps.occ.observe(raw, read_rev, None, now),
        }
        ps.occ.expire(now);
        Ok(match ps.occ.decide(owner, raw, now) {
            Decision::AlreadyYours => Err(Allocation::Allocated(value)),
            Decision::Refuse(r) => Err(Allocation::Refused(r)),
            Decision::Take(expect) => Ok((raw, value, expect, ps.rev)),
        })
    }

    /// Records `value` as allocated to `owner` whatever the store records for it now, unless
    /// `keep` says the recorded owner keeps it. What a live object carries is that object's:
    /// a value kube-apiserver handed out while admission was bypassed, or one a request took
    /// under a placeholder owner, is claimed by the object that appears carrying it.
    pub async fn claim(
        &self,
        pool: &str,
        owner: &Owner,
        value: Value,
        keep: impl Fn(&Owner) -> bool,
    ) -> Result<Claimed> {
        let deadline = Instant::now() + self.options.retry_timeout;
        let raw = {
            let mut state = self.state.lock();
            let p = state.pool_mut(pool)?.occ.pool();
            match p.raw(value) {
                Some(raw) if p.contains(raw) => raw,
                _ => return Ok(Claimed::OutOfRange),
            }
        };
        let text = value.to_string();
        loop {
            let (current, _) = self.retry(deadline, || self.store.get(pool, &text)).await?;
            let (expect, from) = match current {
                Some((record, _))
                    if record.owner.object == owner.object && record.is_allocated() =>
                {
                    return Ok(Claimed::Already);
                }
                Some((record, _)) if keep(&record.owner) => return Ok(Claimed::Kept(record.owner)),
                Some((record, rev)) => (Expect::Rev(rev), Some(record.owner)),
                None => (Expect::Absent, None),
            };
            let record = Record::allocated(owner.clone());
            let write = Write::Put {
                record: record.clone(),
                ttl: None,
            };
            match self.cas(pool, None, &text, expect, write, deadline).await? {
                (Cas::Done(rev), _) => {
                    self.observe(pool, raw, rev, Some(record));
                    return Ok(Claimed::Recorded { from });
                }
                (Cas::Failed { current, .. }, _) => self.learn(pool, raw, expect, current),
            }
        }
    }

    /// Releases `value` of `pool` if it belongs to `object` (`namespace/name`).
    ///
    /// `Hold` keeps it for the object for the pool's hold; `Now` frees it (and ends a hold).
    pub async fn release(
        &self,
        pool: &str,
        value: Value,
        object: &str,
        how: Release,
    ) -> Result<Released> {
        let deadline = Instant::now() + self.options.retry_timeout;
        let (raw, hold) = {
            let mut state = self.state.lock();
            let p = state.pool_mut(pool)?.occ.pool();
            match p.raw(value) {
                Some(raw) => (raw, p.hold),
                None => return Ok(Released::NotAllocated),
            }
        };
        let text = value.to_string();
        loop {
            let (current, _) = self.retry(deadline, || self.store.get(pool, &text)).await?;
            let Some((record, rev)) = current else {
                return Ok(Released::NotAllocated);
            };
            if record.owner.object != object {
                return Ok(Released::OwnedBy(record.owner));
            }
            let now = now_ms();
            let free_now = how == Release::Now || hold.is_zero();
            let (write, outcome, next) = match (record.is_allocated(), free_now) {
                // Already released: still held, or the hold is over.
                (false, false) => {
                    return Ok(if record.is_held_at(now) {
                        Released::Held
                    } else {
                        Released::NotAllocated
                    });
                }
                (_, true) => (Write::Delete, Released::Freed, None),
                (true, false) => {
                    let held = Record::held(record.owner, now + hold.as_millis() as u64);
                    (
                        Write::Put {
                            record: held.clone(),
                            ttl: Some(hold),
                        },
                        Released::Held,
                        Some(held),
                    )
                }
            };
            match self
                .cas(pool, None, &text, Expect::Rev(rev), write, deadline)
                .await?
            {
                (Cas::Done(r), _) => {
                    self.observe(pool, raw, r, next);
                    return Ok(outcome);
                }
                // The key moved on after an attempt whose reply was lost: either that attempt
                // released it, or the value had already left the object's hands.
                (Cas::Failed { .. }, true) => return Ok(outcome),
                (Cas::Failed { .. }, false) => continue,
            }
        }
    }

    fn observe(&self, pool: &str, raw: u128, rev: Rev, record: Option<Record>) {
        let mut state = self.state.lock();
        if let Ok(ps) = state.pool_mut(pool) {
            ps.occ.observe(raw, rev, record, now_ms());
        }
    }

    /// Teaches the index what a failed compare-and-swap found.
    fn learn(&self, pool: &str, raw: u128, expected: Expect, current: Option<(Record, Rev)>) {
        match (current, expected) {
            (Some((record, rev)), _) => self.observe(pool, raw, rev, Some(record)),
            // Deleted after the revision we expected (a hold's lease ran out): the delete came later.
            (None, Expect::Rev(r)) => self.observe(pool, raw, r + 1, None),
            (None, Expect::Absent) => {}
        }
    }

    /// Reloads one pool spec after a write found it changed from `tried`.
    async fn refresh_pool(&self, pool: &str, tried: Rev, deadline: Instant) -> Result<()> {
        let fresh = self.retry(deadline, || self.store.pool(pool)).await?;
        let mut state = self.state.lock();
        match fresh {
            Some((spec, rev)) => {
                // A stored spec that does not validate would otherwise make every write fail.
                spec.validate().map_err(|e| Error::InvalidSpec {
                    field: format!("pool {pool} as stored (revision {rev})"),
                    message: format!("{e}; correct it with `svcplane ipam apply`"),
                })?;
                let change = Change::Pool {
                    name: pool.to_string(),
                    spec: Some(spec),
                    rev,
                };
                state.apply(change, now_ms());
                debug_assert!(state.pools.get(pool).is_none_or(|p| p.rev != tried));
            }
            None => {
                state.pools.remove(pool);
            }
        }
        Ok(())
    }

    /// A pool looked full: relists, unless another request relisted since this one looked (its
    /// relist is as good) or the last relist for a full pool is more recent than
    /// `full_relist_interval`; then only the pool's spec is read again (one key), so a widened
    /// pool is never answered "full". True when the index is fresher than when this request
    /// looked. (Within the interval, a value freed by another process in the last moments, whose
    /// watch event has not arrived yet, can be missed: the price of not rereading the pool per
    /// request under a flood.)
    async fn relist_when_full(&self, pool: &str, deadline: Instant) -> Result<bool> {
        let looked = Instant::now();
        let mut last = self.full_relist.lock().await;
        if last.is_some_and(|at| at >= looked) {
            return Ok(true);
        }
        if last.is_some_and(|at| looked.duration_since(at) < self.options.full_relist_interval) {
            drop(last);
            let known = self.state.lock().pool_mut(pool)?.rev;
            let fresh = self.retry(deadline, || self.store.pool(pool)).await?;
            if fresh.as_ref().is_some_and(|(_, rev)| *rev == known) {
                return Ok(false);
            }
            self.refresh_pool(pool, known, deadline).await?;
            return Ok(true);
        }
        self.relist(deadline).await?;
        *last = Some(Instant::now());
        Ok(true)
    }

    /// Replaces the whole index with a fresh read of the store.
    async fn relist(&self, deadline: Instant) -> Result<()> {
        let snap = self.retry(deadline, || self.store.snapshot()).await?;
        self.state.replace(&snap);
        Ok(())
    }

    /// A compare-and-swap, retried while the store is unreachable; the flag says whether an
    /// attempt's outcome was lost. After such an attempt, finding our own record (by its nonce),
    /// or for a delete finding no record, means that attempt happened.
    async fn cas(
        &self,
        pool: &str,
        pool_rev: Option<Rev>,
        value: &str,
        expect: Expect,
        write: Write,
        deadline: Instant,
    ) -> Result<(Cas, bool)> {
        let mut ambiguous = false;
        let mut backoff = Duration::from_millis(50).min(self.options.max_backoff);
        loop {
            match self
                .store
                .cas(pool, pool_rev, value, expect, write.clone())
                .await
            {
                Ok(Cas::Failed {
                    current: Some((found, rev)),
                    ..
                }) if ambiguous
                    && matches!(&write, Write::Put { record, .. } if record.nonce == found.nonce) =>
                {
                    return Ok((Cas::Done(rev), true));
                }
                Ok(Cas::Failed {
                    current: None,
                    pool_changed: false,
                }) if ambiguous && matches!(write, Write::Delete) => {
                    let Expect::Rev(r) = expect else {
                        return Ok((
                            Cas::Failed {
                                current: None,
                                pool_changed: false,
                            },
                            true,
                        ));
                    };
                    return Ok((Cas::Done(r + 1), true));
                }
                Ok(outcome) => return Ok((outcome, ambiguous)),
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tracing::warn!(pool, value, error = %e, "store unavailable; retrying the write");
                    ambiguous = true;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Retries a read while the store is unreachable.
    async fn retry<T, F, Fut>(&self, deadline: Instant, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut backoff = Duration::from_millis(50).min(self.options.max_backoff);
        loop {
            match op().await {
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
                other => return other,
            }
        }
    }
}

/// Keeps `state` current: watches from `from`, reconnects with backoff, relists on compaction.
async fn watch_loop<S: Store>(
    store: Arc<S>,
    state: PoolsView,
    mut from: Rev,
    max_backoff: Duration,
) {
    let mut backoff = Duration::from_millis(50).min(max_backoff);
    loop {
        match store.watch(from).await {
            Ok(mut stream) => {
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(WatchItem::Changes(changes, rev)) => {
                            backoff = Duration::from_millis(50);
                            let now = now_ms();
                            let mut st = state.lock();
                            for c in changes {
                                st.apply(c, now);
                            }
                            for ps in st.pools.values_mut() {
                                ps.occ.watched_up_to(rev);
                            }
                            st.seen = st.seen.max(rev);
                            from = st.seen + 1;
                        }
                        Ok(WatchItem::Compacted) => match store.snapshot().await {
                            Ok(snap) => {
                                tracing::info!(store = %store.describe(), rev = snap.rev, "watch compacted; relisted");
                                state.replace(&snap);
                                from = snap.rev + 1;
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "relist after compaction failed");
                                break;
                            }
                        },
                        Err(e) => {
                            tracing::warn!(store = %store.describe(), error = %e, "watch interrupted; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(store = %store.describe(), error = %e, "cannot watch; retrying")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(max_backoff);
    }
}
