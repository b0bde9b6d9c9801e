//! The EndpointSlice controller's memory of its own writes, as upstream's
//! `EndpointSliceTracker`: per Service, the generation of each slice it created or updated, or
//! a deletion it expects. A sync refuses to act while the watch cache is behind those writes
//! (so it never creates a duplicate or undoes its own work), and watch events of its own writes
//! do not queue another sync.

use std::collections::HashMap;
use std::sync::Mutex;

/// A Service's namespace and name.
type ServiceKey = (String, String);

/// What the controller last did to one slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    /// Created or updated it, leaving this generation.
    Generation(i64),
    /// Deleted it.
    Deletion,
}

/// Shared by the reconciler's workers and its watch.
#[derive(Debug, Default)]
pub struct SliceTracker {
    services: Mutex<HashMap<ServiceKey, HashMap<String, Wrote>>>,
}

impl SliceTracker {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<ServiceKey, HashMap<String, Wrote>>) -> T) -> T {
        f(&mut self.services.lock().expect("the tracker's lock"))
    }

    /// Records a create or update that left `slice` at `generation`.
    pub fn wrote(&self, service: &ServiceKey, slice: &str, generation: i64) {
        self.with(|s| {
            s.entry(service.clone())
                .or_default()
                .insert(slice.to_string(), Wrote::Generation(generation));
        });
    }

    /// Records a deletion of `slice`.
    pub fn deleted(&self, service: &ServiceKey, slice: &str) {
        self.with(|s| {
            s.entry(service.clone())
                .or_default()
                .insert(slice.to_string(), Wrote::Deletion);
        });
    }

    /// Whether a watch event showing `slice` at `generation` needs a sync: it is not a slice
    /// this controller wrote, or it is newer than what it wrote (`ShouldSync`).
    pub fn should_sync(&self, service: &ServiceKey, slice: &str, generation: i64) -> bool {
        self.with(|s| match s.get(service).and_then(|m| m.get(slice)) {
            Some(Wrote::Generation(g)) => generation > *g,
            _ => true,
        })
    }

    /// A slice is gone: returns whether this controller expected it (`HandleDeletion`).
    pub fn handle_deletion(&self, service: &ServiceKey, slice: &str) -> bool {
        self.with(|s| {
            let removed = s.get_mut(service).and_then(|m| m.remove(slice));
            removed == Some(Wrote::Deletion)
        })
    }

    /// Whether the cache's `slices` (name, generation) of `service` are behind this
    /// controller's writes (`StaleSlices`): a slice it wrote is older or missing, or one it
    /// deleted is still there. Returns what is behind.
    pub fn stale(&self, service: &ServiceKey, slices: &[(String, i64)]) -> Option<String> {
        self.with(|s| {
            let tracked = s.get(service)?;
            for (name, generation) in slices {
                match tracked.get(name) {
                    Some(Wrote::Deletion) => {
                        return Some(format!("slice {name} it deleted is still in the cache"));
                    }
                    Some(Wrote::Generation(g)) if g > generation => {
                        return Some(format!("slice {name} is older in the cache than it wrote"));
                    }
                    _ => {}
                }
            }
            tracked.iter().find_map(|(name, wrote)| {
                (matches!(wrote, Wrote::Generation(_)) && !slices.iter().any(|(n, _)| n == name))
                    .then(|| format!("slice {name} it wrote is not in the cache yet"))
            })
        })
    }

    /// Forgets a deleted Service.
    pub fn forget(&self, service: &ServiceKey) {
        self.with(|s| {
            s.remove(service);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> ServiceKey {
        ("ns".into(), "web".into())
    }

    #[test]
    fn own_writes_do_not_sync_again_and_a_cache_behind_them_is_stale() {
        let t = SliceTracker::default();
        assert!(t.stale(&web(), &[]).is_none());
        t.wrote(&web(), "web-a", 2);
        assert!(!t.should_sync(&web(), "web-a", 2));
        assert!(t.should_sync(&web(), "web-a", 3), "someone else changed it");
        assert!(t.should_sync(&web(), "web-b", 1), "not ours");
        assert!(t.stale(&web(), &[]).is_some(), "not in the cache yet");
        assert!(t.stale(&web(), &[("web-a".into(), 1)]).is_some(), "older");
        assert!(t.stale(&web(), &[("web-a".into(), 2)]).is_none());
        t.deleted(&web(), "web-a");
        assert!(
            t.stale(&web(), &[("web-a".into(), 2)]).is_some(),
            "still there"
        );
        assert!(t.stale(&web(), &[]).is_none());
        assert!(t.handle_deletion(&web(), "web-a"), "expected");
    }

    #[test]
    fn a_slice_deleted_by_someone_else_is_not_expected_and_no_longer_tracked() {
        let t = SliceTracker::default();
        t.wrote(&web(), "web-a", 1);
        assert!(!t.handle_deletion(&web(), "web-a"));
        assert!(t.stale(&web(), &[]).is_none());
        t.wrote(&web(), "web-b", 1);
        t.forget(&web());
        assert!(t.stale(&web(), &[]).is_none());
    }
}
