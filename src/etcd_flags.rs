//! The etcd flags: one definition of how to reach etcd (endpoints, TLS files, timeout), which
//! every command that talks to etcd flattens, and the pools' key prefix beside it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use etcdconf::EtcdConfig;
pub(crate) use etcdconf::parse_duration;
use ipam::store::etcd::EtcdStore;

/// How to reach etcd.
#[derive(Debug, Clone, Args)]
pub(crate) struct EtcdConnection {
    /// etcd client URLs (repeat the flag or separate with commas), e.g. http://127.0.0.1:2379.
    #[arg(long = "etcd-endpoints", value_name = "URL", value_delimiter = ',')]
    pub(crate) endpoints: Vec<String>,
    /// CA bundle that signed etcd's serving certificate (enables TLS).
    #[arg(long = "etcd-cafile", value_name = "FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Client certificate for etcd (with --etcd-keyfile).
    #[arg(long = "etcd-certfile", value_name = "FILE")]
    pub(crate) cert_file: Option<PathBuf>,
    /// Private key of the client certificate.
    #[arg(long = "etcd-keyfile", value_name = "FILE")]
    pub(crate) key_file: Option<PathBuf>,
    /// Dial and per-request timeout.
    #[arg(long = "etcd-timeout", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

impl EtcdConnection {
    /// These settings, with keys under `prefix`.
    pub(crate) fn config(&self, prefix: &str) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.endpoints.clone(),
            prefix: prefix.to_string(),
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            timeout: self.timeout,
        }
    }
}

/// Where the pools are: etcd and their key prefix.
#[derive(Debug, Clone, Args)]
pub(crate) struct EtcdFlags {
    #[command(flatten)]
    pub(crate) connection: EtcdConnection,
    /// Key prefix of the pools; must start and end with '/'.
    #[arg(long = "etcd-prefix", value_name = "PREFIX", default_value = ipam::store::DEFAULT_PREFIX)]
    pub(crate) prefix: String,
}

impl EtcdFlags {
    pub(crate) fn config(&self) -> EtcdConfig {
        self.connection.config(&self.prefix)
    }

    /// Connects; without `--etcd-endpoints`, an error saying to give it.
    pub(crate) async fn connect(&self) -> ipam::Result<EtcdStore> {
        if self.connection.endpoints.is_empty() {
            return Err(ipam::Error::InvalidSpec {
                field: "--etcd-endpoints".into(),
                message: "required: the etcd client URLs of the pools, e.g. --etcd-endpoints=http://127.0.0.1:2379".into(),
            });
        }
        EtcdStore::connect(&self.config()).await
    }
}
