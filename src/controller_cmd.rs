//! `svcplane controller`: the Endpoints, EndpointSlice and EndpointSlice-mirroring controllers
//! against a cluster — beside kube-controller-manager for the `svcplane.io/selector`
//! annotation (`--manage=annotated`), or in place of its three controllers (`--manage=all`) —
//! with leader election on a Lease and the `/healthz`, `/readyz` and `/metrics` endpoint; and,
//! given a serving certificate, the Service admission webhook that allocates ClusterIPs and
//! NodePorts from the pools in etcd (every replica), with the releaser on the leader.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use controller::endpoint_controllers::{self, Hooks, Manage as ManageMode, Settings};
use controller::endpointslices::UPSTREAM_CONTROLLER;
use controller::leader::{self, Elector};
use controller::metrics::Metrics;
use controller::ops;
use controller::{ServiceAllocator, webhook};

use crate::etcd_flags::{EtcdFlags, parse_duration};
use crate::pool_flags::PoolFlags;

/// Which Services the controller keeps Endpoints and EndpointSlices for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Manage {
    /// Only Services without `spec.selector` that carry the `svcplane.io/selector` annotation
    /// (a set-based label selector), beside kube-controller-manager. Their slices carry
    /// `endpointslice.kubernetes.io/managed-by: endpointslice-controller.svcplane.io`, their
    /// Endpoints `endpointslice.kubernetes.io/skip-mirror: "true"`.
    Annotated,
    /// Every Service with a selector, with upstream's managed-by value, and the annotated ones:
    /// run it with kube-controller-manager's endpoint, endpointslice and
    /// endpointslicemirroring controllers disabled.
    All,
}

/// Flags as kube-controller-manager names them.
#[derive(Debug, Args)]
pub(crate) struct ControllerArgs {
    /// kubeconfig to reach the cluster with (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Which Services to manage.
    #[arg(long, value_enum, default_value = "annotated")]
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
    /// Elect one leader among the replicas on a coordination.k8s.io/v1 Lease; only the
    /// leader writes. `--leader-elect=false` for a single replica.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How long followers wait, after the last renewal they saw, before taking the Lease.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up (and exits).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// How often candidates try to take, and the leader to renew, the Lease.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    leader_elect_retry_period: Duration,
    /// The Lease's name.
    #[arg(long, value_name = "NAME", default_value = "svcplane-controller")]
    leader_elect_resource_name: String,
    /// The Lease's namespace.
    #[arg(long, value_name = "NAMESPACE", default_value = "kube-system")]
    leader_elect_resource_namespace: String,
    /// How long past its lease a leader that failed to renew may be before /healthz fails
    /// (kube-controller-manager's fixed 20 s).
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    leader_elect_healthz_tolerance: Duration,
    /// Where to serve /healthz, /readyz and /metrics over plain HTTP.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:10258")]
    listen_http: SocketAddr,
    /// Where to serve the Service admission webhook over HTTPS (path /mutate-services), when
    /// --tls-cert-file and --tls-key-file are given.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:9443")]
    listen_webhook: SocketAddr,
    /// The webhook's serving certificate (PEM, chain first); read again when it changes.
    #[arg(long, value_name = "FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file (PEM); read again when it changes.
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// How long an admission may take: past it, the webhook answers with a timeout and leaves
    /// nothing allocated. Keep it well below the webhook configuration's timeoutSeconds.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    allocation_timeout: Duration,
    /// How often the releaser retries releases and records that failed (API or pools away).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    release_retry_interval: Duration,
    /// How often the pools are compared with the live Services (missing values recorded,
    /// leaks freed after three runs, duplicates and strays reported), on the leader.
    #[arg(long, value_name = "DURATION", default_value = "3m", value_parser = parse_duration)]
    repair_interval: Duration,
    /// Check the flags and the files they name (serving certificate, pools file, etcd TLS
    /// files) and exit: 0 if the controller would start with them. Reaches neither the cluster
    /// nor etcd.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    pools: PoolFlags,
    #[command(flatten)]
    etcd: EtcdFlags,
}

