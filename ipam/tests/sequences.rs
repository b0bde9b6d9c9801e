//! Property test: for random pools (IPv4, IPv6 up to /64, ports) and random allocate/release
//! sequences, every value handed out lies in the pool, none is held by two objects, and the
//! pool's counts match a model. Many cases run on the memory store; fewer of the same generated
//! sequences run against a real etcd.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use ipam::store::Store;
use ipam::store::etcd::{EtcdConfig, EtcdStore};
use ipam::store::memory::MemoryStore;
use ipam::{
    Allocation, Allocator, AllocatorOptions, Owner, PoolSpec, Refusal, Release, Released, Value,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

#[derive(Debug, Clone)]
enum Op {
    /// `object` allocates; `want`: a requested value (`in_pool` picks a usable one, else one
    /// just outside a span) chosen by `seed`.
    Allocate {
        object: u8,
        want: Option<(bool, u128)>,
    },
    /// Releases the `pick`-th allocated or held value, with or without hold.
    Release { pick: usize, hold: bool },
}

#[derive(Debug, Clone)]
struct Case {
    spec: PoolSpec,
    ops: Vec<Op>,
}

fn pool_strategy() -> impl Strategy<Value = PoolSpec> {
    let hold = prop_oneof![Just(Duration::ZERO), Just(Duration::from_secs(3600))];
    prop_oneof![
        (22u8..=30, 0u8..=255, hold.clone()).prop_map(|(prefix, b, hold)| {
            let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(10, b, 0, 0), prefix)
                .unwrap()
                .trunc();
            ip_pool(&[&net.to_string()], hold)
        }),
        (prop_oneof![Just(64u8), 100u8..=124], hold.clone()).prop_map(|(prefix, hold)| {
            let net = ipnet::Ipv6Net::new("fd00:10:96::".parse().unwrap(), prefix)
                .unwrap()
                .trunc();
            ip_pool(&[&net.to_string()], hold)
        }),
        (30000u16..30100, 1u16..200, hold)
            .prop_map(|(a, len, hold)| port_pool(&format!("{a}-{}", a + len), hold)),
    ]
}

fn case_strategy(max_ops: usize) -> impl Strategy<Value = Case> {
    let op = prop_oneof![
        3 => (0u8..4, proptest::option::of((prop::bool::weighted(0.8), any::<u128>())))
            .prop_map(|(object, want)| Op::Allocate { object, want }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, hold)| Op::Release { pick, hold }),
    ];
    (pool_strategy(), proptest::collection::vec(op, 1..max_ops))
        .prop_map(|(spec, ops)| Case { spec, ops })
}

/// Model of one value: the object it belongs to and whether it is held after a release.
type Model = BTreeMap<Value, (String, bool)>;

async fn run_case<S: Store>(store: S, case: &Case) -> Result<(), TestCaseError> {
    create(&store, std::slice::from_ref(&case.spec)).await;
    let pool = case.spec.validate().unwrap();
    let name = case.spec.name.as_str();
    let a = Allocator::start(store, AllocatorOptions::default())
        .await
        .unwrap();
    let mut model = Model::new();
    for op in &case.ops {
        match op {
            Op::Allocate { object, want } => {
                let object = format!("ns/o{object}");
                let owner = Owner::new(&object, "v");
                let want = want.map(|(in_pool, seed)| {
                    let span = &pool.spans[(seed % pool.spans.len() as u128) as usize];
                    let raw = if in_pool {
                        span.first + seed % span.size()
                    } else if seed % 2 == 0 {
                        span.first - 1
                    } else {
                        span.last.wrapping_add(1)
                    };
                    pool.value(raw)
                });
                let own_held: Vec<Value> = model
                    .iter()
                    .filter(|(_, (o, held))| *held && *o == object)
                    .map(|(v, _)| *v)
                    .collect();
                let got = a.allocate(name, &owner, want).await.unwrap();
                if want.is_none() && !own_held.is_empty() {
                    prop_assert!(
                        got.value().is_some_and(|v| own_held.contains(&v)),
                        "{} has held values {:?} but got {:?}",
                        object,
                        own_held,
                        got
                    );
                }
                match (&got, want) {
                    (Allocation::Allocated(v), _) => {
                        let raw = pool.raw(*v).unwrap();
                        prop_assert!(pool.contains(raw), "{v} is outside the pool");
                        if let Some(w) = want {
                            prop_assert_eq!(*v, w);
                        }
                        if let Some((holder, held)) = model.get(v) {
                            prop_assert_eq!(
                                holder,
                                &object,
                                "{} handed to {} while {} has it",
                                v,
                                object,
                                holder
                            );
                            prop_assert!(
                                *held || want.is_some(),
                                "a dynamic allocation returned an allocated value"
                            );
                        }
                        model.insert(*v, (object, false));
                    }
                    (Allocation::Refused(Refusal::Full), None) => {
                        prop_assert_eq!(
                            model.len() as u128,
                            pool.size(),
                            "full while values are free"
                        );
                    }
                    (Allocation::Refused(Refusal::Taken { by, held, .. }), Some(w)) => {
                        let (holder, model_held) = model.get(&w).expect("refused a free value");
                        prop_assert_eq!(&by.object, holder);
                        prop_assert_ne!(holder, &object);
                        prop_assert_eq!(held, model_held);
                    }
                    (Allocation::Refused(Refusal::OutOfRange { .. }), Some(w)) => {
                        prop_assert!(
                            !pool.raw(w).is_some_and(|r| pool.contains(r)),
                            "{w} refused as out of range"
                        );
                    }
                    (other, want) => prop_assert!(false, "unexpected {other:?} for {want:?}"),
                }
            }
            Op::Release { pick, hold } => {
                if model.is_empty() {
                    continue;
                }
                let (value, (object, held)) = model
                    .iter()
                    .nth(pick % model.len())
                    .map(|(v, e)| (*v, e.clone()))
                    .unwrap();
                let how = if *hold { Release::Hold } else { Release::Now };
                let got = a.release(name, value, &object, how).await.unwrap();
                let expect_held = *hold && !pool.hold.is_zero();
                if expect_held {
                    prop_assert_eq!(got, Released::Held);
                    model.insert(value, (object, true));
                } else {
                    prop_assert_eq!(
                        got,
                        Released::Freed,
                        "release of {} (held: {})",
                        value,
                        held
                    );
                    model.remove(&value);
                }
            }
        }
        let counts = a.view().pools()[0].counts;
        let held = model.values().filter(|(_, h)| *h).count() as u128;
        prop_assert_eq!(counts.used, model.len() as u128 - held);
        prop_assert_eq!(counts.held, held);
        prop_assert_eq!(counts.free, pool.size() - model.len() as u128);
    }
    Ok(())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_sequences_on_the_memory_store_keep_every_invariant(case in case_strategy(80)) {
        block_on(run_case(MemoryStore::new(), &case))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn random_sequences_on_etcd_keep_every_invariant(case in case_strategy(40)) {
        let etcd = testkit::Etcd::shared();
        block_on(async {
            let config = EtcdConfig::new(vec![etcd.endpoint()], testkit::unique_prefix("seq"));
            run_case(EtcdStore::connect(&config).await.unwrap(), &case).await
        })?;
    }
}
