//! How svcplane reaches etcd, shared by the pools (`ipam`), the API server's storage and the
//! commands: the client URLs, TLS files, timeout and key prefix of one etcd
//! ([`EtcdConfig`]), connecting a client and checking that etcd answers, and the duration text
//! every interval flag takes ([`parse_duration`]). No Kubernetes types.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// Why etcd could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A setting is wrong; `flag` names it (`--etcd-endpoints`, `--etcd-cafile`, ...).
    #[error("{flag}: {message}")]
    Invalid { flag: String, message: String },
    /// etcd did not answer.
    #[error(
        "etcd at {endpoints} is unreachable: {message}; check --etcd-endpoints (and the TLS flags) and that etcd is running"
    )]
    Unavailable { endpoints: String, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs (`http://host:port`, `https://host:port`, or `host:port`).
    pub endpoints: Vec<String>,
    /// Key prefix of everything the client reads and writes; starts and ends with `/`.
    pub prefix: String,
    /// CA bundle to verify etcd's serving certificate (`--etcd-cafile`).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (`--etcd-certfile`, `--etcd-keyfile`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Dial and per-request timeout.
    pub timeout: Duration,
}

impl EtcdConfig {
    /// Plain-HTTP `endpoints`, keys under `prefix`, a 5 s timeout.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: prefix.into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            timeout: Duration::from_secs(5),
        }
    }

    /// The prefix, checked: it must start and end with `/` (`example` shows one).
    pub fn checked_prefix(&self, example: &str) -> Result<&str> {
        if self.prefix.starts_with('/') && self.prefix.ends_with('/') {
            Ok(&self.prefix)
        } else {
            Err(Error::Invalid {
                flag: "--etcd-prefix".into(),
                message: format!(
                    "{:?} must start and end with '/', e.g. {example}",
                    self.prefix
                ),
            })
        }
    }

    fn tls(&self) -> Result<Option<TlsOptions>> {
        if self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none() {
            return Ok(None);
        }
        let read = |flag: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| Error::Invalid {
                flag: flag.to_string(),
                message: format!("cannot read {}: {e}", p.display()),
            })
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read("--etcd-cafile", ca)?));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => {
                tls = tls.identity(Identity::from_pem(
                    read("--etcd-certfile", c)?,
                    read("--etcd-keyfile", k)?,
                ));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(Error::Invalid {
                flag: "--etcd-keyfile".into(),
                    message: "--etcd-certfile needs --etcd-keyfile (the client certificate's private key)".into(),
                });
            }
            (None, Some(_)) => {
                return Err(Error::Invalid {
                    flag: "--etcd-certfile".into(),
                    message: "--etcd-keyfile needs --etcd-certfile (the client certificate)".into(),
                });
            }
        }
        Ok(Some(tls))
    }

    /// Checks the prefix, the endpoints and the TLS files as [`EtcdConfig::connect_client`]
    /// would, without connecting.
    pub fn check(&self, example_prefix: &str) -> Result<()> {
        self.checked_prefix(example_prefix)?;
        let tls = self.tls()?;
        self.urls(tls.is_some())?;
        Ok(())
    }

    /// Connects a client with these endpoints and TLS files and checks that etcd answers;
    /// returns it with the endpoints joined for messages.
    pub async fn connect_client(&self) -> Result<(Client, String)> {
        let tls = self.tls()?;
        let urls = self.urls(tls.is_some())?;
        let endpoints = urls.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            .with_keep_alive(Duration::from_secs(10), self.timeout);
        if let Some(tls) = tls {
            options = options.with_tls(tls);
        }
        let unavailable = |e: etcd_client::Error| Error::Unavailable {
            endpoints: endpoints.clone(),
            message: e.to_string(),
        };
        let mut client = Client::connect(&urls, Some(options))
            .await
            .map_err(unavailable)?;
        client.status().await.map_err(unavailable)?;
        Ok((client, endpoints))
    }

    /// Endpoints with a scheme: `https://` when TLS is configured, else `http://`.
    fn urls(&self, tls: bool) -> Result<Vec<String>> {
        if self.endpoints.is_empty() {
            return Err(Error::Invalid {
                flag: "--etcd-endpoints".into(),
                message: "no etcd endpoint given; e.g. --etcd-endpoints http://127.0.0.1:2379"
                    .into(),
            });
        }
        self.endpoints
            .iter()
            .map(|e| {
                let e = e.trim();
                if e.starts_with("http://") && tls {
                    Err(Error::Invalid {
                flag: "--etcd-endpoints".into(),
                        message: format!("{e} is plain http but TLS flags are set; use https://"),
                    })
                } else if e.starts_with("http://") || e.starts_with("https://") {
                    Ok(e.to_string())
                } else if e.contains("://") || e.is_empty() {
                    Err(Error::Invalid {
                flag: "--etcd-endpoints".into(),
                        message: format!("{e:?} is not an etcd client URL; write http://host:port or https://host:port"),
                    })
                } else {
                    Ok(format!("{}://{e}", if tls { "https" } else { "http" }))
                }
            })
            .collect()
    }
}

