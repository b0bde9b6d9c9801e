//! The controllers' Prometheus metrics under kube-controller-manager's names
//! (`endpoint_slice_controller_*`, `endpoint_slice_mirroring_controller_*`, client-go's
//! `workqueue_*` and `leader_election_*`), with upstream's buckets and label names, and their
//! text exposition. Counters keep upstream's names exactly (no `_total` is appended where
//! upstream has none), which is why this is not a general-purpose client library.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Label values, in the order of the metric's label names.
type Labels = Vec<String>;

/// What a family holds per label set.
#[derive(Debug, Clone)]
enum Value {
    Counter(f64),
    Gauge(f64),
    /// Cumulative bucket counts (one per upper bound), sum, count.
    Histogram(Vec<u64>, f64, u64),
}

/// One metric family: a name, its type, and a value per label set.
#[derive(Debug)]
pub struct Family {
    name: String,
    help: &'static str,
    kind: &'static str,
    label_names: &'static [&'static str],
    buckets: Vec<f64>,
    values: Mutex<BTreeMap<Labels, Value>>,
}

impl Family {
    fn new(
        name: String,
        help: &'static str,
        kind: &'static str,
        label_names: &'static [&'static str],
        buckets: Vec<f64>,
    ) -> Family {
        Family {
            name,
            help,
            kind,
            label_names,
            buckets,
            values: Mutex::default(),
        }
    }

    fn labels(&self, values: &[&str]) -> Labels {
        assert_eq!(
            values.len(),
            self.label_names.len(),
            "{}: label count",
            self.name
        );
        values.iter().map(|v| v.to_string()).collect()
    }

    /// Increments a counter by one.
    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1.0);
    }

    /// Adds to a counter.
    pub fn add(&self, labels: &[&str], by: f64) {
        let key = self.labels(labels);
        let mut values = self.values.lock().expect("metrics lock");
        match values.entry(key).or_insert(Value::Counter(0.0)) {
            Value::Counter(v) => *v += by,
            other => unreachable!("{} is not a counter: {other:?}", self.name),
        }
    }

    /// Sets a gauge.
    pub fn set(&self, labels: &[&str], to: f64) {
        let key = self.labels(labels);
        self.values
            .lock()
            .expect("metrics lock")
            .insert(key, Value::Gauge(to));
    }

    /// Moves a gauge by `by` (up or down).
    pub fn add_gauge(&self, labels: &[&str], by: f64) {
        let key = self.labels(labels);
        let mut values = self.values.lock().expect("metrics lock");
        match values.entry(key).or_insert(Value::Gauge(0.0)) {
            Value::Gauge(v) => *v += by,
            other => unreachable!("{} is not a gauge: {other:?}", self.name),
        }
    }

    /// Observes a histogram sample.
    pub fn observe(&self, labels: &[&str], sample: f64) {
        let key = self.labels(labels);
        let mut values = self.values.lock().expect("metrics lock");
        let entry = values
            .entry(key)
            .or_insert_with(|| Value::Histogram(vec![0; self.buckets.len()], 0.0, 0));
        let Value::Histogram(counts, sum, count) = entry else {
            unreachable!("{} is not a histogram", self.name);
        };
        for (bound, n) in self.buckets.iter().zip(counts.iter_mut()) {
            if sample <= *bound {
                *n += 1;
            }
        }
        *sum += sample;
        *count += 1;
    }

    fn encode(&self, out: &mut String) {
        let values = self.values.lock().expect("metrics lock");
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        let pairs = |labels: &Labels, extra: Option<(&str, String)>| -> String {
            let mut parts: Vec<String> = self
                .label_names
                .iter()
                .zip(labels)
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            if let Some((k, v)) = extra {
                parts.push(format!("{k}=\"{v}\""));
            }
            if parts.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", parts.join(","))
            }
        };
        for (labels, value) in values.iter() {
            match value {
                Value::Counter(v) | Value::Gauge(v) => {
                    let _ = writeln!(out, "{}{} {}", self.name, pairs(labels, None), number(*v));
                }
                Value::Histogram(counts, sum, count) => {
                    for (bound, n) in self.buckets.iter().zip(counts) {
                        let le = Some(("le", number(*bound)));
                        let _ = writeln!(out, "{}_bucket{} {n}", self.name, pairs(labels, le));
                    }
                    let inf = Some(("le", "+Inf".to_string()));
                    let _ = writeln!(out, "{}_bucket{} {count}", self.name, pairs(labels, inf));
                    let _ = writeln!(
                        out,
                        "{}_sum{} {}",
                        self.name,
                        pairs(labels, None),
                        number(*sum)
                    );
                    let _ = writeln!(out, "{}_count{} {count}", self.name, pairs(labels, None));
                }
            }
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value as Prometheus' text format writes it (integers without a fraction).
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// client-go's `ExponentialBuckets(start, factor, count)`.
fn exponential(start: f64, factor: f64, count: usize) -> Vec<f64> {
    (0..count).map(|i| start * factor.powi(i as i32)).collect()
}

/// Prometheus' default buckets (`prometheus.DefBuckets`), used where upstream sets none.
fn default_buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

/// The metrics of one EndpointSlice-writing controller (upstream's `endpointslice/metrics`
/// and `endpointslicemirroring/metrics` share these names under their subsystem).
#[derive(Debug)]
pub struct SliceMetrics {
    pub endpoints_added_per_sync: Family,
    pub endpoints_removed_per_sync: Family,
    pub endpoints_desired: Family,
    pub num_endpoint_slices: Family,
    pub desired_endpoint_slices: Family,
    pub changes: Family,
}

impl SliceMetrics {
    fn new(subsystem: &str) -> SliceMetrics {
        let name = |n: &str| format!("{subsystem}_{n}");
        let per_sync = || exponential(2.0, 2.0, 15);
        SliceMetrics {
            endpoints_added_per_sync: Family::new(
                name("endpoints_added_per_sync"),
                "Number of endpoints added on each Service sync",
                "histogram",
                &[],
                per_sync(),
            ),
            endpoints_removed_per_sync: Family::new(
                name("endpoints_removed_per_sync"),
                "Number of endpoints removed on each Service sync",
                "histogram",
                &[],
                per_sync(),
            ),
            endpoints_desired: Family::new(
                name("endpoints_desired"),
                "Number of endpoints desired",
                "gauge",
                &[],
                Vec::new(),
            ),
            num_endpoint_slices: Family::new(
                name("num_endpoint_slices"),
                "Number of EndpointSlices",
                "gauge",
                &[],
                Vec::new(),
            ),
            desired_endpoint_slices: Family::new(
                name("desired_endpoint_slices"),
                "Number of EndpointSlices that would exist with perfect endpoint allocation",
                "gauge",
                &[],
                Vec::new(),
            ),
            changes: Family::new(
                name("changes"),
                "Number of EndpointSlice changes",
                "counter",
                &["operation"],
                Vec::new(),
            ),
        }
    }

    fn families(&self) -> Vec<&Family> {
        vec![
            &self.endpoints_added_per_sync,
            &self.endpoints_removed_per_sync,
            &self.endpoints_desired,
            &self.num_endpoint_slices,
            &self.desired_endpoint_slices,
            &self.changes,
        ]
    }

    /// Counts one written change: `create`, `update` or `delete`.
    pub fn changed(&self, operation: &str) {
        self.changes.add(&[operation], 1.0);
    }
}

/// Per Service, what its slices hold: the efficiency gauges are sums over these, as
/// upstream's metrics cache keeps them.
#[derive(Debug, Default)]
struct Efficiency {
    /// Per Service: (endpoints, slices, desired slices).
    services: BTreeMap<(String, String), (i64, i64, i64)>,
    /// Per Service: its traffic distribution, if any.
    traffic: BTreeMap<(String, String), String>,
}

/// All the controllers' metrics.
#[derive(Debug)]
pub struct Metrics {
    pub slices: SliceMetrics,
    pub endpointslices_changed_per_sync: Family,
    pub syncs: Family,
    pub services_count_by_traffic_distribution: Family,
    pub mirroring: SliceMetrics,
    pub mirroring_endpoints_updated_per_sync: Family,
    pub mirroring_addresses_skipped_per_sync: Family,
    pub mirroring_endpoints_sync_duration: Family,
    pub workqueue_depth: Family,
    pub workqueue_adds: Family,
    pub workqueue_queue_duration: Family,
    pub workqueue_work_duration: Family,
    pub workqueue_retries: Family,
    pub leader_status: Family,
    pub leader_slowpath: Family,
    /// The admission webhook's, under controller-runtime's names.
    pub webhook_requests: Family,
    pub webhook_latency: Family,
    pub webhook_in_flight: Family,
    /// Admissions denied, by the denial's reason (`Invalid`, `InternalError`, `Timeout`).
    pub webhook_denials: Family,
    /// Values the releaser gave back, by pool and how (`held`, `freed`).
    pub releases: Family,
    /// Values the releaser recorded for the Service carrying them (imported), by pool.
    pub imports: Family,
    /// Repair runs by result (`success`, `error`).
    pub repair_runs: Family,
    /// What repair found, by pool and upstream's `type` (`leak`, `repair`, `duplicate`,
    /// `outOfRange`).
    pub repair_errors: Family,
    /// The ipam pools the webhook allocates from, exposed as `svcplane_ipam_pool_*`.
    pub pools: std::sync::OnceLock<ipam::allocator::PoolsView>,
    slice_efficiency: Mutex<Efficiency>,
    mirror_efficiency: Mutex<Efficiency>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let queue = || exponential(10e-9, 10.0, 12);
        Metrics {
            slices: SliceMetrics::new("endpoint_slice_controller"),
            endpointslices_changed_per_sync: Family::new(
                "endpoint_slice_controller_endpointslices_changed_per_sync".into(),
                "Number of EndpointSlices changed on each Service sync",
                "histogram",
                &["topology", "traffic_distribution"],
                default_buckets(),
            ),
            syncs: Family::new(
                "endpoint_slice_controller_syncs".into(),
                "Number of EndpointSlice syncs",
                "counter",
                &["result"],
                Vec::new(),
            ),
            services_count_by_traffic_distribution: Family::new(
                "endpoint_slice_controller_services_count_by_traffic_distribution".into(),
                "Number of Services using some specific trafficDistribution",
                "gauge",
                &["traffic_distribution"],
                Vec::new(),
            ),
            mirroring: SliceMetrics::new("endpoint_slice_mirroring_controller"),
            mirroring_endpoints_updated_per_sync: Family::new(
                "endpoint_slice_mirroring_controller_endpoints_updated_per_sync".into(),
                "Number of endpoints updated on each Endpoints sync",
                "histogram",
                &[],
                exponential(2.0, 2.0, 15),
            ),
            mirroring_addresses_skipped_per_sync: Family::new(
                "endpoint_slice_mirroring_controller_addresses_skipped_per_sync".into(),
                "Number of addresses skipped on each Endpoints sync due to being invalid or exceeding MaxEndpointsPerSubset",
                "histogram",
                &[],
                exponential(2.0, 2.0, 15),
            ),
            mirroring_endpoints_sync_duration: Family::new(
                "endpoint_slice_mirroring_controller_endpoints_sync_duration".into(),
                "Duration of syncEndpoints() in seconds",
                "histogram",
                &[],
                exponential(0.001, 2.0, 15),
            ),
            workqueue_depth: Family::new(
                "workqueue_depth".into(),
                "Current depth of workqueue",
                "gauge",
                &["name"],
                Vec::new(),
            ),
            workqueue_adds: Family::new(
                "workqueue_adds_total".into(),
                "Total number of adds handled by workqueue",
                "counter",
                &["name"],
                Vec::new(),
            ),
            workqueue_queue_duration: Family::new(
                "workqueue_queue_duration_seconds".into(),
                "How long in seconds an item stays in workqueue before being requested.",
                "histogram",
                &["name"],
                queue(),
            ),
            workqueue_work_duration: Family::new(
                "workqueue_work_duration_seconds".into(),
                "How long in seconds processing an item from workqueue takes.",
                "histogram",
                &["name"],
                queue(),
            ),
            workqueue_retries: Family::new(
                "workqueue_retries_total".into(),
                "Total number of retries handled by workqueue",
                "counter",
                &["name"],
                Vec::new(),
            ),
            leader_status: Family::new(
                "leader_election_master_status".into(),
                "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease. Please make sure to group by name.",
                "gauge",
                &["name"],
                Vec::new(),
            ),
            leader_slowpath: Family::new(
                "leader_election_slowpath_total".into(),
                "Total number of slow path exercised in renewing leader leases. 'name' is the string used to identify the lease. Please make sure to group by name.",
                "counter",
                &["name"],
                Vec::new(),
            ),
            webhook_requests: Family::new(
                "controller_runtime_webhook_requests_total".into(),
                "Total number of admission requests by HTTP status code.",
                "counter",
                &["code", "webhook"],
                Vec::new(),
            ),
            webhook_latency: Family::new(
                "controller_runtime_webhook_latency_seconds".into(),
                "Histogram of the latency of processing admission requests",
                "histogram",
                &["webhook"],
                default_buckets(),
            ),
            webhook_in_flight: Family::new(
                "controller_runtime_webhook_requests_in_flight".into(),
                "Current number of admission requests being served.",
                "gauge",
                &["webhook"],
                Vec::new(),
            ),
            webhook_denials: Family::new(
                "svcplane_webhook_denials_total".into(),
                "Service admissions denied, by the denial's reason.",
                "counter",
                &["reason"],
                Vec::new(),
            ),
            releases: Family::new(
                "svcplane_ipam_releases_total".into(),
                "Values given back after their Service dropped them, by pool and how: held, freed.",
                "counter",
                &["pool", "how"],
                Vec::new(),
            ),
            imports: Family::new(
                "svcplane_ipam_imports_total".into(),
                "Values recorded for the Service carrying them (allocated without the webhook, or taken for a generateName create), by pool.",
                "counter",
                &["pool"],
                Vec::new(),
            ),
            repair_runs: Family::new(
                "svcplane_ipam_repair_runs_total".into(),
                "Repair runs comparing the pools with the live Services, by result.",
                "counter",
                &["result"],
                Vec::new(),
            ),
            repair_errors: Family::new(
                "svcplane_ipam_repair_errors_total".into(),
                "What repair found, by pool and type: leak, repair, duplicate, outOfRange.",
                "counter",
                &["pool", "type"],
                Vec::new(),
            ),
            pools: std::sync::OnceLock::new(),
            slice_efficiency: Mutex::default(),
            mirror_efficiency: Mutex::default(),
        }
    }
}

