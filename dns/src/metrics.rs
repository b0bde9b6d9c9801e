//! The `prometheus` directive's metrics under CoreDNS's names and label names (spec §15), kept
//! in atomics on the query path and written as Prometheus text at scrape time: the
//! `coredns_dns_*` request and response metrics per server block, `coredns_cache_*`,
//! `coredns_forward_*` and `coredns_proxy_*`, `coredns_health_*`, `coredns_reload_*`,
//! `coredns_panics_total`, `coredns_build_info`, `coredns_plugin_enabled`, the process metrics
//! (`process_*`, read from /proc) and svcplane's own (`svcplane_dns_*`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::message::Transport;

/// `plugin.TimeBuckets`: 0.25 ms to 8 s.
pub fn time_buckets() -> Vec<f64> {
    (0..16).map(|i| 0.00025 * f64::powi(2.0, i)).collect()
}

/// `plugin.SlimTimeBuckets`: 0.25 ms to 2.5 s.
fn slim_time_buckets() -> Vec<f64> {
    (0..5).map(|i| 0.00025 * f64::powi(10.0, i)).collect()
}

/// The request and response size buckets.
const SIZE_BUCKETS: [f64; 14] = [
    0.0, 100.0, 200.0, 300.0, 400.0, 511.0, 1023.0, 2047.0, 4095.0, 8291.0, 16e3, 32e3, 48e3, 64e3,
];