/// Parses a duration such as `5m`, `30s`, `1500ms` or `0`.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 5m, 30s or 0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(r: Result<impl std::fmt::Debug>) -> (String, String) {
        match r {
            Err(Error::Invalid { flag, message }) => (flag, message),
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn bare_endpoints_get_the_scheme_tls_asks_for() {
        let config = EtcdConfig::new(vec!["127.0.0.1:2379".into()], "/p/");
        assert_eq!(config.urls(false).unwrap(), ["http://127.0.0.1:2379"]);
        assert_eq!(config.urls(true).unwrap(), ["https://127.0.0.1:2379"]);
    }

    #[test]
    fn plain_http_with_tls_flags_is_refused_naming_the_endpoints_flag() {
        let config = EtcdConfig::new(vec!["http://127.0.0.1:2379".into()], "/p/");
        let (flag, message) = invalid(config.urls(true));
        assert_eq!(flag, "--etcd-endpoints");
        assert!(message.contains("use https://"), "{message}");
    }

    #[test]
    fn no_endpoint_and_a_foreign_scheme_are_refused() {
        let (flag, _) = invalid(EtcdConfig::new(vec![], "/p/").urls(false));
        assert_eq!(flag, "--etcd-endpoints");
        let (_, message) =
            invalid(EtcdConfig::new(vec!["unix:///run/etcd".into()], "/p/").urls(false));
        assert!(message.contains("not an etcd client URL"), "{message}");
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_the_reverse() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "x").unwrap();
        let mut config = EtcdConfig::new(vec!["127.0.0.1:2379".into()], "/p/");
        config.cert_file = Some(pem.clone());
        assert_eq!(invalid(config.tls()).0, "--etcd-keyfile");
        config.cert_file = None;
        config.key_file = Some(pem);
        assert_eq!(invalid(config.tls()).0, "--etcd-certfile");
    }

    #[test]
    fn an_unreadable_ca_file_is_refused_naming_its_flag() {
        let mut config = EtcdConfig::new(vec!["127.0.0.1:2379".into()], "/p/");
        config.ca_file = Some("/nonexistent/ca.pem".into());
        let (flag, message) = invalid(config.tls());
        assert_eq!(flag, "--etcd-cafile");
        assert!(message.contains("/nonexistent/ca.pem"), "{message}");
    }

    #[test]
    fn a_prefix_must_start_and_end_with_a_slash() {
        assert_eq!(
            EtcdConfig::new(vec![], "/a/").checked_prefix("/x/"),
            Ok("/a/")
        );
        let (flag, message) = invalid(EtcdConfig::new(vec![], "a/").checked_prefix("/x/"));
        assert_eq!(flag, "--etcd-prefix");
        assert!(message.contains("e.g. /x/"), "{message}");
    }

    #[tokio::test]
    async fn nothing_listening_is_unavailable_naming_the_endpoints() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = EtcdConfig::new(vec![format!("127.0.0.1:{port}")], "/p/");
        config.timeout = Duration::from_millis(300);
        match config.connect_client().await {
            Err(Error::Unavailable { endpoints, .. }) => {
                assert_eq!(endpoints, format!("http://127.0.0.1:{port}"))
            }
            other => panic!("expected unavailable, got {:?}", other.map(|(_, e)| e)),
        }
    }

    #[test]
    fn durations_read_as_flags_write_them() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
    }
}
