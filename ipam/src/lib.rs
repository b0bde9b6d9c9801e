//! ClusterIP and NodePort pools: which values are usable, how they are chosen, where they are
//! stored and how a drifted pool is repaired.
//!
//! - [`pool`] and [`spec`]: validated pools (spans, KEP-3070 / KEP-3668 bands, reservations, hold)
//!   and the operator's pools file.
//! - [`occupancy`]: the per-pool index that proposes candidates (pure).
//! - [`store`]: the [`Store`](store::Store) trait and its memory and etcd implementations (one key
//!   per allocated value, created only if absent).
//! - [`allocator`]: allocation and release over a store, with a watch-fed index.
//! - [`repair`]: the pure diff between the pools and the values live objects carry.
//! - [`metrics`]: per-pool gauges computed at scrape time.
//! - [`bench`]: concurrent allocators for `svcplane ipam bench`.
//!
//! No Kubernetes types here: owners are `namespace/name` strings with a purpose.

pub mod allocator;
pub mod apply;
pub mod bench;
mod error;
mod intervals;
pub mod metrics;
pub mod occupancy;
pub mod pool;
pub mod repair;
pub mod spec;
pub mod store;

pub use allocator::{Allocation, Allocator, AllocatorOptions, Claimed, Release, Released};
pub use error::{Error, Result};
pub use occupancy::{Counts, Record, Rev};
pub use pool::{Family, Owner, Pool, PoolKind, Refusal, Value};
pub use spec::PoolSpec;
