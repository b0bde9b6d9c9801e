//! `svcplane dns`: cluster DNS from manifests or the Kubernetes API.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cache::{Cache, Kind};
use clap::Args;
use dns::config::{Config, PodsMode, parse_zone};
use dns::corefile::Corefile;
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
    /// Pass NXDOMAIN answers of these zones (bare: all served zones) to the next resolver: in
    /// effect only with something after the cluster zones (`svcplane dev`'s forwarding; a
    /// Corefile's `forward`).
    #[arg(long, value_name = "ZONE", num_args = 0.., value_delimiter = ',', require_equals = true)]
    fallthrough: Option<Vec<String>>,
    /// Serve only Services (and their EndpointSlices) this label selector matches, e.g.
    /// `tier=web` or `environment in (production, staging)`; the API server does the selecting.
    #[arg(long, value_name = "SELECTOR", value_parser = parse_selector, conflicts_with = "manifests")]
    labels: Option<String>,
    /// Serve only namespaces this label selector matches.
    #[arg(long, value_name = "SELECTOR", value_parser = parse_selector, conflicts_with = "manifests")]
    namespace_labels: Option<String>,
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
    /// Cluster answers each UDP worker keeps as bytes, to answer the same question again
    /// without building the reply (when the table is full, about half of it is dropped to
    /// make room; docs/dns.md#memory gives their size); 0 keeps none
    #[arg(long, value_name = "N", default_value_t = dns::memo::DEFAULT_CAPACITY)]
    kept_answers: usize,
    /// A Corefile to run instead of the flags above (see docs/corefile.md for the directives
    /// and options svcplane runs; any other is refused with its file and line).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["listen", "zones", "ttl", "pods", "endpoint_pod_names", "ignore_empty_service", "noendpoints", "namespaces", "labels", "namespace_labels", "fallthrough", "kubeconfig", "manifests", "startup_timeout"])]
    conf: Option<PathBuf>,
    /// With --conf: check the Corefile and exit, 0 if svcplane runs it, 1 (naming the file and
    /// line) if not.
    #[arg(long, requires = "conf")]
    check: bool,
    /// With --conf: the port of every server block instead of the Corefile's.
    #[arg(long, value_name = "N", requires = "conf")]
    dns_port: Option<u16>,
    /// With --conf: the address every listener binds (DNS, health, ready, metrics) instead of
    /// the Corefile's.
    #[arg(long, value_name = "ADDR", requires = "conf")]
    bind: Option<IpAddr>,
    /// With --conf: the port of the `health` endpoint instead of the Corefile's.
    #[arg(long, value_name = "N", requires = "conf")]
    health_port: Option<u16>,
    /// With --conf: the port of the `ready` endpoint instead of the Corefile's.
    #[arg(long, value_name = "N", requires = "conf")]
    ready_port: Option<u16>,
    /// With --conf: the port of the `prometheus` endpoint instead of the Corefile's.
    #[arg(long, value_name = "N", requires = "conf")]
    metrics_port: Option<u16>,
    /// With --conf: this file stands for /etc/resolv.conf wherever the Corefile names it;
    /// `nameserver IP:PORT` lines are accepted (svcplane's extension, for a loopback upstream).
    #[arg(long, value_name = "FILE", requires = "conf")]
    resolv_conf: Option<PathBuf>,
    /// Names outside the zones go here (set by `svcplane dev`).
    #[arg(skip)]
    forward: Option<dns::forward::Forward>,
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

    /// The flags as the `kubernetes` directive they stand for, made answering options.
    fn config(&self) -> anyhow::Result<Config> {
        let zone = |z: &String| parse_zone(z);
        let k = dns::plan::Kubernetes {
            zones: self.zones.iter().map(zone).collect::<Result<_, _>>()?,
            ttl: Some(self.ttl),
            pods: Some(self.pods),
            endpoint_pod_names: self.endpoint_pod_names,
            ignore_empty_service: self.ignore_empty_service,
            noendpoints: self.noendpoints,
            namespaces: self.namespaces.clone(),
            fallthrough: match &self.fallthrough {
                None => None,
                Some(list) => Some(list.iter().map(zone).collect::<Result<_, _>>()?),
            },
            ..Default::default()
        };
        Ok(k.config(own_addresses(&self.listen))?)
    }
}

