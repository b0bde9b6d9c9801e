//! Pool gauges computed at scrape time: `svcplane_ipam_pool_{size,used,held,reserved,free}`
//! with the single label `pool` (bounded: `ipv4`, `ipv6`, `nodeport`), and the count of full
//! re-reads of the store, `svcplane_ipam_index_relists_total`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::allocator::PoolsView;

/// Registers the pool gauges of `view` (an allocator's, or a snapshot's) in `registry`.
pub fn register(registry: &mut Registry, view: PoolsView) {
    registry.register_collector(Box::new(PoolCollector(view)));
}

/// The pool gauges of `view` as Prometheus text (without OpenMetrics' `# EOF`), for a process
/// that exposes other metrics of its own on the same endpoint.
pub fn text(view: &PoolsView) -> String {
    let mut registry = Registry::default();
    register(&mut registry, view.clone());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text.lines()
        .filter(|line| *line != "# EOF")
        .map(|line| format!("{line}\n"))
        .collect()
}

#[derive(Debug)]
struct PoolCollector(PoolsView);

type Labels = Vec<(&'static str, String)>;

/// A gauge: name, help, and how to read it from a pool's counts.
type Gauge = (&'static str, &'static str, fn(&crate::Counts) -> u128);

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let pools = self.0.pools();
        let gauges: [Gauge; 5] = [
            (
                "svcplane_ipam_pool_size",
                "Usable values of the pool.",
                |c| c.size,
            ),
            ("svcplane_ipam_pool_used", "Allocated values.", |c| c.used),
            (
                "svcplane_ipam_pool_held",
                "Released values still held for their owner.",
                |c| c.held,
            ),
            (
                "svcplane_ipam_pool_reserved",
                "Reserved values not allocated.",
                |c| c.reserved,
            ),
            ("svcplane_ipam_pool_free", "Values anyone may take.", |c| {
                c.free
            }),
        ];
        let relists = ConstCounter::new(self.0.relists());
        let metric = encoder.encode_descriptor(
            "svcplane_ipam_index_relists",
            "Times the occupancy index was rebuilt from a full read of the store.",
            None,
            MetricType::Counter,
        )?;
        relists.encode(metric)?;
        for (name, help, get) in gauges {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for p in &pools {
                // Pools may exceed 2^53 values (an IPv6 /64): gauges are floats.
                let labels: Labels = vec![("pool", p.spec.name.clone())];
                let gauge = ConstGauge::new(get(&p.counts) as f64);
                gauge.encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Snapshot, StoredValue};
    use crate::{Owner, PoolSpec, Record};
    use std::time::Duration;

    #[test]
    fn gauges_count_the_pool_at_scrape_time() {
        let spec = PoolSpec {
            name: "ipv4".into(),
            cidrs: vec!["10.96.0.0/24".into()],
            range: None,
            hold: Duration::from_secs(60),
            reservations: [(
                "kube-system/kube-dns".to_string(),
                vec!["10.96.0.10".to_string()],
            )]
            .into(),
        };
        let value = |v: &str, record| StoredValue {
            pool: "ipv4".into(),
            value: v.into(),
            record,
            rev: 2,
        };
        let snap = Snapshot {
            rev: 3,
            pools: vec![(spec, 1)],
            values: vec![
                value(
                    "10.96.0.20",
                    Record::allocated(Owner::new("default/a", "clusterIP")),
                ),
                value(
                    "10.96.0.21",
                    Record::held(Owner::new("default/b", "clusterIP"), u64::MAX),
                ),
            ],
        };
        let mut registry = Registry::default();
        register(&mut registry, PoolsView::from_snapshot(&snap));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "svcplane_ipam_pool_size{pool=\"ipv4\"} 254.0",
            "svcplane_ipam_pool_used{pool=\"ipv4\"} 1.0",
            "svcplane_ipam_pool_held{pool=\"ipv4\"} 1.0",
            "svcplane_ipam_pool_reserved{pool=\"ipv4\"} 1.0",
            "svcplane_ipam_pool_free{pool=\"ipv4\"} 251.0",
            "svcplane_ipam_index_relists_total 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
