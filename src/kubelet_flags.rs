//! The simulated kubelet's flags, shared by `svcplane apiserver --simulate-kubelet` and
//! `svcplane dev`: how many nodes in which zones, the pod ranges, the longest grace period a pod
//! delete gets, and the kubelet's sync period.

use std::time::Duration;

use anyhow::Context;
use apiserver::kubelet::{IpNet, KubeletConfig, parse_cidr};
use apiserver::registry::Registry;
use clap::Args;

use crate::etcd_flags::parse_duration;

/// In `svcplane apiserver` they take effect with --simulate-kubelet.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Simulated kubelet")]
pub(crate) struct KubeletFlags {
    /// Simulated nodes, registered as node-1..node-N; pods are scheduled onto the least loaded.
    #[arg(long, value_name = "N", default_value_t = 1)]
    nodes: usize,
    /// Pod IPs come from this range; one IPv4 and one IPv6 range (repeat, or separate with a
    /// comma) make pods dual-stack, the first family primary.
    #[arg(
        long = "pod-cidr",
        value_name = "CIDR",
        value_delimiter = ',',
        default_value = "10.244.0.0/16",
        value_parser = parse_cidr
    )]
    pod_cidrs: Vec<IpNet>,
    /// Longest grace period a pod delete gets: the pod stays, with deletionTimestamp, for the
    /// requested period (default its terminationGracePeriodSeconds) up to this, then goes
    /// (0: pods go at once).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    max_pod_grace: Duration,
    /// Zones the nodes are spread over, round-robin (label topology.kubernetes.io/zone).
    #[arg(
        long,
        value_name = "ZONE",
        value_delimiter = ',',
        default_value = "zone-a,zone-b,zone-c"
    )]
    zones: Vec<String>,
    /// How often the simulated nodes are re-registered if deleted, their status re-posted, and
    /// pods that fit no node retried.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    kubelet_sync_interval: Duration,
    /// The wait after a failed list, watch or pod write before the kubelet tries again.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    kubelet_retry_backoff: Duration,
}

impl KubeletFlags {
    /// The kubelet's configuration, checked.
    pub(crate) fn config(&self) -> anyhow::Result<KubeletConfig> {
        let config = KubeletConfig {
            nodes: self.nodes,
            pod_cidrs: self.pod_cidrs.clone(),
            zones: self.zones.clone(),
            node_sync_interval: self.kubelet_sync_interval,
            retry_backoff: self.kubelet_retry_backoff,
            ..KubeletConfig::default()
        };
        config
            .check()
            .map_err(anyhow::Error::msg)
            .context("the simulated kubelet's flags")?;
        Ok(config)
    }

    /// What the registry's `max_pod_grace` is while this kubelet runs.
    pub(crate) fn max_pod_grace(&self) -> Duration {
        self.max_pod_grace
    }

    /// Starts the kubelet over `registry` in a task of its own.
    pub(crate) fn spawn(&self, registry: Registry) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let config = self.config()?;
        apiserver::kubelet::spawn(registry, config).map_err(anyhow::Error::msg)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        kubelet: KubeletFlags,
    }

    #[test]
    fn defaults_and_lists_parse() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        let config = cli.kubelet.config().unwrap();
        assert_eq!(config.nodes, 1);
        assert_eq!(config.pod_cidrs, vec!["10.244.0.0/16".parse().unwrap()]);
        assert_eq!(config.zones, vec!["zone-a", "zone-b", "zone-c"]);
        assert_eq!(cli.kubelet.max_pod_grace(), Duration::from_secs(2));
        let cli = Cli::try_parse_from([
            "x",
            "--pod-cidr",
            "10.1.0.0/16,fd00:1::/64",
            "--zones",
            "east,west",
            "--nodes",
            "4",
        ])
        .unwrap();
        let config = cli.kubelet.config().unwrap();
        assert_eq!(config.pod_cidrs.len(), 2);
        assert_eq!(config.zones, vec!["east", "west"]);
        let e = Cli::try_parse_from(["x", "--pod-cidr", "10.1.2.0/16"]).unwrap_err();
        assert!(e.to_string().contains("did you mean 10.1.0.0/16"), "{e}");
        let cli = Cli::try_parse_from([
            "x",
            "--pod-cidr",
            "10.1.0.0/16",
            "--pod-cidr",
            "10.2.0.0/16",
        ])
        .unwrap();
        assert!(cli.kubelet.config().is_err());
    }
}
