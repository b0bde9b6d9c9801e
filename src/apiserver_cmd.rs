//! `svcplane apiserver`: the Kubernetes-compatible API server as its own process, on memory or
//! etcd storage, with the Service admission webhooks it is given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use apiserver::registry::{Registry, RegistryConfig};
use apiserver::server::{Server, ServerConfig};
use apiserver::storage::{Storage, etcd::EtcdStorage, memory::MemoryStorage};
use clap::Args;

use crate::etcd_flags::{EtcdConnection, parse_duration};
use crate::kubelet_flags::KubeletFlags;
use apiserver::admission_webhook::{FailurePolicy, WebhookAdmission};

/// Where the API server keeps its objects: etcd (the shared etcd flags) or, without
/// `--etcd-endpoints`, memory, lost at exit.
#[derive(Debug, Clone, Args)]
pub(crate) struct StorageFlags {
    #[command(flatten)]
    etcd: EtcdConnection,
    /// Key prefix of the objects in etcd; must start and end with '/'. Without
    /// --etcd-endpoints the objects live in memory and are lost at exit.
    #[arg(
        long = "etcd-prefix",
        value_name = "PREFIX",
        default_value = "/svcplane/registry/"
    )]
    etcd_prefix: String,
    /// etcd: history older than this is compacted, as kube-apiserver does (0 disables).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    etcd_compaction_interval: Duration,
    /// Memory storage: revisions kept for watches and paginated lists that start in the past;
    /// older ones get 410 Expired, as after an etcd compaction.
    #[arg(long, value_name = "REVISIONS", default_value_t = 10_000)]
    watch_history: usize,
}

impl StorageFlags {
    pub(crate) fn etcd_endpoints(&self) -> &[String] {
        &self.etcd.endpoints
    }

    pub(crate) fn etcd_compaction_interval(&self) -> Duration {
        self.etcd_compaction_interval
    }

    /// The etcd connection, with keys under `prefix`.
    pub(crate) fn etcd_config(&self, prefix: &str) -> etcdconf::EtcdConfig {
        self.etcd.config(prefix)
    }

    /// Connects to etcd, or makes the memory store.
    pub(crate) async fn open(&self) -> anyhow::Result<(Storage, String)> {
        if self.etcd.endpoints.is_empty() {
            return Ok((
                Storage::Memory(MemoryStorage::new(self.watch_history)),
                "/registry/".into(),
            ));
        }
        let (storage, prefix) = EtcdStorage::connect(&self.etcd_config(&self.etcd_prefix)).await?;
        Ok((Storage::Etcd(Box::new(storage)), prefix))
    }
}

/// How the API server is reached and what it asks of its clients.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServeFlags {
    /// Serving certificate (PEM); with --tls-key-file the API speaks HTTPS.
    #[arg(long, value_name = "FILE")]
    tls_cert_file: Option<PathBuf>,
    /// CA bundle that signed --tls-cert-file, written into --kubeconfig-out for clients to
    /// trust (default: the certificate itself, right for a self-signed one).
    #[arg(long, value_name = "FILE")]
    tls_ca_file: Option<PathBuf>,
    /// Private key of --tls-cert-file (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key_file: Option<PathBuf>,
    /// Static bearer tokens, one `token,user[,uid[,"groups"]]` per line; every request must
    /// carry one of them.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Append one JSON line per request (user agent, verb, resource, namespace, name, code).
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// A connection that has not finished its TLS handshake by then is closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    tls_handshake_timeout: Duration,
    /// A connection that has not sent a request's headers by then (counting the idle time of a
    /// kept-alive connection) is closed; above clients' own 90 s idle timeout by default.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    request_header_timeout: Duration,
    /// Idle watches that asked for bookmarks get one this often.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    watch_bookmark_interval: Duration,
    /// Watches without timeoutSeconds end after a random time between this and twice this.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_duration)]
    min_request_timeout: Duration,
    /// How often a terminating namespace's remaining objects are checked.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    namespace_cleanup_interval: Duration,
    /// How long the garbage collector (ownerReferences) waits before retrying a failed action.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    gc_retry_interval: Duration,
    /// Call this HTTPS mutating admission webhook on every Service create and update (repeat
    /// for several, called in turn).
    #[arg(long = "service-admission-webhook", value_name = "URL")]
    webhooks: Vec<String>,
    /// CA bundle (PEM) that signed the webhooks' serving certificates.
    #[arg(long, value_name = "FILE")]
    admission_ca: Option<PathBuf>,
    /// What a webhook that cannot be reached means: Fail refuses the write, Ignore stores the
    /// Service as it is.
    #[arg(long, value_name = "POLICY", default_value = "Fail")]
    admission_failure_policy: FailurePolicy,
    /// Per-call webhook timeout.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    admission_timeout: Duration,
    /// Write a kubeconfig for this server here (with the first token of --token-file);
    /// `svcplane dev` writes ./.svcplane/kubeconfig unless told otherwise.
    #[arg(long, value_name = "FILE")]
    pub(crate) kubeconfig_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ApiserverArgs {
    /// Address to serve the API on; anything but loopback needs TLS and tokens.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    #[command(flatten)]
    storage: StorageFlags,
    #[command(flatten)]
    serve: ServeFlags,
    /// Run a simulated kubelet in-process: Node objects, scheduling, pod IPs, readiness and
    /// graceful pod deletion (the flags under "Simulated kubelet").
    #[arg(long)]
    simulate_kubelet: bool,
    #[command(flatten)]
    kubelet: KubeletFlags,
}

