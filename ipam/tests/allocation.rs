//! Allocation rules of spec part A.2–A.4, reservations and holds, exercised through the
//! allocator over the in-memory store (the same code path as etcd, without a server).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use ipam::apply::{Applied, apply};
use ipam::store::memory::MemoryStore;
use ipam::{
    Allocation, Allocator, AllocatorOptions, Claimed, Error, Owner, Refusal, Release, Released,
    Value,
};

const HOUR: Duration = Duration::from_secs(3600);

async fn allocator(specs: &[ipam::PoolSpec]) -> Allocator<MemoryStore> {
    let store = MemoryStore::new();
    create(&store, specs).await;
    Allocator::start(store, AllocatorOptions::default())
        .await
        .unwrap()
}

/// Fills a pool dynamically, one owner per value, and returns the values in order.
async fn fill(a: &Allocator<MemoryStore>, pool: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(allocated(
            a.allocate(pool, &svc(&format!("default/s{i}")), None)
                .await
                .unwrap(),
        ));
    }
    out
}

fn addr(s: &str) -> u32 {
    u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
}

#[tokio::test]
async fn dynamic_ips_fill_the_upper_band_then_the_lower_band_then_report_full() {
    // (cidr, first and last of the upper band, first and last of the lower band)
    let rows = [
        (
            "10.96.0.0/24",
            ("10.96.0.17", "10.96.0.254"),
            Some(("10.96.0.1", "10.96.0.16")),
        ),
        (
            "10.96.0.0/27",
            ("10.96.0.17", "10.96.0.30"),
            Some(("10.96.0.1", "10.96.0.16")),
        ),
        ("10.96.0.0/28", ("10.96.0.1", "10.96.0.14"), None),
        (
            "10.96.0.0/20",
            ("10.96.1.1", "10.96.15.254"),
            Some(("10.96.0.1", "10.96.1.0")),
        ),
    ];
    for (cidr, (ua, ub), lower) in rows {
        let a = allocator(&[ip_pool(&[cidr], HOUR)]).await;
        let upper_len = (addr(ub) - addr(ua) + 1) as usize;
        let values = fill(&a, "ipv4", upper_len).await;
        assert!(
            values
                .iter()
                .all(|v| (addr(ua)..=addr(ub)).contains(&ipv4_u32(*v))),
            "{cidr}: upper band first"
        );
        assert_eq!(
            values.iter().collect::<BTreeSet<_>>().len(),
            upper_len,
            "{cidr}: no value twice"
        );
        if let Some((la, lb)) = lower {
            let lower_len = (addr(lb) - addr(la) + 1) as usize;
            let values = fill(&a, "ipv4", lower_len).await;
            assert!(
                values
                    .iter()
                    .all(|v| (addr(la)..=addr(lb)).contains(&ipv4_u32(*v))),
                "{cidr}: then the lower band"
            );
        }
        let full = a
            .allocate("ipv4", &svc("default/one-more"), None)
            .await
            .unwrap();
        assert_eq!(full, Allocation::Refused(Refusal::Full), "{cidr}");
        assert_eq!(Refusal::Full.to_string(), "range is full");
    }
}

#[tokio::test]
async fn large_ranges_hand_out_upper_band_values_while_it_has_room() {
    let a = allocator(&[
        ip_pool(&["10.96.0.0/12"], HOUR),
        ip_pool(&["fd00:10:96::/64"], HOUR),
    ])
    .await;
    for v in fill(&a, "ipv4", 300).await {
        assert!(
            ipv4_u32(v) > addr("10.96.1.0"),
            "{v} is in the static band of the /12"
        );
    }
    for i in 0..300 {
        let v = allocated(
            a.allocate("ipv6", &svc(&format!("default/v6-{i}")), None)
                .await
                .unwrap(),
        );
        let Value::Ip(std::net::IpAddr::V6(v6)) = v else {
            panic!("{v}")
        };
        let offset =
            u128::from(v6) - u128::from("fd00:10:96::".parse::<std::net::Ipv6Addr>().unwrap());
        assert!(offset > 256, "{v} is in the static band of the /64");
    }
}

