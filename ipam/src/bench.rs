//! `svcplane ipam bench`: concurrent allocators, each with its own store connection and
//! watch-fed index, allocate values in total, then the result is verified against the store
//! (no value handed out twice, every reported value stored for its owner, nothing extra) and,
//! unless kept, released.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::allocator::{Allocation, Allocator, AllocatorOptions, Release};
use crate::pool::{Owner, Refusal, Value};
use crate::store::Store;
use crate::{Error, Result};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub pool: String,
    pub workers: usize,
    /// Values to allocate in total.
    pub count: usize,
    /// Leave the values allocated (for inspection, or for a test to check across processes).
    pub keep: bool,
    /// Distinguishes this run's owners (`bench/<run_id>-w<worker>`) from other runs'.
    pub run_id: String,
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchReport {
    pub pool: String,
    pub workers: usize,
    pub requested: usize,
    pub allocated: usize,
    /// The pool ran out before `requested` values were allocated.
    pub full: bool,
    /// Values reported by more than one worker.
    pub duplicates: usize,
    /// Differences between what the workers reported and what the store holds for this run.
    pub mismatches: Vec<String>,
    pub seconds: f64,
    pub allocations_per_second: f64,
    pub released: usize,
    /// Every value and its owner, as the workers reported them.
    #[serde(skip)]
    pub values: Vec<(Value, Owner)>,
}

/// Runs the benchmark; `connect` opens one store connection per worker.
pub async fn run<S, C, Fut>(
    config: &BenchConfig,
    options: &AllocatorOptions,
    connect: C,
) -> Result<BenchReport>
where
    S: Store,
    C: Fn() -> Fut,
    Fut: Future<Output = Result<S>>,
{
    if config.workers == 0 {
        return Err(Error::InvalidSpec {
            field: "--workers".into(),
            message: "must be at least 1".into(),
        });
    }
    let mut allocators = Vec::with_capacity(config.workers);
    for _ in 0..config.workers {
        allocators.push(Arc::new(
            Allocator::start(connect().await?, options.clone()).await?,
        ));
    }
    // Fail early, before timing, if the pool does not exist.
    allocators[0].view().records(&config.pool)?;
    let owner_prefix = format!("bench/{}-", config.run_id);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (w, alloc) in allocators.iter().enumerate() {
        let (alloc, next, pool) = (alloc.clone(), next.clone(), config.pool.clone());
        let (count, object) = (config.count, format!("{owner_prefix}w{w}"));
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut full = false;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let owner = Owner::new(object.clone(), format!("n{i}"));
                match alloc.allocate(&pool, &owner, None).await? {
                    Allocation::Allocated(v) => got.push((v, owner)),
                    Allocation::Refused(Refusal::Full) => {
                        full = true;
                        break;
                    }
                    Allocation::Refused(other) => {
                        return Err(Error::Store(format!("unexpected refusal: {other}")));
                    }
                }
            }
            Ok::<_, Error>((got, full))
        }));
    }
    let mut values = Vec::new();
    let mut full = false;
    for t in tasks {
        let (got, f) = t
            .await
            .map_err(|e| Error::Store(format!("worker failed: {e}")))??;
        values.extend(got);
        full |= f;
    }
    let seconds = started.elapsed().as_secs_f64();

    let mut seen: HashMap<Value, usize> = HashMap::new();
    for (v, _) in &values {
        *seen.entry(*v).or_default() += 1;
    }
    let duplicates = seen.values().filter(|n| **n > 1).count();

    let snap = allocators[0].store().snapshot().await?;
    let stored: BTreeMap<String, Owner> = snap
        .values
        .iter()
        .filter(|v| {
            v.pool == config.pool
                && v.record.owner.object.starts_with(&owner_prefix)
                && v.record.is_allocated()
        })
        .map(|v| (v.value.clone(), v.record.owner.clone()))
        .collect();
    let reported: BTreeMap<String, Owner> = values
        .iter()
        .map(|(v, o)| (v.to_string(), o.clone()))
        .collect();
    let mut mismatches = Vec::new();
    for (v, o) in &reported {
        match stored.get(v) {
            Some(s) if s == o => {}
            Some(s) => mismatches.push(format!("{v}: reported for {o}, stored for {s}")),
            None => mismatches.push(format!("{v}: reported for {o}, not stored")),
        }
    }
    for (v, s) in &stored {
        if !reported.contains_key(v) {
            mismatches.push(format!("{v}: stored for {s}, reported by no worker"));
        }
    }

    let mut released = 0;
    if !config.keep {
        let mut tasks = Vec::new();
        for (w, alloc) in allocators.iter().enumerate() {
            let object = format!("{owner_prefix}w{w}");
            let mine: Vec<Value> = values
                .iter()
                .filter(|(_, o)| o.object == object)
                .map(|(v, _)| *v)
                .collect();
            let (alloc, pool) = (alloc.clone(), config.pool.clone());
            tasks.push(tokio::spawn(async move {
                for v in &mine {
                    alloc.release(&pool, *v, &object, Release::Now).await?;
                }
                Ok::<_, Error>(mine.len())
            }));
        }
        for t in tasks {
            released += t
                .await
                .map_err(|e| Error::Store(format!("worker failed: {e}")))??;
        }
    }

    Ok(BenchReport {
        pool: config.pool.clone(),
        workers: config.workers,
        requested: config.count,
        allocated: values.len(),
        full,
        duplicates,
        mismatches,
        seconds,
        allocations_per_second: if seconds > 0.0 {
            values.len() as f64 / seconds
        } else {
            0.0
        },
        released,
        values,
    })
}
