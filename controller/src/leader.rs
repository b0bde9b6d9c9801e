//! Leader election on a coordination.k8s.io/v1 Lease, as client-go's `leaderelection` package
//! runs it for kube-controller-manager: get, create, or update with the resourceVersion last
//! seen (no server-side apply); a candidate takes the Lease only once it has seen the record
//! unchanged for a whole lease duration or empty; the leader renews every retry period and
//! gives up when no renewal succeeded within the renew deadline; on shutdown it releases the
//! Lease (empty holder, duration 1 s) so a successor takes over at its next retry.
//! [`step`] is the decision, pure; [`Elector`] does the I/O.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

use crate::metrics::Metrics;

/// Where and how to elect, as kube-controller-manager's `--leader-elect-*` flags say.
#[derive(Debug, Clone)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    /// This candidate's identity: hostname and a random suffix, as client-go builds it.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// What a Lease says about its holder (client-go's `LeaderElectionRecord`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub holder: String,
    pub lease_duration_seconds: i32,
    pub acquire_time: Option<Timestamp>,
    pub renew_time: Option<Timestamp>,
    pub transitions: i32,
}

impl Record {
    fn from_lease(lease: &Lease) -> Record {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.unwrap_or_default(),
            lease_duration_seconds: spec.lease_duration_seconds.unwrap_or_default(),
            acquire_time: spec.acquire_time.map(|t| t.0),
            renew_time: spec.renew_time.map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or_default(),
        }
    }

    fn into_spec(self) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.holder).filter(|h| !h.is_empty()),
            lease_duration_seconds: Some(self.lease_duration_seconds),
            acquire_time: self.acquire_time.map(MicroTime),
            renew_time: self.renew_time.map(MicroTime),
            lease_transitions: Some(self.transitions),
            ..LeaseSpec::default()
        }
    }
}

/// What the candidate knows: the record it last observed, and when it saw it change.
#[derive(Debug, Clone)]
pub struct Observed {
    pub record: Record,
    pub since: Instant,
}

/// What one attempt does with the Lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Someone else holds a lease that is still valid.
    Wait,
    /// Write this record (acquire or renew).
    Write(Record),
}

/// client-go's `tryAcquireOrRenew` after its Get: `current` is the record just read,
/// `observed` what this candidate knew before (it must already be updated to `current`, with
/// `since` moved to now when the record changed).
pub fn step(config: &Config, observed: &Observed, now: Instant, wall: Timestamp) -> Step {
    let current = &observed.record;
    let leader = current.holder == config.identity;
    let valid = observed.since + config.lease_duration > now;
    if !current.holder.is_empty() && valid && !leader {
        return Step::Wait;
    }
    let mut record = Record {
        holder: config.identity.clone(),
        lease_duration_seconds: config.lease_duration.as_secs() as i32,
        acquire_time: Some(wall),
        renew_time: Some(wall),
        transitions: current.transitions,
    };
    if leader {
        record.acquire_time = current.acquire_time;
    } else {
        record.transitions = current.transitions + 1;
    }
    Step::Write(record)
}

/// The leadership as the rest of the process sees it.
#[derive(Debug)]
pub struct State {
    leading: AtomicBool,
    /// When this candidate last wrote the Lease as its holder.
    renewed: Mutex<Option<Instant>>,
    lease_duration: Duration,
}

impl State {
    /// Whether this process holds the Lease.
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// client-go's `HealthzAdaptor` check: a leader whose last renewal is older than the lease
    /// duration plus `tolerance` is unhealthy (it should have given up); anyone else is fine.
    pub fn healthy(&self, tolerance: Duration) -> Result<(), String> {
        if !self.is_leader() {
            return Ok(());
        }
        let renewed = *self.renewed.lock().expect("leader state lock");
        match renewed {
            Some(at) if at.elapsed() > self.lease_duration + tolerance => Err(format!(
                "failed election to renew leadership on lease: last renewed {:.0?} ago",
                at.elapsed()
            )),
            _ => Ok(()),
        }
    }
}

/// A candidate: reads and writes the Lease, and keeps [`State`] and the leader metrics.
pub struct Elector {
    api: Api<Lease>,
    config: Config,
    observed: Option<Observed>,
    /// The Lease as last read or written, for the resourceVersion precondition.
    lease: Option<Lease>,
    state: Arc<State>,
    metrics: Arc<Metrics>,
}

