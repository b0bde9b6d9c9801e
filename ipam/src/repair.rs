//! Repair as a pure diff: what the pool records against what live objects carry.
//!
//! The caller (the controller's repair loop) lists live objects, builds the set of values each
//! carries, and applies the actions; how long a leak must persist before it is released is the
//! caller's grace period, not this module's concern.

use std::collections::{BTreeMap, BTreeSet};

use crate::occupancy::Record;
use crate::pool::{Owner, Pool, Value};

/// A value that no live object carries but the pool has allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    pub value: Value,
    pub recorded: Owner,
}

/// A value a live object carries that the pool does not have allocated to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub value: Value,
    pub owner: Owner,
    /// Who the pool records instead (an object that no longer carries it), if anyone.
    pub recorded: Option<Owner>,
}

/// What the diff found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Allocated values no live object carries (including those allocated for a write that
    /// then failed).
    pub leaks: Vec<Leak>,
    /// Values live objects carry that the pool lacks or records for someone else.
    pub missing: Vec<Missing>,
    /// Values carried by more than one object (not fixed: the objects must be recreated).
    pub duplicates: Vec<(Value, Vec<Owner>)>,
    /// Values live objects carry that are outside the pool.
    pub out_of_range: Vec<(Value, Owner)>,
    /// The writes that mend the pool.
    pub actions: Vec<Action>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.leaks.is_empty()
            && self.missing.is_empty()
            && self.duplicates.is_empty()
            && self.out_of_range.is_empty()
    }
}

/// A write that mends the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Free a leaked value.
    Release { value: Value, recorded: Owner },
    /// Record a carried value for its owner (replacing any record of another object).
    Record { value: Value, owner: Owner },
}

