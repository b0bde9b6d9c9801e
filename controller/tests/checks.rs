//! Spec part E, checks 1–22 (ClusterIP and NodePort allocation), in-process: the allocation
//! module behind the API server's Service admission, the releaser following the Service watch,
//! ipam pools in a memory store, all driven through kube-rs. Plus svcplane's own promises:
//! holds, named reservations and dry runs.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::ServicePort;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use support::{
    Harness, assert_refused, cause_field, cluster_ip, cluster_ips, flags, ip, ip_pool, last_octet,
    node_port_pool, node_ports, port, refusal, service,
};

const IPV4: &str = ipam::spec::IPV4;
const IPV6: &str = ipam::spec::IPV6;
const NODEPORT: &str = ipam::spec::NODEPORT;
/// Holds off: released values are free at once, as upstream.
const NO_HOLD: Duration = Duration::ZERO;
/// svcplane's default hold.
const HOLD: Duration = Duration::from_secs(300);

/// A single-stack IPv4 /24 cluster with the default NodePort range.
async fn v4_cluster(hold: Duration) -> Harness {
    Harness::start(flags(&["10.96.0.0/24"], "30000-32767", hold)).await
}

/// A dual-stack cluster, IPv4 primary.
async fn dual_stack_cluster(hold: Duration) -> Harness {
    Harness::start(flags(
        &["10.96.0.0/24", "fd00:10:96::/108"],
        "30000-32767",
        hold,
    ))
    .await
}

/// `count` ports named `p<i>`, numbered from 1.
fn many_ports(count: usize) -> serde_json::Value {
    json!(
        (0..count)
            .map(|i| json!({"name": format!("p{i}"), "port": i + 1}))
            .collect::<Vec<_>>()
    )
}

