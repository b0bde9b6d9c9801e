//! Test harness: the real upstream peers that `peers/build.sh` builds (etcd, kube-apiserver,
//! kube-controller-manager, CoreDNS, kubectl, Helm) and Debian's Unbound, started on free
//! loopback ports and never outliving their test binary, an HTTPS admission webhook, a
//! round-robin TCP proxy, and the CRDs of projects the Helm chart renders objects for.

pub mod bench;
mod certs;
pub mod cluster;
pub mod coredns;
pub mod crds;
mod etcd;
pub mod process;
pub mod proxy;
mod unbound;
pub mod webhook;

pub use certs::{TlsFiles, make_certs};
pub use cluster::{Cluster, ClusterOptions};
pub use coredns::CoreDns;
pub use etcd::Etcd;
pub use unbound::Unbound;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free loopback port")
}

/// A loopback port free for both UDP and TCP (for DNS servers).
pub fn free_dns_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a free UDP port");
        let port = udp.local_addr().expect("a bound address").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Where the peers' binaries are: `$SVCPLANE_PEERS`, else `<workspace>/target/peers/bin`.
pub fn peers_dir() -> PathBuf {
    match std::env::var_os("SVCPLANE_PEERS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/peers/bin"),
    }
}

/// The path of a peer binary (`etcd`, `kube-apiserver`, `kubectl`, `coredns`, `helm`, ...);
/// panics with the command that builds it when it is missing. Tests never skip for a missing
/// peer.
pub fn peer(name: &str) -> PathBuf {
    let path = peers_dir().join(name);
    assert!(
        path.is_file(),
        "the test peer {name} is missing at {}: build it with `bash peers/build.sh {name}` \
         (or all peers with `bash peers/build.sh`), or point SVCPLANE_PEERS at a folder holding it",
        path.display()
    );
    path
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
