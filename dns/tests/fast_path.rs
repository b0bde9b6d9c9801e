//! The fast path (cache hits and cluster answers kept as bytes, `dns::memo`) against the full
//! path, its reference: for any request bytes — arbitrary bytes, every query type, mixed case,
//! EDNS with options, names in the index and not — the same reply bytes from the same RNG, and
//! the same metrics, while the index changes under them. Routers are built from Corefiles
//! (kubeadm's among them) over the DNS specification's fixture.

mod support;

use std::net::SocketAddr;

use dns::chain::{Step, Worker};
use dns::memo::Memo;
use dns::message::Transport;
use dns::metrics::Metrics;
use proptest::prelude::*;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use support::{COREFILES, Cluster, Served};

/// The DNS metrics' samples, without the request durations (they differ by the clock).
fn counted(metrics: &Metrics) -> Vec<String> {
    metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("coredns_") && !l.contains("duration"))
        .map(String::from)
        .collect()
}

/// Names of the fixture and around it, for questions in the index and just outside.
const NAMES: &[&str] = &[
    "svc1.testns.svc.cluster.local.",
    "_http._tcp.svc1.testns.svc.cluster.local.",
    "_https._tcp.svc-two.testns.svc.cluster.local.",
    "svc-two.testns.svc.cluster.local.",
    "ep1a.svc1.testns.svc.cluster.local.",
    "svc-dual-stack.testns.svc.cluster.local.",
    "hdls1.testns.svc.cluster.local.",
    "big.testns.svc.cluster.local.",
    "_http._tcp.big.testns.svc.cluster.local.",
    "_http._tcp.hdls1.testns.svc.cluster.local.",
    "dup-name.hdls1.testns.svc.cluster.local.",
    "172-0-0-2.hdls1.testns.svc.cluster.local.",
    "web-0.podnamed.testns.svc.cluster.local.",
    "podnamed.testns.svc.cluster.local.",
    "external.testns.svc.cluster.local.",
    "internal.testns.svc.cluster.local.",
    "ipname.testns.svc.cluster.local.",
    "svc0.svc-nons.svc.cluster.local.",
    "nothere.testns.svc.cluster.local.",
    "testns.svc.cluster.local.",
    "svc.cluster.local.",
    "cluster.local.",
    "dns-version.cluster.local.",
    "ns.dns.cluster.local.",
    "10-240-0-7.testns.pod.cluster.local.",
    "10-240-0-9.testns.pod.cluster.local.",
    "1.0.0.10.in-addr.arpa.",
    "2.0.0.172.in-addr.arpa.",
    "9.9.9.10.in-addr.arpa.",
    "3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.ip6.arpa.",
    "example.com.",
    "a.b.c.d.e.f.cluster.local.",
];

const TYPES: &[u16] = &[
    1, 2, 5, 6, 12, 13, 15, 16, 28, 33, 35, 64, 65, 99, 251, 252, 255,
];

/// An OPT record: payload size, the TTL field's flags (DO is 0x8000), options (code, data).
type Opt = (u16, u16, Vec<(u16, Vec<u8>)>);