/// One Service's (or Endpoints object's) share of the efficiency gauges after a sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Share {
    pub endpoints: i64,
    pub slices: i64,
    pub desired_slices: i64,
}

impl Metrics {
    /// Records the EndpointSlice controller's share for a Service and its traffic
    /// distribution (`None` when unset or not counted), and refreshes the gauges.
    pub fn slice_share(&self, key: &(String, String), share: Option<Share>, traffic: Option<&str>) {
        let mut e = self.slice_efficiency.lock().expect("metrics lock");
        set_share(&mut e, key, share);
        match traffic {
            Some(t) => e.traffic.insert(key.clone(), t.to_string()),
            None => e.traffic.remove(key),
        };
        refresh(&e, &self.slices);
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for t in e.traffic.values() {
            *counts.entry(t).or_default() += 1;
        }
        // Upstream resets the family, so distributions no Service uses disappear.
        let mut values = self
            .services_count_by_traffic_distribution
            .values
            .lock()
            .expect("metrics lock");
        values.clear();
        for (t, n) in counts {
            values.insert(vec![t.to_string()], Value::Gauge(n as f64));
        }
    }

    /// The same for the mirroring controller, per Endpoints object.
    pub fn mirror_share(&self, key: &(String, String), share: Option<Share>) {
        let mut e = self.mirror_efficiency.lock().expect("metrics lock");
        set_share(&mut e, key, share);
        refresh(&e, &self.mirroring);
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        let mut families = self.slices.families();
        families.extend([
            &self.endpointslices_changed_per_sync,
            &self.syncs,
            &self.services_count_by_traffic_distribution,
        ]);
        families.extend(self.mirroring.families());
        families.extend([
            &self.mirroring_endpoints_updated_per_sync,
            &self.mirroring_addresses_skipped_per_sync,
            &self.mirroring_endpoints_sync_duration,
            &self.workqueue_depth,
            &self.workqueue_adds,
            &self.workqueue_queue_duration,
            &self.workqueue_work_duration,
            &self.workqueue_retries,
            &self.leader_status,
            &self.leader_slowpath,
            &self.webhook_requests,
            &self.webhook_latency,
            &self.webhook_in_flight,
            &self.webhook_denials,
            &self.releases,
            &self.imports,
            &self.repair_runs,
            &self.repair_errors,
        ]);
        let mut out = String::new();
        for family in families {
            family.encode(&mut out);
        }
        if let Some(pools) = self.pools.get() {
            out.push_str(&ipam::metrics::text(pools));
        }
        out
    }
}

