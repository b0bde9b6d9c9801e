//! The work queue under the endpoint reconcilers, as client-go gives kube-controller-manager:
//! Service keys deduplicated, never handed to two workers at once, with coalescing delayed adds
//! and per-key exponential back-off. The watch-fed stores are `cache::follow`'s.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::metrics::Metrics;

/// A Service key: namespace and name.
pub type Key = (String, String);

#[derive(Default)]
struct State {
    ready: VecDeque<Key>,
    queued: HashSet<Key>,
    processing: HashSet<Key>,
    /// Keys added while a worker had them; queued again when it is done.
    again: HashSet<Key>,
    failures: HashMap<Key, u32>,
    /// Delayed adds: when each waiting key is due. One entry per key, the earliest time
    /// asked for, as client-go's delaying queue keeps it.
    waiting: HashMap<Key, tokio::time::Instant>,
    /// When each queued key was added, and when each key being processed was taken.
    added_at: HashMap<Key, std::time::Instant>,
    taken_at: HashMap<Key, std::time::Instant>,
}

/// A work queue of keys with client-go's guarantees: a key waits at most once, and a key being
/// processed is queued again only after its worker is done.
#[derive(Clone, Default)]
pub struct Queue {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    /// client-go's `workqueue_*` metrics, under the queue's name.
    metrics: Option<(Arc<Metrics>, &'static str)>,
}

impl Queue {
    /// A queue reporting client-go's `workqueue_*` metrics as `name` (upstream's queue names:
    /// `endpoint`, `endpoint_slice`, `endpoint_slice_mirroring`).
    pub fn with_metrics(metrics: Arc<Metrics>, name: &'static str) -> Queue {
        crate::metrics::register_queue(&metrics, name);
        Queue {
            metrics: Some((metrics, name)),
            ..Queue::default()
        }
    }

    /// Updates the depth gauge (keys added and not yet taken, as client-go counts them).
    fn report_depth(&self, state: &State) {
        if let Some((m, name)) = &self.metrics {
            let depth = state.queued.len() + state.again.len();
            m.workqueue_depth.set(&[name], depth as f64);
        }
    }

    /// Queues `key` now.
    pub fn add(&self, key: Key) {
        let mut state = self.state.lock().expect("the queue's lock");
        let added = if state.processing.contains(&key) {
            state.again.insert(key.clone())
        } else if state.queued.insert(key.clone()) {
            state.ready.push_back(key.clone());
            self.notify.notify_one();
            true
        } else {
            false
        };
        if added && let Some((m, name)) = &self.metrics {
            m.workqueue_adds.inc(&[name]);
            state.added_at.insert(key, std::time::Instant::now());
            self.report_depth(&state);
        }
    }