/// Compares `stored` (the pool's records) with `live` (each live object's owner and a value it
/// carries, one entry per value) at `now_ms`.
pub fn diff(
    pool: &Pool,
    stored: &[(Value, Record)],
    live: &[(Owner, Value)],
    now_ms: u64,
) -> Report {
    let mut report = Report::default();
    let mut carriers: BTreeMap<Value, Vec<Owner>> = BTreeMap::new();
    for (owner, value) in live {
        if !pool.raw(*value).is_some_and(|raw| pool.contains(raw)) {
            report.out_of_range.push((*value, owner.clone()));
            continue;
        }
        let list = carriers.entry(*value).or_default();
        if !list.iter().any(|o| o.object == owner.object) {
            list.push(owner.clone());
        }
    }
    let records: BTreeMap<Value, &Record> = stored.iter().map(|(v, r)| (*v, r)).collect();
    for (value, owners) in &carriers {
        if owners.len() > 1 {
            report.duplicates.push((*value, owners.clone()));
            continue;
        }
        let owner = &owners[0];
        match records.get(value) {
            Some(r) if r.is_allocated() && r.owner.object == owner.object => {}
            other => {
                // Absent, held, or recorded for an object that no longer carries it.
                let recorded = other
                    .filter(|r| r.is_allocated() || r.is_held_at(now_ms))
                    .map(|r| r.owner.clone());
                report.missing.push(Missing {
                    value: *value,
                    owner: owner.clone(),
                    recorded,
                });
                report.actions.push(Action::Record {
                    value: *value,
                    owner: owner.clone(),
                });
            }
        }
    }
    let carried: BTreeSet<&Value> = carriers.keys().collect();
    for (value, record) in stored {
        if record.is_allocated() && !carried.contains(value) {
            report.leaks.push(Leak {
                value: *value,
                recorded: record.owner.clone(),
            });
            report.actions.push(Action::Release {
                value: *value,
                recorded: record.owner.clone(),
            });
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::PoolSpec;
    use std::time::Duration;

    fn pool() -> Pool {
        PoolSpec {
            name: "ipv4".into(),
            cidrs: vec!["10.96.0.0/24".into()],
            range: None,
            hold: Duration::from_secs(60),
            reservations: Default::default(),
        }
        .validate()
        .unwrap()
    }

    fn ip(s: &str) -> Value {
        Value::Ip(s.parse().unwrap())
    }

    fn owner(object: &str) -> Owner {
        Owner::new(object, "clusterIP")
    }

    #[test]
    fn a_consistent_pool_reports_nothing() {
        let stored = vec![(ip("10.96.0.20"), Record::allocated(owner("default/a")))];
        let live = vec![(owner("default/a"), ip("10.96.0.20"))];
        let report = diff(&pool(), &stored, &live, 0);
        assert!(report.is_clean(), "{report:?}");
        assert!(report.actions.is_empty());
    }

    #[test]
    fn finds_a_planted_leak_duplicate_and_out_of_range_value() {
        let stored = vec![
            (ip("10.96.0.20"), Record::allocated(owner("default/a"))),
            // Leak: allocated for a create whose write then failed.
            (
                ip("10.96.0.21"),
                Record::allocated(owner("default/never-written")),
            ),
            (ip("10.96.0.22"), Record::allocated(owner("default/b"))),
            // A hold is not a leak.
            (
                ip("10.96.0.23"),
                Record::held(owner("default/gone"), u64::MAX),
            ),
        ];
        let live = vec![
            (owner("default/a"), ip("10.96.0.20")),
            (owner("default/b"), ip("10.96.0.22")),
            // Duplicate: c carries b's IP.
            (owner("default/c"), ip("10.96.0.22")),
            // Out of range.
            (owner("default/d"), ip("10.97.0.5")),
            // Missing: carried, never recorded.
            (owner("default/e"), ip("10.96.0.30")),
        ];
        let report = diff(&pool(), &stored, &live, 0);
        assert_eq!(
            report.leaks,
            vec![Leak {
                value: ip("10.96.0.21"),
                recorded: owner("default/never-written")
            }]
        );
        assert_eq!(
            report.duplicates,
            vec![(
                ip("10.96.0.22"),
                vec![owner("default/b"), owner("default/c")]
            )]
        );
        assert_eq!(
            report.out_of_range,
            vec![(ip("10.97.0.5"), owner("default/d"))]
        );
        assert_eq!(
            report.missing,
            vec![Missing {
                value: ip("10.96.0.30"),
                owner: owner("default/e"),
                recorded: None
            }]
        );
        assert_eq!(
            report.actions,
            vec![
                Action::Record {
                    value: ip("10.96.0.30"),
                    owner: owner("default/e")
                },
                Action::Release {
                    value: ip("10.96.0.21"),
                    recorded: owner("default/never-written")
                },
            ]
        );
    }

    #[test]
    fn a_value_recorded_for_another_object_is_reassigned() {
        let stored = vec![(ip("10.96.0.20"), Record::allocated(owner("default/old")))];
        let live = vec![(owner("default/new"), ip("10.96.0.20"))];
        let report = diff(&pool(), &stored, &live, 0);
        assert!(report.leaks.is_empty(), "a carried value is not a leak");
        assert_eq!(report.missing[0].recorded, Some(owner("default/old")));
        assert_eq!(
            report.actions,
            vec![Action::Record {
                value: ip("10.96.0.20"),
                owner: owner("default/new")
            }]
        );
    }

    #[test]
    fn a_nodeport_shared_by_tcp_and_udp_is_one_carrier() {
        let ports = PoolSpec {
            name: "nodeport".into(),
            cidrs: vec![],
            range: Some("30000-32767".into()),
            hold: Duration::ZERO,
            reservations: Default::default(),
        }
        .validate()
        .unwrap();
        let stored = vec![(
            Value::Port(30053),
            Record::allocated(Owner::new("kube-system/dns", "nodePort:53/TCP")),
        )];
        let live = vec![
            (
                Owner::new("kube-system/dns", "nodePort:53/TCP"),
                Value::Port(30053),
            ),
            (
                Owner::new("kube-system/dns", "nodePort:53/UDP"),
                Value::Port(30053),
            ),
        ];
        assert!(diff(&ports, &stored, &live, 0).is_clean());
    }
}
