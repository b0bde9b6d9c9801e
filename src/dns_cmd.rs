//! `svcplane dns`: cluster DNS from manifests or the Kubernetes API.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cache::{Cache, Kind};
use clap::Args;
use dns::config::{Config, PodsMode, parse_zone};
use dns::server::{self, Limits};

use crate::etcd_flags::parse_duration;

/// Options mirror the CoreDNS `kubernetes` plugin's.
#[derive(Debug, Args)]
pub(crate) struct DnsArgs {
    /// Address to serve UDP and TCP on (repeat or separate with commas).
    #[arg(
        long,
        value_name = "ADDR:PORT",
        value_delimiter = ',',
        default_value = "0.0.0.0:53"
    )]
    listen: Vec<SocketAddr>,
    /// Zone to answer for (repeat or separate with commas); reverse zones such as in-addr.arpa
    /// and ip6.arpa answer PTR queries. The first forward zone is the primary one.
    #[arg(
        long = "zone",
        value_name = "ZONE",
        value_delimiter = ',',
        default_value = "cluster.local"
    )]
    zones: Vec<String>,
    /// TTL of every answer, 0 to 3600.
    #[arg(long, default_value_t = 5)]
    ttl: u32,
    /// Pod records: disabled, insecure (any IP in an existing namespace) or verified (a live
    /// pod must have the IP).
    #[arg(long, value_name = "MODE", default_value = "disabled")]
    pods: PodsMode,
    /// Name endpoints by their pod's name when they have no hostname.
    #[arg(long)]
    endpoint_pod_names: bool,
    /// Treat a ClusterIP Service without ready endpoints as not existing (NXDOMAIN).
    #[arg(long)]
    ignore_empty_service: bool,
    /// Do not watch EndpointSlices: no headless, endpoint or endpoint-PTR answers.
    #[arg(long)]
    noendpoints: bool,
    /// Expose only these namespaces (repeat or separate with commas).
    #[arg(long, value_name = "NS", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Pass NXDOMAIN answers of these zones (bare: all served zones) to the next resolver;
    /// recorded now, in effect once forwarding exists.
    #[arg(long, value_name = "ZONE", num_args = 0.., value_delimiter = ',', require_equals = true)]
    fallthrough: Option<Vec<String>>,
    /// kubeconfig to watch the cluster with (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "PATH", conflicts_with = "manifests")]
    kubeconfig: Option<PathBuf>,
    /// Serve the objects in these manifest files or directories instead of watching a cluster
    /// (repeat or separate with commas); reloaded when they change.
    #[arg(long, value_name = "PATH", value_delimiter = ',')]
    manifests: Vec<PathBuf>,
    /// How long to wait for the first sync before answering at all.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    startup_timeout: Duration,
    /// How often manifests are checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    manifests_reload_interval: Duration,
    /// Concurrent TCP connections.
    #[arg(long, default_value_t = 1000)]
    max_tcp_connections: usize,
    /// Idle TCP connections are closed after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    tcp_idle_timeout: Duration,
    /// A Corefile to run instead of the flags above. Supported so far: one server block (its
    /// port) with a `kubernetes` directive (zones; ttl, pods, endpoint_pod_names, noendpoints,
    /// ignore empty_service, namespaces, fallthrough, kubeconfig, startup_timeout, and
    /// svcplane's `manifests FILE...`); any other directive is refused with its line.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["listen", "zones", "ttl", "pods", "endpoint_pod_names", "ignore_empty_service", "noendpoints", "namespaces", "fallthrough", "kubeconfig", "manifests", "startup_timeout"])]
    conf: Option<PathBuf>,
    /// With --conf: check the Corefile and exit, 0 if svcplane runs it, 1 (naming the file and
    /// line) if not.
    #[arg(long, requires = "conf")]
    check: bool,
    /// With --conf: the port of every server block instead of the Corefile's.
    #[arg(long, value_name = "N", requires = "conf")]
    dns_port: Option<u16>,
    /// With --conf: the address every listener binds (DNS, health, ready) instead of the
    /// Corefile's.
    #[arg(long, value_name = "ADDR", requires = "conf")]
    bind: Option<IpAddr>,
    /// With --conf: the port of the `health` endpoint instead of the Corefile's.
    #[arg(long, value_name = "N", requires = "conf")]
    health_port: Option<u16>,
    /// With --conf: the port of the `ready` endpoint instead of the Corefile's.
    #[arg(long, value_name = "N", requires = "conf")]
    ready_port: Option<u16>,
    /// The Corefile's `health`: where `/health` is served, and the lameduck period.
    #[arg(skip)]
    health: Option<dns::corefile::Health>,
    /// The Corefile's `ready`: where `/ready` is served.
    #[arg(skip)]
    ready: Option<SocketAddr>,
    /// With --conf: this file stands for /etc/resolv.conf wherever the Corefile names it;
    /// `nameserver IP:PORT` lines are accepted (svcplane's extension, for a loopback upstream).
    #[arg(long, value_name = "FILE", requires = "conf")]
    resolv_conf: Option<PathBuf>,
    /// The Corefile's `forward`.
    #[arg(skip)]
    forward: Option<dns::forward::Forward>,
    /// The Corefile's `log`.
    #[arg(skip)]
    log: bool,
}