#[tokio::test]
async fn dynamic_nodeports_fill_30086_to_32767_before_30000_to_30085() {
    let a = allocator(&[port_pool("30000-32767", HOUR)]).await;
    let mut upper = Vec::new();
    for i in 0..(32767 - 30086 + 1) {
        upper.push(port(allocated(
            a.allocate(
                "nodeport",
                &Owner::new(format!("default/s{i}"), "nodePort:80/TCP"),
                None,
            )
            .await
            .unwrap(),
        )));
    }
    assert!(upper.iter().all(|p| (30086..=32767).contains(p)));
    assert_eq!(upper.iter().collect::<BTreeSet<_>>().len(), upper.len());
    for i in 0..86 {
        let p = port(allocated(
            a.allocate(
                "nodeport",
                &Owner::new(format!("default/l{i}"), "nodePort:80/TCP"),
                None,
            )
            .await
            .unwrap(),
        ));
        assert!((30000..=30085).contains(&p), "{p}");
    }
    let full = a
        .allocate(
            "nodeport",
            &Owner::new("default/x", "nodePort:80/TCP"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(full, Allocation::Refused(Refusal::Full));
}

#[tokio::test]
async fn requested_values_are_given_exactly_or_refused_with_upstream_messages() {
    let a = allocator(&[
        ip_pool(&["10.96.0.0/24"], HOUR),
        port_pool("30000-32767", HOUR),
    ])
    .await;
    // A free value in the static band is given exactly.
    assert_eq!(
        allocated(
            a.allocate("ipv4", &svc("default/a"), Some(ip("10.96.0.10")))
                .await
                .unwrap()
        ),
        ip("10.96.0.10")
    );
    // The same object asking again gets it (an idempotent retry).
    assert_eq!(
        a.allocate("ipv4", &svc("default/a"), Some(ip("10.96.0.10")))
            .await
            .unwrap(),
        Allocation::Allocated(ip("10.96.0.10"))
    );
    // Another object is refused.
    let Allocation::Refused(r) = a
        .allocate("ipv4", &svc("default/b"), Some(ip("10.96.0.10")))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(r.to_string(), "provided IP is already allocated");
    assert!(matches!(&r, Refusal::Taken { by, held: false, .. } if by.object == "default/a"));
    // Network and broadcast addresses, another subnet, another family: out of range.
    for bad in ["10.96.0.0", "10.96.0.255", "10.97.0.1", "fd00::1"] {
        let Allocation::Refused(r) = a
            .allocate("ipv4", &svc("default/b"), Some(ip(bad)))
            .await
            .unwrap()
        else {
            panic!("{bad}")
        };
        assert_eq!(
            r.to_string(),
            format!(
                "the provided IP ({bad}) is not in the valid range. The range of valid IPs is 10.96.0.0/24"
            )
        );
    }
    // Ports.
    let np = Owner::new("default/web", "nodePort:80/TCP");
    assert_eq!(
        allocated(
            a.allocate("nodeport", &np, Some(Value::Port(30008)))
                .await
                .unwrap()
        ),
        Value::Port(30008)
    );
    let Allocation::Refused(r) = a
        .allocate(
            "nodeport",
            &Owner::new("default/other", "nodePort:80/TCP"),
            Some(Value::Port(30008)),
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(r.to_string(), "provided port is already allocated");
    let Allocation::Refused(r) = a
        .allocate("nodeport", &np, Some(Value::Port(29999)))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        r.to_string(),
        "provided port is not in the valid range. The range of valid ports is 30000-32767"
    );
    // Unknown pools are errors, not refusals.
    let err = a
        .allocate("ipv6", &svc("default/a"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownPool { .. }), "{err}");
    assert!(err.to_string().contains("svcplane ipam apply"), "{err}");
}

#[tokio::test]
async fn a_held_value_returns_to_its_owner_and_to_nobody_else_until_the_hold_ends() {
    let a = allocator(&[ip_pool(&["10.96.0.0/28"], Duration::from_millis(400))]).await;
    let values = fill(&a, "ipv4", 14).await;
    let (kept, owner) = (values[3], svc("default/s3"));
    assert_eq!(
        a.release("ipv4", kept, "default/s3", Release::Hold)
            .await
            .unwrap(),
        Released::Held
    );
    // Another object can neither request it nor get it dynamically.
    let Allocation::Refused(r) = a
        .allocate("ipv4", &svc("default/intruder"), Some(kept))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(matches!(r, Refusal::Taken { held: true, .. }), "{r:?}");
    assert_eq!(
        a.allocate("ipv4", &svc("default/intruder"), None)
            .await
            .unwrap(),
        Allocation::Refused(Refusal::Full)
    );
    // The same Service recreated gets its address back, dynamically...
    assert_eq!(
        a.allocate("ipv4", &owner, None).await.unwrap(),
        Allocation::Allocated(kept)
    );
    // ...or by asking for it.
    a.release("ipv4", kept, "default/s3", Release::Hold)
        .await
        .unwrap();
    assert_eq!(
        a.allocate("ipv4", &owner, Some(kept)).await.unwrap(),
        Allocation::Allocated(kept)
    );
    // After the hold, anyone can take it.
    a.release("ipv4", kept, "default/s3", Release::Hold)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        a.allocate("ipv4", &svc("default/newcomer"), None)
            .await
            .unwrap(),
        Allocation::Allocated(kept)
    );
}

#[tokio::test]
async fn hold_zero_frees_a_value_at_once() {
    let a = allocator(&[port_pool("30000-30010", Duration::ZERO)]).await;
    let np = Owner::new("default/web", "nodePort:80/TCP");
    let p = allocated(
        a.allocate("nodeport", &np, Some(Value::Port(30005)))
            .await
            .unwrap(),
    );
    assert_eq!(
        a.release("nodeport", p, "default/web", Release::Hold)
            .await
            .unwrap(),
        Released::Freed
    );
    let other = Owner::new("default/web2", "nodePort:80/TCP");
    assert_eq!(
        a.allocate("nodeport", &other, Some(p)).await.unwrap(),
        Allocation::Allocated(p)
    );
}

#[tokio::test]
async fn releases_are_idempotent_and_only_by_the_owner() {
    let a = allocator(&[ip_pool(&["10.96.0.0/24"], HOUR)]).await;
    let v = allocated(a.allocate("ipv4", &svc("default/a"), None).await.unwrap());
    assert_eq!(
        a.release("ipv4", v, "default/b", Release::Now)
            .await
            .unwrap(),
        Released::OwnedBy(svc("default/a"))
    );
    assert_eq!(
        a.release("ipv4", v, "default/a", Release::Now)
            .await
            .unwrap(),
        Released::Freed
    );
    assert_eq!(
        a.release("ipv4", v, "default/a", Release::Now)
            .await
            .unwrap(),
        Released::NotAllocated
    );
    assert_eq!(a.view().pools()[0].counts.used, 0);
}

#[tokio::test]
async fn reserved_values_go_only_to_their_object() {
    let mut spec = ip_pool(&["10.96.0.0/28"], HOUR);
    spec.reservations
        .insert("kube-system/kube-dns".into(), vec!["10.96.0.10".into()]);
    let a = allocator(&[spec]).await;
    // Dynamic allocation never hands it out: 13 values, then full for everyone else.
    let values = fill(&a, "ipv4", 13).await;
    assert!(!values.contains(&ip("10.96.0.10")));
    assert_eq!(
        a.allocate("ipv4", &svc("default/late"), None)
            .await
            .unwrap(),
        Allocation::Refused(Refusal::Full)
    );
    // Another object asking for it is refused.
    let Allocation::Refused(r) = a
        .allocate("ipv4", &svc("default/late"), Some(ip("10.96.0.10")))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        r,
        Refusal::Reserved {
            value: ip("10.96.0.10"),
            for_object: "kube-system/kube-dns".into()
        }
    );
    // Its object gets it without asking for it.
    assert_eq!(
        a.allocate("ipv4", &svc("kube-system/kube-dns"), None)
            .await
            .unwrap(),
        Allocation::Allocated(ip("10.96.0.10"))
    );
    let counts = a.view().pools()[0].counts;
    assert_eq!((counts.used, counts.reserved, counts.free), (14, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_allocators_on_one_store_never_hand_out_a_value_twice() {
    let store = MemoryStore::new();
    create(&store, &[ip_pool(&["10.96.0.0/24"], HOUR)]).await;
    let a = std::sync::Arc::new(
        Allocator::start(store.clone(), AllocatorOptions::default())
            .await
            .unwrap(),
    );
    let b = std::sync::Arc::new(
        Allocator::start(store, AllocatorOptions::default())
            .await
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for (i, al) in [a.clone(), b.clone(), a, b].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for n in 0..80 {
                if let Allocation::Allocated(v) = al
                    .allocate("ipv4", &svc(&format!("w{i}/s{n}")), None)
                    .await
                    .unwrap()
                {
                    got.push(v);
                }
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 254, "every usable address once, then full");
    assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 254);
}

#[tokio::test]
async fn apply_refuses_a_shrink_below_used_values_and_names_them() {
    let store = MemoryStore::new();
    let results = apply(&store, &[ip_pool(&["10.96.0.0/24"], HOUR)])
        .await
        .unwrap();
    assert_eq!(results, vec![("ipv4".to_string(), Applied::Created)]);
    let a = Allocator::start(store.clone(), AllocatorOptions::default())
        .await
        .unwrap();
    a.allocate("ipv4", &svc("default/web"), Some(ip("10.96.0.200")))
        .await
        .unwrap();
    let err = apply(&store, &[ip_pool(&["10.96.0.0/25"], HOUR)])
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("10.96.0.200 (default/web (clusterIP))"),
        "the refusal names the value and its owner: {err}"
    );
    // Growing is fine, and applying the same spec again changes nothing.
    assert_eq!(
        apply(&store, &[ip_pool(&["10.96.0.0/23"], HOUR)])
            .await
            .unwrap()[0]
            .1,
        Applied::Configured
    );
    assert_eq!(
        apply(&store, &[ip_pool(&["10.96.0.0/23"], HOUR)])
            .await
            .unwrap()[0]
            .1,
        Applied::Unchanged
    );
    // A reservation of a value another object holds is refused.
    let mut spec = ip_pool(&["10.96.0.0/23"], HOUR);
    spec.reservations
        .insert("kube-system/kube-dns".into(), vec!["10.96.0.200".into()]);
    let err = apply(&store, &[spec]).await.unwrap_err();
    assert!(matches!(err, Error::ReservationTaken { .. }), "{err}");
}

#[tokio::test]
async fn a_pool_change_reaches_running_allocators() {
    let store = MemoryStore::new();
    create(&store, &[ip_pool(&["10.96.0.0/30"], HOUR)]).await;
    let a = Allocator::start(store.clone(), AllocatorOptions::default())
        .await
        .unwrap();
    fill(&a, "ipv4", 2).await;
    assert_eq!(
        a.allocate("ipv4", &svc("default/x"), None).await.unwrap(),
        Allocation::Refused(Refusal::Full)
    );
    create(&store, &[ip_pool(&["10.96.0.0/30", "10.96.1.0/30"], HOUR)]).await;
    // The allocator either saw the new spec on its watch or learns it when its write is refused.
    let v = allocated(a.allocate("ipv4", &svc("default/x"), None).await.unwrap());
    assert!(v == ip("10.96.1.1") || v == ip("10.96.1.2"), "{v}");
}

#[test]
fn a_watch_that_falls_behind_relists_and_catches_up() {
    // On a current-thread runtime the observer's watch task cannot run while the writer loops
    // without yielding (the memory store never suspends), so the 2000 changes overflow the
    // watch's 1024-change buffer: the observer only catches up by relisting.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = MemoryStore::new();
            create(&store, &[ip_pool(&["10.96.0.0/20"], HOUR)]).await;
            let observer = Allocator::start(store.clone(), AllocatorOptions::default())
                .await
                .unwrap();
            let writer = Allocator::start(store, AllocatorOptions::default())
                .await
                .unwrap();
            tokio::task::yield_now().await;
            fill(&writer, "ipv4", 2000).await;
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while observer.view().records("ipv4").unwrap() != writer.view().records("ipv4").unwrap()
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the observer never caught up"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(observer.view().pools()[0].counts.used, 2000);
            assert!(
                observer.view().relists() >= 1,
                "the observer caught up by relisting"
            );
        });
}