pub(crate) async fn run(args: DnsArgs) -> anyhow::Result<()> {
    end_on_panic();
    let setup = match args.conf.clone() {
        Some(path) => {
            let shown = path.display().to_string();
            let corefile = read_corefile(&path)?;
            let plan = plan_of(&corefile, args.resolv_conf.as_deref())?;
            let mut setup = args.corefile_setup(plan)?;
            if args.check {
                // Built as it would start (TLS files read, regexes compiled), never served.
                let metrics = dns::metrics::Metrics::default();
                dns::service::build(&setup.plan, &setup.listen, None, &metrics)
                    .map_err(anyhow::Error::msg)?;
                eprintln!("{shown}: svcplane dns runs this Corefile");
                return Ok(());
            }
            let args = Arc::new(args);
            setup.source = Some(Source {
                digest: dns::reload::digest_of(&corefile),
                read: Box::new(move || read_corefile(&path)),
                setup: Box::new(move |corefile| {
                    plan_of(corefile, args.resolv_conf.as_deref())
                        .and_then(|plan| args.corefile_setup(plan))
                }),
            });
            setup
        }
        None => args.flags_setup()?,
    };
    serve(setup, cache::kube_feed::Shared::default()).await
}

/// The Corefile at `path` with its imports, `{$VAR}` from the process's environment.
fn read_corefile(path: &std::path::Path) -> anyhow::Result<Corefile> {
    Ok(dns::corefile::read(path, &|name| std::env::var(name).ok())?)
}

/// Where a Corefile's setup came from, for `reload`.
struct Source {
    /// SHA-512 of the Corefile running, as read (imports expanded).
    digest: String,
    /// The Corefile read again, with its imports.
    read: Box<dyn Fn() -> anyhow::Result<Corefile> + Send + Sync>,
    /// The setup of a Corefile that changed.
    setup: Box<SetupOf>,
}

/// How a changed Corefile becomes a setup.
type SetupOf = dyn Fn(&Corefile) -> anyhow::Result<Setup> + Send + Sync;

/// A panic anywhere (a server, index or probe task) ends the process with its message rather
/// than leaving a server with a dead task behind: the kubelet restarts it.
fn end_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("svcplane dns: a task panicked; exiting so the process is restarted whole");
        std::process::exit(70);
    }));
}

/// [`run`] of the flags, reading the kinds of `shared` from watches another part of the
/// process shares (for `svcplane dev`).
pub(crate) async fn run_with(
    args: DnsArgs,
    shared: cache::kube_feed::Shared,
) -> anyhow::Result<()> {
    serve(args.flags_setup()?, shared).await
}

/// The plan of `corefile`, with `resolv_conf` standing for /etc/resolv.conf.
fn plan_of(
    corefile: &Corefile,
    resolv_conf: Option<&std::path::Path>,
) -> anyhow::Result<dns::plan::Plan> {
    let nameservers = |file: &str| {
        let file = match resolv_conf {
            Some(instead) if file == "/etc/resolv.conf" => instead.to_path_buf(),
            _ => PathBuf::from(file),
        };
        std::fs::read_to_string(&file)
            .map(|text| dns::forward::resolv_conf_nameservers(&text))
            .map_err(|e| format!("{}: cannot read it ({e})", file.display()))
    };
    Ok(corefile.plan(&nameservers)?)
}

