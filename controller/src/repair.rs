//! Repair (on the leader): at start and every `--repair-interval`, every pool's records are
//! compared with what the live Services carry ([`ipam::repair::diff`]), as kube-apiserver's
//! repair controllers compare its own maps, and mended:
//!
//! - a value a Service carries that the pool lacks (or records for an object that no longer
//!   carries it) is recorded for the Service: Warning `ClusterIPNotAllocated` /
//!   `PortNotAllocated`;
//! - a value two Services carry stays with the first: Warning `ClusterIPAlreadyAllocated` /
//!   `PortAlreadyAllocated` on the others (they must be recreated);
//! - a value outside every pool: Warning `ClusterIPOutOfRange` / `PortOutOfRange`;
//! - a value the pool records that no Service carries (a create that failed after admission, a
//!   `generateName` request never stored) is a leak: freed once three consecutive runs saw it and
//!   it is older than the allocation deadline, so an admission still in flight keeps its values.
//!
//! The records are read before the Services are listed: a value recorded for a Service created
//! in between is then carried, never taken for a leak.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipam::repair::Leak;
use ipam::store::Store;
use ipam::{Allocator, Claimed, Owner, Release, Value};
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::metrics::Metrics;
use crate::plan::carried;
use crate::service::Svc;

/// Runs before a leak is freed (upstream's `numRepairsBeforeLeakCleanup`).
pub const RUNS_BEFORE_LEAK_CLEANUP: u32 = 3;

/// How repair runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Between runs (`--repair-interval`; kube-apiserver's is 3 minutes).
    pub interval: Duration,
    /// How long a leak must have been seen before it is freed: the allocation deadline, so no
    /// admission still running loses what it took.
    pub leak_grace: Duration,
}

/// The leaks seen by earlier runs: how many consecutive runs saw each, and since when.
#[derive(Debug, Default)]
pub struct Leaks {
    seen: HashMap<(String, Value, String), (u32, Instant)>,
}

impl Leaks {
    /// This run's leaks of `pool` in; the ones to free now out. A leak no longer seen (carried
    /// again, released, or recorded for someone else) starts over.
    pub fn judge(
        &mut self,
        pool: &str,
        leaks: &[Leak],
        now: Instant,
        grace: Duration,
    ) -> Vec<Leak> {
        let mut seen = std::mem::take(&mut self.seen);
        let mut free = Vec::new();
        for leak in leaks {
            let key = (pool.to_string(), leak.value, leak.recorded.object.clone());
            let (runs, since) = seen.remove(&key).map_or((1, now), |(n, t)| (n + 1, t));
            if runs >= RUNS_BEFORE_LEAK_CLEANUP && now.duration_since(since) >= grace {
                free.push(leak.clone());
            } else {
                self.seen.insert(key, (runs, since));
            }
        }
        // Other pools' leaks are judged by their own calls.
        self.seen
            .extend(seen.into_iter().filter(|((p, _, _), _)| p != pool));
        free
    }
}

/// What one run found, by pool and kind (`leak`, `repair`, `duplicate`, `outOfRange`, as
/// upstream's `type` label), and how many leaks it freed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub found: BTreeMap<(String, &'static str), u64>,
    pub freed: u64,
}

/// What repair works with.
pub struct Context<S: Store> {
    pub allocator: Arc<Allocator<S>>,
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    recorder: Recorder,
}

impl<S: Store> Context<S> {
    pub fn new(
        allocator: Arc<Allocator<S>>,
        client: Client,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Context<S> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "svcplane-controller".into(),
                instance: None,
            },
        );
        Context {
            allocator,
            client,
            metrics,
            settings,
            recorder,
        }
    }
}

/// Repairs at once and then every interval, until dropped; a failed run is logged and counted,
/// and the next one tries again.
pub async fn run<S: Store>(ctx: Context<S>) {
    let mut leaks = Leaks::default();
    let mut ticks = tokio::time::interval(ctx.settings.interval.max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match run_once(&ctx, &mut leaks).await {
            Ok(summary) => {
                ctx.metrics.repair_runs.inc(&["success"]);
                if !summary.found.is_empty() {
                    tracing::info!(?summary, "repair");
                }
            }
            Err(e) => {
                ctx.metrics.repair_runs.inc(&["error"]);
                tracing::warn!(error = %e, "repair run failed; the next one retries");
            }
        }
    }
}

