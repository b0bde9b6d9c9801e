//! The pool flags shared by `svcplane dev` and `svcplane controller`: kube-apiserver's two range
//! flags and a hold, or a pools file; what pools they define and the cluster's IP families.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use controller::Cluster;
use ipam::Family;

use crate::etcd_flags::parse_duration;

/// The ClusterIP and NodePort pools.
#[derive(Debug, Clone, Args)]
pub(crate) struct PoolFlags {
    /// Service ClusterIP ranges, one CIDR per family, the primary (default) family first; as
    /// kube-apiserver's flag of that name (they must be equal, or lie within its ranges).
    #[arg(
        long,
        value_name = "CIDR",
        value_delimiter = ',',
        default_value = "10.96.0.0/12"
    )]
    pub(crate) service_cluster_ip_range: Vec<String>,
    /// NodePort range, as kube-apiserver's flag of that name.
    #[arg(long, value_name = "FIRST-LAST", default_value = ipam::spec::DEFAULT_NODE_PORT_RANGE)]
    pub(crate) service_node_port_range: String,
    /// A pools file (several CIDRs per family, reservations, holds: see docs/ipam.md) instead of
    /// the two range flags and --hold.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["service_cluster_ip_range", "service_node_port_range", "hold"])]
    pub(crate) pools: Option<PathBuf>,
    /// How long a released ClusterIP or NodePort stays held for its Service (0: freed at once).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub(crate) hold: Duration,
}

impl PoolFlags {
    /// The pools the flags define.
    pub(crate) fn specs(&self) -> anyhow::Result<Vec<ipam::PoolSpec>> {
        Ok(match &self.pools {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--pools: cannot read {}", path.display()))?;
                ipam::spec::parse_pools_file(&text)?
            }
            None => ipam::spec::specs_from_flags(
                &self.service_cluster_ip_range,
                Some(&self.service_node_port_range),
                self.hold,
            )?,
        })
    }

    /// The service IP families, primary first: the order of --service-cluster-ip-range, or with
    /// a pools file IPv4 before IPv6.
    pub(crate) fn cluster(&self, specs: &[ipam::PoolSpec]) -> anyhow::Result<Cluster> {
        let mut families = Vec::new();
        if self.pools.is_some() {
            for (name, family) in [
                (ipam::spec::IPV4, Family::IPv4),
                (ipam::spec::IPV6, Family::IPv6),
            ] {
                if specs.iter().any(|s| s.name == name) {
                    families.push(family);
                }
            }
        } else {
            for text in &self.service_cluster_ip_range {
                families.push(if text.contains(':') {
                    Family::IPv6
                } else {
                    Family::IPv4
                });
            }
        }
        if families.is_empty() {
            anyhow::bail!(
                "--pools: no clusterIP pool (ipv4 or ipv6) is defined; Services would get no ClusterIP"
            );
        }
        if !specs.iter().any(|s| s.name == ipam::spec::NODEPORT) {
            anyhow::bail!(
                "--pools: no nodePort pool is defined; NodePort Services could not be created"
            );
        }
        Ok(Cluster { families })
    }
}
