//! Running the API server: the exposure rule (loopback, or TLS plus tokens), the token file,
//! plain or TLS listeners serving HTTP/1.1 and HTTP/2, the periodic etcd compaction, and the
//! kubeconfig that points clients at the server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::error::ApiError;
use crate::http::{App, router};
use crate::registry::Registry;
use crate::storage::Storage;

/// Where and how the server listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Static bearer tokens, upstream's CSV format: `token,user,uid[,"group1,group2"]`.
    pub token_file: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
    pub bookmark_interval: Duration,
    pub min_request_timeout: Duration,
    /// etcd only: compact history older than this, as kube-apiserver does every 5 minutes.
    pub compaction_interval: Duration,
    /// How long a connection may take for its TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// How long a connection may take to send a request's headers, the idle time of a
    /// kept-alive connection before them included.
    pub request_header_timeout: Duration,
}

/// A start-up problem, named by the flag that fixes it.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

pub(crate) fn config_error(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        message: message.into(),
    }
}

impl ServerConfig {
    /// Refuses to expose an unauthenticated API: a non-loopback address needs TLS and tokens.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(config_error(
                "--tls-cert-file",
                "--tls-cert-file and --tls-key-file go together; give both or neither",
            ));
        }
        let secured = self.tls_cert_file.is_some() && self.token_file.is_some();
        if !self.listen.ip().is_loopback() && !secured {
            return Err(config_error(
                "--listen",
                format!(
                    "{} is not a loopback address; serving the API beyond this machine needs --tls-cert-file, --tls-key-file and --token-file (or listen on 127.0.0.1)",
                    self.listen
                ),
            ));
        }
        Ok(())
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert_file.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Reads a static token file: one `token,user[,uid[,groups]]` per line.
pub fn read_tokens(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        config_error(
            "--token-file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let mut tokens = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(',');
        let token = fields.next().unwrap_or("").trim();
        let user = fields.next().unwrap_or("").trim().trim_matches('"');
        if token.is_empty() || user.is_empty() {
            return Err(config_error(
                "--token-file",
                format!(
                    "{} line {}: expected token,user[,uid[,\"groups\"]]",
                    path.display(),
                    number + 1
                ),
            ));
        }
        tokens.insert(token.to_string(), user.to_string());
    }
    if tokens.is_empty() {
        return Err(config_error(
            "--token-file",
            format!("{} holds no token", path.display()),
        ));
    }
    Ok(tokens)
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            config_error(
                "--tls-cert-file",
                format!("cannot read certificates from {}: {e}", cert.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(config_error(
            "--tls-cert-file",
            format!("{} holds no certificate", cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        config_error(
            "--tls-key-file",
            format!("cannot read a private key from {}: {e}", key.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error("--tls-cert-file", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            config_error(
                "--tls-key-file",
                format!("the key does not fit the certificate: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A bound, configured server, ready to run.
pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    compaction_interval: Duration,
    handshake_timeout: Duration,
    header_timeout: Duration,
}

impl Server {
    /// Checks the configuration, reads its files and binds the listener.
    pub async fn bind(registry: Registry, config: &ServerConfig) -> Result<Server, ConfigError> {
        config.check()?;
        let tokens = config.token_file.as_deref().map(read_tokens).transpose()?;
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
            _ => None,
        };
        let audit = match &config.audit_log {
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        config_error(
                            "--audit-log",
                            format!("cannot open {}: {e}", path.display()),
                        )
                    })?,
            )),
            None => None,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            config_error(
                "--listen",
                format!("cannot listen on {}: {e}", config.listen),
            )
        })?;
        let local = listener
            .local_addr()
            .map_err(|e| config_error("--listen", e.to_string()))?;
        let app = Arc::new(App {
            registry,
            server_address: local.to_string(),
            bookmark_interval: config.bookmark_interval,
            min_request_timeout: config.min_request_timeout,
            tokens,
            audit,
            max_body: 3 * 1024 * 1024,
        });
        Ok(Server {
            listener,
            app,
            tls,
            compaction_interval: config.compaction_interval,
            handshake_timeout: config.tls_handshake_timeout,
            header_timeout: config.request_header_timeout,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ApiError> {
        if let Storage::Etcd(etcd) = self.app.registry.storage() {
            tokio::spawn(compactor((**etcd).clone(), self.compaction_interval));
        }
        let collector = tokio::spawn(crate::gc::run(self.app.registry.clone()));
        let _stop_collector = AbortOnDrop(collector);
        let service = TowerToHyperService::new(router(self.app.clone()));
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let service = service.clone();
            let tls = self.tls.clone();
            let (handshake_timeout, header_timeout) = (self.handshake_timeout, self.header_timeout);
            tokio::spawn(async move {
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // A peer that stalls before its request is complete does not hold a task
                // forever. The wait for the next request on a kept-alive connection counts too,
                // so it is longer than clients' own idle timeouts (90 s in Go and hyper): they
                // drop an idle connection before the server would, never racing it.
                builder
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let result = match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                        {
                            Ok(Ok(stream)) => {
                                builder
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                    .await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        }
                    }
                    None => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }
}

/// Compacts etcd to the revision seen one interval ago, keeping one interval of history, as
/// kube-apiserver's compactor does.
async fn compactor(etcd: crate::storage::etcd::EtcdStorage, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    let storage = Storage::Etcd(Box::new(etcd.clone()));
    let mut previous: Option<u64> = None;
    loop {
        tokio::time::sleep(interval).await;
        if let Some(revision) = previous
            && let Err(e) = etcd.compact(revision).await
        {
            tracing::warn!(error = %e, revision, "etcd compaction failed");
        }
        previous = storage.revision().await.ok();
    }
}

/// A kubeconfig for `server` (with the CA for TLS and a bearer token when given).
pub fn kubeconfig(server: &str, ca_file: Option<&Path>, token: Option<&str>) -> String {
    let mut cluster = serde_json::json!({"server": server});
    if let Some(ca) = ca_file {
        cluster["certificate-authority"] = serde_json::json!(ca.display().to_string());
    }
    let mut user = serde_json::json!({});
    if let Some(token) = token {
        user["token"] = serde_json::json!(token);
    }
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "svcplane", "cluster": cluster}],
        "users": [{"name": "svcplane", "user": user}],
        "contexts": [{"name": "svcplane", "context": {"cluster": "svcplane", "user": "svcplane"}}],
        "current-context": "svcplane",
    });
    serde_yaml::to_string(&config).expect("JSON values serialize as YAML")
}

/// Stops a background task when the server stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str) -> ServerConfig {
        ServerConfig {
            listen: listen.parse().unwrap(),
            tls_cert_file: None,
            tls_key_file: None,
            token_file: None,
            audit_log: None,
            bookmark_interval: Duration::from_secs(60),
            min_request_timeout: Duration::from_secs(1800),
            compaction_interval: Duration::from_secs(300),
            tls_handshake_timeout: Duration::from_secs(10),
            request_header_timeout: Duration::from_secs(120),
        }
    }

    #[test]
    fn a_non_loopback_address_needs_tls_and_tokens() {
        assert!(config("127.0.0.1:6443").check().is_ok());
        assert!(config("[::1]:6443").check().is_ok());
        let e = config("0.0.0.0:6443").check().unwrap_err();
        assert_eq!(e.flag, "--listen");
        let mut secured = config("0.0.0.0:6443");
        secured.tls_cert_file = Some("c".into());
        secured.tls_key_file = Some("k".into());
        assert!(secured.check().is_err(), "TLS without tokens still refused");
        secured.token_file = Some("t".into());
        assert!(secured.check().is_ok());
    }

    #[test]
    fn the_kubeconfig_parses_as_yaml_with_the_token() {
        let text = kubeconfig(
            "https://10.0.0.1:6443",
            Some(Path::new("/ca.crt")),
            Some("s3cret"),
        );
        let value: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            value["clusters"][0]["cluster"]["server"],
            "https://10.0.0.1:6443"
        );
        assert_eq!(value["users"][0]["user"]["token"], "s3cret");
        let plain: serde_json::Value =
            serde_yaml::from_str(&kubeconfig("http://127.0.0.1:1", None, None)).unwrap();
        assert_eq!(plain["current-context"], "svcplane");
        assert!(plain["users"][0]["user"].as_object().unwrap().is_empty());
    }
}