impl ServeFlags {
    /// A kubeconfig for the server bound at `local` (with the first token of --token-file).
    pub(crate) fn kubeconfig(
        &self,
        config: &ServerConfig,
        local: SocketAddr,
    ) -> anyhow::Result<String> {
        let host = if local.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), local.port())
        } else {
            local
        };
        let token = match &self.token_file {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("--token-file: cannot read {}", file.display()))?;
                text.lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'))
                    .and_then(|l| l.split(',').next())
                    .map(str::to_string)
            }
            None => None,
        };
        Ok(apiserver::server::kubeconfig(
            &format!("{}://{host}", config.scheme()),
            self.tls_ca_file
                .as_deref()
                .or(self.tls_cert_file.as_deref()),
            token.as_deref(),
        ))
    }

    pub(crate) fn namespace_cleanup_interval(&self) -> Duration {
        self.namespace_cleanup_interval
    }

    pub(crate) fn gc_retry_interval(&self) -> Duration {
        self.gc_retry_interval
    }

    pub(crate) fn server_config(&self, listen: SocketAddr, compaction: Duration) -> ServerConfig {
        ServerConfig {
            listen,
            tls_cert_file: self.tls_cert_file.clone(),
            tls_key_file: self.tls_key_file.clone(),
            token_file: self.token_file.clone(),
            audit_log: self.audit_log.clone(),
            bookmark_interval: self.watch_bookmark_interval,
            min_request_timeout: self.min_request_timeout,
            compaction_interval: compaction,
            tls_handshake_timeout: self.tls_handshake_timeout,
            request_header_timeout: self.request_header_timeout,
        }
    }

    pub(crate) fn admission(&self) -> anyhow::Result<Vec<Arc<dyn apiserver::ServiceAdmission>>> {
        self.webhooks
            .iter()
            .map(|url| {
                let webhook = WebhookAdmission::new(
                    url,
                    self.admission_ca.as_deref(),
                    self.admission_failure_policy,
                    self.admission_timeout,
                )?;
                Ok(Arc::new(webhook) as Arc<dyn apiserver::ServiceAdmission>)
            })
            .collect()
    }

    /// Writes the kubeconfig, if asked, for a server bound at `local`.
    pub(crate) fn write_kubeconfig(
        &self,
        config: &ServerConfig,
        local: SocketAddr,
    ) -> anyhow::Result<()> {
        let Some(path) = &self.kubeconfig_out else {
            return Ok(());
        };
        let text = self.kubeconfig(config, local)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--kubeconfig-out: cannot create {}", dir.display()))?;
        }
        std::fs::write(path, text)
            .with_context(|| format!("--kubeconfig-out: cannot write {}", path.display()))
    }
}

pub(crate) async fn run(args: ApiserverArgs) -> anyhow::Result<()> {
    let config = args
        .serve
        .server_config(args.listen, args.storage.etcd_compaction_interval);
    config.check()?;
    let admission = args.serve.admission()?;
    if admission.is_empty() {
        tracing::warn!(
            "no Service admission configured: Services are stored without ClusterIPs or NodePorts (give --service-admission-webhook)"
        );
    }
    // Bad kubelet flags are refused before anything starts.
    let max_pod_grace = if args.simulate_kubelet {
        args.kubelet.config()?;
        Some(args.kubelet.max_pod_grace())
    } else {
        None
    };
    let (storage, prefix) = args.storage.open().await?;
    let registry = Registry::new(
        storage,
        RegistryConfig {
            prefix,
            admission,
            max_pod_grace,
            namespace_cleanup_interval: args.serve.namespace_cleanup_interval,
            gc_retry_interval: args.serve.gc_retry_interval(),
        },
    );
    registry
        .bootstrap()
        .await
        .context("creating the default namespaces")?;
    if args.simulate_kubelet {
        args.kubelet.spawn(registry.clone())?;
    }
    let server = Server::bind(registry, &config).await?;
    let local = server.local_addr();
    args.serve.write_kubeconfig(&config, local)?;
    eprintln!("svcplane apiserver: serving {}://{local}", config.scheme());
    server.run(crate::cli::shutdown_signal()).await?;
    Ok(())
}
