//! Validated pools: which values are usable, the static/dynamic bands, reservations, and the
//! values and owners that allocations are made of. Pure data; no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// An IP family, spelled as Kubernetes spells it in `spec.ipFamilies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    IPv4,
    IPv6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::IPv4 => "IPv4",
            Family::IPv6 => "IPv6",
        })
    }
}

/// What a pool hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// Service ClusterIPs of one family.
    ClusterIp(Family),
    /// Service NodePorts (and healthCheckNodePorts).
    NodePort,
}

/// One allocatable value: an address of an IP pool or a port of a port pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    Ip(IpAddr),
    Port(u16),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Ip(ip) => ip.fmt(f),
            Value::Port(p) => p.fmt(f),
        }
    }
}

impl From<IpAddr> for Value {
    fn from(ip: IpAddr) -> Self {
        Value::Ip(ip)
    }
}

impl From<u16> for Value {
    fn from(port: u16) -> Self {
        Value::Port(port)
    }
}

/// Who an allocation belongs to: the object (`namespace/name`) and what the value is for
/// (`clusterIP`, `nodePort:80/TCP`, `healthCheckNodePort`, ...).
///
/// Reservations, holds and releases are matched on the object; the purpose explains the value
/// (and is preferred when an object's held values are handed back).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Owner {
    pub object: String,
    pub purpose: String,
}

impl Owner {
    pub fn new(object: impl Into<String>, purpose: impl Into<String>) -> Self {
        Owner {
            object: object.into(),
            purpose: purpose.into(),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.object, self.purpose)
    }
}

/// A contiguous run of usable values in the `u128` value space (IPv4 addresses are their `u32`
/// value, IPv6 addresses their `u128` value, ports their number), with its static band.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// First usable value.
    pub first: u128,
    /// Last usable value (inclusive).
    pub last: u128,
    /// Number of values at the start of the span that form the static (lower) band.
    pub static_len: u128,
    /// The span as written by the operator: a CIDR or `A-B`.
    pub text: String,
}

impl Span {
    /// Number of usable values (a span is never empty).
    pub fn size(&self) -> u128 {
        self.last - self.first + 1
    }

    pub fn contains(&self, v: u128) -> bool {
        self.first <= v && v <= self.last
    }

    /// The static band `[first, first + static_len)`, if there is one.
    pub fn lower(&self) -> Option<(u128, u128)> {
        (self.static_len > 0).then(|| {
            (
                self.first,
                (self.first + self.static_len - 1).min(self.last),
            )
        })
    }

    /// The dynamic band: everything after the static band.
    pub fn upper(&self) -> Option<(u128, u128)> {
        let start = self.first.checked_add(self.static_len)?;
        (start <= self.last).then_some((start, self.last))
    }

    /// The usable span of an IP CIDR: no network address, no IPv4 broadcast address.
    /// `None` when the CIDR has no usable address (IPv4 /31 and /32, IPv6 /128).
    pub fn of_cidr(net: &IpNet) -> Option<Span> {
        let (network, bits) = match net.trunc() {
            IpNet::V4(n) => (u128::from(u32::from(n.network())), 32u32),
            IpNet::V6(n) => (u128::from(n.network()), 128u32),
        };
        let host_bits = bits - u32::from(net.prefix_len());
        let host_mask = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        // IPv4 loses its broadcast address; IPv6 keeps its last address.
        let last = network + host_mask - u128::from(bits == 32 && host_mask > 0);
        let first = network + 1;
        if last < first {
            return None;
        }
        // The band counts every address of the CIDR (saturating only for ::/0).
        let total = host_mask.saturating_add(1);
        Some(Span {
            first,
            last,
            static_len: ip_static_band(total),
            text: net.trunc().to_string(),
        })
    }

    /// The span of a port range `first-last`.
    pub fn of_ports(first: u16, last: u16) -> Span {
        let size = u128::from(last - first) + 1;
        Span {
            first: u128::from(first),
            last: u128::from(last),
            static_len: port_static_band(size),
            text: format!("{first}-{last}"),
        }
    }
}

/// KEP-3070: the static band of a service CIDR with `size` addresses (network and broadcast
/// included): `min(max(16, size/16), 256)`, none when `size <= 16`.
pub fn ip_static_band(size: u128) -> u128 {
    if size <= 16 {
        0
    } else {
        (size / 16).clamp(16, 256)
    }
}

/// KEP-3668: the static band of a NodePort range of `size` ports: `min(max(16, size/32), 128)`,
/// none when `size <= 16`.
pub fn port_static_band(size: u128) -> u128 {
    if size <= 16 {
        0
    } else {
        (size / 32).clamp(16, 128)
    }
}

