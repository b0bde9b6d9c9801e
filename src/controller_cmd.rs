//! `svcplane controller`: the Endpoints, EndpointSlice and EndpointSlice-mirroring controllers
//! against a cluster, in place of kube-controller-manager's (`--manage=all`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use controller::endpoint_controllers::{self, Settings};
use controller::endpointslices::UPSTREAM_CONTROLLER;

use crate::etcd_flags::parse_duration;

/// Which Services the controller keeps Endpoints and EndpointSlices for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Manage {
    /// Every Service with a selector, with upstream's managed-by value: run it with
    /// kube-controller-manager's endpoint, endpointslice and endpointslicemirroring
    /// controllers disabled.
    All,
}

/// Flags as kube-controller-manager names them.
#[derive(Debug, Args)]
pub(crate) struct ControllerArgs {
    /// kubeconfig to reach the cluster with (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Which Services to manage. Only `all` exists so far: `annotated` (svcplane's set-based
    /// selector annotation, beside kube-controller-manager) comes in a later release.
    #[arg(long, value_enum, default_value = "all")]
    manage: Manage,
    /// Services synced at once, per controller.
    #[arg(long, default_value_t = 5)]
    concurrent_service_endpoint_syncs: usize,
    /// How long pod changes wait before an Endpoints sync, to batch them.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    endpoint_updates_batch_period: Duration,
    /// How long pod changes wait before an EndpointSlice sync, to batch them.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    endpointslice_updates_batch_period: Duration,
    /// Endpoints per EndpointSlice, 1 to 1000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    max_endpoints_per_slice: u16,
    /// Addresses of one Endpoints subset mirrored into EndpointSlices, ready ones first.
    #[arg(long, default_value_t = 1000)]
    mirroring_max_endpoints_per_subset: usize,
    /// The longest wait before a failing sync is retried.
    #[arg(long, value_name = "DURATION", default_value = "100s", value_parser = parse_duration)]
    max_sync_backoff: Duration,
}

pub(crate) async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let Manage::All = args.manage;
    let client = cache::kube_feed::client(args.kubeconfig.as_deref()).await?;
    let settings = Settings {
        concurrent_syncs: args.concurrent_service_endpoint_syncs,
        endpoint_batch_period: args.endpoint_updates_batch_period,
        endpointslice_batch_period: args.endpointslice_updates_batch_period,
        max_endpoints_per_slice: usize::from(args.max_endpoints_per_slice),
        max_backoff: args.max_sync_backoff,
        mirroring_max_endpoints_per_subset: args.mirroring_max_endpoints_per_subset,
        controller_name: UPSTREAM_CONTROLLER.to_string(),
    };
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
    let run = endpoint_controllers::run(client, settings, ready_tx);
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => return Ok(result?),
        _ = ready_rx.wait_for(|r| *r) => {}
        _ = crate::cli::shutdown_signal() => return Ok(()),
    }
    eprintln!(
        "svcplane controller: caches synced; managing Endpoints and EndpointSlices of every Service with a selector"
    );
    tokio::select! {
        result = run => Ok(result?),
        _ = crate::cli::shutdown_signal() => Ok(()),
    }
}