#[tokio::test]
async fn dynamic_allocation_starts_at_a_random_point_of_the_band() {
    let a = allocator(&[ip_pool(&["10.96.0.0/16"], HOUR)]).await;
    let values: Vec<u32> = fill(&a, "ipv4", 20)
        .await
        .into_iter()
        .map(ipv4_u32)
        .collect();
    let band_start = addr("10.96.1.1");
    // A scan from the bottom of the band would give .1.1, .1.2, ...; random starts spread out.
    let sequential: Vec<u32> = (band_start..band_start + 20).collect();
    assert_ne!(values, sequential);
    let spread = values.iter().max().unwrap() - values.iter().min().unwrap();
    assert!(
        spread > 1000,
        "20 random starts in 65 278 addresses spread wide: {values:?}"
    );
}

/// A store whose replies get lost: every third write is carried out and then reported as
/// "unavailable", and every fifth is refused as unavailable before it is carried out — what a
/// client sees when etcd or the network fails mid-request.
#[derive(Clone)]
struct LossyStore {
    inner: MemoryStore,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn lost() -> Error {
    Error::Unavailable {
        endpoints: "lossy".into(),
        message: "reply lost".into(),
    }
}

impl ipam::store::Store for LossyStore {
    async fn snapshot(&self) -> ipam::Result<ipam::store::Snapshot> {
        self.inner.snapshot().await
    }
    async fn pool(&self, name: &str) -> ipam::Result<Option<(ipam::PoolSpec, ipam::Rev)>> {
        self.inner.pool(name).await
    }
    async fn get(&self, pool: &str, value: &str) -> ipam::Result<ipam::store::Read> {
        self.inner.get(pool, value).await
    }
    async fn cas(
        &self,
        pool: &str,
        pool_rev: Option<ipam::Rev>,
        value: &str,
        expect: ipam::occupancy::Expect,
        write: ipam::store::Write,
    ) -> ipam::Result<ipam::store::Cas> {
        let n = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % 5 == 4 {
            return Err(lost());
        }
        let outcome = self.inner.cas(pool, pool_rev, value, expect, write).await?;
        if n % 3 == 2 { Err(lost()) } else { Ok(outcome) }
    }
    async fn put_pools(
        &self,
        writes: &[ipam::store::PoolWrite],
        since: ipam::Rev,
    ) -> ipam::Result<bool> {
        self.inner.put_pools(writes, since).await
    }
    async fn watch(&self, from: ipam::Rev) -> ipam::Result<ipam::store::WatchStream> {
        self.inner.watch(from).await
    }
    fn describe(&self) -> String {
        "lossy memory".into()
    }
}

#[tokio::test]
async fn writes_whose_replies_are_lost_neither_duplicate_nor_leak_a_value() {
    let memory = MemoryStore::new();
    create(&memory, &[ip_pool(&["10.96.0.0/24"], HOUR)]).await;
    let lossy = LossyStore {
        inner: memory.clone(),
        calls: Default::default(),
    };
    let options = AllocatorOptions {
        retry_timeout: Duration::from_secs(5),
        max_backoff: Duration::from_millis(1),
        ..AllocatorOptions::default()
    };
    let a = Allocator::start(lossy, options).await.unwrap();
    let mut mine = std::collections::BTreeMap::new();
    for i in 0..120 {
        let owner = svc(&format!("default/s{i}"));
        let want = (i % 4 == 0 && i < 64).then(|| ip(&format!("10.96.0.{}", 1 + i / 4)));
        let v = allocated(a.allocate("ipv4", &owner, want).await.unwrap());
        assert!(
            mine.insert(v, owner.object.clone()).is_none(),
            "{v} handed out twice"
        );
    }
    // Release a third of them, some with hold and some at once.
    for (i, (v, object)) in mine
        .clone()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 0)
    {
        let how = if i % 2 == 0 {
            Release::Now
        } else {
            Release::Hold
        };
        let got = a.release("ipv4", v, &object, how).await.unwrap();
        assert!(
            matches!(got, Released::Freed | Released::Held),
            "{v}: {got:?}"
        );
        if how == Release::Now {
            mine.remove(&v);
        }
    }
    // The store holds exactly the allocations the callers were told about (held ones included).
    let snap = ipam::store::Store::snapshot(&memory).await.unwrap();
    let stored: std::collections::BTreeMap<Value, String> = snap
        .values
        .iter()
        .map(|v| (ip(&v.value), v.record.owner.object.clone()))
        .collect();
    assert_eq!(stored, mine);
}