impl ControllerArgs {
    /// What `--check` checks beyond [`ControllerArgs::check_timing`]: the files and the pools,
    /// as a start would read them.
    fn check_files(&self) -> anyhow::Result<()> {
        if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
            webhook::CertFiles::load(cert, key).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                !self.etcd.connection.endpoints.is_empty(),
                "--tls-cert-file: the webhook allocates from pools in etcd, shared by every replica; give --etcd-endpoints"
            );
            let specs = self.pools.specs()?;
            self.pools.cluster(&specs)?;
        }
        if !self.etcd.connection.endpoints.is_empty() {
            self.etcd
                .config()
                .check(ipam::store::DEFAULT_PREFIX)
                .map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    /// The leader election's timing must let a leader give up before followers take over.
    fn check_timing(&self) -> anyhow::Result<()> {
        if !self.leader_elect {
            return Ok(());
        }
        let (lease, renew, retry) = (
            self.leader_elect_lease_duration,
            self.leader_elect_renew_deadline,
            self.leader_elect_retry_period,
        );
        anyhow::ensure!(
            lease > renew,
            "--leader-elect-lease-duration ({lease:?}) must be greater than --leader-elect-renew-deadline ({renew:?})"
        );
        anyhow::ensure!(
            renew.as_secs_f64() > 1.2 * retry.as_secs_f64(),
            "--leader-elect-renew-deadline ({renew:?}) must be greater than 1.2 x --leader-elect-retry-period ({retry:?})"
        );
        anyhow::ensure!(
            lease.as_secs() >= 1,
            "--leader-elect-lease-duration must be at least 1s (the Lease counts whole seconds)"
        );
        Ok(())
    }
}

/// The allocation side: the webhook's pools, allocator and metrics.
struct Allocation {
    allocator: Arc<ipam::Allocator<ipam::store::etcd::EtcdStore>>,
}

/// Starts the webhook on every replica when a serving certificate is given: the pools applied
/// to etcd, the allocator following them, the HTTPS server.
async fn start_webhook(
    args: &ControllerArgs,
    client: &kube::Client,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Allocation>> {
    let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) else {
        return Ok(None);
    };
    let certs = webhook::CertFiles::load(cert, key).map_err(anyhow::Error::msg)?;
    let listener = webhook::bind(args.listen_webhook).await?;
    anyhow::ensure!(
        !args.etcd.connection.endpoints.is_empty(),
        "--tls-cert-file: the webhook allocates from pools in etcd, shared by every replica; give --etcd-endpoints"
    );
    let specs = args.pools.specs()?;
    let cluster = args.pools.cluster(&specs)?;
    let ip_pools: Vec<(String, String)> = specs
        .iter()
        .filter(|s| s.name != ipam::spec::NODEPORT)
        .flat_map(|s| s.cidrs.iter().map(|c| (s.name.clone(), c.clone())))
        .collect();
    controller::service_cidrs::check(client, &ip_pools).await?;
    let store = args.etcd.connect().await?;
    for (name, applied) in ipam::apply::apply(&store, &specs).await? {
        tracing::info!(pool = %name, %applied, "pool");
    }
    let allocator =
        Arc::new(ipam::Allocator::start(store, ipam::AllocatorOptions::default()).await?);
    let _ = metrics.pools.set(allocator.view());
    let hook = webhook::Webhook {
        allocator: Arc::new(ServiceAllocator::new(allocator.clone(), cluster)),
        allocation_timeout: args.allocation_timeout,
        metrics: metrics.clone(),
    };
    let tls = webhook::tls_config(Arc::new(certs));
    tokio::spawn(webhook::serve(listener, tls, hook));
    eprintln!(
        "svcplane controller: serving the Service admission webhook on https://{}{}",
        args.listen_webhook,
        webhook::WEBHOOK_PATH
    );
    Ok(Some(Allocation { allocator }))
}

