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
/// answering from `cluster`, its blocks registered in `metrics` in place of those there (a
/// server and zone seen before keeps its counters); or why a block cannot run (a `forward`'s
/// TLS files that do not load).
pub fn build(
    plan: &Plan,
    listen: &[Vec<SocketAddr>],
    cluster: Option<&ClusterSource>,
    metrics: &Metrics,
) -> Result<Service, String> {
    let mut forwarders = Vec::new();
    for block in &plan.blocks {
        forwarders.push(match block.forward.clone() {
            Some(f) => Some(Arc::new(
                Forwarder::new(f, metrics.forward.clone()).map_err(|e| {
                    format!(
                        "the block at {}:{}: forward {e}",
                        block.at.file, block.at.line
                    )
                })?,
            )),
            None => None,
        });
    }
    let previous: Vec<Arc<ServerMetrics>> =
        std::mem::take(&mut *metrics.servers.lock().expect("metrics lock"));
    let mut servers = Vec::new();
    let mut caches = Vec::new();
    let mut plugins = Vec::new();
    let mut routes: BTreeMap<SocketAddr, Vec<Route>> = BTreeMap::new();
    let mut loop_probes = Vec::new();
    for ((block, addrs), forward) in plan.blocks.iter().zip(listen).zip(forwarders) {
        let Some(first) = addrs.first() else {
            continue;
        };
        let cache = block
            .cache
            .clone()
            .map(|settings| Arc::new(Cache::new(settings)));
        if let Some(cache) = cache.as_ref().filter(|_| block.prometheus) {
            let zones: Vec<String> = cache.settings.zones.iter().map(|z| z.to_string()).collect();
            caches.push(CacheLabels {
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
            hosts: block.hosts.clone().map(crate::hosts::Hosts::start),
            forward,
            loadbalance: block.loadbalance,
            log: block.log.clone(),
            errors: block.errors.clone(),
            loop_probe,
            bufsize: block.bufsize,
            rewrite: block.rewrite.clone(),
        });
        for addr in addrs {
            let server = server_label(*addr);
            for zone in &block.zones {
                let zone_label = zone.to_string();
                let server_metrics = previous
                    .iter()
                    .find(|m| {
                        m.server == server
                            && m.zone == zone_label
                            && m.first_plugin == block.first_plugin()
                    })
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(ServerMetrics::new(
                            server.clone(),
                            zone_label.clone(),
                            block.first_plugin(),
                        ))
                    });
                if block.prometheus {
                    servers.push(server_metrics.clone());
                    for plugin in block.plugins(plan) {
                        plugins.push((server.clone(), zone_label.clone(), plugin));
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
    *metrics.servers.lock().expect("metrics lock") = servers;
    *metrics.caches.lock().expect("metrics lock") = caches;
    *metrics.plugins.lock().expect("metrics lock") = plugins;
    Ok(Service {
        routers: routes
            .into_iter()
            .map(|(addr, routes)| (addr, Arc::new(Router::new(routes))))
            .collect(),
        loop_probes,
    })
}