/// Everything `svcplane dns` runs, from the flags or a Corefile.
struct Setup {
    plan: dns::plan::Plan,
    /// The addresses each block of the plan listens on.
    listen: Vec<Vec<SocketAddr>>,
    /// The `kubernetes` directive's options, if the plan has one.
    config: Option<Config>,
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context to use, if not its current one.
    context: Option<String>,
    /// CoreDNS's `labels` and `namespace_labels`: what the watches ask the API server for.
    labels: Option<String>,
    namespace_labels: Option<String>,
    manifests: Vec<PathBuf>,
    manifests_reload_interval: Duration,
    startup_timeout: Duration,
    limits: Limits,
    /// The Corefile, when the setup is one.
    source: Option<Source>,
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

    /// The flags as one server block answering the zones from the cluster, on every --listen
    /// address.
    fn flags_setup(&self) -> anyhow::Result<Setup> {
        let config = self.config()?;
        Ok(Setup {
            plan: dns::plan::Plan::of_flags(&config.zones, self.forward.clone()),
            listen: vec![self.listen.clone()],
            config: Some(config),
            kubeconfig: self.kubeconfig.clone(),
            context: None,
            labels: self.labels.clone(),
            namespace_labels: self.namespace_labels.clone(),
            manifests: self.manifests.clone(),
            manifests_reload_interval: self.manifests_reload_interval,
            startup_timeout: self.startup_timeout,
            limits: self.limits(),
            source: None,
        })
    }

    /// A Corefile's plan with `--dns-port`, `--bind` and the HTTP port flags applied.
    fn corefile_setup(&self, plan: dns::plan::Plan) -> anyhow::Result<Setup> {
        let (plan, listen) = plan.with_overrides(dns::plan::Overrides {
            dns_port: self.dns_port,
            bind: self.bind,
            health_port: self.health_port,
            ready_port: self.ready_port,
            metrics_port: self.metrics_port,
        });
        let k = plan.kubernetes.clone();
        let config = match &k {
            Some(k) => {
                let own: Vec<SocketAddr> = plan
                    .blocks
                    .iter()
                    .zip(&listen)
                    .filter(|(b, _)| b.kubernetes)
                    .flat_map(|(_, addrs)| addrs.clone())
                    .collect();
                Some(k.config(own_addresses(&own))?)
            }
            None => None,
        };
        Ok(Setup {
            listen,
            config,
            kubeconfig: k.as_ref().and_then(|k| k.kubeconfig.clone()),
            context: k.as_ref().and_then(|k| k.context.clone()),
            labels: k.as_ref().and_then(|k| k.labels.clone()),
            namespace_labels: k.as_ref().and_then(|k| k.namespace_labels.clone()),
            manifests: k.as_ref().map(|k| k.manifests.clone()).unwrap_or_default(),
            manifests_reload_interval: self.manifests_reload_interval,
            startup_timeout: k
                .as_ref()
                .and_then(|k| k.startup_timeout)
                .unwrap_or(self.startup_timeout),
            limits: self.limits(),
            plan,
            source: None,
        })
    }

    fn limits(&self) -> Limits {
        Limits {
            max_tcp_connections: self.max_tcp_connections,
            tcp_idle_timeout: self.tcp_idle_timeout,
            kept_answers: self.kept_answers,
            ..Limits::default()
        }
    }
}

