//! The UDP hot path allocates nothing per packet: the real server (`dns::server::serve`, its
//! workers' batched receive and send) answers a stream of cluster questions under kubeadm's
//! Corefile while dhat counts every allocation of the process. After a warm-up (the workers'
//! buffers grown, the answers kept), a thousand more queries cause no allocation at all.

mod support;

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use dns::server::{Limits, bind, serve};
use support::{COREFILES, Cluster};
use tokio::sync::watch;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Plain queries for names of the fixture, as a stub resolver asks them.
fn questions() -> Vec<Vec<u8>> {
    let names = [
        ("svc1.testns.svc.cluster.local.", 1u16),
        ("svc-two.testns.svc.cluster.local.", 1),
        ("hdls1.testns.svc.cluster.local.", 1),
        ("_http._tcp.svc1.testns.svc.cluster.local.", 33),
        ("_http._tcp.hdls1.testns.svc.cluster.local.", 33),
        ("svc1.testns.svc.cluster.local.", 28),
        ("nothere.testns.svc.cluster.local.", 1),
        ("internal.testns.svc.cluster.local.", 1),
        // Forty endpoints: cut to 1232 bytes (with EDNS) and to 512 (without).
        ("_http._tcp.big.testns.svc.cluster.local.", 33),
        ("big.testns.svc.cluster.local.", 1),
    ];
    names
        .iter()
        .enumerate()
        .map(|(i, (name, qtype))| {
            let mut q = vec![0, i as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, u8::from(i % 2 == 0)];
            for label in name.trim_end_matches('.').split('.') {
                q.push(label.len() as u8);
                q.extend(label.bytes());
            }
            q.push(0);
            q.extend(qtype.to_be_bytes());
            q.extend([0, 1]);
            if i % 2 == 0 {
                // OPT: 1232 bytes, no DO.
                q.extend([0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
            }
            q
        })
        .collect()
}

/// Sends each question `rounds` times, 16 in flight, and reads every reply.
fn ask(client: &UdpSocket, questions: &[Vec<u8>], rounds: usize) {
    let mut buf = [0u8; 1500];
    let mut sent = 0;
    let mut got = 0;
    let total = rounds * questions.len();
    while got < total {
        while sent < total && sent - got < 16 {
            client.send(&questions[sent % questions.len()]).unwrap();
            sent += 1;
        }
        let n = client.recv(&mut buf).expect("every query is answered");
        assert!(n > 12 && buf[2] & 0x80 != 0, "a reply");
        got += 1;
    }
}

#[test]
fn answering_cluster_questions_over_udp_allocates_nothing_per_packet() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (cluster, plan) = Cluster::new(COREFILES[0]);
    let served = cluster.serve(&plan);
    let limits = Limits {
        udp_workers: 1,
        ..Limits::default()
    };
    let (stop, stopped) = watch::channel(false);
    let addr = runtime.block_on(async {
        let bound = bind(&["127.0.0.1:0".parse().unwrap()], &limits)
            .await
            .unwrap();
        let addr = bound.local_addrs()[0];
        let (_keep, routers) = watch::channel(Arc::clone(&served.router));
        tokio::spawn(async move {
            let _keep = _keep;
            serve(bound, routers, limits, stopped).await
        });
        addr
    });
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let questions = questions();
    // Warm-up: the worker's buffers grow and the answers are kept.
    ask(&client, &questions, 200);
    let before = dhat::HeapStats::get();
    ask(&client, &questions, 125);
    let after = dhat::HeapStats::get();
    dhat::assert_eq!(
        after.total_blocks - before.total_blocks,
        0,
        "allocations while answering 1000 queries"
    );
    stop.send_replace(true);
    drop(runtime);
}
