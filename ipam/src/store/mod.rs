//! Where pools and allocations live: the [`Store`] trait and its two implementations, [`memory`]
//! (one process: unit tests and the one-machine default) and [`etcd`] (any number of processes).
//!
//! Both keep one key per allocated or held value and one per pool spec, and change a key only
//! through a compare-and-swap, so the store alone decides who gets a value.

use std::future::Future;
use std::time::Duration;

use futures::stream::BoxStream;

use crate::Result;
use crate::occupancy::{Expect, Record, Rev};
use crate::spec::PoolSpec;

pub mod etcd;
pub mod memory;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/svcplane/ipam/";

/// A write to one value's key.
#[derive(Debug, Clone)]
pub enum Write {
    /// Store the record; with `ttl`, the key disappears by itself after it (an etcd lease).
    Put {
        record: Record,
        ttl: Option<Duration>,
    },
    /// Delete the key.
    Delete,
}

/// The outcome of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cas {
    /// Written at this revision.
    Done(Rev),
    /// Not written. `current` is what the key holds (`None`: absent); `pool_changed` says the
    /// pool spec is no longer at the revision the writer based its choice on.
    Failed {
        current: Option<(Record, Rev)>,
        pool_changed: bool,
    },
}

/// One key as read, and the store revision of the read (so an absent key is known absent as of
/// that revision).
pub type Read = (Option<(Record, Rev)>, Rev);

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    pub pool: String,
    /// The value as written in its key (an address or a port number).
    pub value: String,
    pub record: Record,
    pub rev: Rev,
}

/// Everything under the prefix at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub rev: Rev,
    pub pools: Vec<(PoolSpec, Rev)>,
    pub values: Vec<StoredValue>,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Pool {
        name: String,
        spec: Option<PoolSpec>,
        rev: Rev,
    },
    Value {
        pool: String,
        value: String,
        record: Option<Record>,
        rev: Rev,
    },
}

/// What a watch delivers.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// Changes, and the revision the watch has now seen everything up to.
    Changes(Vec<Change>, Rev),
    /// The watch fell behind the store's history: relist.
    Compacted,
}

/// A stream of watch items; it ends (or yields an error) when the connection is lost.
pub type WatchStream = BoxStream<'static, Result<WatchItem>>;

/// A pool spec to write, and what its key must hold for the write to happen.
#[derive(Debug, Clone)]
pub struct PoolWrite {
    pub spec: PoolSpec,
    pub expect: Expect,
}

/// Persistence for pools and allocations.
pub trait Store: Send + Sync + 'static {
    /// Everything under the prefix, at one revision.
    fn snapshot(&self) -> impl Future<Output = Result<Snapshot>> + Send;

    /// One pool spec.
    fn pool(&self, name: &str) -> impl Future<Output = Result<Option<(PoolSpec, Rev)>>> + Send;

    /// One value's record, and the revision of the read.
    fn get(&self, pool: &str, value: &str) -> impl Future<Output = Result<Read>> + Send;

    /// Writes one value's key if it is as `expect`ed and, with `pool_rev`, the pool spec is still
    /// at that revision.
    fn cas(
        &self,
        pool: &str,
        pool_rev: Option<Rev>,
        value: &str,
        expect: Expect,
        write: Write,
    ) -> impl Future<Output = Result<Cas>> + Send;

    /// Writes pool specs in one transaction, if every pool key is as expected and no value key
    /// of these pools changed after `values_since`. Returns false when a comparison failed.
    fn put_pools(
        &self,
        writes: &[PoolWrite],
        values_since: Rev,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Watches everything under the prefix from revision `from` (inclusive).
    fn watch(&self, from: Rev) -> impl Future<Output = Result<WatchStream>> + Send;

    /// Where the store is, for messages.
    fn describe(&self) -> String;
}