/// A histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// Observations at or below each bound (not cumulative).
    buckets: Vec<AtomicU64>,
    sum_bits: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: Vec<f64>) -> Histogram {
        Histogram {
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            bounds,
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = f64::from_bits(self.sum_bits.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Query types counted by name; the rest are `other` (CoreDNS's `monitorType`).
const TYPES: [RecordType; 19] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::CNAME,
    RecordType::DNSKEY,
    RecordType::DS,
    RecordType::MX,
    RecordType::NSEC3,
    RecordType::NSEC,
    RecordType::NS,
    RecordType::PTR,
    RecordType::RRSIG,
    RecordType::SOA,
    RecordType::SRV,
    RecordType::TXT,
    RecordType::HTTPS,
    RecordType::SVCB,
    RecordType::IXFR,
    RecordType::AXFR,
    RecordType::ANY,
];
/// Rcodes counted one by one (0..=23, BADVERS included); the rest by number.
const RCODES: usize = 24;

/// The plugins a reply is credited to in `coredns_dns_responses_total{plugin}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// The server itself (a failure no plugin wrote, a malformed query).
    Server,
    /// The first handler of the block's chain, which CoreDNS credits every written reply to.
    Chain,
}

/// One server block's `coredns_dns_*` metrics.
#[derive(Debug)]
pub struct ServerMetrics {
    /// `dns://:53`, as CoreDNS names a server.
    pub server: String,
    /// The block's zone, e.g. `.`.
    pub zone: String,
    /// The plugin label of replies the chain wrote.
    pub first_plugin: &'static str,
    /// Per transport, family and type.
    requests: Vec<AtomicU64>,
    do_requests: AtomicU64,
    duration: Histogram,
    request_size: [Histogram; 2],
    response_size: [Histogram; 2],
    /// Per rcode, for [`Writer::Server`] and [`Writer::Chain`].
    responses: Vec<AtomicU64>,
    other_rcodes: Mutex<BTreeMap<(u16, bool), u64>>,
}

impl ServerMetrics {
    pub fn new(server: String, zone: String, first_plugin: &'static str) -> ServerMetrics {
        ServerMetrics {
            server,
            zone,
            first_plugin,
            requests: (0..2 * 2 * (TYPES.len() + 1))
                .map(|_| AtomicU64::new(0))
                .collect(),
            do_requests: AtomicU64::new(0),
            duration: Histogram::new(time_buckets()),
            request_size: [
                Histogram::new(SIZE_BUCKETS.to_vec()),
                Histogram::new(SIZE_BUCKETS.to_vec()),
            ],
            response_size: [
                Histogram::new(SIZE_BUCKETS.to_vec()),
                Histogram::new(SIZE_BUCKETS.to_vec()),
            ],
            responses: (0..RCODES * 2).map(|_| AtomicU64::new(0)).collect(),
            other_rcodes: Mutex::default(),
        }
    }

    /// Counts one answered query.
    #[allow(clippy::too_many_arguments)]
    pub fn report(
        &self,
        transport: Transport,
        ipv6: bool,
        qtype: RecordType,
        dnssec_ok: bool,
        request_len: usize,
        reply_len: usize,
        rcode: ResponseCode,
        writer: Writer,
        took: std::time::Duration,
    ) {
        let t = transport_index(transport);
        let ty = TYPES
            .iter()
            .position(|x| *x == qtype)
            .unwrap_or(TYPES.len());
        let i = (t * 2 + usize::from(ipv6)) * (TYPES.len() + 1) + ty;
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        if dnssec_ok {
            self.do_requests.fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(took.as_secs_f64());
        self.request_size[t].observe(request_len as f64);
        self.response_size[t].observe(reply_len as f64);
        let code = u16::from(rcode);
        let chain = writer == Writer::Chain;
        if usize::from(code) < RCODES {
            self.responses[usize::from(code) * 2 + usize::from(chain)]
                .fetch_add(1, Ordering::Relaxed);
        } else {
            *self
                .other_rcodes
                .lock()
                .expect("metrics lock")
                .entry((code, chain))
                .or_default() += 1;
        }
    }

    fn write(&self, out: &mut Families) {
        let base = format!(
            "server=\"{}\",zone=\"{}\",view=\"\"",
            self.server, self.zone
        );
        for (t, proto) in ["udp", "tcp"].into_iter().enumerate() {
            for family in 0..2 {
                for ty in 0..=TYPES.len() {
                    let n = self.requests[(t * 2 + family) * (TYPES.len() + 1) + ty]
                        .load(Ordering::Relaxed);
                    if n == 0 {
                        continue;
                    }
                    let name = TYPES.get(ty).map_or("other".to_string(), |x| x.to_string());
                    out.line(
                        "coredns_dns_requests_total",
                        format!(
                            "{base},proto=\"{proto}\",family=\"{}\",type=\"{name}\"",
                            family + 1
                        ),
                        n,
                    );
                }
            }
            if self.request_size[t].count() > 0 {
                let labels = format!("{base},proto=\"{proto}\"");
                out.histogram(
                    "coredns_dns_request_size_bytes",
                    &labels,
                    &self.request_size[t],
                );
                out.histogram(
                    "coredns_dns_response_size_bytes",
                    &labels,
                    &self.response_size[t],
                );
            }
        }
        if self.duration.count() > 0 {
            out.histogram(
                "coredns_dns_request_duration_seconds",
                &base,
                &self.duration,
            );
        }
        let dnssec_ok = self.do_requests.load(Ordering::Relaxed);
        if dnssec_ok > 0 {
            out.line("coredns_dns_do_requests_total", base.clone(), dnssec_ok);
        }
        let plugin = |chain: bool| if chain { self.first_plugin } else { "" };
        for code in 0..RCODES {
            for chain in [false, true] {
                let n = self.responses[code * 2 + usize::from(chain)].load(Ordering::Relaxed);
                if n > 0 {
                    out.line(
                        "coredns_dns_responses_total",
                        format!(
                            "{base},rcode=\"{}\",plugin=\"{}\"",
                            crate::message::rcode_name(ResponseCode::from(0, code as u8)),
                            plugin(chain)
                        ),
                        n,
                    );
                }
            }
        }
        for ((code, chain), n) in self.other_rcodes.lock().expect("metrics lock").iter() {
            out.line(
                "coredns_dns_responses_total",
                format!("{base},rcode=\"{code}\",plugin=\"{}\"", plugin(*chain)),
                *n,
            );
        }
    }
}

fn transport_index(transport: Transport) -> usize {
    match transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
    }
}

/// What `forward` counts, per upstream.
#[derive(Debug, Default)]
pub struct ForwardMetrics {
    /// `coredns_proxy_request_duration_seconds{proxy_name="forward",to,rcode}`.
    durations: Mutex<BTreeMap<(String, String), Arc<Histogram>>>,
    /// `coredns_proxy_healthcheck_failures_total{proxy_name,to}`.
    healthcheck_failures: Mutex<BTreeMap<String, u64>>,
    /// `coredns_proxy_conn_cache_{hits,misses}_total{proxy_name,to,proto}`.
    conn_cache: Mutex<BTreeMap<(String, &'static str, bool), u64>>,
    pub healthcheck_broken: AtomicU64,
    pub max_concurrent_rejects: AtomicU64,
}

impl ForwardMetrics {
    pub fn observe(&self, to: &str, rcode: ResponseCode, took: std::time::Duration) {
        let key = (
            to.to_string(),
            crate::message::rcode_name(rcode).to_string(),
        );
        let histogram = self
            .durations
            .lock()
            .expect("metrics lock")
            .entry(key)
            .or_insert_with(|| Arc::new(Histogram::new(time_buckets())))
            .clone();
        histogram.observe(took.as_secs_f64());
    }

    pub fn healthcheck_failed(&self, to: &str) {
        *self
            .healthcheck_failures
            .lock()
            .expect("metrics lock")
            .entry(to.to_string())
            .or_default() += 1;
    }

    /// A connection to `to` over `proto` was reused (`hit`) or opened.
    pub fn connection(&self, to: &str, proto: &'static str, hit: bool) {
        *self
            .conn_cache
            .lock()
            .expect("metrics lock")
            .entry((to.to_string(), proto, hit))
            .or_default() += 1;
    }

    fn write(&self, out: &mut Families) {
        for ((to, rcode), h) in self.durations.lock().expect("metrics lock").iter() {
            out.histogram(
                "coredns_proxy_request_duration_seconds",
                &format!("proxy_name=\"forward\",to=\"{to}\",rcode=\"{rcode}\""),
                h,
            );
        }
        for (to, n) in self
            .healthcheck_failures
            .lock()
            .expect("metrics lock")
            .iter()
        {
            out.line(
                "coredns_proxy_healthcheck_failures_total",
                format!("proxy_name=\"forward\",to=\"{to}\""),
                *n,
            );
        }
        for ((to, proto, hit), n) in self.conn_cache.lock().expect("metrics lock").iter() {
            let name = if *hit {
                "coredns_proxy_conn_cache_hits_total"
            } else {
                "coredns_proxy_conn_cache_misses_total"
            };
            out.line(
                name,
                format!("proxy_name=\"forward\",to=\"{to}\",proto=\"{proto}\""),
                *n,
            );
        }
        out.line(
            "coredns_forward_healthcheck_broken_total",
            String::new(),
            self.healthcheck_broken.load(Ordering::Relaxed),
        );
        out.line(
            "coredns_forward_max_concurrent_rejects_total",
            String::new(),
            self.max_concurrent_rejects.load(Ordering::Relaxed),
        );
    }
}

/// client-go's request metrics CoreDNS exports for its API client, from the requests
/// [`::cache::rest`] reports.
#[derive(Debug, Default)]
pub struct RestMetrics {
    /// `coredns_kubernetes_rest_client_requests_total{method,code,host}`.
    requests: Mutex<BTreeMap<(String, String, String), u64>>,
    /// `..._request_duration_seconds{verb,host}` and `..._rate_limiter_duration_seconds`
    /// (kube-rs has no client-side rate limiter: every wait is 0).
    durations: Mutex<BTreeMap<(String, String), Timings>>,
}

/// A verb's request durations and rate-limiter waits.
type Timings = (Arc<Histogram>, Arc<Histogram>);

/// Prometheus's default buckets, which client-go's metrics use.
fn default_buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

/// The reports of one client, whose API server is `host`.
#[derive(Debug)]
pub struct RestReporter {
    pub host: String,
    pub metrics: Arc<Metrics>,
}

impl ::cache::rest::RestObserver for RestReporter {
    fn request(&self, method: &str, code: Option<u16>, took: std::time::Duration) {
        let rest = &self.metrics.rest;
        let code = code.map_or("<error>".to_string(), |c| c.to_string());
        *rest
            .requests
            .lock()
            .expect("metrics lock")
            .entry((method.to_string(), code, self.host.clone()))
            .or_default() += 1;
        let (duration, wait) = rest
            .durations
            .lock()
            .expect("metrics lock")
            .entry((method.to_string(), self.host.clone()))
            .or_insert_with(|| {
                (
                    Arc::new(Histogram::new(default_buckets())),
                    Arc::new(Histogram::new(default_buckets())),
                )
            })
            .clone();
        duration.observe(took.as_secs_f64());
        wait.observe(0.0);
    }
}

impl RestMetrics {
    fn write(&self, out: &mut Families) {
        for ((method, code, host), n) in self.requests.lock().expect("metrics lock").iter() {
            out.line(
                "coredns_kubernetes_rest_client_requests_total",
                format!("code=\"{code}\",host=\"{host}\",method=\"{method}\""),
                *n,
            );
        }
        for ((verb, host), (duration, wait)) in self.durations.lock().expect("metrics lock").iter()
        {
            let labels = format!("host=\"{host}\",verb=\"{verb}\"");
            out.histogram(
                "coredns_kubernetes_rest_client_request_duration_seconds",
                &labels,
                duration,
            );
            out.histogram(
                "coredns_kubernetes_rest_client_rate_limiter_duration_seconds",
                &labels,
                wait,
            );
        }
    }
}

/// Samples grouped by family, written with one HELP/TYPE each.
#[derive(Default)]
struct Families {
    /// name -> sample lines.
    lines: BTreeMap<&'static str, String>,
}

impl Families {
    fn line(&mut self, name: &'static str, labels: String, value: impl std::fmt::Display) {
        let out = self.lines.entry(name).or_default();
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }

    fn histogram(&mut self, name: &'static str, labels: &str, h: &Histogram) {
        h.write(self.lines.entry(name).or_default(), name, labels);
    }

    fn finish(self, out: &mut String) {
        for (name, lines) in self.lines {
            let (kind, help) = describe(name);
            header(out, name, kind, help);
            out.push_str(&lines);
        }
    }
}

/// The type and help text of each family.
fn describe(name: &str) -> (&'static str, &'static str) {
    match name {
        "coredns_dns_requests_total" => (
            "counter",
            "Counter of DNS requests made per zone, protocol and family.",
        ),
        "coredns_dns_request_duration_seconds" => (
            "histogram",
            "Histogram of the time (in seconds) each request took per zone.",
        ),
        "coredns_dns_request_size_bytes" => (
            "histogram",
            "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol.",
        ),
        "coredns_dns_response_size_bytes" => {
            ("histogram", "Size of the returned response in bytes.")
        }
        "coredns_dns_responses_total" => ("counter", "Counter of response status codes."),
        "coredns_dns_do_requests_total" => (
            "counter",
            "Counter of DNS requests with DO bit set per zone.",
        ),
        "coredns_panics_total" => ("counter", "A metrics that counts the number of panics."),
        "coredns_build_info" => (
            "gauge",
            "A metric with a constant '1' value labeled by version, revision, and goversion from which CoreDNS was built.",
        ),
        "coredns_plugin_enabled" => (
            "gauge",
            "A metric that indicates whether a plugin is enabled on per server and zone basis.",
        ),
        "coredns_cache_entries" => ("gauge", "The number of elements in the cache."),
        "coredns_cache_requests_total" => ("counter", "The count of cache requests."),
        "coredns_cache_hits_total" => ("counter", "The count of cache hits."),
        "coredns_cache_misses_total" => ("counter", "The count of cache misses."),
        "coredns_cache_prefetch_total" => (
            "counter",
            "The number of times the cache has prefetched a cached item.",
        ),
        "coredns_cache_drops_total" => (
            "counter",
            "The number responses that are not cached, because the reply is malformed.",
        ),
        "coredns_cache_served_stale_total" => (
            "counter",
            "The number of requests served from stale cache entries.",
        ),
        "coredns_cache_evictions_total" => ("counter", "The count of cache evictions."),
        "coredns_forward_healthcheck_broken_total" => (
            "counter",
            "Counter of the number of complete failures of the healthchecks.",
        ),
        "coredns_forward_max_concurrent_rejects_total" => (
            "counter",
            "Counter of the number of queries rejected because the concurrent queries were at maximum.",
        ),
        "coredns_proxy_request_duration_seconds" => {
            ("histogram", "Histogram of the time each request took.")
        }
        "coredns_proxy_healthcheck_failures_total" => {
            ("counter", "Counter of the number of failed healthchecks.")
        }
        "coredns_proxy_conn_cache_hits_total" => (
            "counter",
            "Counter of connection cache hits per upstream and protocol.",
        ),
        "coredns_proxy_conn_cache_misses_total" => (
            "counter",
            "Counter of connection cache misses per upstream and protocol.",
        ),
        "coredns_health_request_duration_seconds" => (
            "histogram",
            "Histogram of the time (in seconds) each request took.",
        ),
        "coredns_health_request_failures_total" => {
            ("counter", "The number of times the health check failed.")
        }
        "coredns_reload_version_info" => (
            "gauge",
            "A metric with a constant '1' value labeled by hash, and value which type of hash generated.",
        ),
        "coredns_reload_failed_total" => (
            "counter",
            "Counter of the number of failed reload attempts.",
        ),
        "coredns_kubernetes_rest_client_requests_total" => (
            "counter",
            "Number of HTTP requests, partitioned by status code, method, and host.",
        ),
        "coredns_kubernetes_rest_client_request_duration_seconds" => (
            "histogram",
            "Request latency in seconds. Broken down by verb and host.",
        ),
        "coredns_kubernetes_rest_client_rate_limiter_duration_seconds" => (
            "histogram",
            "Client side rate limiter latency in seconds. Broken down by verb and host.",
        ),
        "coredns_kubernetes_dns_programming_duration_seconds" => (
            "histogram",
            "Histogram of the time (in seconds) it took to program a dns instance.",
        ),
        "process_cpu_seconds_total" => (
            "counter",
            "Total user and system CPU time spent in seconds.",
        ),
        "process_resident_memory_bytes" => ("gauge", "Resident memory size in bytes."),
        "process_virtual_memory_bytes" => ("gauge", "Virtual memory size in bytes."),
        "process_open_fds" => ("gauge", "Number of open file descriptors."),
        "process_max_fds" => ("gauge", "Maximum number of open file descriptors."),
        "process_start_time_seconds" => (
            "gauge",
            "Start time of the process since unix epoch in seconds.",
        ),
        "svcplane_dns_cache_synced" => (
            "gauge",
            "1 once the kind has been listed completely from the cluster, 0 before.",
        ),
        "svcplane_dns_snapshot_age_seconds" => (
            "gauge",
            "Seconds since the cluster snapshot the answers come from was published.",
        ),
        "svcplane_dns_snapshot_generation" => (
            "gauge",
            "Generation of the cluster snapshot the answers come from.",
        ),
        "svcplane_dns_index_rebuilds_total" => (
            "counter",
            "Times the record index was built whole (at start, after a step that changed more than 4096 Services, or a gap longer than the cache's history) instead of for the Services that changed.",
        ),
        _ => ("untyped", ""),
    }
}

/// A cache's counters with the labels CoreDNS gives them.
#[derive(Debug, Clone)]
pub struct CacheLabels {
    pub server: String,
    /// The cache's zones, comma-separated.
    pub zones: String,
    pub cache: Arc<crate::cache::Cache>,
}

/// Every metric of the process; it outlives a `reload`, which registers its blocks anew.
#[derive(Debug)]
pub struct Metrics {
    pub servers: Mutex<Vec<Arc<ServerMetrics>>>,
    pub caches: Mutex<Vec<CacheLabels>>,
    pub forward: Arc<ForwardMetrics>,
    /// `coredns_plugin_enabled`: server, zone, plugin.
    pub plugins: Mutex<Vec<(String, String, &'static str)>>,
    /// `coredns_reload_version_info`: the SHA-512 of the Corefile running.
    pub version: Mutex<Option<String>>,
    pub panics: AtomicU64,
    pub health_duration: Histogram,
    pub health_failures: AtomicU64,
    pub reload_failures: AtomicU64,
    /// `coredns_kubernetes_dns_programming_duration_seconds` per service kind.
    pub programming: [Histogram; 3],
    /// Each kind the cluster cache lists and whether it has been listed, for
    /// `svcplane_dns_cache_synced`.
    pub sync: Mutex<Vec<(&'static str, bool)>>,
    /// Generation and publication time of the snapshot answered from.
    pub snapshot: Mutex<(u64, std::time::Instant)>,
    /// The API client's requests.
    pub rest: RestMetrics,
    /// Indexes built whole.
    pub index_rebuilds: AtomicU64,
}

/// The `service_kind` label values.
pub const SERVICE_KINDS: [&str; 3] = [
    "cluster_ip",
    "headless_with_selector",
    "headless_without_selector",
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            servers: Mutex::default(),
            caches: Mutex::default(),
            forward: Arc::default(),
            plugins: Mutex::default(),
            version: Mutex::default(),
            panics: AtomicU64::new(0),
            health_duration: Histogram::new(slim_time_buckets()),
            health_failures: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            programming: std::array::from_fn(|_| {
                Histogram::new((0..20).map(|i| 0.001 * f64::powi(2.0, i)).collect())
            }),
            sync: Mutex::default(),
            snapshot: Mutex::new((0, std::time::Instant::now())),
            rest: RestMetrics::default(),
            index_rebuilds: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut families = Families::default();
        for server in self.servers.lock().expect("metrics lock").iter() {
            server.write(&mut families);
        }
        for c in self.caches.lock().expect("metrics lock").iter() {
            let base = format!("server=\"{}\",zones=\"{}\",view=\"\"", c.server, c.zones);
            let typed = |kind: &str| {
                format!(
                    "server=\"{}\",type=\"{kind}\",zones=\"{}\",view=\"\"",
                    c.server, c.zones
                )
            };
            let n = &c.cache.counts;
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let (success, denial) = c.cache.entries();
            families.line("coredns_cache_entries", typed("success"), success);
            families.line("coredns_cache_entries", typed("denial"), denial);
            families.line(
                "coredns_cache_requests_total",
                base.clone(),
                load(&n.requests),
            );
            families.line(
                "coredns_cache_hits_total",
                typed("success"),
                load(&n.hits_success),
            );
            families.line(
                "coredns_cache_hits_total",
                typed("denial"),
                load(&n.hits_denial),
            );
            families.line("coredns_cache_misses_total", base.clone(), load(&n.misses));
            families.line(
                "coredns_cache_prefetch_total",
                base.clone(),
                load(&n.prefetches),
            );
            families.line("coredns_cache_drops_total", base.clone(), load(&n.drops));
            families.line(
                "coredns_cache_served_stale_total",
                base.clone(),
                load(&n.served_stale),
            );
            families.line(
                "coredns_cache_evictions_total",
                typed("success"),
                load(&n.evictions_success),
            );
            families.line(
                "coredns_cache_evictions_total",
                typed("denial"),
                load(&n.evictions_denial),
            );
        }
        self.forward.write(&mut families);
        self.rest.write(&mut families);
        for (server, zone, name) in self.plugins.lock().expect("metrics lock").iter() {
            families.line(
                "coredns_plugin_enabled",
                format!("server=\"{server}\",zone=\"{zone}\",view=\"\",name=\"{name}\""),
                1,
            );
        }
        families.line(
            "coredns_panics_total",
            String::new(),
            self.panics.load(Ordering::Relaxed),
        );
        families.line(
            "coredns_build_info",
            format!(
                "version=\"{}\",revision=\"svcplane\",goversion=\"none\"",
                env!("CARGO_PKG_VERSION")
            ),
            1,
        );
        families.histogram(
            "coredns_health_request_duration_seconds",
            "",
            &self.health_duration,
        );
        families.line(
            "coredns_health_request_failures_total",
            String::new(),
            self.health_failures.load(Ordering::Relaxed),
        );
        if let Some(digest) = self.version.lock().expect("metrics lock").as_ref() {
            families.line(
                "coredns_reload_version_info",
                format!("hash=\"sha512\",value=\"{digest}\""),
                1,
            );
        }
        families.line(
            "coredns_reload_failed_total",
            String::new(),
            self.reload_failures.load(Ordering::Relaxed),
        );
        for (kind, h) in SERVICE_KINDS.iter().zip(&self.programming) {
            families.histogram(
                "coredns_kubernetes_dns_programming_duration_seconds",
                &format!("service_kind=\"{kind}\""),
                h,
            );
        }
        for (kind, synced) in self.sync.lock().expect("metrics lock").iter() {
            families.line(
                "svcplane_dns_cache_synced",
                format!("kind=\"{kind}\""),
                u8::from(*synced),
            );
        }
        let (generation, at) = *self.snapshot.lock().expect("metrics lock");
        families.line(
            "svcplane_dns_snapshot_generation",
            String::new(),
            generation,
        );
        families.line(
            "svcplane_dns_snapshot_age_seconds",
            String::new(),
            at.elapsed().as_secs_f64(),
        );
        families.line(
            "svcplane_dns_index_rebuilds_total",
            String::new(),
            self.index_rebuilds.load(Ordering::Relaxed),
        );
        process(&mut families);
        let mut out = String::new();
        families.finish(&mut out);
        out
    }
}

/// What a new cluster snapshot programs, for `coredns_kubernetes_dns_programming_duration_seconds`:
/// each EndpointSlice of a changed Service (every slice, after a relist) whose
/// last-change-trigger time is new, as the index of its `service_kind` in [`SERVICE_KINDS`]
/// and the seconds from that time to `now`. `seen` keeps each slice's last trigger time.
pub fn programmed(
    seen: &mut std::collections::HashMap<::cache::types::Key, std::time::SystemTime>,
    snapshot: &::cache::Snapshot,
    now: std::time::SystemTime,
) -> Vec<(usize, f64)> {
    use ::cache::types::{Key, ServiceKind};
    let changed = &snapshot.changed;
    let services: Vec<Key> = if changed.all {
        seen.retain(|key, _| snapshot.slices.contains_key(key));
        snapshot.services.iter().map(|s| s.key.clone()).collect()
    } else {
        changed.services.iter().cloned().collect()
    };
    let mut out = Vec::new();
    for key in services {
        let Some(service) = snapshot.services.get(&key) else {
            continue;
        };
        // CoreDNS: headless (with a selector, as the trigger time implies) or cluster_ip.
        let kind = match service.kind {
            ServiceKind::Headless => 1,
            _ => 0,
        };
        for slice in snapshot.slices_of(&key) {
            let Some(trigger) = slice.last_change_trigger else {
                continue;
            };
            if seen.insert(slice.key.clone(), trigger) == Some(trigger) {
                continue;
            }
            let secs = now.duration_since(trigger).map_or(0.0, |d| d.as_secs_f64());
            out.push((kind, secs));
        }
    }
    out
}

/// The standard process metrics, from /proc/self.
fn process(out: &mut Families) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> f64 {
        // `n` counts from the state field (field 3 of proc(5)).
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let ticks = 100.0; // sysconf(_SC_CLK_TCK) on Linux.
    let page = 4096.0;
    out.line(
        "process_cpu_seconds_total",
        String::new(),
        (field(14) + field(15)) / ticks,
    );
    out.line("process_virtual_memory_bytes", String::new(), field(23));
    out.line(
        "process_resident_memory_bytes",
        String::new(),
        field(24) * page,
    );
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
        })
        .unwrap_or(0.0);
    out.line(
        "process_start_time_seconds",
        String::new(),
        boot + field(22) / ticks,
    );
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.line("process_open_fds", String::new(), fds.count());
    }
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        });
    if let Some(max) = max_fds {
        out.line("process_max_fds", String::new(), max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_programs_once_per_trigger_time_under_its_service_kind() {
        use ::cache::types::{Endpoint, EndpointSlice, Key, Service, ServiceKind};
        use ::cache::{Cache, Event, Kind, Object};
        let cache = Cache::new(&[]);
        let t0 = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        let slice = |trigger: Option<std::time::SystemTime>| {
            Object::EndpointSlice(EndpointSlice {
                key: Key::new("ns", "web-1"),
                service: Some("web".into()),
                ports: Vec::new().into(),
                endpoints: vec![Endpoint {
                    addresses: ["10.1.0.1".parse().unwrap()].into(),
                    ready: true,
                    hostname: None,
                    pod_name: None,
                }]
                .into(),
                last_change_trigger: trigger,
            })
        };
        cache.apply([
            Event::Apply(Object::Service(Service {
                key: Key::new("ns", "web"),
                kind: ServiceKind::Headless,
                ports: Default::default(),
            })),
            Event::Apply(slice(Some(t0))),
            Event::Synced(Kind::Services),
        ]);
        let mut seen = std::collections::HashMap::new();
        let now = t0 + std::time::Duration::from_millis(250);
        assert_eq!(programmed(&mut seen, &cache.current(), now), [(1, 0.25)]);
        // The same trigger time again (another change of the Service): nothing new.
        cache.apply([Event::Apply(slice(Some(t0)))]);
        assert_eq!(programmed(&mut seen, &cache.current(), now), []);
        // A slice without the annotation (not written by the controllers): nothing.
        cache.apply([Event::Apply(slice(None))]);
        assert_eq!(programmed(&mut seen, &cache.current(), now), []);
    }

    #[test]
    fn a_query_is_counted_under_coredns_names_and_labels() {
        let server = ServerMetrics::new("dns://:53".into(), ".".into(), "errors");
        server.report(
            Transport::Udp,
            false,
            RecordType::A,
            false,
            40,
            90,
            ResponseCode::NoError,
            Writer::Chain,
            std::time::Duration::from_millis(1),
        );
        server.report(
            Transport::Tcp,
            true,
            RecordType::NULL,
            true,
            40,
            30,
            ResponseCode::ServFail,
            Writer::Server,
            std::time::Duration::from_millis(1),
        );
        let metrics = Metrics::default();
        metrics.servers.lock().unwrap().push(Arc::new(server));
        let text = metrics.encode();
        for line in [
            "coredns_dns_requests_total{server=\"dns://:53\",zone=\".\",view=\"\",proto=\"udp\",family=\"1\",type=\"A\"} 1",
            "coredns_dns_requests_total{server=\"dns://:53\",zone=\".\",view=\"\",proto=\"tcp\",family=\"2\",type=\"other\"} 1",
            "coredns_dns_responses_total{server=\"dns://:53\",zone=\".\",view=\"\",rcode=\"NOERROR\",plugin=\"errors\"} 1",
            "coredns_dns_responses_total{server=\"dns://:53\",zone=\".\",view=\"\",rcode=\"SERVFAIL\",plugin=\"\"} 1",
            "coredns_dns_do_requests_total{server=\"dns://:53\",zone=\".\",view=\"\"} 1",
            "coredns_dns_request_duration_seconds_count{server=\"dns://:53\",zone=\".\",view=\"\"} 2",
            "coredns_dns_response_size_bytes_bucket{server=\"dns://:53\",zone=\".\",view=\"\",proto=\"udp\",le=\"100\"} 1",
            "# TYPE coredns_dns_requests_total counter",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }
}