/// Serves `setup` until SIGTERM (then the lameduck period) or until the cluster feed fails.
async fn serve(mut setup: Setup, mut shared: cache::kube_feed::Shared) -> anyhow::Result<()> {
    let source = setup.source.take();
    // The cluster: its cache, the feed that fills it, and the index answers come from.
    let mut cluster = None;
    let mut feed: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
    let mut cluster_cache = None;
    let metrics = Arc::new(dns::metrics::Metrics::default());
    if let Some(config) = setup.config.clone() {
        let config = Arc::new(config);
        let kinds = if setup.manifests.is_empty() {
            cache::kube_feed::kinds(!config.noendpoints, config.pods == PodsMode::Verified)
        } else {
            vec![
                Kind::Namespaces,
                Kind::Services,
                Kind::EndpointSlices,
                Kind::Pods,
            ]
        };
        let cache = Arc::new(Cache::new(&kinds));
        let index = server::follow(cache.subscribe(), config.clone(), metrics.clone());
        feed = Some(if setup.manifests.is_empty() {
            let reporting = metrics.clone();
            let client = cache::kube_feed::observed_client(
                setup.kubeconfig.as_deref(),
                setup.context.as_deref(),
                |host| {
                    Arc::new(dns::metrics::RestReporter {
                        host: host.to_string(),
                        metrics: reporting.clone(),
                    })
                },
            )
            .await?;
            shared.labels = setup.labels.clone();
            shared.namespace_labels = setup.namespace_labels.clone();
            let watchers = cache::kube_feed::spawn(cache.clone(), client, &kinds, shared);
            tokio::spawn(async move {
                futures::future::join_all(watchers).await;
                Ok(())
            })
        } else {
            let (cache, paths, interval) = (
                cache.clone(),
                setup.manifests.clone(),
                setup.manifests_reload_interval,
            );
            tokio::spawn(async move {
                cache::manifests::run(cache, paths, interval)
                    .await
                    .context("cannot load --manifests")
            })
        });
        cluster = Some(dns::chain::ClusterSource { config, index });
        cluster_cache = Some((cache, kinds));
    }
    let service = dns::service::build(&setup.plan, &setup.listen, cluster.as_ref(), &metrics)
        .map_err(anyhow::Error::msg)?;
    let mut listeners = Vec::new();
    let mut routers = std::collections::BTreeMap::new();
    for (addr, router) in &service.routers {
        let (tx, rx) = tokio::sync::watch::channel(router.clone());
        routers.insert(*addr, tx);
        listeners.push((server::bind(&[*addr], &setup.limits).await?, rx));
    }
    // The HTTP endpoints answer from the start: `/ready` says 503 until the first sync.
    let (readiness, _http) = http_endpoints(&setup.plan, &metrics).await?;
    let _watch_cluster =
        cluster_cache
            .as_ref()
            .zip(cluster.as_ref())
            .map(|((cache, kinds), source)| {
                watch_cluster(
                    cache.clone(),
                    source.index.clone(),
                    kinds.clone(),
                    &metrics,
                    &readiness,
                )
            });
    let _reload = match (source, setup.plan.reload) {
        (Some(source), Some(every)) => {
            println!(
                "[INFO] plugin/reload: Running configuration SHA512 = {}",
                source.digest
            );
            *metrics.version.lock().expect("metrics lock") = Some(source.digest.clone());
            let running = Running {
                plan: setup.plan.clone(),
                cluster: cluster.clone(),
                metrics: metrics.clone(),
                routers,
            };
            let wait = dns::reload::interval(every, &mut rand::rng());
            Some(crate::cli::AbortOnDrop(tokio::spawn(reload(
                source, running, wait,
            ))))
        }
        _ => None,
    };
    if cluster_cache.is_none() {
        readiness.send_replace(dns::probes::Readiness::Ready);
    }
    // Like CoreDNS, wait up to the startup timeout for the first sync before answering; after
    // it, serve anyway (names that would not exist get SERVFAIL until the sync). The wait is
    // for the index of a synced snapshot: the cache's sync alone leaves a moment in which the
    // index, built beside it, still answers from before.
    if let (Some((cache, _)), Some(running), Some(source)) =
        (&cluster_cache, feed.as_mut(), cluster.as_ref())
    {
        let mut indexed = source.index.clone();
        tokio::select! {
            result = running => return result?,
            _ = tokio::time::timeout(
                setup.startup_timeout,
                indexed.wait_for(|i| i.snapshot.synced),
            ) => {}
        }
        if !cache.current().synced {
            tracing::warn!(timeout = ?setup.startup_timeout, "starting with an unsynced cache");
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    let mut shown = Vec::new();
    for (bound, router) in listeners {
        shown.extend(bound.local_addrs().iter().map(|a| a.to_string()));
        servers.push(tokio::spawn(server::serve(
            bound,
            router,
            setup.limits.clone(),
            stop_rx.clone(),
        )));
    }
    let _probes: Vec<crate::cli::AbortOnDrop> = service
        .loop_probes
        .iter()
        .map(|(addr, probe)| crate::cli::AbortOnDrop(tokio::spawn(probe.clone().run(*addr))))
        .collect();
    let zones: Vec<String> = setup
        .plan
        .blocks
        .iter()
        .flat_map(|b| b.zones.iter().map(|z| z.to_string()))
        .chain(
            setup
                .config
                .iter()
                .flat_map(|c| c.zones.iter().map(|z| z.to_string())),
        )
        .collect();
    eprintln!(
        "svcplane dns: serving {} on {} (udp, tcp)",
        zones.join(", "),
        shown.join(", ")
    );
    match feed {
        Some(feed) => tokio::select! {
            result = feed => result??,
            _ = crate::cli::shutdown_signal() => {}
        },
        None => crate::cli::shutdown_signal().await,
    }
    // As CoreDNS's health plugin: not ready at once, DNS answering through the lameduck period.
    readiness.send_replace(dns::probes::Readiness::ShuttingDown);
    if let Some(health) = setup.plan.health.filter(|h| !h.lameduck.is_zero()) {
        tracing::info!(lameduck = ?health.lameduck, "shutting down: still answering for the lameduck period");
        tokio::time::sleep(health.lameduck).await;
    }
    let _ = stop_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    Ok(())
}

/// What a reload replaces parts of.
struct Running {
    plan: dns::plan::Plan,
    cluster: Option<dns::chain::ClusterSource>,
    metrics: Arc<dns::metrics::Metrics>,
    /// The router of each listening address.
    routers:
        std::collections::BTreeMap<SocketAddr, tokio::sync::watch::Sender<Arc<dns::chain::Router>>>,
}

/// The `reload` directive: every `wait`, reads the Corefile again; a changed one that plans and
/// fits the running listeners and cluster replaces the chains behind them (queries keep flowing:
/// each takes the router current when it arrives); one that does not start is logged and
/// counted, and the running configuration stays. A file that does not read or parse is only
/// warned about and tried again, as CoreDNS does.
async fn reload(source: Source, mut running: Running, wait: Duration) {
    use std::sync::atomic::Ordering;
    let mut seen = source.digest.clone();
    loop {
        tokio::time::sleep(wait).await;
        let corefile = match (source.read)() {
            Ok(corefile) => corefile,
            Err(e) => {
                println!("[WARNING] plugin/reload: Corefile parse failed: {e:#}");
                continue;
            }
        };
        let digest = dns::reload::digest_of(&corefile);
        if digest == seen {
            continue;
        }
        // A configuration that does not start is not tried again until the file changes.
        seen = digest.clone();
        println!("[INFO] Reloading");
        let next = (source.setup)(&corefile).and_then(|setup| {
            if let Some(why) = dns::reload::needs_restart(&running.plan, &setup.plan) {
                anyhow::bail!("{why}: restart svcplane dns to apply it");
            }
            let service = dns::service::build(
                &setup.plan,
                &setup.listen,
                running.cluster.as_ref(),
                &running.metrics,
            )
            .map_err(anyhow::Error::msg)?;
            Ok((setup, service))
        });
        let (setup, service) = match next {
            Ok(next) => next,
            Err(e) => {
                println!("[ERROR] Restart failed: {e:#}");
                running
                    .metrics
                    .reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        for (addr, router) in service.routers {
            if let Some(current) = running.routers.get(&addr) {
                current.send_replace(router);
            }
        }
        for (addr, probe) in service.loop_probes {
            tokio::spawn(probe.run(addr));
        }
        running.plan = setup.plan;
        *running.metrics.version.lock().expect("metrics lock") = Some(digest.clone());
        println!("[INFO] plugin/reload: Running configuration SHA512 = {digest}");
        println!("[INFO] Reloading complete");
    }
}

/// Keeps `/ready` and the `svcplane_dns_*` metrics in step with the cluster cache: ready once
/// every kind is listed and indexed (the index is built beside the cache, a moment later),
/// and the snapshot's generation and age.
fn watch_cluster(
    cache: Arc<Cache>,
    mut indexed: tokio::sync::watch::Receiver<Arc<dns::index::Index>>,
    kinds: Vec<Kind>,
    metrics: &Arc<dns::metrics::Metrics>,
    readiness: &tokio::sync::watch::Sender<dns::probes::Readiness>,
) -> crate::cli::AbortOnDrop {
    use dns::probes::Readiness;
    let (metrics, ready) = (metrics.clone(), readiness.clone());
    crate::cli::AbortOnDrop(tokio::spawn(async move {
        let mut snapshots = cache.subscribe();
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            let pending = cache.pending();
            *metrics.sync.lock().expect("metrics lock") = kinds
                .iter()
                .map(|k| (kind_label(*k), !pending.contains(k)))
                .collect();
            *metrics.snapshot.lock().expect("metrics lock") =
                (snapshot.generation, std::time::Instant::now());
            if indexed.borrow_and_update().snapshot.synced {
                ready.send_if_modified(|now| {
                    let starting = *now == Readiness::Starting;
                    if starting {
                        *now = Readiness::Ready;
                    }
                    starting
                });
            }
            let changed = tokio::select! {
                changed = snapshots.changed() => changed,
                changed = indexed.changed() => changed,
            };
            if changed.is_err() {
                return;
            }
        }
    }))
}

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Namespaces => "namespaces",
        Kind::Services => "services",
        Kind::EndpointSlices => "endpointslices",
        Kind::Pods => "pods",
    }
}

/// The `health`, `ready` and `prometheus` endpoints the plan asks for; the readiness to report
/// and the tasks serving them, stopped when dropped.
async fn http_endpoints(
    plan: &dns::plan::Plan,
    metrics: &Arc<dns::metrics::Metrics>,
) -> anyhow::Result<(
    tokio::sync::watch::Sender<dns::probes::Readiness>,
    Vec<crate::cli::AbortOnDrop>,
)> {
    use dns::probes::Readiness;
    let (readiness, state) = tokio::sync::watch::channel(Readiness::Starting);
    let mut tasks = Vec::new();
    let listen = |what: &'static str, addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("{what}: cannot listen on {addr}"))
    };
    if let Some(health) = plan.health {
        let listener = listen("health", health.addr).await?;
        let bound = listener.local_addr()?;
        tasks.push(crate::cli::AbortOnDrop(tokio::spawn(
            dns::probes::serve_health(listener),
        )));
        tasks.push(crate::cli::AbortOnDrop(tokio::spawn(
            dns::probes::check_health(bound, metrics.clone()),
        )));
    }
    if let Some(addr) = plan.ready {
        let listener = listen("ready", addr).await?;
        tasks.push(crate::cli::AbortOnDrop(tokio::spawn(
            dns::probes::serve_ready(listener, state),
        )));
    }
    if let Some(addr) = plan.prometheus {
        let listener = listen("prometheus", addr).await?;
        tasks.push(crate::cli::AbortOnDrop(tokio::spawn(
            dns::probes::serve_metrics(listener, metrics.clone()),
        )));
    }
    Ok((readiness, tasks))
}

/// A label selector as the API server takes it, checked here so a typo fails at start.
fn parse_selector(text: &str) -> Result<String, String> {
    cache::selector::LabelSelector::parse(text)
        .map(|_| text.to_string())
        .map_err(|e| format!("not a label selector: {e}"))
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
