//! A [`Plan`] made runnable: each server block's chain built once (its cache, forwarder and
//! loop probe), the routers of the addresses the blocks listen on, and the metrics they count
//! into, registered under the labels CoreDNS gives them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::cache::Cache;
use crate::chain::{Chain, ClusterSource, LoopProbe, Route, Router};
use crate::forward::Forwarder;
use crate::metrics::{CacheLabels, Metrics, ServerMetrics};
use crate::plan::Plan;

/// What serves: a router per address, and the loop probes to send once it listens.
#[derive(Debug)]
pub struct Service {
    pub routers: Vec<(SocketAddr, Arc<Router>)>,
    /// Each block with `loop`: its probe and the address to send it to.
    pub loop_probes: Vec<(SocketAddr, Arc<LoopProbe>)>,
    pub metrics: Arc<Metrics>,
}

/// How CoreDNS names a server in metric labels: `dns://:53`, or `dns://127.0.0.1:53` with a
/// `bind` address.
pub fn server_label(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("dns://:{}", addr.port())
    } else {
        format!("dns://{addr}")
    }
}

/// Builds `plan`, block `i` listening on the addresses `listen[i]`, the `kubernetes` block
/// answering from `cluster`.
pub fn build(plan: &Plan, listen: &[Vec<SocketAddr>], cluster: Option<&ClusterSource>) -> Service {
    let mut metrics = Metrics::default();
    let mut routes: BTreeMap<SocketAddr, Vec<Route>> = BTreeMap::new();
    let mut loop_probes = Vec::new();
    for (block, addrs) in plan.blocks.iter().zip(listen) {
        let Some(first) = addrs.first() else {
            continue;
        };
        let cache = block
            .cache
            .clone()
            .map(|settings| Arc::new(Cache::new(settings)));
        if let Some(cache) = cache.as_ref().filter(|_| block.prometheus) {
            let zones: Vec<String> = cache.settings.zones.iter().map(|z| z.to_string()).collect();
            metrics.caches.push(CacheLabels {
                server: server_label(*first),
                zones: zones.join(","),
                cache: cache.clone(),
            });
        }
        let loop_probe = block.loop_detect.then(|| {
            let zone = block
                .zones
                .first()
                .cloned()
                .unwrap_or_else(hickory_proto::rr::Name::root);
            Arc::new(LoopProbe::new(zone))
        });
        if let Some(probe) = &loop_probe {
            loop_probes.push((*first, probe.clone()));
        }
        let chain = Arc::new(Chain {
            cluster: cluster.filter(|_| block.kubernetes).cloned(),
            cache,
            forward: block
                .forward
                .clone()
                .map(|f| Arc::new(Forwarder::new(f, metrics.forward.clone()))),
            loadbalance: block.loadbalance,
            log: block.log,
            errors: block.errors,
            loop_probe,
        });
        for addr in addrs {
            let server = server_label(*addr);
            for zone in &block.zones {
                let server_metrics = Arc::new(ServerMetrics::new(
                    server.clone(),
                    zone.to_string(),
                    block.first_plugin(),
                ));
                if block.prometheus {
                    metrics.servers.push(server_metrics.clone());
                    for plugin in block.plugins(plan) {
                        metrics
                            .plugins
                            .push((server.clone(), zone.to_string(), plugin));
                    }
                }
                routes.entry(*addr).or_default().push(Route {
                    zone: zone.clone(),
                    chain: chain.clone(),
                    metrics: server_metrics,
                });
            }
        }
    }
    Service {
        routers: routes
            .into_iter()
            .map(|(addr, routes)| (addr, Arc::new(Router::new(routes))))
            .collect(),
        loop_probes,
        metrics: Arc::new(metrics),
    }
}