/// A query's wire form from its parts: header flags, the name with each letter's case chosen,
/// type and class, and an OPT record with options.
#[allow(clippy::too_many_arguments)]
fn query(
    id: u16,
    flags: u16,
    name: &str,
    upper: &[bool],
    qtype: u16,
    qclass: u16,
    opt: Option<Opt>,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(id.to_be_bytes());
    out.extend(flags.to_be_bytes());
    out.extend([0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
    let mut at = 0;
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        for b in label.bytes() {
            let up = upper.get(at % upper.len().max(1)).copied().unwrap_or(false);
            out.push(if up { b.to_ascii_uppercase() } else { b });
            at += 1;
        }
    }
    out.push(0);
    out.extend(qtype.to_be_bytes());
    out.extend(qclass.to_be_bytes());
    if let Some((payload, ttl_flags, options)) = opt {
        out.push(0);
        out.extend(41u16.to_be_bytes());
        out.extend(payload.to_be_bytes());
        out.extend([0, 0]);
        out.extend(ttl_flags.to_be_bytes());
        let data: Vec<u8> = options
            .iter()
            .flat_map(|(code, data)| {
                let mut o = code.to_be_bytes().to_vec();
                o.extend((data.len() as u16).to_be_bytes());
                o.extend(data);
                o
            })
            .collect();
        out.extend((data.len() as u16).to_be_bytes());
        out.extend(data);
    }
    out
}

fn queries() -> impl Strategy<Value = Vec<u8>> {
    let structured = (
        any::<u16>(),
        // Mostly plain queries: RD or not, sometimes CD or AD, rarely another opcode.
        prop_oneof![
            8 => prop::sample::select(vec![0u16, 0x0100, 0x0110, 0x0120, 0x0130]),
            1 => any::<u16>(),
        ],
        prop::sample::select(NAMES),
        prop_oneof![4 => Just(vec![false]), 1 => prop::collection::vec(any::<bool>(), 1..8)],
        prop_oneof![8 => prop::sample::select(TYPES), 1 => any::<u16>()],
        prop_oneof![8 => Just(1u16), 1 => prop::sample::select(vec![3u16, 4, 254, 255])],
        prop_oneof![
            2 => Just(None),
            2 => (0u16..5000, prop::sample::select(vec![0u16, 0x8000, 0x0100, 0xffff]), prop::collection::vec((prop::sample::select(vec![3u16, 8, 10, 12, 15, 65001]), prop::collection::vec(any::<u8>(), 0..12)), 0..3)).prop_map(Some),
        ],
    )
        .prop_map(|(id, flags, name, upper, qtype, qclass, opt)| {
            query(id, flags, name, &upper, qtype, qclass, opt)
        });
    prop_oneof![
        6 => structured.clone(),
        // A structured query with a byte changed or cut short.
        2 => (structured, any::<prop::sample::Index>(), any::<u8>(), any::<bool>()).prop_map(
            |(mut q, at, byte, cut)| {
                let i = at.index(q.len());
                if cut {
                    q.truncate(i);
                } else {
                    q[i] = byte;
                }
                q
            }
        ),
        1 => prop::collection::vec(any::<u8>(), 0..80),
    ]
}

/// One step of a run: a query over UDP or TCP, or a change to the cluster.
#[derive(Debug, Clone)]
enum Op {
    Ask(Vec<u8>, bool),
    Change(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            12 => (queries(), prop::bool::weighted(0.1)).prop_map(|(q, tcp)| Op::Ask(q, tcp)),
            1 => (0usize..8).prop_map(Op::Change),
        ],
        1..40,
    )
}

/// Runs `ops` through the fast path (kept answers on) and the full path alone, asserting the
/// same reply for each and the same metrics at the end.
fn same_replies(corefile: &str, ops: &[Op], seed: u64) -> Result<(), TestCaseError> {
    let (cluster, plan) = Cluster::new(corefile);
    let (fast, full) = (cluster.serve(&plan), cluster.serve(&plan));
    let mut fast_worker = Worker::new(Memo::new(8), StdRng::seed_from_u64(seed));
    let mut full_worker = Worker::reference(StdRng::seed_from_u64(seed));
    let peer: SocketAddr = "10.1.2.3:5353".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:53".parse().unwrap();
    let mut changes = 0;
    for op in ops {
        let (bytes, tcp) = match op {
            Op::Change(n) => {
                cluster.change(*n + changes);
                changes += 1;
                continue;
            }
            Op::Ask(bytes, tcp) => (bytes, *tcp),
        };
        let transport = if tcp { Transport::Tcp } else { Transport::Udp };
        // Twice: the second time the fast path answers from what it kept.
        for _ in 0..2 {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let got = fast
                .router
                .handle(bytes, transport, peer, local, &mut fast_worker, &mut a);
            let want = full
                .router
                .handle(bytes, transport, peer, local, &mut full_worker, &mut b);
            match (got, want) {
                (Step::Done(x), Step::Done(y)) => {
                    prop_assert_eq!(x, y, "answered or not, for {:?}", bytes);
                    prop_assert_eq!(&a, &b, "the reply to {:?}", bytes);
                }
                (Step::Later(_), Step::Later(_)) => {}
                _ => prop_assert!(false, "one path waits, the other not, for {:?}", bytes),
            }
        }
    }
    prop_assert_eq!(counted(&fast.metrics), counted(&full.metrics));
    Ok(())
}

