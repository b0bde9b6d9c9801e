//! Test harness: a real etcd (Debian's `etcd-server`) on free loopback ports with a temporary
//! data directory, stopped when dropped — and, through a watchdog shell, when the test process
//! dies, so a shared instance in a `static` never outlives its test binary.

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
    data_dir: tempfile::TempDir,
    child: Option<Child>,
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
            data_dir: scratch_dir(),
            child: None,
        };
        etcd.spawn();
        etcd
    }

    /// One etcd shared by every test of this test binary; tests keep apart by key prefix
    /// ([`unique_prefix`]).
    pub fn shared() -> &'static Etcd {
        static SHARED: OnceLock<Etcd> = OnceLock::new();
        SHARED.get_or_init(Etcd::start)
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let data = self.data_dir.path().join("data");
        let script = r#"etcd "$@" & e=$!
trap 'kill -9 $e 2>/dev/null; exit 0' TERM INT
while kill -0 "$WATCHED_PID" 2>/dev/null && kill -0 $e 2>/dev/null; do sleep 0.2; done
kill -9 $e 2>/dev/null; wait $e"#;
        let child = Command::new("sh")
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
            .args(["--logger", "zap", "--log-level", "error"])
            .env("WATCHED_PID", std::process::id().to_string())
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
            if health(self.client_port) {
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
