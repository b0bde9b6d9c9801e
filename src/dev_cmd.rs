//! `svcplane dev`: the whole system on one machine — the API server, the simulated kubelet,
//! Service allocation at admission with its releaser, the endpoint controllers in `all` mode,
//! and cluster DNS fed from the API — with a kubeconfig written for kubectl.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use apiserver::registry::{Registry, RegistryConfig};
use apiserver::server::Server;
use apiserver::system_services::SystemService;
use clap::Args;
use controller::{Cluster, ServiceAllocator};
use ipam::store::Store;
use ipam::{Allocator, AllocatorOptions, Family};

use crate::apiserver_cmd::{ServeFlags, StorageFlags};
use crate::etcd_flags::parse_duration;
use crate::kubelet_flags::KubeletFlags;
use crate::local_admission::LocalAdmission;
use crate::pool_flags::PoolFlags;

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Address of the Kubernetes API; anything but loopback needs TLS and tokens.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:6443")]
    listen_api: SocketAddr,
    /// Address of cluster DNS (UDP and TCP); 1053 keeps clear of port 53 and of mDNS's 5353.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:1053")]
    dns: SocketAddr,
    /// The nameservers cluster DNS forwards other names to, as kubeadm's Corefile forwards to
    /// the node's resolv.conf (`nameserver IP:PORT` accepted); a file without any forwards
    /// nothing.
    #[arg(long, value_name = "FILE", default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    #[command(flatten)]
    pools: PoolFlags,
    /// How Services get their ClusterIPs and NodePorts: `local`, the allocation module called
    /// in-process after validation (and told of writes that fail); or `webhook`, the allocation
    /// webhook of `svcplane controller` served on loopback and called over HTTPS as
    /// kube-apiserver calls it (before naming and validation, never told of failed writes).
    #[arg(long, value_enum, default_value = "local")]
    allocation: AllocationMode,
    /// With `--allocation=webhook`: how long an admission may take before it is answered with
    /// a timeout, leaving nothing allocated.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    allocation_timeout: Duration,
    /// How often the pools are compared with the Services, as kube-apiserver's repair
    /// controllers and `svcplane controller` do: values missing from the pools are recorded
    /// (with upstream's events), leaks freed after three runs and the allocation timeout.
    #[arg(long, value_name = "DURATION", default_value = "3m", value_parser = parse_duration)]
    repair_interval: Duration,
    /// How often the releaser retries releases and records that failed (API or pools away).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    release_retry_interval: Duration,
    /// Key prefix of the pools when --etcd-endpoints is given.
    #[arg(long, value_name = "PREFIX", default_value = ipam::store::DEFAULT_PREFIX)]
    ipam_etcd_prefix: String,
    #[command(flatten)]
    storage: StorageFlags,
    #[command(flatten)]
    serve: ServeFlags,
    #[command(flatten)]
    kubelet: KubeletFlags,
}

/// How `svcplane dev` allocates at admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AllocationMode {
    Local,
    Webhook,
}

/// Where the kubeconfig goes when --kubeconfig-out is not given.
const DEFAULT_KUBECONFIG: &str = ".svcplane/kubeconfig";

pub(crate) async fn run(mut args: DevArgs) -> anyhow::Result<()> {
    if args.serve.kubeconfig_out.is_none() {
        args.serve.kubeconfig_out = Some(PathBuf::from(DEFAULT_KUBECONFIG));
    }
    // Everything that can be checked before anything is started or written.
    args.kubelet.config()?;
    let config = args
        .serve
        .server_config(args.listen_api, args.storage.etcd_compaction_interval());
    config.check().map_err(|e| {
        let flag = if e.flag == "--listen" {
            "--listen-api"
        } else {
            e.flag
        };
        anyhow::anyhow!(
            "{flag}: {}",
            e.message.replace("--listen ", "--listen-api ")
        )
    })?;
    std::net::UdpSocket::bind(args.dns)
        .and_then(|_| std::net::TcpListener::bind(args.dns))
        .with_context(|| format!("--dns: cannot serve DNS on {}", args.dns))?;
    let specs = args.pools.specs()?;
    let cluster = args.pools.cluster(&specs)?;
    if args.storage.etcd_endpoints().is_empty() {
        run_with(
            args,
            ipam::store::memory::MemoryStore::new(),
            specs,
            cluster,
        )
        .await
    } else {
        let config = args.storage.etcd_config(&args.ipam_etcd_prefix);
        let store = ipam::store::etcd::EtcdStore::connect(&config).await?;
        run_with(args, store, specs, cluster).await
    }
}