proptest! {
    // 256 cases (PROPTEST_CASES sets more for a longer hunt).
    #[test]
    fn the_fast_path_gives_the_full_paths_bytes_and_counts_for_any_request(
        corefile in 0..COREFILES.len(),
        ops in ops(),
        seed in any::<u64>(),
    ) {
        same_replies(COREFILES[corefile], &ops, seed)?;
    }
}

/// The reply over UDP to an A question for `name` (ID 1, RD, lower case), which `served`
/// answers at once (no forwarding).
fn ask_at_once(served: &Served, worker: &mut Worker<StdRng>, name: &str) -> Vec<u8> {
    let peer: SocketAddr = "10.1.2.3:5353".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:53".parse().unwrap();
    let mut out = Vec::new();
    let q = query(1, 0x0100, name, &[false], 1, 1, None);
    let Step::Done(true) = served
        .router
        .handle(&q, Transport::Udp, peer, local, worker, &mut out)
    else {
        panic!("{name} is answered at once");
    };
    out
}

#[test]
fn a_kept_answer_is_used_again_and_made_afresh_when_its_service_changes() {
    let (cluster, plan) = Cluster::new(COREFILES[0]);
    let served = cluster.serve(&plan);
    let mut worker = Worker::new(Memo::new(64), StdRng::seed_from_u64(7));
    let ask = |worker: &mut Worker<StdRng>, name: &str| {
        hickory_proto::op::Message::from_vec(&ask_at_once(&served, worker, name)).unwrap()
    };
    let first = ask(&mut worker, "svc1.testns.svc.cluster.local.");
    assert_eq!(first.answers.len(), 1);
    assert_eq!(worker.memo.len(), 1, "the answer is kept");
    ask(&mut worker, "svc-two.testns.svc.cluster.local.");
    assert_eq!(worker.memo.len(), 2);
    // svc1 goes: its name is NXDOMAIN at once, though its answer was kept.
    cluster.change(0);
    let gone = ask(&mut worker, "svc1.testns.svc.cluster.local.");
    assert_eq!(
        gone.metadata.response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );
    cluster.change(1);
    assert_eq!(ask(&mut worker, "svc1.testns.svc.cluster.local."), {
        let mut again = first.clone();
        again.metadata.id = 1;
        again
    });
}

#[test]
fn a_new_chain_from_a_reload_empties_the_kept_answers_of_the_old() {
    let (cluster, plan) = Cluster::new(COREFILES[0]);
    let (old, new) = (cluster.serve(&plan), cluster.serve(&plan));
    let mut worker = Worker::new(Memo::new(64), StdRng::seed_from_u64(7));
    let first = ask_at_once(&old, &mut worker, "svc1.testns.svc.cluster.local.");
    ask_at_once(&old, &mut worker, "svc-two.testns.svc.cluster.local.");
    assert_eq!(worker.memo.len(), 2);
    // The reloaded chain answers alike, from a table holding its own answers only.
    assert_eq!(
        ask_at_once(&new, &mut worker, "svc1.testns.svc.cluster.local."),
        first
    );
    assert_eq!(worker.memo.len(), 1, "the old chain's answers are gone");
}