fn set_of(values: impl IntoIterator<Item = i32>) -> BTreeSet<i32> {
    values.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_01_a_dynamic_cluster_ip_comes_from_the_upper_band_while_it_has_room() {
    let h = v4_cluster(HOLD).await;
    for i in 0..40 {
        let name = format!("s{i}");
        let svc = h.create(&name, json!({"ports": [{"port": 80}]})).await;
        let got = cluster_ip(&svc).unwrap();
        assert!(got.starts_with("10.96.0."), "{got}");
        assert!((17..=254).contains(&last_octet(&got)), "{got}");
        assert_eq!(cluster_ips(&svc), [got.as_str()]);
        assert!(h.allocated_to(IPV4, ip(&got), &format!("default/{name}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_02_the_network_and_broadcast_addresses_are_never_allocated() {
    let h = v4_cluster(NO_HOLD).await;
    for bad in ["10.96.0.0", "10.96.0.255"] {
        let status = h
            .refused("edge", json!({"clusterIP": bad, "ports": [{"port": 80}]}))
            .await;
        assert_refused(
            &status,
            422,
            "Invalid",
            &format!(
                "Service \"edge\" is invalid: spec.clusterIPs: Invalid value: [\"{bad}\"]: failed to allocate IP {bad}: the provided IP ({bad}) is not in the valid range. The range of valid IPs is 10.96.0.0/24"
            ),
        );
        assert_eq!(cause_field(&status), "spec.clusterIPs");
    }
    // Dynamically, the whole pool is .1–.254.
    let mut octets = BTreeSet::new();
    for i in 0..254 {
        let svc = h
            .create(&format!("s{i}"), json!({"ports": [{"port": 80}]}))
            .await;
        octets.insert(last_octet(&cluster_ip(&svc).unwrap()));
    }
    assert_eq!(octets, (1..=254).collect::<BTreeSet<u8>>());
    let status = h
        .refused("one-more", json!({"ports": [{"port": 80}]}))
        .await;
    assert_refused(
        &status,
        500,
        "InternalError",
        "Internal error occurred: failed to allocate a serviceIP: range is full",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_03_a_slash_12_has_a_static_band_of_256_and_a_slash_28_has_none() {
    let h = Harness::start(flags(&["10.96.0.0/12"], "30000-32767", HOLD)).await;
    let pool = h
        .allocator
        .view()
        .pools()
        .into_iter()
        .find(|p| p.spec.name == IPV4)
        .unwrap()
        .pool;
    let raw = |text: &str| pool.raw(ip(text)).unwrap();
    assert_eq!(pool.spans[0].static_len, 256);
    assert_eq!(
        pool.spans[0].lower(),
        Some((raw("10.96.0.1"), raw("10.96.1.0")))
    );
    assert_eq!(pool.spans[0].upper().unwrap().0, raw("10.96.1.1"));
    // Dynamic allocations stay out of the static band; a request may take from it.
    for i in 0..30 {
        let svc = h
            .create(&format!("s{i}"), json!({"ports": [{"port": 80}]}))
            .await;
        let got = raw(&cluster_ip(&svc).unwrap());
        assert!(got > raw("10.96.1.0"), "{svc:?}");
    }
    let svc = h
        .create(
            "static",
            json!({"clusterIP": "10.96.1.0", "ports": [{"port": 80}]}),
        )
        .await;
    assert_eq!(cluster_ip(&svc).as_deref(), Some("10.96.1.0"));
    drop(h);

    let h = Harness::start(flags(&["10.96.0.0/28"], "30000-32767", HOLD)).await;
    let pool = h
        .allocator
        .view()
        .pools()
        .into_iter()
        .find(|p| p.spec.name == IPV4)
        .unwrap()
        .pool;
    assert_eq!(pool.spans[0].static_len, 0);
    assert_eq!(pool.spans[0].lower(), None);
    let mut octets = BTreeSet::new();
    for i in 0..14 {
        let svc = h
            .create(&format!("s{i}"), json!({"ports": [{"port": 80}]}))
            .await;
        octets.insert(last_octet(&cluster_ip(&svc).unwrap()));
    }
    assert_eq!(octets, (1..=14).collect::<BTreeSet<u8>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_04_dynamic_node_ports_fill_30086_to_32767_before_30000_to_30085() {
    let h = v4_cluster(HOLD).await;
    // The upper band holds 2682 ports: ten Services of 250 ports and one of 182.
    let mut upper = BTreeSet::new();
    for (i, count) in [250; 10].into_iter().chain([182]).enumerate() {
        let svc = h
            .create(
                &format!("fill{i}"),
                json!({"type": "NodePort", "ports": many_ports(count)}),
            )
            .await;
        for n in node_ports(&svc) {
            let n = n.expect("every port gets a nodePort");
            assert!((30086..=32767).contains(&n), "{n} is in the static band");
            assert!(upper.insert(n), "{n} given twice");
        }
    }
    assert_eq!(upper.len(), 2682);
    // Now the static band.
    let mut lower = BTreeSet::new();
    for i in 0..5 {
        let svc = h
            .create(
                &format!("late{i}"),
                json!({"type": "NodePort", "ports": [{"port": 80}]}),
            )
            .await;
        let n = node_ports(&svc)[0].unwrap();
        assert!((30000..=30085).contains(&n), "{n}");
        assert!(lower.insert(n));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_05_a_full_upper_band_falls_back_to_the_lower_band_and_a_full_pool_is_a_500() {
    // ClusterIPs: a /27 has 30 addresses, .1–.16 static, .17–.30 dynamic.
    let h = Harness::start(flags(&["10.96.0.0/27"], "30000-32767", HOLD)).await;
    let mut octets = Vec::new();
    for i in 0..30 {
        let svc = h
            .create(&format!("s{i}"), json!({"ports": [{"port": 80}]}))
            .await;
        octets.push(last_octet(&cluster_ip(&svc).unwrap()));
    }
    assert_eq!(
        octets[..14].iter().copied().collect::<BTreeSet<_>>(),
        (17..=30).collect()
    );
    assert_eq!(
        octets[14..].iter().copied().collect::<BTreeSet<_>>(),
        (1..=16).collect()
    );
    let status = h.refused("full", json!({"ports": [{"port": 80}]})).await;
    assert_refused(
        &status,
        500,
        "InternalError",
        "Internal error occurred: failed to allocate a serviceIP: range is full",
    );
    drop(h);

    // NodePorts: 30000-30099 has 30000–30015 static and 30016–30099 (84) dynamic.
    let h = Harness::start(vec![
        ip_pool(IPV4, "10.96.0.0/24", HOLD),
        node_port_pool("30000-30099", HOLD),
    ])
    .await;
    let svc = h
        .create(
            "upper",
            json!({"type": "NodePort", "ports": many_ports(84)}),
        )
        .await;
    assert_eq!(
        set_of(node_ports(&svc).into_iter().flatten()),
        (30016..=30099).collect()
    );
    let svc = h
        .create(
            "lower",
            json!({"type": "NodePort", "ports": many_ports(16)}),
        )
        .await;
    assert_eq!(
        set_of(node_ports(&svc).into_iter().flatten()),
        (30000..=30015).collect()
    );
    let status = h
        .refused("full", json!({"type": "NodePort", "ports": [{"port": 80}]}))
        .await;
    assert_refused(
        &status,
        500,
        "InternalError",
        "Internal error occurred: failed to allocate a nodePort: range is full",
    );
    // The ClusterIP taken before the nodePort failed was given back.
    assert_eq!(h.values_of(IPV4, "default/full"), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_06_a_requested_free_cluster_ip_is_allocated_exactly_at_its_offset() {
    let h = v4_cluster(HOLD).await;
    let svc = h
        .create(
            "kube-dns",
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53, "protocol": "UDP"}]}),
        )
        .await;
    assert_eq!(cluster_ip(&svc).as_deref(), Some("10.96.0.10"));
    assert_eq!(cluster_ips(&svc), ["10.96.0.10"]);
    let record = h.record(IPV4, ip("10.96.0.10")).expect("allocated");
    assert_eq!(record.owner.object, "default/kube-dns");
    assert_eq!(record.owner.purpose, "clusterIP");
    assert!(record.is_allocated());
    let pool = h
        .allocator
        .view()
        .pools()
        .into_iter()
        .find(|p| p.spec.name == IPV4)
        .unwrap()
        .pool;
    assert_eq!(pool.raw(ip("10.96.0.10")).unwrap() - pool.spans[0].first, 9);
    assert_eq!(h.values_of(IPV4, "default/kube-dns"), [ip("10.96.0.10")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_07_a_second_service_requesting_a_taken_ip_gets_422_on_cluster_ips() {
    let h = v4_cluster(HOLD).await;
    h.create(
        "a",
        json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
    )
    .await;
    let status = h
        .refused(
            "b",
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
        )
        .await;
    assert_refused(
        &status,
        422,
        "Invalid",
        "Service \"b\" is invalid: spec.clusterIPs: Invalid value: [\"10.96.0.10\"]: failed to allocate IP 10.96.0.10: provided IP is already allocated",
    );
    assert_eq!(cause_field(&status), "spec.clusterIPs");
    assert!(h.allocated_to(IPV4, ip("10.96.0.10"), "default/a"));
    assert_eq!(h.values_of(IPV4, "default/b"), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_08_a_node_port_below_the_range_gets_422_naming_the_valid_range() {
    let h = v4_cluster(HOLD).await;
    let status = h
        .refused(
            "np",
            json!({"type": "NodePort", "ports": [
                {"name": "a", "port": 80},
                {"name": "b", "port": 81, "nodePort": 29999},
            ]}),
        )
        .await;
    assert_refused(
        &status,
        422,
        "Invalid",
        "Service \"np\" is invalid: spec.ports[1].nodePort: Invalid value: 29999: provided port is not in the valid range. The range of valid ports is 30000-32767",
    );
    assert_eq!(cause_field(&status), "spec.ports[1].nodePort");
    // Nothing the request took is left.
    assert_eq!(h.values_of(IPV4, "default/np"), []);
    assert_eq!(h.values_of(NODEPORT, "default/np"), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_09_tcp_and_udp_of_one_port_share_one_node_port_held_once() {
    let h = v4_cluster(HOLD).await;
    let svc = h
        .create(
            "dns",
            json!({"type": "NodePort", "ports": [
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                {"name": "dns-udp", "port": 53, "protocol": "UDP"},
            ]}),
        )
        .await;
    let ports = node_ports(&svc);
    assert_eq!(ports.len(), 2);
    let shared = ports[0].expect("a nodePort");
    assert_eq!(ports[1], Some(shared));
    assert_eq!(h.values_of(NODEPORT, "default/dns"), [port(shared as u16)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_10_a_load_balancer_without_node_port_allocation_gets_only_requested_ones() {
    let h = v4_cluster(HOLD).await;
    let svc = h
        .create(
            "bare",
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
                "ports": [{"name": "http", "port": 80}]}),
        )
        .await;
    assert_eq!(node_ports(&svc), [None]);
    assert_eq!(h.values_of(NODEPORT, "default/bare"), []);

    let svc = h
        .create(
            "mixed",
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
                "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443, "nodePort": 30443}]}),
        )
        .await;
    assert_eq!(node_ports(&svc), [None, Some(30443)]);
    assert_eq!(h.values_of(NODEPORT, "default/mixed"), [port(30443)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_11_local_traffic_gets_a_health_check_node_port_released_when_switched_to_cluster() {
    let h = v4_cluster(HOLD).await;
    let svc = h
        .create(
            "lb",
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                "ports": [{"name": "http", "port": 80}]}),
        )
        .await;
    let spec = svc.spec.as_ref().unwrap();
    let hc = spec.health_check_node_port.expect("a healthCheckNodePort");
    assert!((30000..=32767).contains(&hc), "{hc}");
    let np = node_ports(&svc)[0].unwrap();
    assert_ne!(hc, np);
    let record = h.record(NODEPORT, port(hc as u16)).expect("allocated");
    assert_eq!(record.owner.object, "default/lb");
    assert_eq!(record.owner.purpose, "healthCheckNodePort");
    assert!(record.is_allocated());

    let patched = h
        .services
        .patch(
            "lb",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"externalTrafficPolicy": "Cluster"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.as_ref().unwrap().health_check_node_port, None);
    assert_eq!(node_ports(&patched), [Some(np)]);
    h.await_held(NODEPORT, port(hc as u16), "default/lb").await;
    assert!(h.allocated_to(NODEPORT, port(np as u16), "default/lb"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_12_a_removed_ports_node_port_is_free_for_reuse_after_the_update() {
    let h = v4_cluster(NO_HOLD).await;
    let svc = h
        .create(
            "np",
            json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}),
        )
        .await;
    let [Some(kept), Some(dropped)] = node_ports(&svc)[..] else {
        panic!("two nodePorts: {svc:?}");
    };
    let mut current = h.services.get("np").await.unwrap();
    current.spec.as_mut().unwrap().ports.as_mut().unwrap().pop();
    let updated = h
        .services
        .replace("np", &PostParams::default(), &current)
        .await
        .unwrap();
    assert_eq!(node_ports(&updated), [Some(kept)]);
    h.await_free(NODEPORT, port(dropped as u16)).await;
    let other = h
        .create(
            "other",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": dropped}]}),
        )
        .await;
    assert_eq!(node_ports(&other), [Some(dropped)]);
    assert!(h.allocated_to(NODEPORT, port(kept as u16), "default/np"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_13_a_node_port_service_turned_cluster_ip_loses_its_node_ports_and_keeps_its_ip() {
    let h = v4_cluster(HOLD).await;
    let svc = h
        .create(
            "np",
            json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}),
        )
        .await;
    let before_ip = cluster_ip(&svc).unwrap();
    let numbers: Vec<i32> = node_ports(&svc).into_iter().flatten().collect();
    assert_eq!(numbers.len(), 2);
    let mut current = h.services.get("np").await.unwrap();
    current.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    let updated = h
        .services
        .replace("np", &PostParams::default(), &current)
        .await
        .unwrap();
    assert_eq!(
        updated.spec.as_ref().unwrap().type_.as_deref(),
        Some("ClusterIP")
    );
    assert_eq!(node_ports(&updated), [None, None]);
    assert_eq!(cluster_ip(&updated), Some(before_ip.clone()));
    for n in numbers {
        h.await_held(NODEPORT, port(n as u16), "default/np").await;
    }
    assert!(h.allocated_to(IPV4, ip(&before_ip), "default/np"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_14_a_cluster_ip_service_turned_external_name_loses_its_ip_fields_and_ip() {
    let h = v4_cluster(HOLD).await;
    let svc = h.create("db", json!({"ports": [{"port": 5432}]})).await;
    let before_ip = cluster_ip(&svc).unwrap();
    let mut current = h.services.get("db").await.unwrap();
    let spec = current.spec.as_mut().unwrap();
    spec.type_ = Some("ExternalName".into());
    spec.external_name = Some("db.example.com".into());
    let updated = h
        .services
        .replace("db", &PostParams::default(), &current)
        .await
        .unwrap();
    let spec = updated.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ExternalName"));
    assert_eq!(spec.cluster_ip, None);
    assert_eq!(spec.cluster_ips, None);
    assert_eq!(spec.ip_families, None);
    assert_eq!(spec.ip_family_policy, None);
    h.await_held(IPV4, ip(&before_ip), "default/db").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_15_an_external_name_service_turned_cluster_ip_gets_a_new_ip() {
    let h = v4_cluster(HOLD).await;
    let svc = h
        .create(
            "db",
            json!({"type": "ExternalName", "externalName": "db.example.com"}),
        )
        .await;
    assert_eq!(cluster_ip(&svc), None);
    assert_eq!(h.values_of(IPV4, "default/db"), []);
    let mut current = h.services.get("db").await.unwrap();
    let spec = current.spec.as_mut().unwrap();
    spec.type_ = Some("ClusterIP".into());
    spec.external_name = None;
    spec.ports = Some(vec![ServicePort {
        port: 5432,
        ..Default::default()
    }]);
    let updated = h
        .services
        .replace("db", &PostParams::default(), &current)
        .await
        .unwrap();
    let got = cluster_ip(&updated).expect("a ClusterIP");
    assert_eq!(cluster_ips(&updated), [got.as_str()]);
    let spec = updated.spec.as_ref().unwrap();
    assert_eq!(spec.ip_families.as_deref(), Some(&["IPv4".to_string()][..]));
    assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
    assert!(h.allocated_to(IPV4, ip(&got), "default/db"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_16_a_deleted_services_values_are_free_for_an_immediate_re_create() {
    let h = v4_cluster(NO_HOLD).await;
    let spec = |ip: &str, np: i32, hc: i32| {
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "clusterIP": ip,
            "healthCheckNodePort": hc, "ports": [{"name": "http", "port": 80, "nodePort": np}]})
    };
    let svc = h
        .create(
            "lb",
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                "ports": [{"name": "http", "port": 80}]}),
        )
        .await;
    let the_ip = cluster_ip(&svc).unwrap();
    let np = node_ports(&svc)[0].unwrap();
    let hc = svc.spec.as_ref().unwrap().health_check_node_port.unwrap();
    let values = [
        (IPV4, ip(&the_ip)),
        (NODEPORT, port(np as u16)),
        (NODEPORT, port(hc as u16)),
    ];

    // The same Service, re-created at once, may ask for its values again.
    h.delete("lb").await;
    let again = h.create("lb", spec(&the_ip, np, hc)).await;
    assert_eq!(cluster_ip(&again), Some(the_ip.clone()));
    assert_eq!(node_ports(&again), [Some(np)]);
    assert_eq!(
        again.spec.as_ref().unwrap().health_check_node_port,
        Some(hc)
    );
    for (pool, value) in values {
        h.await_allocated(pool, value, "default/lb").await;
    }

    // Deleted for good, the values are free for anyone.
    h.delete("lb").await;
    for (pool, value) in values {
        h.await_free(pool, value).await;
    }
    let other = h.create("other", spec(&the_ip, np, hc)).await;
    assert_eq!(cluster_ip(&other), Some(the_ip.clone()));
    assert_eq!(node_ports(&other), [Some(np)]);
    assert_eq!(
        other.spec.as_ref().unwrap().health_check_node_port,
        Some(hc)
    );
    for (pool, value) in values {
        assert!(
            h.allocated_to(pool, value, "default/other"),
            "{pool} {value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_17_a_failed_create_leaves_nothing_it_allocated() {
    let h = v4_cluster(HOLD).await;
    h.create(
        "holder",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30100}]}),
    )
    .await;
    // The ClusterIP is picked, then the requested nodePort is refused.
    let status = h
        .refused(
            "victim",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30100}]}),
        )
        .await;
    assert_refused(
        &status,
        422,
        "Invalid",
        "Service \"victim\" is invalid: spec.ports[0].nodePort: Invalid value: 30100: provided port is already allocated",
    );
    // A dynamic nodePort, then a refused healthCheckNodePort.
    let status = h
        .refused(
            "victim",
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30100,
                "ports": [{"port": 80}]}),
        )
        .await;
    assert_refused(
        &status,
        500,
        "InternalError",
        "Internal error occurred: failed to allocate requested HealthCheck NodePort 30100: provided port is already allocated",
    );
    assert_eq!(h.values_of(IPV4, "default/victim"), []);
    assert_eq!(h.values_of(NODEPORT, "default/victim"), []);
    assert_eq!(h.values_of(NODEPORT, "default/holder"), [port(30100)]);
    drop(h);

    // The primary family is allocated, then the secondary is refused.
    let h = dual_stack_cluster(HOLD).await;
    h.create(
        "holder",
        json!({"ipFamilies": ["IPv6"], "clusterIP": "fd00:10:96::10", "ports": [{"port": 80}]}),
    )
    .await;
    let status = h
        .refused(
            "victim",
            json!({"ipFamilyPolicy": "RequireDualStack", "clusterIPs": ["10.96.0.50", "fd00:10:96::10"],
                "ports": [{"port": 80}]}),
        )
        .await;
    assert_refused(
        &status,
        422,
        "Invalid",
        "Service \"victim\" is invalid: spec.clusterIPs: Invalid value: [\"10.96.0.50\",\"fd00:10:96::10\"]: failed to allocate IP fd00:10:96::10: provided IP is already allocated",
    );
    assert_eq!(h.record(IPV4, ip("10.96.0.50")), None);
    assert_eq!(h.values_of(IPV4, "default/victim"), []);
    assert_eq!(h.values_of(IPV6, "default/victim"), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_18_require_dual_stack_on_a_single_stack_cluster_gets_422() {
    let h = v4_cluster(HOLD).await;
    let status = h
        .refused(
            "ds",
            json!({"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}),
        )
        .await;
    assert_refused(
        &status,
        422,
        "Invalid",
        "Service \"ds\" is invalid: spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services",
    );
    assert_eq!(cause_field(&status), "spec.ipFamilyPolicy");
    assert_eq!(h.values_of(IPV4, "default/ds"), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_19_prefer_dual_stack_gets_both_families_and_ips_in_order() {
    let h = dual_stack_cluster(HOLD).await;
    let svc = h
        .create(
            "web",
            json!({"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}),
        )
        .await;
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(
        spec.ip_families.as_deref(),
        Some(&["IPv4".to_string(), "IPv6".to_string()][..])
    );
    assert_eq!(spec.ip_family_policy.as_deref(), Some("PreferDualStack"));
    let ips = cluster_ips(&svc);
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert_eq!(cluster_ip(&svc), Some(ips[0].clone()));
    assert!(ips[0].starts_with("10.96.0."), "{ips:?}");
    assert!(ips[1].starts_with("fd00:10:96::"), "{ips:?}");
    assert!(h.allocated_to(IPV4, ip(&ips[0]), "default/web"));
    assert!(h.allocated_to(IPV6, ip(&ips[1]), "default/web"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_20_no_policy_on_a_dual_stack_cluster_is_single_stack_of_the_primary_family() {
    let h = dual_stack_cluster(HOLD).await;
    let svc = h.create("web", json!({"ports": [{"port": 80}]})).await;
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
    assert_eq!(spec.ip_families.as_deref(), Some(&["IPv4".to_string()][..]));
    let ips = cluster_ips(&svc);
    assert_eq!(ips.len(), 1, "{ips:?}");
    assert!(h.allocated_to(IPV4, ip(&ips[0]), "default/web"));
    assert_eq!(h.values_of(IPV6, "default/web"), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_21_dropping_the_secondary_ip_needs_single_stack_and_then_releases_it() {
    let h = dual_stack_cluster(HOLD).await;
    let svc = h
        .create(
            "web",
            json!({"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}),
        )
        .await;
    let ips = cluster_ips(&svc);
    assert_eq!(ips.len(), 2);

    // Without SingleStack: refused, nothing changes.
    let mut current = h.services.get("web").await.unwrap();
    current.spec.as_mut().unwrap().cluster_ips = Some(vec![ips[0].clone()]);
    let status = refusal(
        h.services
            .replace("web", &PostParams::default(), &current)
            .await,
    );
    assert_refused(
        &status,
        422,
        "Invalid",
        "Service \"web\" is invalid: spec.ipFamilyPolicy: Invalid value: \"PreferDualStack\": must be set to 'SingleStack' when releasing the secondary clusterIP",
    );
    assert_eq!(cluster_ips(&h.services.get("web").await.unwrap()), ips);
    assert!(h.allocated_to(IPV6, ip(&ips[1]), "default/web"));

    // With SingleStack the secondary goes, and is released.
    let updated = h
        .services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ipFamilyPolicy": "SingleStack"}})),
        )
        .await
        .unwrap();
    assert_eq!(cluster_ips(&updated), [ips[0].clone()]);
    let spec = updated.spec.as_ref().unwrap();
    assert_eq!(spec.ip_families.as_deref(), Some(&["IPv4".to_string()][..]));
    assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
    h.await_held(IPV6, ip(&ips[1]), "default/web").await;
    assert!(h.allocated_to(IPV4, ip(&ips[0]), "default/web"));

    // Saying it all explicitly works too.
    let svc = h
        .create(
            "api",
            json!({"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}),
        )
        .await;
    let ips = cluster_ips(&svc);
    assert_eq!(ips.len(), 2);
    let updated = h
        .services
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ipFamilyPolicy": "SingleStack",
                "clusterIPs": [ips[0]], "ipFamilies": ["IPv4"]}})),
        )
        .await
        .unwrap();
    assert_eq!(cluster_ips(&updated), [ips[0].clone()]);
    h.await_held(IPV6, ip(&ips[1]), "default/api").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_22_headless_without_selector_defaults_to_require_dual_stack_and_allocates_nothing() {
    let h = dual_stack_cluster(HOLD).await;
    let svc = h
        .create(
            "peers",
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        )
        .await;
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(spec.ip_family_policy.as_deref(), Some("RequireDualStack"));
    assert_eq!(
        spec.ip_families.as_deref(),
        Some(&["IPv4".to_string(), "IPv6".to_string()][..])
    );
    assert_eq!(cluster_ips(&svc), ["None"]);
    assert_eq!(cluster_ip(&svc).as_deref(), Some("None"));
    assert_eq!(h.values_of(IPV4, "default/peers"), []);
    assert_eq!(h.values_of(IPV6, "default/peers"), []);
    drop(h);

    // On a single-stack cluster too.
    let h = v4_cluster(HOLD).await;
    let svc = h
        .create(
            "peers",
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        )
        .await;
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(spec.ip_family_policy.as_deref(), Some("RequireDualStack"));
    assert_eq!(cluster_ips(&svc), ["None"]);
    assert_eq!(h.values_of(IPV4, "default/peers"), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_keeps_an_ip_for_the_same_service_and_refuses_it_to_another() {
    // A /28: 14 addresses, no static band.
    let h = Harness::start(flags(&["10.96.0.0/28"], "30000-32767", HOLD)).await;
    let svc = h.create("keep", json!({"ports": [{"port": 80}]})).await;
    let kept = cluster_ip(&svc).unwrap();
    h.delete("keep").await;
    h.await_held(IPV4, ip(&kept), "default/keep").await;

    // Nobody else gets it, dynamically or by asking.
    for i in 0..13 {
        let other = h
            .create(&format!("other{i}"), json!({"ports": [{"port": 80}]}))
            .await;
        assert_ne!(cluster_ip(&other), Some(kept.clone()));
    }
    let status = h.refused("late", json!({"ports": [{"port": 80}]})).await;
    assert_refused(
        &status,
        500,
        "InternalError",
        "Internal error occurred: failed to allocate a serviceIP: range is full",
    );
    let status = h
        .refused("thief", json!({"clusterIP": kept, "ports": [{"port": 80}]}))
        .await;
    assert_refused(
        &status,
        422,
        "Invalid",
        &format!(
            "Service \"thief\" is invalid: spec.clusterIPs: Invalid value: [\"{kept}\"]: failed to allocate IP {kept}: provided IP is already allocated"
        ),
    );

    // The same Service gets it back dynamically...
    let again = h.create("keep", json!({"ports": [{"port": 80}]})).await;
    assert_eq!(cluster_ip(&again), Some(kept.clone()));
    assert!(h.allocated_to(IPV4, ip(&kept), "default/keep"));
    // ...and by asking for it.
    h.delete("keep").await;
    h.await_held(IPV4, ip(&kept), "default/keep").await;
    let again = h
        .create("keep", json!({"clusterIP": kept, "ports": [{"port": 80}]}))
        .await;
    assert_eq!(cluster_ip(&again), Some(kept.clone()));
    assert!(h.allocated_to(IPV4, ip(&kept), "default/keep"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_reservation_gives_its_value_only_to_its_object() {
    let mut ipv4 = ip_pool(IPV4, "10.96.0.0/28", NO_HOLD);
    ipv4.reservations
        .insert("default/dns".into(), vec!["10.96.0.10".into()]);
    let h = Harness::start(vec![ipv4, node_port_pool("30000-32767", NO_HOLD)]).await;

    let status = h
        .refused(
            "other",
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
        )
        .await;
    assert_refused(
        &status,
        422,
        "Invalid",
        "Service \"other\" is invalid: spec.clusterIPs: Invalid value: [\"10.96.0.10\"]: failed to allocate IP 10.96.0.10: provided IP is already allocated (reserved for default/dns)",
    );
    // Dynamic allocation never hands it out: 13 others fill the rest.
    for i in 0..13 {
        let other = h
            .create(&format!("other{i}"), json!({"ports": [{"port": 80}]}))
            .await;
        assert_ne!(cluster_ip(&other).as_deref(), Some("10.96.0.10"));
    }
    let status = h.refused("late", json!({"ports": [{"port": 80}]})).await;
    assert_eq!(status.code, 500, "{status:?}");

    // Its object gets it without asking, and by asking.
    let dns = h.create("dns", json!({"ports": [{"port": 53}]})).await;
    assert_eq!(cluster_ip(&dns).as_deref(), Some("10.96.0.10"));
    h.delete("dns").await;
    h.await_free(IPV4, ip("10.96.0.10")).await;
    let dns = h
        .create(
            "dns",
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}),
        )
        .await;
    assert_eq!(cluster_ip(&dns).as_deref(), Some("10.96.0.10"));
    assert!(h.allocated_to(IPV4, ip("10.96.0.10"), "default/dns"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_allocates_nothing() {
    let h = v4_cluster(HOLD).await;
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let snapshot = |h: &Harness| (h.records(IPV4), h.records(NODEPORT));
    let before = snapshot(&h);

    // A create with requested and dynamic values.
    let svc = h
        .services
        .create(
            &dry,
            &service(
                "dry",
                json!({"type": "NodePort", "clusterIP": "10.96.0.50", "ports": [
                    {"name": "a", "port": 80, "nodePort": 30080},
                    {"name": "b", "port": 81},
                ]}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(cluster_ip(&svc).as_deref(), Some("10.96.0.50"));
    assert_eq!(node_ports(&svc)[0], Some(30080));
    assert_eq!(h.services.get_opt("dry").await.unwrap(), None);
    assert_eq!(snapshot(&h), before);

    // Requests are still checked against the range.
    let status = refusal(
        h.services
            .create(
                &dry,
                &service(
                    "dry",
                    json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 29999}]}),
                ),
            )
            .await,
    );
    assert_refused(
        &status,
        422,
        "Invalid",
        "Service \"dry\" is invalid: spec.ports[0].nodePort: Invalid value: 29999: provided port is not in the valid range. The range of valid ports is 30000-32767",
    );

    // An update to NodePort, dry.
    let real = h.create("real", json!({"ports": [{"port": 80}]})).await;
    let before = snapshot(&h);
    let patched = h
        .services
        .patch(
            "real",
            &PatchParams {
                dry_run: true,
                ..Default::default()
            },
            &Patch::Merge(
                json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30081}]}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(node_ports(&patched), [Some(30081)]);
    assert_eq!(cluster_ip(&patched), cluster_ip(&real));
    assert_eq!(snapshot(&h), before);
    let stored = h.services.get("real").await.unwrap();
    assert_eq!(
        stored.spec.as_ref().unwrap().type_.as_deref(),
        Some("ClusterIP")
    );

    // A dry delete releases nothing either.
    h.services
        .delete(
            "real",
            &DeleteParams {
                dry_run: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // The releaser follows the watch in order: once it has released a later delete, it has
    // seen anything the dry delete could have caused.
    let marker = h.create("marker", json!({"ports": [{"port": 80}]})).await;
    h.delete("marker").await;
    h.await_held(IPV4, ip(&cluster_ip(&marker).unwrap()), "default/marker")
        .await;
    assert!(h.services.get_opt("real").await.unwrap().is_some());
    assert!(h.allocated_to(IPV4, ip(&cluster_ip(&real).unwrap()), "default/real"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_of_an_existing_name_is_refused_before_anything_is_allocated_or_freed() {
    let h = v4_cluster(HOLD).await;
    h.create(
        "taken",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30060}]}),
    )
    .await;
    h.create(
        "a",
        json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]}),
    )
    .await;
    // The same name again: its IP is the live Service's, the nodePort is someone else's.
    let status = h
        .refused(
            "a",
            json!({"type": "NodePort", "clusterIP": "10.96.0.50",
                "ports": [{"port": 80, "nodePort": 30060}]}),
        )
        .await;
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists"),
        "{status:?}"
    );
    assert_eq!(status.message, "services \"a\" already exists");
    assert!(h.allocated_to(IPV4, ip("10.96.0.50"), "default/a"));
    assert!(h.allocated_to(NODEPORT, port(30060), "default/taken"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_a_stored_service_carries_is_recorded_again_when_freed_behind_its_back() {
    let h = v4_cluster(HOLD).await;
    let svc = h.create("kept", json!({"ports": [{"port": 80}]})).await;
    let value = ip(&cluster_ip(&svc).unwrap());
    // The record goes (a failed write that raced this one gave it back, say)...
    h.allocator
        .release(IPV4, value, "default/kept", ipam::Release::Now)
        .await
        .unwrap();
    assert_eq!(h.record(IPV4, value), None);
    // ...and the next state of the Service the releaser sees records it again.
    h.services
        .patch(
            "kept",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    h.await_allocated(IPV4, value, "default/kept").await;
}
