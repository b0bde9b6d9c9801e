//! Creating and updating pools in a store: all pools of one apply are checked first and written
//! in one transaction, and a change that would strand a used value (a shrink) or hand a reserved
//! value to an object that does not hold it is refused with the values named.

use std::collections::BTreeMap;

use crate::allocator::now_ms;
use crate::occupancy::Expect;
use crate::spec::PoolSpec;
use crate::store::{PoolWrite, Store};
use crate::{Error, Result};

/// What apply did to one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Configured,
    Unchanged,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Applied::Created => "created",
            Applied::Configured => "configured",
            Applied::Unchanged => "unchanged",
        })
    }
}

/// How many values a refusal lists before it says "and N more".
const LISTED: usize = 10;

/// Creates or updates `specs` in `store`, all or nothing.
pub async fn apply<S: Store>(store: &S, specs: &[PoolSpec]) -> Result<Vec<(String, Applied)>> {
    let mut names = BTreeMap::new();
    for spec in specs {
        spec.validate()?;
        if names.insert(spec.name.clone(), ()).is_some() {
            return Err(Error::InvalidSpec {
                field: spec.field_path(),
                message: "pool given twice".into(),
            });
        }
    }
    // A concurrent allocation or apply makes the transaction fail; check again on fresh data.
    for _ in 0..5 {
        let snap = store.snapshot().await?;
        let now = now_ms();
        let existing: BTreeMap<&str, _> = snap
            .pools
            .iter()
            .map(|(s, r)| (s.name.as_str(), (s, *r)))
            .collect();
        let mut results = Vec::new();
        let mut writes = Vec::new();
        for spec in specs {
            let pool = spec.validate()?;
            let (outcome, expect) = match existing.get(spec.name.as_str()) {
                Some((old, _)) if *old == spec => {
                    results.push((spec.name.clone(), Applied::Unchanged));
                    continue;
                }
                Some((_, rev)) => (Applied::Configured, Expect::Rev(*rev)),
                None => (Applied::Created, Expect::Absent),
            };
            let mut outside = Vec::new();
            for v in snap.values.iter().filter(|v| v.pool == spec.name) {
                if !v.record.is_allocated() && !v.record.is_held_at(now) {
                    continue;
                }
                let raw = pool.parse_value(&v.value).and_then(|x| pool.raw(x));
                match raw {
                    Some(raw) if pool.contains(raw) => {
                        if let Some(object) = pool.reserved.get(&raw)
                            && *object != v.record.owner.object
                        {
                            return Err(Error::ReservationTaken {
                                pool: spec.name.clone(),
                                value: v.value.clone(),
                                object: object.clone(),
                                owner: v.record.owner.to_string(),
                            });
                        }
                    }
                    _ => outside.push(format!("{} ({})", v.value, v.record.owner)),
                }
            }
            if !outside.is_empty() {
                outside.sort();
                let more = outside.len().saturating_sub(LISTED);
                let mut values = outside
                    .into_iter()
                    .take(LISTED)
                    .collect::<Vec<_>>()
                    .join(", ");
                if more > 0 {
                    values.push_str(&format!(" and {more} more"));
                }
                return Err(Error::Shrink {
                    pool: spec.name.clone(),
                    values,
                });
            }
            results.push((spec.name.clone(), outcome));
            writes.push(PoolWrite {
                spec: spec.clone(),
                expect,
            });
        }
        if writes.is_empty() || store.put_pools(&writes, snap.rev).await? {
            return Ok(results);
        }
    }
    Err(Error::Conflict)
}