impl Elector {
    pub fn new(client: kube::Client, config: Config, metrics: Arc<Metrics>) -> Elector {
        let api = Api::namespaced(client, &config.namespace);
        let state = Arc::new(State {
            leading: AtomicBool::new(false),
            renewed: Mutex::new(None),
            lease_duration: config.lease_duration,
        });
        metrics.leader_status.set(&[&config.name], 0.0);
        metrics.leader_slowpath.add(&[&config.name], 0.0);
        Elector {
            api,
            config,
            observed: None,
            lease: None,
            state,
            metrics,
        }
    }

    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    fn set_leading(&self, leading: bool) {
        self.state.leading.store(leading, Ordering::SeqCst);
        let value = if leading { 1.0 } else { 0.0 };
        self.metrics.leader_status.set(&[&self.config.name], value);
    }

    /// Blocks until this candidate holds the Lease, trying every retry period (with client-go's
    /// 1.2 jitter).
    pub async fn acquire(&mut self) {
        tracing::info!(lease = %format!("{}/{}", self.config.namespace, self.config.name),
            identity = %self.config.identity, "attempting to acquire the leader lease");
        loop {
            if self.try_acquire_or_renew().await {
                self.set_leading(true);
                tracing::info!(identity = %self.config.identity, "acquired the leader lease");
                return;
            }
            tokio::time::sleep(jittered(self.config.retry_period)).await;
        }
    }

    /// Renews every retry period while it can; returns when no renewal succeeded within the
    /// renew deadline (leadership lost).
    pub async fn hold(&mut self) {
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            let deadline = Instant::now() + self.config.renew_deadline;
            let renewed = loop {
                let attempt =
                    tokio::time::timeout_at(deadline.into(), self.try_acquire_or_renew()).await;
                match attempt {
                    Ok(true) => break true,
                    Ok(false) if Instant::now() + self.config.retry_period < deadline => {
                        tokio::time::sleep(self.config.retry_period).await;
                    }
                    _ => break false,
                }
            };
            if !renewed {
                self.set_leading(false);
                tracing::error!(identity = %self.config.identity,
                    "failed to renew the leader lease within the renew deadline: leadership lost");
                return;
            }
        }
    }

    /// Gives the Lease up (client-go's `release`): holder emptied, duration 1 s.
    pub async fn release(&mut self) {
        if !self.state.is_leader() {
            return;
        }
        let transitions = self
            .observed
            .as_ref()
            .map(|o| o.record.transitions)
            .unwrap_or_default();
        let now = Timestamp::now();
        let record = Record {
            holder: String::new(),
            lease_duration_seconds: 1,
            acquire_time: Some(now),
            renew_time: Some(now),
            transitions,
        };
        let attempt = tokio::time::timeout(self.config.renew_deadline, self.update(record)).await;
        match attempt {
            Ok(Ok(())) => {
                tracing::info!(identity = %self.config.identity, "released the leader lease")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the leader lease"),
            Err(_) => tracing::warn!("releasing the leader lease timed out"),
        }
        self.set_leading(false);
    }

    async fn update(&mut self, record: Record) -> Result<(), kube::Error> {
        let mut lease = self.lease.clone().unwrap_or_default();
        lease.spec = Some(record.clone().into_spec());
        let written = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await?;
        self.lease = Some(written);
        self.observed = Some(Observed {
            record,
            since: Instant::now(),
        });
        Ok(())
    }

    /// One attempt, as client-go's `tryAcquireOrRenew`: true when this candidate holds the
    /// Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> bool {
        let now = Instant::now();
        let wall = Timestamp::now();
        // The fast path: a leader with a valid lease renews over the Lease it last wrote.
        let leading = self.state.is_leader();
        if leading
            && let Some(observed) = self.observed.clone()
            && observed.since + self.config.lease_duration > now
        {
            let mut record = observed.record.clone();
            record.renew_time = Some(wall);
            record.lease_duration_seconds = self.config.lease_duration.as_secs() as i32;
            match self.update(record).await {
                Ok(()) => {
                    self.renewed();
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the leader lease optimistically; reading it");
                    self.metrics.leader_slowpath.inc(&[&self.config.name]);
                }
            }
        }
        let lease = match self.api.get_opt(&self.config.name).await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the leader lease");
                return false;
            }
        };
        let Some(lease) = lease else {
            let record = Record {
                holder: self.config.identity.clone(),
                lease_duration_seconds: self.config.lease_duration.as_secs() as i32,
                acquire_time: Some(wall),
                renew_time: Some(wall),
                transitions: 0,
            };
            let object = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(record.clone().into_spec()),
            };
            return match self.api.create(&PostParams::default(), &object).await {
                Ok(created) => {
                    self.lease = Some(created);
                    self.observed = Some(Observed {
                        record,
                        since: Instant::now(),
                    });
                    self.renewed();
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create the leader lease");
                    false
                }
            };
        };
        let current = Record::from_lease(&lease);
        self.lease = Some(lease);
        let changed = self.observed.as_ref().is_none_or(|o| o.record != current);
        if changed {
            self.observed = Some(Observed {
                record: current,
                since: now,
            });
        }
        let observed = self.observed.clone().expect("observed just now");
        if observed.record.holder != self.config.identity && self.state.is_leader() {
            // Someone else took it: this process must stop at once.
            self.set_leading(false);
        }
        match step(&self.config, &observed, now, wall) {
            Step::Wait => false,
            Step::Write(record) => match self.update(record).await {
                Ok(()) => {
                    self.renewed();
                    true
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot write the leader lease");
                    false
                }
            },
        }
    }

    fn renewed(&self) {
        *self.state.renewed.lock().expect("leader state lock") = Some(Instant::now());
    }
}

