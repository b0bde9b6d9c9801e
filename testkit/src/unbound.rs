//! Debian's Unbound as a loopback upstream: authoritative-style local data for a test zone,
//! NXDOMAIN (with an SOA) for every other name, never a query beyond the machine. Tests point
//! `forward` at it, for svcplane and CoreDNS alike.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::free_dns_port;
use crate::process::Watched;

/// A running Unbound.
pub struct Unbound {
    /// The UDP and TCP port it answers on, on 127.0.0.1.
    pub port: u16,
    /// The port of DNS over TLS, when started with a certificate.
    pub tls_port: Option<u16>,
    process: Watched,
    _dir: tempfile::TempDir,
}

/// Where Debian installs it (`apt-get install unbound`).
const UNBOUND: &str = "/usr/sbin/unbound";

impl Unbound {
    /// Starts Unbound serving `records` (lines of zone-file text such as
    /// `www.example.org. 300 IN A 192.0.2.10`) under a root zone that answers NXDOMAIN for
    /// every other name, and waits until it answers.
    pub fn start(records: &[&str]) -> Unbound {
        Unbound::start_with(records, None)
    }

    /// As [`Unbound::start`], answering DNS over TLS too, with the server certificate and key
    /// of `tls` (for 127.0.0.1).
    pub fn start_tls(records: &[&str], tls: &crate::TlsFiles) -> Unbound {
        Unbound::start_with(records, Some(tls))
    }

    fn start_with(records: &[&str], tls: Option<&crate::TlsFiles>) -> Unbound {
        assert!(
            Path::new(UNBOUND).exists(),
            "{UNBOUND} is missing: apt-get install unbound (the README's test command does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("svcplane-unbound-")
            .tempdir()
            .expect("create a directory for Unbound");
        let port = free_dns_port();
        // `so-reuseport: no` (Unbound's default is yes): a port that another server of the test
        // binary took in the meantime fails the start, instead of being shared with it in
        // silence (svcplane's and CoreDNS's sockets take SO_REUSEPORT too).
        let mut conf = format!(
            "server:\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{dir}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  do-ip6: no\n  access-control: 127.0.0.0/8 allow\n  module-config: \"iterator\"\n  num-threads: 1\n  so-reuseport: no\n  local-zone: \".\" static\n  local-data: \". 3600 IN SOA ns.upstream.test. admin.upstream.test. 1 3600 600 86400 60\"\n  local-data: \". 3600 IN NS ns.upstream.test.\"\n",
            dir = dir.path().display()
        );
        for record in records {
            conf.push_str(&format!(
                "  local-data: \"{}\"\n",
                record.replace('"', "\\\"")
            ));
        }
        let tls_port = match tls {
            Some(files) => {
                let tls_port = free_dns_port();
                conf.push_str(&format!(
                    "  interface: 127.0.0.1@{port}\n  interface: 127.0.0.1@{tls_port}\n  tls-port: {tls_port}\n  tls-service-key: \"{}\"\n  tls-service-pem: \"{}\"\n",
                    files.server_key.display(),
                    files.server_cert.display()
                ));
                Some(tls_port)
            }
            None => {
                conf.push_str("  interface: 127.0.0.1\n");
                None
            }
        };
        conf.push_str("remote-control:\n  control-enable: no\n");
        let path = dir.path().join("unbound.conf");
        std::fs::write(&path, conf).expect("write unbound.conf");
        let mut process = Watched::spawn(
            Path::new(UNBOUND),
            vec!["-d".into(), "-c".into(), path.into_os_string()],
            &[],
            &dir.path().join("unbound.log"),
            None,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answers(port) {
            if let Some(status) = process.exited() {
                panic!("unbound exited with {status}: {}", process.log());
            }
            assert!(
                Instant::now() < deadline,
                "unbound did not answer within 30 s: {}",
                process.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Unbound {
            port,
            tls_port,
            process,
            _dir: dir,
        }
    }

    /// What Unbound has logged.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Whether something answers `. IN NS` on 127.0.0.1:`port` over UDP.
fn answers(port: u16) -> bool {
    let Ok(socket) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    // ID 0x5356, RD, one question: the root, NS, IN.
    let query = [
        0x53, 0x56, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1,
    ];
    if socket.send_to(&query, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(socket.recv_from(&mut buf), Ok((n, _)) if n >= 12 && buf[0] == 0x53 && buf[1] == 0x56)
}
