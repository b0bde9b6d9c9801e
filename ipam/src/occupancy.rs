//! The in-memory occupancy index of one pool: which values are allocated, held or reserved, as
//! last seen in the store, and the choice of the next candidate value.
//!
//! The index only *proposes* candidates; the store decides with a compare-and-swap. Every change
//! it learns (from its own writes, from a lost race, from the watch) carries the store revision of
//! the key, and an older revision never overwrites a newer one, so watch events and local writes
//! may arrive in any order.

use std::collections::{BTreeSet, HashMap};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::intervals::IntervalSet;
use crate::pool::{Owner, Pool, Refusal};

/// A store revision (etcd's `mod_revision`; the memory store counts the same way).
pub type Rev = i64;

/// What the store holds for one allocated or held value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub owner: Owner,
    /// Set while the value is held after a release: Unix time in milliseconds when the hold ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_until_ms: Option<u64>,
    /// Identifies the write that made this record, so a writer whose reply was lost can tell
    /// whether its write happened.
    pub nonce: String,
}

impl Record {
    /// A fresh allocation for `owner`.
    pub fn allocated(owner: Owner) -> Record {
        Record {
            owner,
            held_until_ms: None,
            nonce: new_nonce(),
        }
    }

    /// The same owner's value, held until `until_ms`.
    pub fn held(owner: Owner, until_ms: u64) -> Record {
        Record {
            owner,
            held_until_ms: Some(until_ms),
            nonce: new_nonce(),
        }
    }

    /// Stands for a stored record that cannot be decoded: the value counts as allocated.
    pub fn unreadable() -> Record {
        Record {
            owner: Owner::new("(unreadable)", "corrupt record"),
            held_until_ms: None,
            nonce: String::new(),
        }
    }

    /// True while the record holds the value for its owner after a release.
    pub fn is_held_at(&self, now_ms: u64) -> bool {
        self.held_until_ms.is_some_and(|u| u > now_ms)
    }

    pub fn is_allocated(&self) -> bool {
        self.held_until_ms.is_none()
    }
}

fn new_nonce() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

/// What a compare-and-swap must find for the write to happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist.
    Absent,
    /// The key exists at this revision.
    Rev(Rev),
}

/// The state of one value as last seen.
#[derive(Debug, Clone)]
struct Entry {
    rev: Rev,
    /// `None`: deleted at `rev` (a tombstone, kept until the watch has passed `rev`).
    record: Option<Record>,
}

/// What to do with a request for one specific value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write it, expecting this state.
    Take(Expect),
    /// It is already allocated to the requesting object.
    AlreadyYours,
    /// It cannot be had.
    Refuse(Refusal),
}

/// Counts of a pool's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Usable values.
    pub size: u128,
    /// Allocated values.
    pub used: u128,
    /// Released values still held for their owner.
    pub held: u128,
    /// Reserved values not allocated (nor held).
    pub reserved: u128,
    /// Values anyone may take.
    pub free: u128,
}

/// The occupancy index of one pool.
#[derive(Debug, Clone)]
pub struct Occupancy {
    pool: Pool,
    entries: HashMap<u128, Entry>,
    /// Values no dynamic allocation may take: allocated, held (unexpired) and reserved.
    occupied: IntervalSet,
    allocated: u128,
    /// Unexpired holds: (end of hold, value).
    holds: BTreeSet<(u64, u128)>,
    /// Tombstones to drop once the watch has passed their revision.
    tombstones: Vec<(Rev, u128)>,
}

impl Occupancy {
    pub fn new(pool: Pool) -> Occupancy {
        let mut occupied = IntervalSet::default();
        for &v in pool.reserved.keys() {
            occupied.insert(v);
        }
        Occupancy {
            pool,
            entries: HashMap::new(),
            occupied,
            allocated: 0,
            holds: BTreeSet::new(),
            tombstones: Vec::new(),
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The same entries under a changed pool spec.
    pub fn with_pool(self, pool: Pool, now_ms: u64) -> Occupancy {
        let mut next = Occupancy::new(pool);
        for (v, e) in self.entries {
            next.observe(v, e.rev, e.record, now_ms);
        }
        next
    }

    /// Records what the store holds for `v` at revision `rev` (`None`: deleted), unless the index
    /// already knows a newer state.
    pub fn observe(&mut self, v: u128, rev: Rev, record: Option<Record>, now_ms: u64) {
        if let Some(old) = self.entries.get(&v)
            && old.rev >= rev
        {
            return;
        }
        self.forget(v);
        if record.is_none() {
            self.tombstones.push((rev, v));
        }
        self.entries.insert(v, Entry { rev, record });
        self.place(v, now_ms);
    }

    /// Drops tombstones the watch has passed: no event older than `rev` can arrive any more.
    pub fn watched_up_to(&mut self, rev: Rev) {
        let entries = &mut self.entries;
        self.tombstones.retain(|&(r, v)| {
            if r > rev {
                return true;
            }
            if entries
                .get(&v)
                .is_some_and(|e| e.rev == r && e.record.is_none())
            {
                entries.remove(&v);
            }
            false
        });
    }

    /// Releases holds that have ended, so their values become candidates again.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(&(until, v)) = self.holds.first() {
            if until > now_ms {
                break;
            }
            self.holds.pop_first();
            if !self.pool.reserved.contains_key(&v) {
                self.occupied.remove(v);
            }
        }
    }

