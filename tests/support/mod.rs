//! Shared harness of the end-to-end tests: `svcplane apiserver` as a process on memory or on the
//! test binary's shared etcd, a kube-rs client and a kubectl with its own cache for it, and the
//! audit log it wrote.

#![allow(dead_code, unreachable_pub)]

pub mod corefile;
pub mod dns_compare;
pub mod helm;
pub mod webhook;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::Etcd;

/// Which storage the API server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Etcd,
}

/// A running `svcplane apiserver`, killed on drop.
pub struct ApiServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    args: Vec<String>,
}

pub fn free_port() -> u16 {
    testkit::free_port()
}

impl ApiServer {
    /// Starts the server on `backend` with short timers and waits until it is ready.
    pub fn start(backend: Backend, extra: &[&str]) -> ApiServer {
        ApiServer::start_at(backend, free_port(), extra)
    }

    /// Starts the server on a given loopback port (for clients configured before it exists).
    pub fn start_at(backend: Backend, port: u16, extra: &[&str]) -> ApiServer {
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = vec![
            "apiserver".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--kubeconfig-out".into(),
            dir.path().join("kubeconfig").display().to_string(),
            "--audit-log".into(),
            dir.path().join("audit.log").display().to_string(),
        ];
        // Short timers unless the test sets its own.
        for (flag, value) in [
            ("--namespace-cleanup-interval", "100ms"),
            ("--watch-bookmark-interval", "1s"),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        if backend == Backend::Etcd {
            // The test binary's shared etcd, unless the test brings its own.
            if !extra.contains(&"--etcd-endpoints") {
                args.extend(["--etcd-endpoints".into(), Etcd::shared().endpoint()]);
            }
            args.extend([
                "--etcd-prefix".into(),
                format!("/{}/", testkit::unique_prefix("api").trim_matches('/')),
            ]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = ApiServer {
            child: None,
            port,
            dir,
            args,
        };
        server.spawn();
        server
    }

    /// Starts a server with exactly these arguments after `apiserver --listen`.
    pub fn start_with(args: &[&str]) -> ApiServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut all: Vec<String> = vec![
            "apiserver".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let mut server = ApiServer {
            child: None,
            port,
            dir,
            args: all,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_svcplane"))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start svcplane apiserver");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("svcplane apiserver exited with {status}: {}", self.log());
            }
            let tls = self.args.iter().any(|a| a == "--tls-cert-file");
            // Over TLS, the start-up line says it is serving (storage was checked before).
            let ready = if tls {
                self.log().contains("svcplane apiserver: serving")
            } else {
                get_status(self.port, "/readyz") == Some(200)
            };
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the API server never became ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process (SIGKILL) and starts it again with the same arguments.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Every audit record so far.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect()
    }

    /// A kube-rs client from the kubeconfig the server wrote.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// kubectl against this server with a cache directory of its own.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        run_kubectl(&self.kubeconfig(), self.dir.path(), None, args, stdin)
    }
}

/// kubectl with `kubeconfig`, its cache and HOME in `dir`, run in `cwd` if given, fed `stdin`.
pub fn run_kubectl(
    kubeconfig: &Path,
    dir: &Path,
    cwd: Option<&Path>,
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    let mut command = Command::new(kubectl());
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let mut child = command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(dir.join("kubectl-cache"))
        .args(args)
        .env("HOME", dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().expect("run kubectl")
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The peers' kubectl (v1.37.2, built by `peers/build.sh`).
pub fn kubectl() -> PathBuf {
    testkit::peer("kubectl")
}

/// The HTTP status of a plain GET, or None while nothing answers.
pub fn get_status(port: u16, path: &str) -> Option<u16> {
    let (status, _) = http(port, "GET", path, &[], None)?;
    Some(status)
}

/// A raw HTTP/1.1 request with `Connection: close`; returns the status and the body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or("");
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, dechunk(&body)))
}

/// Joins a chunked body (or returns a plain one unchanged).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, tail)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if size == 0 || tail.len() < size {
            return if size == 0 { out } else { body.to_string() };
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
}

/// Waits until `check` holds, up to a generous bound.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// Writes a file in `dir` and returns its path.
/// `object` written as a JSON manifest in a directory of its own, for `kubectl -f`: the
/// directory (kept alive by the caller) and the file's path.
pub fn manifest(object: &serde_json::Value) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "manifest.json", &object.to_string());
    (dir, path.display().to_string())
}

