//! The fast path (cluster answers kept as bytes) against the full path for one request's
//! bytes: the same reply from the same RNG, asked twice (the second time from what the fast
//! path kept), under a Corefile whose cache keeps no answer of the cluster's zones (kubeadm's,
//! with the reverse zones also kept out of its cache) or one without a cache, over UDP or TCP.
//! The first byte picks the Corefile and transport; the rest is the request.
//!
//! Cached cluster answers are left to `dns/tests/fast_path.rs`, which builds fresh routers per
//! case: here the routers live for the whole run, and two caches holding the same entry for
//! minutes answer with remaining TTLs that differ by a second whenever a second turns between
//! the two stores (the first runs of this target found exactly that, for cluster.local under a
//! caching Corefile and for in-addr.arpa under kubeadm's).
#![no_main]

#[path = "../../dns/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::OnceLock;

use dns::chain::{Step, Worker};
use dns::memo::Memo;
use dns::message::Transport;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use support::{COREFILES, Cluster, Served};

struct Fixture {
    // Kept alive: the routers answer from its index.
    _cluster: Cluster,
    fast: Served,
    full: Served,
}

fn fixtures() -> &'static Vec<Fixture> {
    static FIXTURES: OnceLock<Vec<Fixture>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let uncached = |kind: &str| format!("disable {kind} cluster.local in-addr.arpa ip6.arpa");
        let kubeadm = COREFILES[0]
            .replace("disable success cluster.local", &uncached("success"))
            .replace("disable denial cluster.local", &uncached("denial"));
        [kubeadm.as_str(), COREFILES[2]]
            .iter()
            .map(|corefile| {
                let (cluster, plan) = Cluster::new(corefile);
                let (fast, full) = (cluster.serve(&plan), cluster.serve(&plan));
                Fixture {
                    _cluster: cluster,
                    fast,
                    full,
                }
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, request)) = data.split_first() else {
        return;
    };
    let fixture = &fixtures()[usize::from(pick) % 2];
    let transport = if pick & 0x80 != 0 {
        Transport::Tcp
    } else {
        Transport::Udp
    };
    let peer: SocketAddr = "10.1.2.3:5353".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:53".parse().unwrap();
    let mut fast = Worker::new(Memo::new(8), StdRng::seed_from_u64(u64::from(pick)));
    let mut full = Worker::reference(StdRng::seed_from_u64(u64::from(pick)));
    for _ in 0..2 {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let got = fixture
            .fast
            .router
            .handle(request, transport, peer, local, &mut fast, &mut a);
        let want = fixture
            .full
            .router
            .handle(request, transport, peer, local, &mut full, &mut b);
        match (got, want) {
            (Step::Done(x), Step::Done(y)) => {
                assert_eq!(x, y, "answered or not");
                assert_eq!(a, b, "the same reply bytes");
            }
            (Step::Later(_), Step::Later(_)) => {}
            _ => panic!("one path waits for an upstream, the other not"),
        }
    }
});
