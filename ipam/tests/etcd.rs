//! The etcd store under concurrency and failure: allocators with their own clients and
//! watch-fed indexes never hand out a value twice, survive an etcd crash and restart without
//! losing or leaking a value, and a late starter sees every existing allocation.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use ipam::bench::{self, BenchConfig};
use ipam::store::Store;
use ipam::store::etcd::{EtcdConfig, EtcdStore};
use ipam::{Allocation, Allocator, AllocatorOptions, Refusal, Release};

const HOUR: Duration = Duration::from_secs(3600);

async fn connect(config: &EtcdConfig) -> ipam::Result<EtcdStore> {
    EtcdStore::connect(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_allocators_with_their_own_clients_take_4000_values_from_a_slash_20_without_duplicates()
 {
    let config = EtcdConfig::new(
        vec![testkit::Etcd::shared().endpoint()],
        testkit::unique_prefix("four"),
    );
    create(
        &connect(&config).await.unwrap(),
        &[ip_pool(&["10.96.0.0/20"], HOUR)],
    )
    .await;
    let bench = BenchConfig {
        pool: "ipv4".into(),
        workers: 4,
        count: 4000,
        keep: false,
        run_id: "t".into(),
    };
    let report = bench::run(&bench, &AllocatorOptions::default(), || connect(&config))
        .await
        .unwrap();
    assert_eq!(report.allocated, 4000);
    assert_eq!(report.duplicates, 0);
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    // 4000 > the 3838 values of the upper band: the lower band was used only after it filled.
    let lower = report
        .values
        .iter()
        .filter(|(v, _)| ipv4_u32(*v) <= u32::from(std::net::Ipv4Addr::new(10, 96, 1, 0)))
        .count();
    assert_eq!(lower, 4000 - 3838);
    assert_eq!(report.released, 4000);
    let snap = connect(&config).await.unwrap().snapshot().await.unwrap();
    assert!(snap.values.is_empty(), "bench released everything it took");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_resume_after_etcd_is_killed_and_restarted_and_nothing_is_lost_or_leaked() {
    let mut etcd = testkit::Etcd::start();
    let config = EtcdConfig::new(vec![etcd.endpoint()], "/svcplane/ipam/".to_string());
    let mut config_fast = config.clone();
    config_fast.timeout = Duration::from_secs(2);
    create(
        &connect(&config).await.unwrap(),
        &[ip_pool(&["10.96.0.0/20"], HOUR)],
    )
    .await;
    let bench = BenchConfig {
        pool: "ipv4".into(),
        workers: 4,
        count: 3000,
        keep: true,
        run_id: "crash".into(),
    };
    let run = {
        let config_fast = config_fast.clone();
        tokio::spawn(async move {
            bench::run(&bench, &AllocatorOptions::default(), || {
                connect(&config_fast)
            })
            .await
        })
    };
    // Let the run get going, then crash etcd and bring it back.
    let probe = connect(&config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while probe.snapshot().await.unwrap().values.len() < 500 {
        assert!(Instant::now() < deadline, "the run never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !run.is_finished(),
        "the crash must come in the middle of the run"
    );
    let etcd = tokio::task::spawn_blocking(move || {
        etcd.kill();
        std::thread::sleep(Duration::from_secs(2));
        etcd.restart();
        etcd
    })
    .await
    .unwrap();
    let report = run.await.unwrap().expect("the run survives the restart");
    assert_eq!(report.allocated, 3000);
    assert_eq!(report.duplicates, 0);
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    // The keys in etcd are exactly what the workers reported, owner by owner.
    let snap = connect(&config).await.unwrap().snapshot().await.unwrap();
    let stored: BTreeMap<String, ipam::Owner> = snap
        .values
        .iter()
        .map(|v| (v.value.clone(), v.record.owner.clone()))
        .collect();
    let reported: BTreeMap<String, ipam::Owner> = report
        .values
        .iter()
        .map(|(v, o)| (v.to_string(), o.clone()))
        .collect();
    assert_eq!(stored.len(), 3000);
    assert_eq!(stored, reported);
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocator_started_later_sees_every_existing_allocation_and_follows_new_ones() {
    let config = EtcdConfig::new(
        vec![testkit::Etcd::shared().endpoint()],
        testkit::unique_prefix("late"),
    );
    let first_store = connect(&config).await.unwrap();
    create(
        &first_store,
        &[
            ip_pool(&["10.96.0.0/24"], HOUR),
            port_pool("30000-32767", HOUR),
        ],
    )
    .await;
    let first = Allocator::start(first_store, AllocatorOptions::default())
        .await
        .unwrap();
    for i in 0..40 {
        first
            .allocate("ipv4", &svc(&format!("default/s{i}")), None)
            .await
            .unwrap();
    }
    first
        .allocate("ipv4", &svc("default/pinned"), Some(ip("10.96.0.10")))
        .await
        .unwrap();
    let np = ipam::Owner::new("default/web", "nodePort:80/TCP");
    first
        .allocate("nodeport", &np, Some(ipam::Value::Port(30008)))
        .await
        .unwrap();
    first
        .release("ipv4", ip("10.96.0.10"), "default/pinned", Release::Hold)
        .await
        .unwrap();

    let second = Allocator::start(connect(&config).await.unwrap(), AllocatorOptions::default())
        .await
        .unwrap();
    for pool in ["ipv4", "nodeport"] {
        assert_eq!(
            second.view().records(pool).unwrap(),
            first.view().records(pool).unwrap(),
            "{pool}"
        );
    }
    let counts = second
        .view()
        .pools()
        .into_iter()
        .find(|p| p.spec.name == "ipv4")
        .unwrap()
        .counts;
    assert_eq!((counts.used, counts.held), (40, 1));
    // It refuses what the first allocator handed out, naming the owner...
    let Allocation::Refused(Refusal::Taken { by, .. }) = second
        .allocate(
            "nodeport",
            &ipam::Owner::new("default/other", "nodePort:80/TCP"),
            Some(ipam::Value::Port(30008)),
        )
        .await
        .unwrap()
    else {
        panic!("30008 must be taken");
    };
    assert_eq!(by, np);
    // ...and its watch follows allocations made after it started.
    let later = allocated(
        first
            .allocate("ipv4", &svc("default/later"), None)
            .await
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !second
        .view()
        .records("ipv4")
        .unwrap()
        .iter()
        .any(|(v, _)| *v == later)
    {
        assert!(
            Instant::now() < deadline,
            "the watch never delivered {later}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_unreachable_etcd_is_reported_with_the_endpoint_and_the_fix() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = EtcdConfig::new(
        vec![format!("127.0.0.1:{port}")],
        ipam::store::DEFAULT_PREFIX,
    );
    config.timeout = Duration::from_millis(500);
    let err = connect(&config).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("http://127.0.0.1:{port}")) && text.contains("--etcd-endpoints"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_in_etcd_return_a_value_to_its_owner_and_free_it_for_anyone_after_the_lease() {
    let config = EtcdConfig::new(
        vec![testkit::Etcd::shared().endpoint()],
        testkit::unique_prefix("hold"),
    );
    let store = connect(&config).await.unwrap();
    create(
        &store,
        &[ip_pool(&["10.96.0.0/28"], Duration::from_secs(1))],
    )
    .await;
    let a = Allocator::start(store, AllocatorOptions::default())
        .await
        .unwrap();
    let v = allocated(a.allocate("ipv4", &svc("default/web"), None).await.unwrap());
    assert_eq!(
        a.release("ipv4", v, "default/web", Release::Hold)
            .await
            .unwrap(),
        ipam::Released::Held
    );
    // Another allocator (its own client and index) cannot take it...
    let b = Allocator::start(connect(&config).await.unwrap(), AllocatorOptions::default())
        .await
        .unwrap();
    let refused = b
        .allocate("ipv4", &svc("default/intruder"), Some(v))
        .await
        .unwrap();
    assert!(
        matches!(
            refused,
            Allocation::Refused(Refusal::Taken { held: true, .. })
        ),
        "{refused:?}"
    );
    // ...the same Service recreated gets it back...
    assert_eq!(
        b.allocate("ipv4", &svc("default/web"), None).await.unwrap(),
        Allocation::Allocated(v)
    );
    b.release("ipv4", v, "default/web", Release::Hold)
        .await
        .unwrap();
    // ...the held key is bound to a lease, so etcd itself removes it when the hold ends...
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe = connect(&config).await.unwrap();
    while probe.get("ipv4", &v.to_string()).await.unwrap().0.is_some() {
        assert!(
            Instant::now() < deadline,
            "the lease never removed the held key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and anyone can take it then.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match b
            .allocate("ipv4", &svc("default/newcomer"), Some(v))
            .await
            .unwrap()
        {
            Allocation::Allocated(got) => break assert_eq!(got, v),
            Allocation::Refused(r) => assert!(
                Instant::now() < deadline,
                "still refused after the hold: {r:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_reports_the_compaction() {
    let config = EtcdConfig::new(
        vec![testkit::Etcd::shared().endpoint()],
        testkit::unique_prefix("compact"),
    );
    let store = connect(&config).await.unwrap();
    create(&store, &[ip_pool(&["10.96.0.0/24"], HOUR)]).await;
    let a = Allocator::start(connect(&config).await.unwrap(), AllocatorOptions::default())
        .await
        .unwrap();
    let old = store.snapshot().await.unwrap().rev;
    for i in 0..5 {
        a.allocate("ipv4", &svc(&format!("default/s{i}")), None)
            .await
            .unwrap();
    }
    let now = store.snapshot().await.unwrap().rev;
    let mut client = etcd_client::Client::connect([testkit::Etcd::shared().endpoint()], None)
        .await
        .unwrap();
    client.compact(now, None).await.unwrap();
    use futures::StreamExt;
    let mut watch = store.watch(old + 1).await.unwrap();
    let first = watch.next().await.expect("the watch answers").unwrap();
    assert!(
        matches!(first, ipam::store::WatchItem::Compacted),
        "{first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_flags_reach_an_etcd_that_requires_client_certificates() {
    let etcd = testkit::Etcd::start_tls();
    let tls = etcd.tls().unwrap().clone();
    let mut config = EtcdConfig::new(vec![etcd.endpoint()], ipam::store::DEFAULT_PREFIX);
    config.timeout = Duration::from_secs(2);
    // Without a client certificate etcd turns the client away.
    let mut no_cert = config.clone();
    no_cert.ca_file = Some(tls.ca.clone());
    assert!(
        connect(&no_cert).await.is_err(),
        "etcd requires a client certificate"
    );
    config.ca_file = Some(tls.ca);
    config.cert_file = Some(tls.client_cert);
    config.key_file = Some(tls.client_key);
    let store = connect(&config)
        .await
        .expect("connect with the CA, client certificate and key");
    create(&store, &[ip_pool(&["10.96.0.0/24"], HOUR)]).await;
    let a = Allocator::start(store, AllocatorOptions::default())
        .await
        .unwrap();
    assert_eq!(
        a.allocate("ipv4", &svc("kube-system/kube-dns"), Some(ip("10.96.0.10")))
            .await
            .unwrap(),
        Allocation::Allocated(ip("10.96.0.10"))
    );
    // A plain http:// endpoint with TLS flags is a mistake worth naming.
    let mut wrong = config.clone();
    wrong.endpoints = vec![etcd.endpoint().replace("https://", "http://")];
    let err = connect(&wrong).await.unwrap_err().to_string();
    assert!(
        err.contains("is plain http but TLS flags are set; use https://"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_released_together_share_one_etcd_lease() {
    let prefix = testkit::unique_prefix("hold-lease");
    let config = EtcdConfig::new(vec![testkit::Etcd::shared().endpoint()], &prefix);
    let store = connect(&config).await.unwrap();
    create(
        &store,
        &[ip_pool(&["10.96.0.0/28"], Duration::from_secs(60))],
    )
    .await;
    let a = Allocator::start(store, AllocatorOptions::default())
        .await
        .unwrap();
    let mut values = Vec::new();
    for i in 0..8 {
        let owner = format!("default/s{i}");
        let v = allocated(a.allocate("ipv4", &svc(&owner), None).await.unwrap());
        a.release("ipv4", v, &owner, Release::Hold).await.unwrap();
        values.push(v);
    }
    let mut client = etcd_client::Client::connect([testkit::Etcd::shared().endpoint()], None)
        .await
        .unwrap();
    let mut leases = std::collections::BTreeSet::new();
    for v in &values {
        let resp = client
            .get(format!("{prefix}values/ipv4/{v}"), None)
            .await
            .unwrap();
        let kv = resp.kvs().first().expect("the held key exists");
        assert_ne!(kv.lease(), 0, "{v} is held without a lease");
        leases.insert(kv.lease());
    }
    // One lease per hold window (6 s for a 60 s hold), not one per hold.
    assert_eq!(leases.len(), 1, "{leases:?}");
}