/// client-go's `wait.Jitter(d, 1.2)`: between `d` and 2.2 `d`.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(1.0 + 1.2 * rand::random::<f64>())
}

/// client-go's identity for a candidate: the hostname, `_`, and a random UUID-like suffix.
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "svcplane".to_string());
    let suffix: u128 = rand::random();
    let hex = format!("{suffix:032x}");
    format!(
        "{host}_{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(identity: &str) -> Config {
        Config {
            namespace: "kube-system".into(),
            name: "svcplane-controller".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn held_by(holder: &str, transitions: i32) -> Record {
        Record {
            holder: holder.into(),
            lease_duration_seconds: 15,
            acquire_time: Some(Timestamp::UNIX_EPOCH),
            renew_time: Some(Timestamp::UNIX_EPOCH),
            transitions,
        }
    }

    #[test]
    fn a_valid_lease_of_another_holder_is_waited_for_until_it_expires_unrenewed() {
        let me = config("b");
        let seen = Instant::now();
        let observed = Observed {
            record: held_by("a", 3),
            since: seen,
        };
        let wall = Timestamp::now();
        assert_eq!(
            step(&me, &observed, seen + Duration::from_secs(14), wall),
            Step::Wait
        );
        let Step::Write(taken) = step(&me, &observed, seen + Duration::from_secs(15), wall) else {
            panic!("an expired lease is taken");
        };
        assert_eq!(taken.holder, "b");
        assert_eq!(taken.transitions, 4);
        assert_eq!(taken.acquire_time, Some(wall));
    }

    #[test]
    fn a_released_lease_is_taken_at_once_and_a_renewal_keeps_the_acquire_time() {
        let me = config("b");
        let now = Instant::now();
        let released = Observed {
            record: Record {
                holder: String::new(),
                lease_duration_seconds: 1,
                ..held_by("", 4)
            },
            since: now,
        };
        let wall = Timestamp::now();
        let Step::Write(taken) = step(&me, &released, now, wall) else {
            panic!("an empty holder is taken at once");
        };
        assert_eq!((taken.holder.as_str(), taken.transitions), ("b", 5));
        let mine = Observed {
            record: held_by("b", 5),
            since: now,
        };
        let Step::Write(renewed) = step(&me, &mine, now + Duration::from_secs(20), wall) else {
            panic!("the holder renews even past its own lease");
        };
        assert_eq!(renewed.transitions, 5);
        assert_eq!(renewed.acquire_time, Some(Timestamp::UNIX_EPOCH));
        assert_eq!(renewed.renew_time, Some(wall));
    }

    #[test]
    fn a_leader_is_unhealthy_only_once_its_renewals_stopped_for_too_long() {
        let state = State {
            leading: AtomicBool::new(true),
            renewed: Mutex::new(Some(Instant::now() - Duration::from_secs(40))),
            lease_duration: Duration::from_secs(15),
        };
        assert!(state.healthy(Duration::from_secs(20)).is_err());
        *state.renewed.lock().unwrap() = Some(Instant::now());
        assert!(state.healthy(Duration::from_secs(20)).is_ok());
        state.leading.store(false, Ordering::SeqCst);
        *state.renewed.lock().unwrap() = Some(Instant::now() - Duration::from_secs(40));
        assert!(
            state.healthy(Duration::from_secs(20)).is_ok(),
            "a follower is healthy"
        );
    }

    #[test]
    fn identities_are_the_hostname_and_a_unique_suffix() {
        let (a, b) = (identity(), identity());
        assert_ne!(a, b);
        assert!(a.contains('_'));
    }
}
