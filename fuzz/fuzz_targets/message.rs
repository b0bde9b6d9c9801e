//! The full path (the reference) on any bytes, under a test Corefile, over UDP or TCP (the
//! first byte picks them): no panic, and a reply, when there is one, is a DNS response that
//! parses and carries the request's ID.
#![no_main]

#[path = "../../dns/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::OnceLock;

use dns::chain::{Step, Worker};
use dns::message::Transport;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use support::{COREFILES, Cluster, Served};

fn fixtures() -> &'static Vec<(Cluster, Served)> {
    static FIXTURES: OnceLock<Vec<(Cluster, Served)>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        COREFILES
            .iter()
            .map(|corefile| {
                let (cluster, plan) = Cluster::new(corefile);
                let served = cluster.serve(&plan);
                (cluster, served)
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, request)) = data.split_first() else {
        return;
    };
    let (_, served) = &fixtures()[usize::from(pick) % COREFILES.len()];
    let transport = if pick & 0x80 != 0 {
        Transport::Tcp
    } else {
        Transport::Udp
    };
    let peer: SocketAddr = "10.1.2.3:5353".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:53".parse().unwrap();
    let mut worker = Worker::reference(StdRng::seed_from_u64(1));
    let mut out = Vec::new();
    let Step::Done(true) =
        served
            .router
            .handle(request, transport, peer, local, &mut worker, &mut out)
    else {
        return;
    };
    let reply = hickory_proto::op::Message::from_vec(&out).expect("a reply parses");
    if let [a, b, ..] = request {
        assert_eq!(reply.metadata.id, u16::from_be_bytes([*a, *b]), "its ID");
    }
    assert_eq!(
        reply.metadata.message_type,
        hickory_proto::op::MessageType::Response,
        "a response"
    );
    assert!(out.len() <= 65535);
});
