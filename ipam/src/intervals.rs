//! A set of `u128` values stored as disjoint, merged, inclusive intervals.
//!
//! Pools can be as large as an IPv6 /64 (or larger), so occupancy is never a bitmap of the whole
//! range: a run of consecutive occupied values costs one map entry, and "the first free value at
//! or after `x`" is one map lookup, because merged intervals always end just before a free value.

use std::collections::BTreeMap;

/// Disjoint inclusive intervals `[start, end]`, keyed by `start`; adjacent intervals are merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IntervalSet {
    runs: BTreeMap<u128, u128>,
}

impl IntervalSet {
    /// The interval containing `v`, if any.
    fn run_containing(&self, v: u128) -> Option<(u128, u128)> {
        let (&s, &e) = self.runs.range(..=v).next_back()?;
        (e >= v).then_some((s, e))
    }

    pub(crate) fn contains(&self, v: u128) -> bool {
        self.run_containing(v).is_some()
    }

    /// Adds `v`; returns false if it was already present.
    pub(crate) fn insert(&mut self, v: u128) -> bool {
        if self.contains(v) {
            return false;
        }
        let mut start = v;
        let mut end = v;
        // Merge with the run ending just before `v`.
        if v > 0
            && let Some((s, _)) = self.run_containing(v - 1)
        {
            self.runs.remove(&s);
            start = s;
        }
        // Merge with the run starting just after `v`.
        if v < u128::MAX
            && let Some(e) = self.runs.remove(&(v + 1))
        {
            end = e;
        }
        self.runs.insert(start, end);
        true
    }

    /// Removes `v`; returns false if it was absent.
    pub(crate) fn remove(&mut self, v: u128) -> bool {
        let Some((s, e)) = self.run_containing(v) else {
            return false;
        };
        self.runs.remove(&s);
        if s < v {
            self.runs.insert(s, v - 1);
        }
        if v < e {
            self.runs.insert(v + 1, e);
        }
        true
    }

    /// The first value in `[from, hi]` that is not in the set.
    pub(crate) fn first_free(&self, from: u128, hi: u128) -> Option<u128> {
        if from > hi {
            return None;
        }
        match self.run_containing(from) {
            None => Some(from),
            // Runs are merged, so the value after a run's end is free (or out of bounds).
            Some((_, e)) => (e < hi).then(|| e + 1),
        }
    }

    /// The first free value in `[lo, hi]`, scanning forward from `start` and wrapping to `lo`.
    pub(crate) fn first_free_wrapping(&self, lo: u128, hi: u128, start: u128) -> Option<u128> {
        debug_assert!(lo <= start && start <= hi);
        self.first_free(start, hi).or_else(|| {
            if start > lo {
                self.first_free(lo, start - 1)
            } else {
                None
            }
        })
    }

    /// Number of values of the set inside `[lo, hi]`.
    pub(crate) fn count_in(&self, lo: u128, hi: u128) -> u128 {
        let mut n = 0;
        if let Some((_, &e)) = self.runs.range(..lo).next_back()
            && e >= lo
        {
            n += e.min(hi) - lo + 1;
        }
        for (&s, &e) in self.runs.range(lo..=hi) {
            n += e.min(hi) - s + 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn inserting_neighbours_merges_them_into_one_run() {
        let mut s = IntervalSet::default();
        assert!(s.insert(5));
        assert!(s.insert(7));
        assert!(s.insert(6));
        assert_eq!(s.runs.len(), 1);
        assert_eq!(s.count_in(0, u128::MAX), 3);
        assert!(!s.insert(6), "a second insert of one value is refused");
    }

    #[test]
    fn removing_from_the_middle_splits_a_run() {
        let mut s = IntervalSet::default();
        for v in 1..=5 {
            s.insert(v);
        }
        assert!(s.remove(3));
        assert_eq!(s.runs, BTreeMap::from([(1, 2), (4, 5)]));
        assert!(!s.remove(3));
    }

    #[test]
    fn first_free_skips_a_whole_run_and_wraps() {
        let mut s = IntervalSet::default();
        for v in 10..=20 {
            s.insert(v);
        }
        assert_eq!(s.first_free(12, 30), Some(21));
        assert_eq!(s.first_free(12, 20), None);
        assert_eq!(s.first_free_wrapping(10, 20, 15), None);
        assert_eq!(s.first_free_wrapping(5, 20, 15), Some(5));
    }

    #[test]
    fn extremes_of_the_value_space_are_handled() {
        let mut s = IntervalSet::default();
        assert!(s.insert(u128::MAX));
        assert!(s.insert(0));
        assert_eq!(s.first_free(u128::MAX, u128::MAX), None);
        assert_eq!(s.count_in(0, u128::MAX), 2);
    }

    proptest! {
        #[test]
        fn behaves_like_a_plain_set(ops in proptest::collection::vec((any::<bool>(), 0u128..64), 0..200),
                                    lo in 0u128..64, span in 0u128..64, probe in 0u128..64) {
            let mut s = IntervalSet::default();
            let mut model = BTreeSet::new();
            for (add, v) in ops {
                if add {
                    prop_assert_eq!(s.insert(v), model.insert(v));
                } else {
                    prop_assert_eq!(s.remove(v), model.remove(&v));
                }
            }
            prop_assert_eq!(s.count_in(0, u128::MAX), model.len() as u128);
            let hi = lo + span;
            let start = lo + probe % (span + 1);
            let expected = (start..=hi).chain(lo..start).find(|v| !model.contains(v));
            prop_assert_eq!(s.first_free_wrapping(lo, hi, start), expected);
            prop_assert_eq!(s.count_in(lo, hi), model.range(lo..=hi).count() as u128);
        }
    }
}