async fn run_with<S: Store>(
    args: DevArgs,
    store: S,
    specs: Vec<ipam::PoolSpec>,
    cluster: Cluster,
) -> anyhow::Result<()> {
    for (name, applied) in ipam::apply::apply(&store, &specs).await? {
        tracing::info!(pool = %name, %applied, "pool");
    }
    let allocator = Arc::new(Allocator::start(store, AllocatorOptions::default()).await?);
    let primary = primary_cidr(&specs, &cluster)?;
    let service_allocator = Arc::new(ServiceAllocator::new(allocator.clone(), cluster));
    let mut admission: Vec<Arc<dyn apiserver::ServiceAdmission>> = match args.allocation {
        AllocationMode::Local => vec![Arc::new(LocalAdmission::new(service_allocator))],
        AllocationMode::Webhook => {
            // Beside the kubeconfig, in the dev state directory.
            let dir = args
                .serve
                .kubeconfig_out
                .as_deref()
                .and_then(|p| p.parent())
                .filter(|d| !d.as_os_str().is_empty())
                .map(|d| d.to_path_buf())
                .unwrap_or_else(|| PathBuf::from("."));
            let webhook = crate::dev_webhook::start(
                service_allocator,
                &dir,
                args.allocation_timeout,
                Arc::new(controller::metrics::Metrics::default()),
            )
            .await?;
            vec![Arc::new(webhook)]
        }
    };
    admission.extend(args.serve.admission()?);

    let config = args
        .serve
        .server_config(args.listen_api, args.storage.etcd_compaction_interval());
    let (storage, prefix) = args.storage.open().await?;
    let storage_name = if args.storage.etcd_endpoints().is_empty() {
        "memory"
    } else {
        "etcd"
    };
    let registry = Registry::new(
        storage,
        RegistryConfig {
            prefix,
            admission,
            max_pod_grace: Some(args.kubelet.max_pod_grace()),
            namespace_cleanup_interval: args.serve.namespace_cleanup_interval(),
            gc_retry_interval: args.serve.gc_retry_interval(),
        },
    );
    registry
        .bootstrap()
        .await
        .context("creating the default namespaces")?;
    let server = Server::bind(registry.clone(), &config).await?;
    let local = server.local_addr();
    // default/kubernetes and kube-system/kube-dns, with endpoints at this process's listeners.
    for system in [
        SystemService::kubernetes(nth_address(&primary, 1), local),
        SystemService::kube_dns(nth_address(&primary, 10), args.dns),
    ] {
        apiserver::system_services::ensure(&registry, &system)
            .await
            .with_context(|| format!("creating {}/{}", system.namespace, system.name))?;
    }
    let mut api = tokio::spawn(server.run(crate::cli::shutdown_signal()));
    let mut kubelet = args.kubelet.spawn(registry.clone())?;

    // The releaser has taken in the first list before anyone is told where the API is, so no
    // Service comes and goes unseen by it.
    let kubeconfig_text = args.serve.kubeconfig(&config, local)?;
    let client = client_for(&kubeconfig_text).await?;
    let services = kube::Api::<k8s_openapi::api::core::v1::Service>::all(client.clone());
    let (synced_tx, synced) = tokio::sync::oneshot::channel();
    let mut releaser = tokio::spawn(controller::releaser::run(
        allocator.clone(),
        services,
        Default::default(),
        args.release_retry_interval,
        Some(synced_tx),
        None,
    ));
    tokio::time::timeout(Duration::from_secs(30), synced)
        .await
        .context("the releaser did not list the Services within 30 s")?
        .context("the releaser stopped before listing the Services")?;
    // Repair, as kube-apiserver's repair controllers run beside its allocator and `svcplane
    // controller` beside its webhook: values the pools lack are recorded again, with upstream's
    // events; leaks are freed (a webhook is not told of writes that fail after it admitted them).
    let _stop_repair = crate::cli::AbortOnDrop(tokio::spawn(controller::repair::run(
        controller::repair::Context::new(
            allocator.clone(),
            client.clone(),
            Arc::new(controller::metrics::Metrics::default()),
            controller::repair::Settings {
                interval: args.repair_interval,
                leak_grace: args.allocation_timeout,
            },
        ),
    )));
    // The endpoint controllers in `all` mode, as kube-controller-manager's would run; they and
    // the DNS cache share one watch of Services and one of EndpointSlices.
    let mut service_watch = cache::follow::SharedWatch::new(kube::Api::all(client.clone()));
    let mut slice_watch = cache::follow::SharedWatch::new(kube::Api::all(client.clone()));
    let mut share = || cache::kube_feed::Shared {
        services: Some(service_watch.subscribe()),
        endpoint_slices: Some(slice_watch.subscribe()),
        ..Default::default()
    };
    let (controller_share, dns_share) = (share(), share());
    let shared_watches = [service_watch.start(), slice_watch.start()];
    let (controllers_ready, mut controllers_synced) = tokio::sync::watch::channel(false);
    let mut hooks = controller::endpoint_controllers::Hooks::solo(controllers_ready);
    hooks.shared = controller_share;
    let mut controllers = tokio::spawn(controller::endpoint_controllers::run(
        client.clone(),
        controller::endpoint_controllers::Settings::default(),
        hooks,
    ));
    tokio::time::timeout(
        Duration::from_secs(30),
        controllers_synced.wait_for(|synced| *synced),
    )
    .await
    .context("the endpoint controllers did not sync within 30 s")?
    .context("the endpoint controllers stopped before syncing")?;
    args.serve.write_kubeconfig(&config, local)?;
    let kubeconfig = args.serve.kubeconfig_out.clone().expect("defaulted above");

    let mut dns_args = crate::dns_cmd::DnsArgs::from_args(&[
        "--listen".into(),
        args.dns.to_string(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--zone".into(),
        "cluster.local,in-addr.arpa,ip6.arpa".into(),
        "--pods".into(),
        "insecure".into(),
        "--fallthrough=in-addr.arpa,ip6.arpa".into(),
    ])?;
    dns_args.forward_as_kubeadm(&args.resolv_conf)?;
    let mut dns = tokio::spawn(crate::dns_cmd::run_with(dns_args, dns_share));

    let shown = std::path::absolute(&kubeconfig).unwrap_or(kubeconfig.clone());
    eprintln!(
        "svcplane dev: Kubernetes API {scheme}://{local} ({storage_name} storage), DNS {dns} (udp, tcp), kubeconfig {kc}\n\
         \n\
         Next, try:\n  \
           export KUBECONFIG={kc}\n  \
           kubectl apply -f examples/\n  \
           dig @{dns_ip} -p {dns_port} petclinic.default.svc.cluster.local",
        scheme = config.scheme(),
        dns = args.dns,
        kc = shown.display(),
        dns_ip = args.dns.ip(),
        dns_port = args.dns.port(),
    );
    tokio::select! {
        result = &mut api => result?.context("the API server stopped")?,
        result = &mut dns => result?.context("the DNS server stopped")?,
        result = &mut kubelet => {
            result?;
            anyhow::bail!("the simulated kubelet stopped");
        }
        result = &mut releaser => result?.context("the releaser stopped")?,
        result = &mut controllers => result?.context("the endpoint controllers stopped")?,
        _ = futures::future::select_all(shared_watches) => anyhow::bail!("a shared watch stopped"),
    }
    Ok(())
}

/// The first CIDR of the primary family's pool: where `kubernetes` (its first address) and
/// `kube-dns` (its tenth) get their ClusterIPs, as kubeadm places them.
fn primary_cidr(specs: &[ipam::PoolSpec], cluster: &Cluster) -> anyhow::Result<ipnet::IpNet> {
    let name = match cluster.families[0] {
        Family::IPv4 => ipam::spec::IPV4,
        Family::IPv6 => ipam::spec::IPV6,
    };
    let text = specs
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| s.cidrs.first())
        .with_context(|| format!("no {name} pool has a CIDR"))?;
    text.parse()
        .with_context(|| format!("the {name} pool's CIDR {text} does not parse"))
}

/// The address `n` after the network address of `net`.
fn nth_address(net: &ipnet::IpNet, n: u8) -> std::net::IpAddr {
    match net.network() {
        std::net::IpAddr::V4(v4) => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from(v4) + u32::from(n)))
        }
        std::net::IpAddr::V6(v6) => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) + u128::from(n)))
        }
    }
}

/// A client of the dev API, from its kubeconfig.
async fn client_for(kubeconfig: &str) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}
