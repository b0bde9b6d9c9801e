//! The EndpointSlice controller's memory of its own writes, as upstream's
//! `EndpointSliceTracker`: per Service, the generation of each slice it created or updated, or
//! a deletion it expects. A sync refuses to act while the watch cache is behind those writes
//! (so it never creates a duplicate or undoes its own work), and watch events of its own writes
//! do not queue another sync — also when a write's watch event arrives before its response
//! (events for a Service with writes in flight are judged once those writes are recorded).

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

/// Writes in flight for one Service, and the slice events (name, generation) seen meanwhile.
type InFlight = (usize, Vec<(String, i64)>);

/// The generation an in-flight record gives a deletion seen by the watch.
const DELETED: i64 = -1;

/// Shared by the reconciler's workers and its watch.
#[derive(Debug, Default)]
pub struct SliceTracker {
    services: Mutex<HashMap<ServiceKey, HashMap<String, Wrote>>>,
    /// Per Service with writes in flight: how many, and the slice events (name, generation)
    /// that arrived meanwhile, judged when the last one is recorded.
    in_flight: Mutex<HashMap<ServiceKey, InFlight>>,
}

impl SliceTracker {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<ServiceKey, HashMap<String, Wrote>>) -> T) -> T {
        f(&mut self.services.lock().expect("the tracker's lock"))
    }

    /// A write for `service` is about to be sent.
    pub fn writing(&self, service: &ServiceKey) {
        let mut in_flight = self.in_flight.lock().expect("the tracker's lock");
        in_flight.entry(service.clone()).or_default().0 += 1;
    }

    /// A write for `service` was answered (and, if it succeeded, recorded). Returns whether a
    /// slice event that arrived while writes were in flight is not explained by them: the
    /// Service then needs a sync, as if the event had queued it.
    pub fn written(&self, service: &ServiceKey) -> bool {
        let seen = {
            let mut in_flight = self.in_flight.lock().expect("the tracker's lock");
            let Some(entry) = in_flight.get_mut(service) else {
                return false;
            };
            entry.0 = entry.0.saturating_sub(1);
            if entry.0 > 0 {
                return false;
            }
            in_flight
                .remove(service)
                .map(|(_, seen)| seen)
                .unwrap_or_default()
        };
        // (Not `any`: every deletion seen must be matched against what was expected.)
        seen.iter().fold(false, |sync, (name, generation)| {
            let unexplained = match *generation {
                DELETED => !self.handle_deletion(service, name),
                g => self.should_sync(service, name, g),
            };
            sync || unexplained
        })
    }

    /// The watch showed `slice` of `service` deleted: whether that needs a sync now (it was
    /// not this controller's deletion, [`SliceTracker::handle_deletion`]); while writes of the
    /// Service are in flight the event is kept for [`SliceTracker::written`] instead.
    pub fn on_deletion(&self, service: &ServiceKey, slice: &str) -> bool {
        {
            let mut in_flight = self.in_flight.lock().expect("the tracker's lock");
            if let Some((_, seen)) = in_flight.get_mut(service) {
                seen.push((slice.to_string(), DELETED));
                return false;
            }
        }
        !self.handle_deletion(service, slice)
    }

    /// The watch showed `slice` of `service` at `generation`: whether it needs a sync now
    /// ([`SliceTracker::should_sync`]); while writes of the Service are in flight the event
    /// is kept for [`SliceTracker::written`] instead.
    pub fn on_event(&self, service: &ServiceKey, slice: &str, generation: i64) -> bool {
        {
            let mut in_flight = self.in_flight.lock().expect("the tracker's lock");
            if let Some((_, seen)) = in_flight.get_mut(service) {
                seen.push((slice.to_string(), generation));
                return false;
            }
        }
        self.should_sync(service, slice, generation)
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
    fn an_event_that_beats_its_writes_response_is_judged_once_the_write_is_recorded() {
        let t = SliceTracker::default();
        t.writing(&web());
        // The created slice's event arrives before the create's response.
        assert!(!t.on_event(&web(), "web-a", 1));
        t.wrote(&web(), "web-a", 1);
        assert!(!t.written(&web()), "explained by the write");
        // Someone else's change during a write still syncs, once the write is recorded.
        t.writing(&web());
        assert!(!t.on_event(&web(), "web-a", 2));
        t.wrote(&web(), "web-a", 1);
        assert!(t.written(&web()), "generation 2 is not ours");
        assert!(
            t.on_event(&web(), "web-a", 3),
            "no write in flight: at once"
        );
        // A deletion seen before its response was recorded is expected once it is.
        t.writing(&web());
        assert!(!t.on_deletion(&web(), "web-a"));
        t.deleted(&web(), "web-a");
        assert!(!t.written(&web()));
        assert!(t.on_deletion(&web(), "web-b"), "someone else's deletion");
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