/// One run.
pub async fn run_once<S: Store>(ctx: &Context<S>, leaks: &mut Leaks) -> crate::Result<Summary> {
    let snapshot = ctx.allocator.store().snapshot().await?;
    let services = Api::<Service>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?;
    let mut references: HashMap<String, ObjectReference> = HashMap::new();
    let mut live: BTreeMap<&'static str, Vec<(Owner, Value)>> = BTreeMap::new();
    for svc in &services.items {
        let json = serde_json::to_value(svc).unwrap_or_default();
        let lean = Svc::from_json(&json);
        let key = lean.key();
        for (pool, value) in carried(&lean) {
            live.entry(pool)
                .or_default()
                .push((Owner::new(&key, "carried"), value));
        }
        references.insert(key, reference(svc));
    }
    let now = Instant::now();
    let mut summary = Summary::default();
    for (spec, _) in &snapshot.pools {
        let Ok(pool) = spec.validate() else {
            continue;
        };
        let name = spec.name.as_str();
        let stored: Vec<(Value, ipam::Record)> = snapshot
            .values
            .iter()
            .filter(|v| v.pool == spec.name)
            .filter_map(|v| Some((pool.parse_value(&v.value)?, v.record.clone())))
            .collect();
        let carriers = live.get(name).map(Vec::as_slice).unwrap_or_default();
        let report = ipam::repair::diff(&pool, &stored, carriers, ipam::allocator::now_ms());
        let ip = name != ipam::spec::NODEPORT;
        let mut count = |kind: &'static str, n: usize| {
            if n > 0 {
                *summary.found.entry((name.to_string(), kind)).or_default() += n as u64;
                ctx.metrics.repair_errors.add(&[name, kind], n as f64);
            }
        };
        let placeholders = report
            .missing
            .iter()
            .filter(|m| {
                m.recorded
                    .as_ref()
                    .is_some_and(|o| crate::allocation::is_placeholder(&o.object))
            })
            .count();
        count("repair", report.missing.len() - placeholders);
        count("duplicate", report.duplicates.len());
        count("outOfRange", report.out_of_range.len());
        count("leak", report.leaks.len());
        for missing in &report.missing {
            let owner = Owner::new(&missing.owner.object, "carried");
            match ctx
                .allocator
                .claim(name, &owner, missing.value, |_| false)
                .await?
            {
                // A generateName create's values, claimed by its Service: the releaser's
                // usual work, which this run merely came to first.
                Claimed::Recorded { from: Some(from) }
                    if crate::allocation::is_placeholder(&from.object) => {}
                Claimed::Recorded { .. } => {
                    let note = if ip {
                        format!(
                            "Cluster IP [{}]:{} is not allocated; repairing",
                            family(missing.value),
                            missing.value
                        )
                    } else {
                        format!("Port {} is not allocated; repairing", missing.value)
                    };
                    let reason = if ip {
                        "ClusterIPNotAllocated"
                    } else {
                        "PortNotAllocated"
                    };
                    warn(ctx, &references, &missing.owner.object, reason, ip, note).await;
                }
                Claimed::Already | Claimed::Kept(_) | Claimed::OutOfRange => {}
            }
        }
        for (value, owners) in &report.duplicates {
            for other in owners.iter().skip(1) {
                let (reason, note) = if ip {
                    (
                        "ClusterIPAlreadyAllocated",
                        format!(
                            "Cluster IP [{}]:{value} was assigned to multiple services; please recreate service",
                            family(*value)
                        ),
                    )
                } else {
                    (
                        "PortAlreadyAllocated",
                        format!(
                            "Port {value} was assigned to multiple services; please recreate service"
                        ),
                    )
                };
                warn(ctx, &references, &other.object, reason, ip, note).await;
            }
        }
        for (value, owner) in &report.out_of_range {
            let (reason, note) = if ip {
                (
                    "ClusterIPOutOfRange",
                    format!(
                        "Cluster IP [{}]:{value} is not within the service CIDR {}; please recreate service",
                        family(*value),
                        pool.ranges_text()
                    ),
                )
            } else {
                (
                    "PortOutOfRange",
                    format!(
                        "Port {value} is not within the port range {}; please recreate service",
                        pool.ranges_text()
                    ),
                )
            };
            warn(ctx, &references, &owner.object, reason, ip, note).await;
        }
        for leak in leaks.judge(name, &report.leaks, now, ctx.settings.leak_grace) {
            let released = ctx
                .allocator
                .release(name, leak.value, &leak.recorded.object, Release::Now)
                .await?;
            tracing::info!(pool = name, value = %leak.value, owner = %leak.recorded, ?released, "freed a leaked value");
            summary.freed += 1;
        }
    }
    Ok(summary)
}