#[tokio::test]
async fn a_claim_takes_a_value_from_a_placeholder_or_a_hold_but_not_from_a_kept_owner() {
    let store = MemoryStore::new();
    create(&store, &[ip_pool(&["10.96.0.0/24"], HOUR)]).await;
    let a = Allocator::start(store, AllocatorOptions::default())
        .await
        .unwrap();
    let x = ip("10.96.0.20");
    let placeholder = svc("shop/gen-…7f3c");
    allocated(a.allocate("ipv4", &placeholder, Some(x)).await.unwrap());
    let live = svc("shop/gen-k2x9q");
    let nobody_else = |_: &Owner| false;
    assert_eq!(
        a.claim("ipv4", &live, x, nobody_else).await.unwrap(),
        Claimed::Recorded {
            from: Some(placeholder)
        }
    );
    assert_eq!(
        a.claim("ipv4", &live, x, nobody_else).await.unwrap(),
        Claimed::Already
    );
    // Another Service carrying the same value leaves it to the recorded one (a duplicate).
    let keep_live = |o: &Owner| o.object == "shop/gen-k2x9q";
    assert_eq!(
        a.claim("ipv4", &svc("shop/copy"), x, keep_live)
            .await
            .unwrap(),
        Claimed::Kept(live.clone())
    );
    // A value held for another object after its release is claimed too.
    a.release("ipv4", x, "shop/gen-k2x9q", Release::Hold)
        .await
        .unwrap();
    assert_eq!(
        a.claim("ipv4", &svc("shop/copy"), x, nobody_else)
            .await
            .unwrap(),
        Claimed::Recorded { from: Some(live) }
    );
    assert_eq!(
        a.claim("ipv4", &svc("shop/far"), ip("10.97.0.1"), nobody_else)
            .await
            .unwrap(),
        Claimed::OutOfRange
    );
}

#[tokio::test]
async fn a_flood_of_requests_to_a_full_pool_relists_it_once_per_interval() {
    let store = MemoryStore::new();
    create(&store, &[ip_pool(&["10.96.0.0/30"], HOUR)]).await;
    let options = AllocatorOptions {
        full_relist_interval: HOUR,
        ..AllocatorOptions::default()
    };
    let a = Allocator::start(store, options).await.unwrap();
    fill(&a, "ipv4", 2).await;
    let before = a.view().relists();
    let flood = (0..50).map(|i| {
        let a = &a;
        async move {
            a.allocate("ipv4", &svc(&format!("default/f{i}")), None)
                .await
                .unwrap()
        }
    });
    for answer in futures::future::join_all(flood).await {
        assert_eq!(answer, Allocation::Refused(Refusal::Full));
    }
    assert_eq!(a.view().relists() - before, 1);
}