pub(crate) async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    args.check_timing()?;
    if args.check {
        args.check_files()?;
        eprintln!("svcplane controller: the flags and the files they name are valid");
        return Ok(());
    }
    let client = cache::kube_feed::client(args.kubeconfig.as_deref()).await?;
    let manage = match args.manage {
        Manage::All => ManageMode::All,
        Manage::Annotated => ManageMode::Annotated,
    };
    let settings = Settings {
        manage,
        concurrent_syncs: args.concurrent_service_endpoint_syncs,
        endpoint_batch_period: args.endpoint_updates_batch_period,
        endpointslice_batch_period: args.endpointslice_updates_batch_period,
        max_endpoints_per_slice: usize::from(args.max_endpoints_per_slice),
        max_backoff: args.max_sync_backoff,
        mirroring_max_endpoints_per_subset: args.mirroring_max_endpoints_per_subset,
        controller_name: UPSTREAM_CONTROLLER.to_string(),
    };
    let metrics = Arc::new(Metrics::default());
    let allocation = start_webhook(&args, &client, &metrics).await?;
    let mut elector = args.leader_elect.then(|| {
        let config = leader::Config {
            namespace: args.leader_elect_resource_namespace.clone(),
            name: args.leader_elect_resource_name.clone(),
            identity: leader::identity(),
            lease_duration: args.leader_elect_lease_duration,
            renew_deadline: args.leader_elect_renew_deadline,
            retry_period: args.leader_elect_retry_period,
        };
        Elector::new(client.clone(), config, metrics.clone())
    });
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let listener = ops::bind(args.listen_http).await?;
    let health = ops::Health {
        synced: ready_rx.clone(),
        leader: elector.as_ref().map(Elector::state),
        leader_tolerance: args.leader_elect_healthz_tolerance,
        metrics: metrics.clone(),
    };
    tokio::spawn(async move {
        if let Err(e) = ops::serve(listener, health).await {
            tracing::error!(error = %e, "the operations endpoint stopped");
        }
    });
    tokio::spawn(announce_sync(ready_rx, args.manage));
    let (lead_tx, lead_rx) = tokio::sync::watch::channel(false);
    let leading = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|l| *l).await;
    };
    // The releaser (following the Service watch) and repair run on the leader only: one
    // writer of releases.
    let leader_work = allocation.map(|a| {
        let services = kube::Api::<k8s_openapi::api::core::v1::Service>::all(client.clone());
        let lead = leading(lead_rx.clone());
        let retry = args.release_retry_interval;
        let releaser_metrics = metrics.clone();
        let repair = controller::repair::Context::new(
            a.allocator.clone(),
            client.clone(),
            metrics.clone(),
            controller::repair::Settings {
                interval: args.repair_interval,
                leak_grace: args.allocation_timeout,
            },
        );
        crate::cli::AbortOnDrop(tokio::spawn(async move {
            lead.await;
            // Repair starts once the releaser has imported what the Services carry, so values
            // kube-apiserver allocated on its own are imports, not repairs with Warning events.
            let (imported_tx, imported) = tokio::sync::oneshot::channel();
            let releaser = controller::releaser::run(
                a.allocator,
                services,
                Default::default(),
                retry,
                Some(imported_tx),
                Some(releaser_metrics),
            );
            let repair = async move {
                if imported.await.is_ok() {
                    controller::repair::run(repair).await;
                }
            };
            tokio::select! {
                result = releaser => {
                    if let Err(e) = result {
                        tracing::error!(error = %e, "the releaser stopped");
                    }
                }
                () = repair => {}
            }
        }))
    });
    let hooks = Hooks {
        ready: ready_tx,
        shared: cache::kube_feed::Shared::default(),
        metrics,
        leading: Box::pin(leading(lead_rx)),
    };
    let mut controllers = Box::pin(endpoint_controllers::run(client, settings, hooks));
    let Some(elector) = elector.as_mut() else {
        let _ = lead_tx.send(true);
        return tokio::select! {
            result = &mut controllers => Ok(result?),
            _ = crate::cli::shutdown_signal() => Ok(()),
        };
    };
    tokio::select! {
        _ = elector.acquire() => {}
        result = &mut controllers => return Ok(result?),
        _ = crate::cli::shutdown_signal() => return Ok(()),
    }
    eprintln!(
        "svcplane controller: leading (Lease {}/{})",
        args.leader_elect_resource_namespace, args.leader_elect_resource_name
    );
    let _ = lead_tx.send(true);
    enum End {
        Lost,
        Failed(controller::Error),
        Shutdown,
    }
    let end = tokio::select! {
        _ = elector.hold() => End::Lost,
        result = &mut controllers => match result {
            Ok(()) => End::Shutdown,
            Err(e) => End::Failed(e),
        },
        _ = crate::cli::shutdown_signal() => End::Shutdown,
    };
    // Every worker stops before the Lease is released.
    drop(controllers);
    drop(leader_work);
    match end {
        End::Lost => anyhow::bail!(
            "leader election lost: no renewal of the Lease succeeded within --leader-elect-renew-deadline"
        ),
        End::Failed(e) => {
            elector.release().await;
            Err(e).context("the controllers stopped")
        }
        End::Shutdown => {
            elector.release().await;
            Ok(())
        }
    }
}

/// Says on stderr when the caches have synced (tests and operators wait for it).
async fn announce_sync(mut ready: tokio::sync::watch::Receiver<bool>, manage: Manage) {
    if ready.wait_for(|r| *r).await.is_ok() {
        let what = match manage {
            Manage::All => "every Service with a selector or the svcplane.io/selector annotation",
            Manage::Annotated => "Services with the svcplane.io/selector annotation",
        };
        eprintln!(
            "svcplane controller: caches synced; managing Endpoints and EndpointSlices of {what}"
        );
    }
}