impl DnsArgs {
    /// `svcplane dns`'s options with its defaults and these arguments (for `svcplane dev`).
    pub(crate) fn from_args(args: &[String]) -> anyhow::Result<DnsArgs> {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            dns: DnsArgs,
        }
        let argv = std::iter::once("dns".to_string()).chain(args.iter().cloned());
        Ok(<Wrapper as clap::Parser>::try_parse_from(argv)?.dns)
    }

    fn config(&self) -> anyhow::Result<Config> {
        let zones = self
            .zones
            .iter()
            .map(|z| parse_zone(z))
            .collect::<Result<Vec<_>, _>>()?;
        let fallthrough = match &self.fallthrough {
            None => Vec::new(),
            Some(list) if list.is_empty() => zones.clone(),
            Some(list) => list
                .iter()
                .map(|z| parse_zone(z))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let config = Config {
            zones,
            ttl: self.ttl,
            pods: self.pods,
            endpoint_pod_names: self.endpoint_pod_names,
            ignore_empty_service: self.ignore_empty_service,
            noendpoints: self.noendpoints,
            namespaces: (!self.namespaces.is_empty())
                .then(|| self.namespaces.iter().cloned().collect()),
            fallthrough,
            ns_addresses: own_addresses(&self.listen),
        };
        config.validate()?;
        Ok(config)
    }
}

pub(crate) async fn run(mut args: DnsArgs) -> anyhow::Result<()> {
    if let Some(path) = args.conf.clone() {
        let server = read_corefile(&path, args.resolv_conf.as_deref())?;
        if args.check {
            eprintln!("{}: svcplane dns runs this Corefile", path.display());
            return Ok(());
        }
        args.use_corefile(server);
    }
    run_with(args, cache::kube_feed::Shared::default()).await
}

/// The server a Corefile describes, read with the process's environment for `{$VAR}`, and
/// `resolv_conf` standing for /etc/resolv.conf.
fn read_corefile(
    path: &std::path::Path,
    resolv_conf: Option<&std::path::Path>,
) -> anyhow::Result<dns::corefile::Server> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--conf {shown}: cannot read it"))?;
    let corefile = dns::corefile::parse(&text, &shown, |name| std::env::var(name).ok())?;
    let nameservers = |file: &str| {
        let file = match resolv_conf {
            Some(instead) if file == "/etc/resolv.conf" => instead.to_path_buf(),
            _ => PathBuf::from(file),
        };
        std::fs::read_to_string(&file)
            .map(|text| dns::forward::resolv_conf_nameservers(&text))
            .map_err(|e| format!("{}: cannot read it ({e})", file.display()))
    };
    Ok(corefile.server(&shown, &nameservers)?)
}

