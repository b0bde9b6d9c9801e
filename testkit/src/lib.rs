//! Test harness: a real etcd (Debian's `etcd-server`) on free loopback ports with a temporary
//! data directory, stopped when dropped — and, through a watchdog shell, when the test process
//! dies, so a shared instance in a `static` never outlives its test binary.

pub mod webhook;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A running (or killed) etcd server.
pub struct Etcd {
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP port serving `/health` (TLS servers only).
    metrics_port: Option<u16>,
    data_dir: tempfile::TempDir,
    tls: Option<TlsFiles>,
    child: Option<Child>,
}

/// Certificates of a TLS etcd: a CA, the server's (for 127.0.0.1) and a client's.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free loopback port")
}

/// tmpfs keeps etcd's fsyncs cheap, which keeps the suite fast.
fn scratch_dir() -> tempfile::TempDir {
    let shm = PathBuf::from("/dev/shm");
    let builder = tempfile::Builder::new()
        .prefix("svcplane-etcd-")
        .tempdir_in(&shm);
    builder
        .or_else(|_| tempfile::Builder::new().prefix("svcplane-etcd-").tempdir())
        .expect("create a data dir")
}

impl Etcd {
    /// Starts a fresh etcd and waits until it is healthy.
    pub fn start() -> Etcd {
        let mut etcd = Etcd {
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: None,
            data_dir: scratch_dir(),
            tls: None,
            child: None,
        };
        etcd.spawn();
        etcd
    }

    /// Starts an etcd that serves clients over TLS only and requires a client certificate
    /// signed by its CA (certificates made with the `openssl` command).
    pub fn start_tls() -> Etcd {
        let data_dir = scratch_dir();
        let tls = make_certs(data_dir.path());
        let mut etcd = Etcd {
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: Some(free_port()),
            data_dir,
            tls: Some(tls),
            child: None,
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
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let data = self.data_dir.path().join("data");
        let script = r#"etcd "$@" & e=$!
trap 'kill -9 $e 2>/dev/null; exit 0' TERM INT
while kill -0 "$WATCHED_PID" 2>/dev/null && kill -0 $e 2>/dev/null; do sleep 0.2; done
kill -9 $e 2>/dev/null; wait $e
# The test process is gone (a shared instance lives in a static that is never dropped): its
# data directory would otherwise stay in /dev/shm, in memory, for good.
kill -0 "$WATCHED_PID" 2>/dev/null || rm -rf "$DATA_ROOT""#;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(["--name", "test", "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--logger", "zap", "--log-level", "error"]);
        if let (Some(tls), Some(metrics)) = (&self.tls, self.metrics_port) {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth")
                .args([
                    "--listen-metrics-urls",
                    &format!("http://127.0.0.1:{metrics}"),
                ]);
        }
        let child = command
            .env("WATCHED_PID", std::process::id().to_string())
            .env("DATA_ROOT", self.data_dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start etcd: install Debian's etcd-server (apt-get install -y etcd-server)");
        self.child = Some(child);
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
        panic!(
            "etcd on port {} did not become healthy within 30 s (is etcd-server installed?)",
            self.client_port
        );
    }

    /// Kills etcd at once (SIGKILL), as a crash would; the data directory is kept.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The shell and etcd share a process group led by the shell: kill both.
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
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

/// Makes a CA, a server certificate for 127.0.0.1 (and `localhost`) and a client certificate in
/// `dir` with the `openssl` command, valid for two days; panics if openssl fails.
pub fn make_certs(dir: &std::path::Path) -> TlsFiles {
    let f = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (apt-get install -y openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=svcplane-test-ca",
            ],
        ]
        .concat(),
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(f(&format!("{name}.ext")), ext).unwrap();
        let (key, csr, cert, extfile) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        openssl(
            &[
                &["req"],
                &ec[..],
                &[
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN=svcplane-test-{name}"),
                ],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ]);
    }
    TlsFiles {
        ca: f("ca.pem"),
        server_cert: f("server.pem"),
        server_key: f("server-key.pem"),
        client_cert: f("client.pem"),
        client_key: f("client-key.pem"),
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

/// A key prefix no other test of this process uses, e.g. `/test/3-1234-bench/`.
pub fn unique_prefix(label: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "/test/{}-{}-{label}/",
        N.fetch_add(1, Ordering::Relaxed),
        std::process::id()
    )
}