    /// Removes the effect of `v`'s current entry on the counters and sets.
    fn forget(&mut self, v: u128) {
        let Some(e) = self.entries.get(&v) else {
            return;
        };
        if let Some(r) = &e.record {
            match r.held_until_ms {
                None => self.allocated -= 1,
                Some(until) => {
                    self.holds.remove(&(until, v));
                }
            }
        }
        if !self.pool.reserved.contains_key(&v) {
            self.occupied.remove(v);
        }
    }

    /// Applies the effect of `v`'s current entry.
    fn place(&mut self, v: u128, now_ms: u64) {
        let Some(Entry {
            record: Some(r), ..
        }) = self.entries.get(&v)
        else {
            return;
        };
        match r.held_until_ms {
            None => {
                self.allocated += 1;
                self.occupied.insert(v);
            }
            Some(until) if until > now_ms => {
                self.holds.insert((until, v));
                self.occupied.insert(v);
            }
            Some(_) => {}
        }
    }

    /// The expectation under which `v` may be written, if nobody holds it.
    fn expect_free(&self, v: u128) -> Expect {
        match self.entries.get(&v) {
            Some(Entry {
                rev,
                record: Some(_),
            }) => Expect::Rev(*rev),
            _ => Expect::Absent,
        }
    }

    /// The record of `v`, if the index knows one (allocated or held, expired holds included).
    pub fn record(&self, v: u128) -> Option<(&Record, Rev)> {
        self.entries
            .get(&v)
            .and_then(|e| e.record.as_ref().map(|r| (r, e.rev)))
    }

    /// Every known record.
    pub fn records(&self) -> impl Iterator<Item = (u128, &Record, Rev)> + '_ {
        self.entries
            .iter()
            .filter_map(|(v, e)| e.record.as_ref().map(|r| (*v, r, e.rev)))
    }

    /// Decides a request for the specific value `v` by `owner`. Call [`Occupancy::expire`] first.
    pub fn decide(&self, owner: &Owner, v: u128, now_ms: u64) -> Decision {
        let value = self.pool.value(v);
        if !self.pool.contains(v) {
            return Decision::Refuse(Refusal::OutOfRange {
                value,
                kind: self.pool.kind,
                valid: self.pool.ranges_text(),
            });
        }
        if let Some(object) = self.pool.reserved.get(&v)
            && *object != owner.object
        {
            return Decision::Refuse(Refusal::Reserved {
                value,
                for_object: object.clone(),
            });
        }
        match self.entries.get(&v) {
            Some(Entry {
                rev,
                record: Some(r),
            }) if r.is_allocated() || r.is_held_at(now_ms) => {
                match (r.owner.object == owner.object, r.is_allocated()) {
                    (true, true) => Decision::AlreadyYours,
                    (true, false) => Decision::Take(Expect::Rev(*rev)),
                    (false, held) => Decision::Refuse(Refusal::Taken {
                        value,
                        by: r.owner.clone(),
                        held: !held,
                    }),
                }
            }
            _ => Decision::Take(self.expect_free(v)),
        }
    }

    /// Proposes a value for a dynamic allocation by `owner`: the owner's own held value, else a
    /// free value reserved for its object, else a random start in the upper bands with a forward
    /// scan and wrap, then the same in the lower bands. `None`: the pool is full.
    /// Call [`Occupancy::expire`] first.
    pub fn candidate(&self, owner: &Owner, rng: &mut impl Rng) -> Option<(u128, Expect)> {
        // The owner's own held value: the same purpose first, else any of its object's.
        let mut same_object = None;
        for &(_, v) in &self.holds {
            if let Some((r, rev)) = self.record(v)
                && r.owner.object == owner.object
            {
                if r.owner == *owner {
                    return Some((v, Expect::Rev(rev)));
                }
                same_object.get_or_insert((v, Expect::Rev(rev)));
            }
        }
        if same_object.is_some() {
            return same_object;
        }
        // A reserved value can only be held by its own object, so anything but an allocation
        // leaves it available.
        for v in self.pool.reservations_of(&owner.object) {
            if self.record(v).is_none_or(|(r, _)| !r.is_allocated()) {
                return Some((v, self.expect_free(v)));
            }
        }
        let uppers = self.pool.spans.iter().filter_map(|s| s.upper());
        let lowers = self.pool.spans.iter().filter_map(|s| s.lower());
        for (lo, hi) in uppers.chain(lowers) {
            let start = rng.random_range(lo..=hi);
            if let Some(v) = self.occupied.first_free_wrapping(lo, hi, start) {
                return Some((v, self.expect_free(v)));
            }
        }
        None
    }

    /// Counts at `now_ms`; call [`Occupancy::expire`] first so ended holds count as free.
    pub fn counts(&self, now_ms: u64) -> Counts {
        let size = self.pool.size();
        let occupied_in_pool: u128 = self
            .pool
            .spans
            .iter()
            .map(|s| self.occupied.count_in(s.first, s.last))
            .sum();
        let reserved = self
            .pool
            .reserved
            .keys()
            .filter(|v| {
                self.record(**v)
                    .is_none_or(|(r, _)| !r.is_allocated() && !r.is_held_at(now_ms))
            })
            .count() as u128;
        Counts {
            size,
            used: self.allocated,
            held: self.holds.len() as u128,
            reserved,
            free: size.saturating_sub(occupied_in_pool),
        }
    }
}