fn family(value: Value) -> &'static str {
    match value {
        Value::Ip(std::net::IpAddr::V6(_)) => "IPv6",
        _ => "IPv4",
    }
}

fn reference(svc: &Service) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: svc.metadata.namespace.clone(),
        name: svc.metadata.name.clone(),
        uid: svc.metadata.uid.clone(),
        resource_version: svc.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// A Warning event on the Service `key`, as upstream's repair records it; a failure to record
/// is only logged.
async fn warn<S: Store>(
    ctx: &Context<S>,
    references: &HashMap<String, ObjectReference>,
    key: &str,
    reason: &str,
    ip: bool,
    note: String,
) {
    tracing::warn!(service = key, reason, "{note}");
    let Some(regarding) = references.get(key) else {
        return;
    };
    let event = Event {
        type_: EventType::Warning,
        reason: reason.to_string(),
        note: Some(note),
        action: if ip {
            "ClusterIPAllocation"
        } else {
            "PortAllocation"
        }
        .to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, regarding).await {
        tracing::debug!(reason, error = %e, "cannot record an event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leak(value: &str, owner: &str) -> Leak {
        Leak {
            value: Value::Ip(value.parse().unwrap()),
            recorded: Owner::new(owner, "clusterIP"),
        }
    }

    #[test]
    fn a_leak_is_freed_on_the_third_consecutive_run_that_sees_it_and_not_before_the_grace() {
        let mut leaks = Leaks::default();
        let t0 = Instant::now();
        let grace = Duration::from_secs(5);
        let l = leak("10.96.0.40", "shop/never-written");
        assert!(
            leaks
                .judge("ipv4", std::slice::from_ref(&l), t0, grace)
                .is_empty()
        );
        assert!(
            leaks
                .judge(
                    "ipv4",
                    std::slice::from_ref(&l),
                    t0 + Duration::from_secs(1),
                    grace
                )
                .is_empty()
        );
        // Three runs, but within the grace: kept.
        assert!(
            leaks
                .judge(
                    "ipv4",
                    std::slice::from_ref(&l),
                    t0 + Duration::from_secs(2),
                    grace
                )
                .is_empty()
        );
        assert_eq!(
            leaks.judge(
                "ipv4",
                std::slice::from_ref(&l),
                t0 + Duration::from_secs(6),
                grace
            ),
            vec![l]
        );
    }

    #[test]
    fn a_leak_that_a_run_does_not_see_starts_over() {
        let mut leaks = Leaks::default();
        let t0 = Instant::now();
        let l = leak("10.96.0.41", "shop/gone");
        leaks.judge("ipv4", std::slice::from_ref(&l), t0, Duration::ZERO);
        leaks.judge("ipv4", std::slice::from_ref(&l), t0, Duration::ZERO);
        // Carried again (or released) for one run...
        leaks.judge("ipv4", &[], t0, Duration::ZERO);
        // ...so it takes three more.
        assert!(
            leaks
                .judge("ipv4", std::slice::from_ref(&l), t0, Duration::ZERO)
                .is_empty()
        );
        assert!(
            leaks
                .judge("ipv4", std::slice::from_ref(&l), t0, Duration::ZERO)
                .is_empty()
        );
        assert_eq!(
            leaks.judge("ipv4", std::slice::from_ref(&l), t0, Duration::ZERO),
            vec![l]
        );
    }

    #[test]
    fn the_same_value_recorded_for_another_owner_is_a_new_leak() {
        let mut leaks = Leaks::default();
        let t0 = Instant::now();
        leaks.judge("ipv4", &[leak("10.96.0.42", "shop/a")], t0, Duration::ZERO);
        leaks.judge("ipv4", &[leak("10.96.0.42", "shop/a")], t0, Duration::ZERO);
        let other = leak("10.96.0.42", "shop/b");
        assert!(
            leaks
                .judge("ipv4", std::slice::from_ref(&other), t0, Duration::ZERO)
                .is_empty()
        );
        // Judging another pool leaves this one's count alone.
        leaks.judge("nodeport", &[], t0, Duration::ZERO);
        assert!(
            leaks
                .judge("ipv4", std::slice::from_ref(&other), t0, Duration::ZERO)
                .is_empty()
        );
        assert_eq!(
            leaks.judge("ipv4", std::slice::from_ref(&other), t0, Duration::ZERO),
            vec![other]
        );
    }
}