impl DnsArgs {
    /// Forwards every other name to the nameservers of `resolv_conf` as kubeadm's Corefile
    /// does (`forward . /etc/resolv.conf { max_concurrent 1000 }`); none there, none forwarded.
    pub(crate) fn forward_as_kubeadm(
        &mut self,
        resolv_conf: &std::path::Path,
    ) -> anyhow::Result<()> {
        let text = match std::fs::read_to_string(resolv_conf) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => anyhow::bail!(
                "--resolv-conf {}: cannot read it ({e})",
                resolv_conf.display()
            ),
        };
        let mut upstreams = dns::forward::resolv_conf_nameservers(&text);
        upstreams.truncate(dns::forward::MAX_UPSTREAMS);
        if upstreams.is_empty() {
            tracing::warn!(file = %resolv_conf.display(), "no nameserver: names outside the cluster zones are refused");
            return Ok(());
        }
        self.forward = Some(dns::forward::Forward {
            max_concurrent: Some(1000),
            ..dns::forward::Forward::everything_to(upstreams)
        });
        Ok(())
    }

    /// Takes the Corefile's server in place of the flags it stands for, `--dns-port` and
    /// `--bind` overriding its port and address.
    fn use_corefile(&mut self, server: dns::corefile::Server) {
        let ip = self.bind.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        self.listen = vec![SocketAddr::new(ip, self.dns_port.unwrap_or(server.port))];
        let k = server.kubernetes;
        fn text(names: &[impl ToString]) -> Vec<String> {
            names.iter().map(ToString::to_string).collect()
        }
        self.zones = text(&k.zones);
        self.ttl = k.ttl.unwrap_or(5);
        self.pods = k.pods.unwrap_or_default();
        self.endpoint_pod_names = k.endpoint_pod_names;
        self.ignore_empty_service = k.ignore_empty_service;
        self.noendpoints = k.noendpoints;
        self.namespaces = k.namespaces;
        self.fallthrough = k.fallthrough.map(|zones| text(&zones));
        self.kubeconfig = k.kubeconfig;
        self.manifests = k.manifests;
        if let Some(timeout) = k.startup_timeout {
            self.startup_timeout = timeout;
        }
        let moved = |addr: SocketAddr, port: Option<u16>| {
            SocketAddr::new(self.bind.unwrap_or(addr.ip()), port.unwrap_or(addr.port()))
        };
        self.health = server.health.map(|h| dns::corefile::Health {
            addr: moved(h.addr, self.health_port),
            lameduck: h.lameduck,
        });
        self.ready = server.ready.map(|addr| moved(addr, self.ready_port));
        self.forward = server.forward;
        self.log = server.log;
    }
}

