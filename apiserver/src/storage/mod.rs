//! Object storage with etcd's model: keys with create and mod revisions under one global,
//! monotonic revision counter, compare-and-swap writes, reads at a past revision, and watches
//! from a revision with the previous value of every change. Two backends keep the same
//! semantics: etcd itself, and memory (one counter, bounded history) as the default.

pub mod etcd;
pub mod memory;

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::ApiError;

/// One stored key at one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Kv {
    pub key: Arc<str>,
    pub value: Bytes,
    pub create_revision: u64,
    pub mod_revision: u64,
}

/// A page of a range read.
#[derive(Debug)]
pub struct Page {
    pub kvs: Vec<Kv>,
    /// The revision the page was read at.
    pub revision: u64,
    /// More keys follow the last one in the range.
    pub more: bool,
}

/// One change seen by a watch.
#[derive(Debug, Clone)]
pub enum Change {
    /// A write; `prev` is the value it replaced.
    Put { kv: Kv, prev: Option<Kv> },
    /// A delete at `revision`; `prev` is the deleted value.
    Delete { prev: Kv, revision: u64 },
    /// Every change up to `revision` has been delivered (a bookmark's revision).
    Progress { revision: u64 },
}

impl Change {
    pub fn revision(&self) -> u64 {
        match self {
            Change::Put { kv, .. } => kv.mod_revision,
            Change::Delete { revision, .. } | Change::Progress { revision } => *revision,
        }
    }
}

/// The outcome of a compare-and-swap write.
#[derive(Debug)]
pub enum Cas {
    /// Written at this revision.
    Done(u64),
    /// The comparison failed; the current value, if any.
    Failed(Option<Kv>),
}

/// A watch's changes; a `410 Expired` error ends it when its start is no longer in history.
pub type Changes = BoxStream<'static, Result<Change, ApiError>>;

/// The storage backends.
#[derive(Clone)]
pub enum Storage {
    Memory(memory::MemoryStorage),
    Etcd(Box<etcd::EtcdStorage>),
}

impl Storage {
    /// The value at `key`, and the store's revision.
    pub async fn get(&self, key: &str) -> Result<(Option<Kv>, u64), ApiError> {
        match self {
            Storage::Memory(m) => Ok(m.get(key)),
            Storage::Etcd(e) => e.get(key).await,
        }
    }

    /// Keys in `[start, end_of(prefix))` at `revision` (None: the current one), at most `limit`.
    pub async fn range(
        &self,
        prefix: &str,
        start: &str,
        revision: Option<u64>,
        limit: Option<usize>,
    ) -> Result<Page, ApiError> {
        match self {
            Storage::Memory(m) => m.range(prefix, start, revision, limit),
            Storage::Etcd(e) => e.range(prefix, start, revision, limit).await,
        }
    }

    /// Writes `value` if `key` does not exist.
    pub async fn create(&self, key: &str, value: Bytes) -> Result<Cas, ApiError> {
        match self {
            Storage::Memory(m) => Ok(m.create(key, value)),
            Storage::Etcd(e) => e.create(key, value).await,
        }
    }

    /// Writes `value` if `key`'s mod revision is still `expected`.
    pub async fn update(&self, key: &str, value: Bytes, expected: u64) -> Result<Cas, ApiError> {
        match self {
            Storage::Memory(m) => Ok(m.update(key, value, expected)),
            Storage::Etcd(e) => e.update(key, value, expected).await,
        }
    }

    /// Deletes `key` if its mod revision is still `expected`.
    pub async fn delete(&self, key: &str, expected: u64) -> Result<Cas, ApiError> {
        match self {
            Storage::Memory(m) => Ok(m.delete(key, expected)),
            Storage::Etcd(e) => e.delete(key, expected).await,
        }
    }

    /// Every change under `prefix` after revision `after`, with progress notes every
    /// `progress` so idle watches can send bookmarks.
    pub async fn watch(
        &self,
        prefix: &str,
        after: u64,
        progress: std::time::Duration,
    ) -> Result<Changes, ApiError> {
        match self {
            Storage::Memory(m) => m.watch(prefix, after, progress),
            Storage::Etcd(e) => e.watch(prefix, after, progress).await,
        }
    }

    /// The store's current revision.
    pub async fn revision(&self) -> Result<u64, ApiError> {
        match self {
            Storage::Memory(m) => Ok(m.revision()),
            Storage::Etcd(e) => e.revision().await,
        }
    }

    /// Whether the store answers (for `/readyz`).
    pub async fn ready(&self) -> bool {
        self.revision().await.is_ok()
    }
}

/// The first key after every key with this prefix (etcd's range end).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
