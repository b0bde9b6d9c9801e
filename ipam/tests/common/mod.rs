//! Shared fixtures of the ipam integration tests: pool specs, owners and addresses.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use ipam::apply::apply;
use ipam::store::Store;
use ipam::{Allocation, Owner, PoolSpec, Value};

/// An IPv4 or IPv6 pool over `cidrs` with `hold`.
pub fn ip_pool(cidrs: &[&str], hold: Duration) -> PoolSpec {
    let v6 = cidrs.iter().any(|c| c.contains(':'));
    PoolSpec {
        name: if v6 { "ipv6" } else { "ipv4" }.into(),
        cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
        range: None,
        hold,
        reservations: Default::default(),
    }
}

/// A NodePort pool over `range` with `hold`.
pub fn port_pool(range: &str, hold: Duration) -> PoolSpec {
    PoolSpec {
        name: "nodeport".into(),
        cidrs: vec![],
        range: Some(range.into()),
        hold,
        reservations: Default::default(),
    }
}

/// Applies `specs` and panics on failure.
pub async fn create<S: Store>(store: &S, specs: &[PoolSpec]) {
    apply(store, specs).await.expect("apply pools");
}

pub fn svc(object: &str) -> Owner {
    Owner::new(object, "clusterIP")
}

pub fn ip(s: &str) -> Value {
    Value::Ip(s.parse().unwrap())
}

pub fn ipv4_u32(v: Value) -> u32 {
    match v {
        Value::Ip(std::net::IpAddr::V4(a)) => u32::from(a),
        other => panic!("not an IPv4 value: {other}"),
    }
}

pub fn port(v: Value) -> u16 {
    match v {
        Value::Port(p) => p,
        other => panic!("not a port: {other}"),
    }
}

/// The value of an allocation that must have succeeded.
pub fn allocated(a: Allocation) -> Value {
    match a {
        Allocation::Allocated(v) => v,
        Allocation::Refused(r) => panic!("expected an allocation, got the refusal {r:?} ({r})"),
    }
}