    /// Queues `key` after `delay` (at once when it is zero). A key already waiting keeps the
    /// earlier of its two times, so a burst of changes within a batch period gives one sync.
    pub fn add_after(&self, key: Key, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let due = tokio::time::Instant::now() + delay;
        {
            let mut state = self.state.lock().expect("the queue's lock");
            match state.waiting.get(&key) {
                Some(&earlier) if earlier <= due => return,
                _ => {
                    state.waiting.insert(key.clone(), due);
                }
            }
        }
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let current = {
                let mut state = queue.state.lock().expect("the queue's lock");
                let current = state.waiting.get(&key) == Some(&due);
                if current {
                    state.waiting.remove(&key);
                }
                current
            };
            // Otherwise an earlier time replaced this one and has fired already.
            if current {
                queue.add(key);
            }
        });
    }

    /// Queues `key` again after its next back-off: 5 ms doubling per failure, at most `max`.
    pub fn retry(&self, key: Key, max: Duration) {
        if let Some((m, name)) = &self.metrics {
            m.workqueue_retries.inc(&[name]);
        }
        let failures = {
            let mut state = self.state.lock().expect("the queue's lock");
            let n = state.failures.entry(key.clone()).or_default();
            *n += 1;
            *n
        };
        let delay = Duration::from_millis(5)
            .saturating_mul(1u32 << failures.min(30))
            .min(max);
        self.add_after(key, delay);
    }

    /// Clears `key`'s back-off after a success.
    pub fn forget(&self, key: &Key) {
        self.state
            .lock()
            .expect("the queue's lock")
            .failures
            .remove(key);
    }

    /// The next key to process; the caller must call [`Queue::done`] with it.
    pub async fn next(&self) -> Key {
        loop {
            let notified = self.notify.notified();
            {
                let mut state = self.state.lock().expect("the queue's lock");
                if let Some(key) = state.ready.pop_front() {
                    state.queued.remove(&key);
                    state.processing.insert(key.clone());
                    if let Some((m, name)) = &self.metrics {
                        let now = std::time::Instant::now();
                        if let Some(at) = state.added_at.remove(&key) {
                            let waited = now.duration_since(at).as_secs_f64();
                            m.workqueue_queue_duration.observe(&[name], waited);
                        }
                        state.taken_at.insert(key.clone(), now);
                        self.report_depth(&state);
                    }
                    if !state.ready.is_empty() {
                        self.notify.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    /// Ends the processing of `key`, queuing it again if it was added meanwhile.
    pub fn done(&self, key: &Key) {
        let mut state = self.state.lock().expect("the queue's lock");
        state.processing.remove(key);
        if let (Some((m, name)), Some(at)) = (&self.metrics, state.taken_at.remove(key)) {
            m.workqueue_work_duration
                .observe(&[name], at.elapsed().as_secs_f64());
        }
        if state.again.remove(key) {
            // Counted as an add when it came; queued now.
            state.queued.insert(key.clone());
            state.ready.push_back(key.clone());
            self.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        ("ns".to_string(), name.to_string())
    }

    #[tokio::test]
    async fn a_key_waits_once_and_is_never_handed_to_two_workers() {
        let queue = Queue::default();
        queue.add(key("a"));
        queue.add(key("a"));
        queue.add(key("b"));
        let first = queue.next().await;
        assert_eq!(first, key("a"));
        // Added while processing: handed out again only after done.
        queue.add(key("a"));
        assert_eq!(queue.next().await, key("b"));
        queue.done(&key("b"));
        let pending = tokio::time::timeout(Duration::from_millis(50), queue.next()).await;
        assert!(pending.is_err(), "a is being processed");
        queue.done(&key("a"));
        assert_eq!(queue.next().await, key("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_adds_of_one_key_within_its_wait_give_one_sync_at_the_earliest_time() {
        let queue = Queue::default();
        let start = tokio::time::Instant::now();
        queue.add_after(key("a"), Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(500)).await;
        queue.add_after(key("a"), Duration::from_secs(2));
        queue.add_after(key("a"), Duration::from_secs(1));
        assert_eq!(queue.next().await, key("a"));
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
        queue.done(&key("a"));
        // Nothing else was left waiting.
        let more = tokio::time::timeout(Duration::from_secs(10), queue.next()).await;
        assert!(more.is_err(), "one sync for the burst");
    }

    #[tokio::test]
    async fn the_queue_reports_client_gos_metrics_under_its_name() {
        let metrics = Arc::new(Metrics::default());
        let queue = Queue::with_metrics(metrics.clone(), "endpoint_slice");
        let name = ["endpoint_slice"];
        queue.add(key("a"));
        queue.add(key("a"));
        queue.add(key("b"));
        assert_eq!(metrics.workqueue_adds.value(&name), Some(2.0));
        assert_eq!(metrics.workqueue_depth.value(&name), Some(2.0));
        let a = queue.next().await;
        queue.add(key("a"));
        assert_eq!(metrics.workqueue_adds.value(&name), Some(3.0));
        queue.done(&a);
        queue.retry(key("c"), Duration::from_millis(1));
        assert_eq!(metrics.workqueue_retries.value(&name), Some(1.0));
        let text = metrics.encode();
        assert!(
            text.contains("workqueue_work_duration_seconds_count{name=\"endpoint_slice\"} 1\n")
        );
        assert!(
            text.contains("workqueue_queue_duration_seconds_count{name=\"endpoint_slice\"} 1\n")
        );
    }

    #[tokio::test]
    async fn retries_back_off_and_a_success_resets_them() {
        let queue = Queue::default();
        queue.retry(key("a"), Duration::from_secs(1));
        let started = std::time::Instant::now();
        assert_eq!(queue.next().await, key("a"));
        assert!(started.elapsed() >= Duration::from_millis(10));
        queue.done(&key("a"));
        queue.forget(&key("a"));
        assert!(queue.state.lock().unwrap().failures.is_empty());
    }
}
