//! A real etcd (the peers' 3.6, built by `peers/build.sh`) on free loopback ports with a
//! temporary data directory in tmpfs, stopped when dropped or when the test process dies.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::process::Watched;
use crate::{TlsFiles, free_port, peer};

/// tmpfs keeps etcd's fsyncs cheap, which keeps the suite fast.
pub(crate) fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(Path::new("/dev/shm"))
        .or_else(|_| tempfile::Builder::new().prefix(prefix).tempdir())
        .expect("create a scratch directory")
}

/// A running (or killed) etcd server.
pub struct Etcd {
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP port serving `/health` (TLS servers only).
    metrics_port: Option<u16>,
    data_dir: tempfile::TempDir,
    tls: Option<TlsFiles>,
    process: Option<Watched>,
}

impl Etcd {
    /// Starts a fresh etcd and waits until it is healthy.
    pub fn start() -> Etcd {
        let mut etcd = Etcd {
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: None,
            data_dir: scratch_dir("svcplane-etcd-"),
            tls: None,
            process: None,
        };
        etcd.spawn();
        etcd
    }

    /// Starts an etcd that serves clients over TLS only and requires a client certificate
    /// signed by its CA (certificates made with the `openssl` command).
    pub fn start_tls() -> Etcd {
        let data_dir = scratch_dir("svcplane-etcd-");
        let tls = crate::make_certs(data_dir.path());
        let mut etcd = Etcd {
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: Some(free_port()),
            data_dir,
            tls: Some(tls),
            process: None,
        };
        etcd.spawn();
        etcd
    }

    /// The certificates of a TLS etcd.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// One etcd shared by every test of this test binary; tests keep apart by key prefix
    /// ([`unique_prefix`]).
    pub fn shared() -> &'static Etcd {
        static SHARED: OnceLock<Etcd> = OnceLock::new();
        SHARED.get_or_init(Etcd::start)
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let client = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let data = self.data_dir.path().join("data");
        let mut args: Vec<std::ffi::OsString> = vec!["--name".into(), "test".into()];
        args.extend(["--data-dir".into(), data.into_os_string()]);
        for flag in ["--listen-client-urls", "--advertise-client-urls"] {
            args.extend([flag.into(), client.clone().into()]);
        }
        for flag in ["--listen-peer-urls", "--initial-advertise-peer-urls"] {
            args.extend([flag.into(), peer_url.clone().into()]);
        }
        args.extend([
            "--initial-cluster".into(),
            format!("test={peer_url}").into(),
            "--log-level".into(),
            "error".into(),
        ]);
        if let (Some(tls), Some(metrics)) = (&self.tls, self.metrics_port) {
            for (flag, path) in [
                ("--cert-file", &tls.server_cert),
                ("--key-file", &tls.server_key),
                ("--trusted-ca-file", &tls.ca),
            ] {
                args.extend([flag.into(), path.clone().into_os_string()]);
            }
            args.extend([
                "--client-cert-auth".into(),
                "--listen-metrics-urls".into(),
                format!("http://127.0.0.1:{metrics}").into(),
            ]);
        }
        let log = self.data_dir.path().join("etcd.log");
        self.process = Some(Watched::spawn(
            &peer("etcd"),
            args,
            &[],
            &log,
            Some(self.data_dir.path()),
        ));
        self.wait_healthy();
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if health(self.metrics_port.unwrap_or(self.client_port)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = self.process.as_ref().map(Watched::log).unwrap_or_default();
        panic!(
            "etcd on port {} did not become healthy within 30 s: {log}",
            self.client_port
        );
    }

    /// The process group of etcd and its watchdog.
    pub fn process_group(&self) -> Option<u32> {
        self.process.as_ref().and_then(Watched::process_group)
    }

    /// The data directory etcd runs on (to save and restore it while etcd is stopped).
    pub fn data_path(&self) -> std::path::PathBuf {
        self.data_dir.path().join("data")
    }

    /// Kills etcd at once (SIGKILL), as a crash would; the data directory is kept.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts etcd again on the same ports and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn health(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}