fn set_share(e: &mut Efficiency, key: &(String, String), share: Option<Share>) {
    match share {
        Some(s) => e
            .services
            .insert(key.clone(), (s.endpoints, s.slices, s.desired_slices)),
        None => e.services.remove(key),
    };
}

fn refresh(e: &Efficiency, m: &SliceMetrics) {
    let (mut endpoints, mut slices, mut desired) = (0, 0, 0);
    for (n, s, d) in e.services.values() {
        endpoints += n;
        slices += s;
        desired += d;
    }
    m.endpoints_desired.set(&[], endpoints as f64);
    m.num_endpoint_slices.set(&[], slices as f64);
    m.desired_endpoint_slices.set(&[], desired as f64);
}

/// Upstream's `numDesiredSlices`: slices a port group needs when perfectly packed.
pub fn desired_slices(endpoints: usize, max_per_slice: usize) -> i64 {
    if endpoints == 0 {
        0
    } else {
        endpoints.div_ceil(max_per_slice.max(1)) as i64
    }
}

/// Adds the queue metrics that exist before the first add (so every name has a sample).
pub fn register_queue(metrics: &Metrics, name: &str) {
    metrics.workqueue_depth.set(&[name], 0.0);
    metrics.workqueue_adds.add(&[name], 0.0);
    metrics.workqueue_retries.add(&[name], 0.0);
}