/// `kubectl create service clusterip NAME --tcp=80:80 --clusterip=IP` in `ns`, through
/// `kubectl` (a cluster's or a dev instance's).
pub fn create_with_ip(
    kubectl: impl Fn(&[&str]) -> Output,
    ns: &str,
    name: &str,
    ip: &str,
) -> Output {
    let ip = format!("--clusterip={ip}");
    kubectl(&[
        "-n",
        ns,
        "create",
        "service",
        "clusterip",
        name,
        "--tcp=80:80",
        &ip,
    ])
}

/// The strings of a JSON array (none for anything else).
pub fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// A loopback port free for both UDP and TCP (for DNS servers).
pub fn free_dns_port() -> u16 {
    testkit::free_dns_port()
}

/// What dig printed: the status and the answer records' data (the last field(s) of each line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dig {
    pub status: String,
    /// `TYPE data...` of each answer record, e.g. `A 10.96.0.20` or `SRV 0 100 8080 x.`.
    pub answers: Vec<String>,
}

/// Asks the DNS server on `port` with dig (one try, 2 s).
pub fn dig(port: u16, args: &[&str]) -> Dig {
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+time=2",
            "+tries=1",
            "+noall",
            "+comments",
            "+answer",
        ])
        .args(args)
        .output()
        .expect("run dig (apt-get install -y dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or("NO ANSWER")
        .to_string();
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().skip(3).collect::<Vec<_>>().join(" "))
        .collect();
    Dig { status, answers }
}

/// A running `svcplane dev`, killed with its test binary at the latest.
pub struct Dev {
    process: testkit::process::Watched,
    pub api_port: u16,
    pub dns_port: u16,
    dir: PathBuf,
    /// Removes the directory when dropped (not for the shared instance, whose watchdog does).
    _owned: Option<tempfile::TempDir>,
}

impl Dev {
    /// Starts `svcplane dev` in a fresh directory on free loopback ports, with `extra` flags.
    pub fn start(extra: &[&str]) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        Dev::spawn(path, Some(dir), extra)
    }

    /// One instance for the whole test binary, started with `flags` by its first caller (every
    /// caller in a binary passes the same); tests keep to their own namespaces.
    pub fn shared(flags: &[&str]) -> &'static Dev {
        static SHARED: std::sync::OnceLock<Dev> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap().keep();
            Dev::spawn(dir, None, flags)
        })
    }

    fn spawn(dir: PathBuf, owned: Option<tempfile::TempDir>, extra: &[&str]) -> Dev {
        let api_port = free_port();
        let dns_port = free_dns_port();
        let mut args: Vec<std::ffi::OsString> = vec![
            "dev".into(),
            "--listen-api".into(),
            format!("127.0.0.1:{api_port}").into(),
            "--dns".into(),
            format!("127.0.0.1:{dns_port}").into(),
        ];
        args.extend(extra.iter().map(Into::into));
        let scratch = owned.is_none().then_some(dir.as_path());
        let process = testkit::process::Watched::spawn_in(
            &dir,
            Path::new(env!("CARGO_BIN_EXE_svcplane")),
            args,
            &[("RUST_LOG", "info")],
            &dir.join("dev.log"),
            scratch,
        );
        let mut dev = Dev {
            process,
            api_port,
            dns_port,
            dir,
            _owned: owned,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dev.log().contains("svcplane dns: serving") {
            if let Some(status) = dev.process.exited() {
                panic!("svcplane dev exited with {status}: {}", dev.log());
            }
            assert!(
                Instant::now() < deadline,
                "svcplane dev never started: {}",
                dev.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        dev
    }

    /// Its working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The kubeconfig `svcplane dev` wrote (./.svcplane/kubeconfig in its directory).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join(".svcplane/kubeconfig")
    }

    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// kubectl with this instance's kubeconfig, run in the repository (so `-f examples/` works).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    /// kubectl with `stdin` as its input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let repository = Path::new(env!("CARGO_MANIFEST_DIR"));
        run_kubectl(&self.kubeconfig(), &self.dir, Some(repository), args, stdin)
    }

    pub fn dig(&self, args: &[&str]) -> Dig {
        dig(self.dns_port, args)
    }
}