/// A validated pool: spans, hold and reservations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub kind: PoolKind,
    /// Disjoint spans, in the order the operator listed them; dynamic allocation fills the upper
    /// bands in this order before it touches any lower band.
    pub spans: Vec<Span>,
    /// How long a released value stays held for its owner (zero disables holds).
    pub hold: Duration,
    /// Reserved values and the object each is reserved for.
    pub reserved: BTreeMap<u128, String>,
}

impl Pool {
    /// Total usable values.
    pub fn size(&self) -> u128 {
        self.spans
            .iter()
            .fold(0u128, |n, s| n.saturating_add(s.size()))
    }

    pub fn contains(&self, v: u128) -> bool {
        self.spans.iter().any(|s| s.contains(v))
    }

    /// The spans as the operator wrote them, comma-separated (for messages).
    pub fn ranges_text(&self) -> String {
        self.spans
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The reserved values of `object`, in order.
    pub fn reservations_of<'a>(&'a self, object: &'a str) -> impl Iterator<Item = u128> + 'a {
        self.reserved
            .iter()
            .filter(move |(_, o)| o.as_str() == object)
            .map(|(v, _)| *v)
    }

    /// Converts a value into the pool's value space; `None` if it is of another kind or family.
    pub fn raw(&self, value: Value) -> Option<u128> {
        match (self.kind, value) {
            (PoolKind::ClusterIp(Family::IPv4), Value::Ip(IpAddr::V4(ip))) => {
                Some(u32::from(ip).into())
            }
            (PoolKind::ClusterIp(Family::IPv6), Value::Ip(IpAddr::V6(ip))) => Some(ip.into()),
            (PoolKind::NodePort, Value::Port(p)) => Some(p.into()),
            _ => None,
        }
    }

    /// Converts a raw value of this pool back into a value.
    pub fn value(&self, raw: u128) -> Value {
        match self.kind {
            PoolKind::ClusterIp(Family::IPv4) => Value::Ip(IpAddr::V4(Ipv4Addr::from(raw as u32))),
            PoolKind::ClusterIp(Family::IPv6) => Value::Ip(IpAddr::V6(Ipv6Addr::from(raw))),
            PoolKind::NodePort => Value::Port(raw as u16),
        }
    }

    /// Parses a value written as text (an address or a port number) for this pool.
    pub fn parse_value(&self, text: &str) -> Option<Value> {
        match self.kind {
            PoolKind::ClusterIp(_) => text.trim().parse::<IpAddr>().ok().map(Value::Ip),
            PoolKind::NodePort => text.trim().parse::<u16>().ok().map(Value::Port),
        }
    }

    /// What the pool's values are called in messages: `IP` or `port`.
    pub fn noun(&self) -> &'static str {
        match self.kind {
            PoolKind::ClusterIp(_) => "IP",
            PoolKind::NodePort => "port",
        }
    }
}

/// Why an allocation was not made: expected outcomes the caller branches on, not errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No free value is left (after the upper band, the lower band).
    Full,
    /// The requested value belongs to someone else (allocated, or held after a release).
    Taken { value: Value, by: Owner, held: bool },
    /// The requested value is reserved for another object.
    Reserved { value: Value, for_object: String },
    /// The requested value is not a usable value of the pool.
    OutOfRange {
        value: Value,
        kind: PoolKind,
        valid: String,
    },
}