impl Family {
    /// A counter's or gauge's current value (for tests and the leader state).
    pub fn value(&self, labels: &[&str]) -> Option<f64> {
        let key = self.labels(labels);
        match self.values.lock().expect("metrics lock").get(&key)? {
            Value::Counter(v) | Value::Gauge(v) => Some(*v),
            Value::Histogram(_, sum, _) => Some(*sum),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_keep_upstreams_names_and_histograms_are_cumulative() {
        let m = Metrics::default();
        m.slices.changed("create");
        m.slices.changed("create");
        m.syncs.inc(&["success"]);
        m.slices.endpoints_added_per_sync.observe(&[], 3.0);
        m.slices.endpoints_added_per_sync.observe(&[], 100.0);
        let text = m.encode();
        assert!(text.contains("# TYPE endpoint_slice_controller_changes counter\n"));
        assert!(text.contains("endpoint_slice_controller_changes{operation=\"create\"} 2\n"));
        assert!(text.contains("endpoint_slice_controller_syncs{result=\"success\"} 1\n"));
        assert!(
            text.contains(
                "endpoint_slice_controller_endpoints_added_per_sync_bucket{le=\"2\"} 0\n"
            )
        );
        assert!(
            text.contains(
                "endpoint_slice_controller_endpoints_added_per_sync_bucket{le=\"4\"} 1\n"
            )
        );
        assert!(
            text.contains(
                "endpoint_slice_controller_endpoints_added_per_sync_bucket{le=\"128\"} 2\n"
            )
        );
        assert!(text.contains(
            "endpoint_slice_controller_endpoints_added_per_sync_bucket{le=\"+Inf\"} 2\n"
        ));
        assert!(text.contains("endpoint_slice_controller_endpoints_added_per_sync_sum 103\n"));
        assert!(text.contains("endpoint_slice_controller_endpoints_added_per_sync_count 2\n"));
    }

    #[test]
    fn efficiency_gauges_sum_the_services_shares_and_forget_deleted_ones() {
        let m = Metrics::default();
        let a = ("ns".to_string(), "a".to_string());
        let b = ("ns".to_string(), "b".to_string());
        let share = |endpoints, slices| Share {
            endpoints,
            slices,
            desired_slices: desired_slices(endpoints as usize, 100),
        };
        m.slice_share(&a, Some(share(150, 3)), Some("PreferClose"));
        m.slice_share(&b, Some(share(10, 1)), None);
        assert_eq!(m.slices.endpoints_desired.value(&[]), Some(160.0));
        assert_eq!(m.slices.num_endpoint_slices.value(&[]), Some(4.0));
        assert_eq!(m.slices.desired_endpoint_slices.value(&[]), Some(3.0));
        assert_eq!(
            m.services_count_by_traffic_distribution
                .value(&["PreferClose"]),
            Some(1.0)
        );
        m.slice_share(&a, None, None);
        assert_eq!(m.slices.endpoints_desired.value(&[]), Some(10.0));
        assert_eq!(
            m.services_count_by_traffic_distribution
                .value(&["PreferClose"]),
            None
        );
    }
}
