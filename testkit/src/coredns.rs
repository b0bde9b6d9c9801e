//! CoreDNS (built by `peers/build.sh`) on free loopback ports with a given Corefile, stopped
//! when dropped or when the test process dies.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::process::Watched;
use crate::{free_dns_port, free_port, peer};

/// A running CoreDNS.
pub struct CoreDns {
    /// The UDP and TCP port it serves DNS on, on 127.0.0.1.
    pub port: u16,
    /// The port of its `ready` plugin.
    pub ready_port: u16,
    process: Watched,
    _dir: tempfile::TempDir,
}

impl CoreDns {
    /// Starts CoreDNS with `corefile`, in which `{port}` stands for the DNS port and `{ready}`
    /// for the ready plugin's port (the Corefile should contain `bind 127.0.0.1` and
    /// `ready 127.0.0.1:{ready}`), and waits until `/ready` answers 200 and DNS is served.
    pub fn start(corefile: &str) -> CoreDns {
        CoreDns::start_at(free_dns_port(), corefile)
    }

    /// As [`CoreDns::start`], DNS on `port` (for files the Corefile imports, which name it).
    pub fn start_at(port: u16, corefile: &str) -> CoreDns {
        let dir = tempfile::Builder::new()
            .prefix("svcplane-coredns-")
            .tempdir()
            .expect("create a directory for CoreDNS");
        let ready_port = free_port();
        let text = corefile
            .replace("{port}", &port.to_string())
            .replace("{ready}", &ready_port.to_string());
        let path = dir.path().join("Corefile");
        std::fs::write(&path, text).expect("write the Corefile");
        let mut process = Watched::spawn(
            &peer("coredns"),
            vec!["-conf".into(), path.into_os_string()],
            &[],
            &dir.path().join("coredns.log"),
            None,
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        // `/ready` can answer before the DNS listeners are up; CoreDNS prints its version once
        // they are.
        while !ready(ready_port) || !process.log().contains("CoreDNS-") {
            if let Some(status) = process.exited() {
                panic!("coredns exited with {status}: {}", process.log());
            }
            assert!(
                Instant::now() < deadline,
                "coredns was not ready within 60 s: {}",
                process.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        CoreDns {
            port,
            ready_port,
            process,
            _dir: dir,
        }
    }

    /// What CoreDNS has logged.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The Corefile's folder (for files a Corefile names, such as zone files).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

/// Whether `GET /ready` on `port` answers 200.
pub fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}