impl fmt::Display for Refusal {
    /// Upstream kube-apiserver's texts, so clients that match on them keep working.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let noun = |v: &Value| {
            if matches!(v, Value::Port(_)) {
                "port"
            } else {
                "IP"
            }
        };
        match self {
            Refusal::Full => f.write_str("range is full"),
            Refusal::Taken { value, .. } => {
                write!(f, "provided {} is already allocated", noun(value))
            }
            Refusal::Reserved { value, for_object } => {
                write!(
                    f,
                    "provided {} is already allocated (reserved for {for_object})",
                    noun(value)
                )
            }
            Refusal::OutOfRange {
                kind: PoolKind::NodePort,
                valid,
                ..
            } => {
                write!(
                    f,
                    "provided port is not in the valid range. The range of valid ports is {valid}"
                )
            }
            Refusal::OutOfRange { value, valid, .. } => write!(
                f,
                "the provided IP ({value}) is not in the valid range. The range of valid IPs is {valid}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(cidr: &str) -> Span {
        Span::of_cidr(&cidr.parse().unwrap()).unwrap()
    }

    fn ip(raw: u128) -> String {
        Ipv4Addr::from(raw as u32).to_string()
    }

    #[test]
    fn ipv4_cidr_excludes_network_and_broadcast() {
        let s = span("10.96.0.0/24");
        assert_eq!(
            (ip(s.first), ip(s.last)),
            ("10.96.0.1".into(), "10.96.0.254".into())
        );
        assert_eq!(s.size(), 254);
    }

    #[test]
    fn ipv6_cidr_excludes_only_the_network_address() {
        let s = span("fd00::/120");
        assert_eq!(Ipv6Addr::from(s.first).to_string(), "fd00::1");
        assert_eq!(Ipv6Addr::from(s.last).to_string(), "fd00::ff");
        assert_eq!(s.size(), 255);
    }

    #[test]
    fn cidrs_without_usable_addresses_are_rejected() {
        for c in ["10.0.0.0/32", "10.0.0.0/31", "fd00::1/128"] {
            assert!(Span::of_cidr(&c.parse().unwrap()).is_none(), "{c}");
        }
        assert_eq!(span("10.0.0.0/30").size(), 2);
    }

    #[test]
    fn huge_ipv6_prefixes_are_sized_without_materialising_them() {
        assert_eq!(span("fd00::/64").size(), (1u128 << 64) - 1);
        assert_eq!(span("fd00::/8").size(), (1u128 << 120) - 1);
        assert_eq!(
            span("::/0").size(),
            u128::MAX,
            "every address but the network address"
        );
    }

    #[test]
    fn ip_bands_follow_kep_3070() {
        // (cidr, static band size, first and last address of the static band)
        let rows = [
            ("10.96.0.0/24", 16, Some(("10.96.0.1", "10.96.0.16"))),
            ("10.96.0.0/20", 256, Some(("10.96.0.1", "10.96.1.0"))),
            ("10.96.0.0/12", 256, Some(("10.96.0.1", "10.96.1.0"))),
            ("10.96.0.0/28", 0, None),
            ("10.96.0.0/27", 16, Some(("10.96.0.1", "10.96.0.16"))),
        ];
        for (cidr, len, band) in rows {
            let s = span(cidr);
            assert_eq!(s.static_len, len, "{cidr}");
            assert_eq!(
                s.lower().map(|(a, b)| (ip(a), ip(b))),
                band.map(|(a, b)| (a.into(), b.into())),
                "{cidr}"
            );
        }
        // The upper band of a /24 runs from .17 to .254 (spec E.1).
        let (a, b) = span("10.96.0.0/24").upper().unwrap();
        assert_eq!((ip(a), ip(b)), ("10.96.0.17".into(), "10.96.0.254".into()));
        // A /28 has no static band: the upper band is the whole usable range.
        let s = span("10.96.0.0/28");
        assert_eq!(s.upper(), Some((s.first, s.last)));
    }

    #[test]
    fn port_bands_follow_kep_3668() {
        let s = Span::of_ports(30000, 32767);
        assert_eq!(s.static_len, 86);
        assert_eq!(s.lower(), Some((30000, 30085)));
        assert_eq!(s.upper(), Some((30086, 32767)));
        assert_eq!(
            Span::of_ports(30000, 30015).static_len,
            0,
            "16 ports: no band"
        );
        assert_eq!(
            Span::of_ports(30000, 30016).static_len,
            16,
            "17 ports: minimum band"
        );
        assert_eq!(
            Span::of_ports(1, 65535).static_len,
            128,
            "band is capped at 128"
        );
    }

    #[test]
    fn refusals_carry_upstream_messages() {
        let ip4: IpAddr = "10.0.0.0".parse().unwrap();
        let out = Refusal::OutOfRange {
            value: Value::Ip(ip4),
            kind: PoolKind::ClusterIp(Family::IPv4),
            valid: "10.0.0.0/24".into(),
        };
        assert_eq!(
            out.to_string(),
            "the provided IP (10.0.0.0) is not in the valid range. The range of valid IPs is 10.0.0.0/24"
        );
        let out = Refusal::OutOfRange {
            value: Value::Port(29999),
            kind: PoolKind::NodePort,
            valid: "30000-32767".into(),
        };
        assert_eq!(
            out.to_string(),
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        );
        let by = Owner::new("default/a", "clusterIP");
        let taken = Refusal::Taken {
            value: Value::Ip(ip4),
            by: by.clone(),
            held: false,
        };
        assert_eq!(taken.to_string(), "provided IP is already allocated");
        let taken = Refusal::Taken {
            value: Value::Port(30001),
            by,
            held: true,
        };
        assert_eq!(taken.to_string(), "provided port is already allocated");
        assert_eq!(Refusal::Full.to_string(), "range is full");
    }
}