/// [`run`], reading the kinds of `shared` from watches another part of the process shares.
pub(crate) async fn run_with(
    args: DnsArgs,
    shared: cache::kube_feed::Shared,
) -> anyhow::Result<()> {
    let config = Arc::new(args.config()?);
    let limits = limits(&args);
    let bound = server::bind(&args.listen, &limits).await?;
    let kinds = if args.manifests.is_empty() {
        cache::kube_feed::kinds(!args.noendpoints, args.pods == PodsMode::Verified)
    } else {
        vec![
            Kind::Namespaces,
            Kind::Services,
            Kind::EndpointSlices,
            Kind::Pods,
        ]
    };
    let cache = Arc::new(Cache::new(&kinds));
    let index = server::follow(cache.subscribe(), config.clone());
    let mut feed: tokio::task::JoinHandle<anyhow::Result<()>> = if args.manifests.is_empty() {
        let client = cache::kube_feed::client(args.kubeconfig.as_deref()).await?;
        let watchers = cache::kube_feed::spawn(cache.clone(), client, &kinds, shared);
        tokio::spawn(async move {
            futures::future::join_all(watchers).await;
            Ok(())
        })
    } else {
        let (cache, paths, interval) = (
            cache.clone(),
            args.manifests.clone(),
            args.manifests_reload_interval,
        );
        tokio::spawn(async move {
            cache::manifests::run(cache, paths, interval)
                .await
                .context("cannot load --manifests")
        })
    };
    // The probes answer from the start: `/ready` says 503 until the first sync.
    let (readiness, _probes) = probes(&args, &cache).await?;
    // Like CoreDNS, wait up to --startup-timeout for the first sync before answering; after it,
    // serve anyway (names that would not exist get SERVFAIL until the sync).
    let mut synced = cache.subscribe();
    tokio::select! {
        result = &mut feed => return result?,
        _ = tokio::time::timeout(args.startup_timeout, synced.wait_for(|s| s.synced)) => {}
    }
    if !cache.current().synced {
        tracing::warn!(timeout = ?args.startup_timeout, "starting with an unsynced cache");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let addrs = bound.local_addrs();
    let forwarder = args
        .forward
        .clone()
        .map(|f| Arc::new(dns::forward::Forwarder::new(f)));
    let server = tokio::spawn(server::serve(
        bound, index, config, forwarder, limits, stop_rx,
    ));
    let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    eprintln!(
        "svcplane dns: serving {} on {} (udp, tcp)",
        args.zones.join(", "),
        addrs.join(", ")
    );
    tokio::select! {
        result = feed => result??,
        _ = crate::cli::shutdown_signal() => {}
    }
    // As CoreDNS's health plugin: not ready at once, DNS answering through the lameduck period.
    readiness.send_replace(dns::probes::Readiness::ShuttingDown);
    if let Some(health) = args.health.filter(|h| !h.lameduck.is_zero()) {
        tracing::info!(lameduck = ?health.lameduck, "shutting down: still answering for the lameduck period");
        tokio::time::sleep(health.lameduck).await;
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    Ok(())
}

/// The `health` and `ready` endpoints the Corefile asks for; the readiness to report (ready
/// once the cache has synced) and the tasks serving them, stopped when dropped.
async fn probes(
    args: &DnsArgs,
    cache: &Arc<Cache>,
) -> anyhow::Result<(
    tokio::sync::watch::Sender<dns::probes::Readiness>,
    Vec<crate::cli::AbortOnDrop>,
)> {
    use dns::probes::Readiness;
    let (readiness, state) = tokio::sync::watch::channel(Readiness::Starting);
    let mut tasks = Vec::new();
    if let Some(health) = args.health {
        let listener = tokio::net::TcpListener::bind(health.addr)
            .await
            .with_context(|| format!("health: cannot listen on {}", health.addr))?;
        tasks.push(crate::cli::AbortOnDrop(tokio::spawn(
            dns::probes::serve_health(listener),
        )));
    }
    if let Some(addr) = args.ready {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("ready: cannot listen on {addr}"))?;
        tasks.push(crate::cli::AbortOnDrop(tokio::spawn(
            dns::probes::serve_ready(listener, state),
        )));
    }
    let (mut synced, ready) = (cache.subscribe(), readiness.clone());
    tasks.push(crate::cli::AbortOnDrop(tokio::spawn(async move {
        if synced.wait_for(|s| s.synced).await.is_ok() {
            ready.send_if_modified(|now| {
                let starting = *now == Readiness::Starting;
                if starting {
                    *now = Readiness::Ready;
                }
                starting
            });
        }
    })));
    Ok((readiness, tasks))
}

/// The addresses this server is reached at: the listen addresses, with an unspecified one
/// (`0.0.0.0`, `::`) standing for every non-loopback interface address of its family.
/// Loopback addresses never count, as in CoreDNS (`plugin/kubernetes/local.go`): a server on
/// 127.0.0.1 alone has no NS records.
fn own_addresses(listen: &[SocketAddr]) -> Vec<IpAddr> {
    let interfaces: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|list| {
            list.filter_map(|i| i.address)
                .filter_map(|a| {
                    a.as_sockaddr_in()
                        .map(|s| IpAddr::V4(s.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
                })
                .filter(|ip| !ip.is_loopback())
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for addr in listen {
        let ip = addr.ip();
        if ip.is_unspecified() {
            out.extend(interfaces.iter().filter(|i| i.is_ipv4() == ip.is_ipv4()));
        } else if !ip.is_loopback() {
            out.push(ip);
        }
    }
    out.dedup();
    out
}

fn limits(args: &DnsArgs) -> Limits {
    Limits {
        log_queries: args.log,
        max_tcp_connections: args.max_tcp_connections,
        tcp_idle_timeout: args.tcp_idle_timeout,
        ..Limits::default()
    }
}
