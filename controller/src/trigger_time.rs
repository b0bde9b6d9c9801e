//! The `endpoints.kubernetes.io/last-change-trigger-time` of a sync, as upstream's
//! `TriggerTimeTracker` computes it: on the first sync of a Service after start, the Service's
//! creation time; later, the earliest of the trigger times that moved forward since the last
//! sync (each pod's Ready-condition transition, the Service's creation), or none.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// What the last sync of one Service saw.
#[derive(Debug, Default, Clone)]
struct State {
    service: String,
    pods: BTreeMap<String, String>,
}

/// One tracker per controller, shared by its workers. Times are RFC 3339 strings in UTC,
/// which order as the times they spell when they have the same precision (the API server's
/// seconds).
/// The tracker's knowledge of one Service before a sync.
#[derive(Debug)]
pub struct Saved {
    key: (String, String),
    state: Option<State>,
}

#[derive(Debug, Default)]
pub struct TriggerTimes {
    services: Mutex<BTreeMap<(String, String), State>>,
}

impl TriggerTimes {
    /// The trigger time of this sync of `namespace/name`, created at `created`, over its
    /// selected pods' `(name, Ready transition time)`; records what it saw.
    pub fn compute(
        &self,
        namespace: &str,
        name: &str,
        created: &str,
        pods: &[(String, Option<String>)],
    ) -> Option<String> {
        let mut services = self.services.lock().expect("the tracker's lock");
        let key = (namespace.to_string(), name.to_string());
        let known = services.get(&key).cloned();
        let previous = known.clone().unwrap_or_default();
        let mut earliest: Option<String> = None;
        let mut consider = |time: &str| {
            if earliest.as_deref().is_none_or(|e| time < e) {
                earliest = Some(time.to_string());
            }
        };
        let mut seen = BTreeMap::new();
        for (pod, time) in pods {
            let Some(time) = time.as_deref().filter(|t| !t.is_empty()) else {
                continue;
            };
            seen.insert(pod.clone(), time.to_string());
            if previous
                .pods
                .get(pod)
                .is_none_or(|last| time > last.as_str())
            {
                consider(time);
            }
        }
        if created > previous.service.as_str() {
            consider(created);
        }
        services.insert(
            key,
            State {
                service: created.to_string(),
                pods: seen,
            },
        );
        match known {
            None => Some(created.to_string()).filter(|c| !c.is_empty()),
            Some(_) => earliest,
        }
    }

    /// Forgets a deleted Service.
    /// What the tracker knows of the Service now, to [`TriggerTimes::restore`] if the sync's
    /// write fails: its retry then carries the trigger time the failed write would have (upstream
    /// consumes it in the failed sync, so a write that loses a race goes out without one).
    pub fn save(&self, namespace: &str, name: &str) -> Saved {
        let key = (namespace.to_string(), name.to_string());
        let state = self
            .services
            .lock()
            .expect("the tracker's lock")
            .get(&key)
            .cloned();
        Saved { key, state }
    }

    /// Puts back what [`TriggerTimes::save`] saw.
    pub fn restore(&self, saved: Saved) {
        let mut services = self.services.lock().expect("the tracker's lock");
        match saved.state {
            Some(state) => services.insert(saved.key, state),
            None => services.remove(&saved.key),
        };
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        self.services
            .lock()
            .expect("the tracker's lock")
            .remove(&(namespace.to_string(), name.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(list: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        list.iter()
            .map(|(n, t)| (n.to_string(), t.map(str::to_string)))
            .collect()
    }

    #[test]
    fn a_sync_whose_write_failed_is_undone_so_its_retry_carries_the_trigger_time() {
        let t = TriggerTimes::default();
        let created = "2026-01-01T00:00:00Z";
        t.compute("ns", "web", created, &[]);
        let a = pods(&[("a", Some("2026-01-01T00:00:05Z"))]);
        let saved = t.save("ns", "web");
        assert_eq!(
            t.compute("ns", "web", created, &a).as_deref(),
            Some("2026-01-01T00:00:05Z")
        );
        t.restore(saved);
        assert_eq!(
            t.compute("ns", "web", created, &a).as_deref(),
            Some("2026-01-01T00:00:05Z")
        );
        assert_eq!(t.compute("ns", "web", created, &a), None);
    }

    #[test]
    fn the_first_sync_gives_the_creation_time_then_only_what_moved_forward() {
        let t = TriggerTimes::default();
        let created = "2026-01-01T00:00:00Z";
        let a = pods(&[("a", Some("2026-01-01T00:00:05Z"))]);
        assert_eq!(
            t.compute("ns", "web", created, &a).as_deref(),
            Some(created)
        );
        // Nothing moved: no trigger time.
        assert_eq!(t.compute("ns", "web", created, &a), None);
        // Two pods changed: the earlier of them.
        let b = pods(&[
            ("a", Some("2026-01-01T00:00:09Z")),
            ("b", Some("2026-01-01T00:00:07Z")),
            ("c", None),
        ]);
        assert_eq!(
            t.compute("ns", "web", created, &b).as_deref(),
            Some("2026-01-01T00:00:07Z")
        );
        // A pod gone moves nothing forward.
        let c = pods(&[("a", Some("2026-01-01T00:00:09Z"))]);
        assert_eq!(t.compute("ns", "web", created, &c), None);
        // A Service recreated after being forgotten starts again.
        t.forget("ns", "web");
        let again = "2026-01-01T00:01:00Z";
        assert_eq!(t.compute("ns", "web", again, &c).as_deref(), Some(again));
    }
}
