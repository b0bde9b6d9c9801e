//! Pool specifications: the stored form of a pool, the operator's pools file, the
//! kube-apiserver-style range flags, and their validation into [`Pool`]s with errors that name
//! the field and the fix.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcdconf::parse_duration;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::pool::{Family, Pool, PoolKind, Span};
use crate::{Error, Result};

/// The IPv4 ClusterIP pool.
pub const IPV4: &str = "ipv4";
/// The IPv6 ClusterIP pool.
pub const IPV6: &str = "ipv6";
/// The NodePort pool.
pub const NODEPORT: &str = "nodeport";
/// Every pool name, in display order.
pub const POOL_NAMES: [&str; 3] = [IPV4, IPV6, NODEPORT];
/// Default hold of a released value.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(300);
/// kube-apiserver's default `--service-node-port-range`.
pub const DEFAULT_NODE_PORT_RANGE: &str = "30000-32767";

/// A pool as stored (JSON under `<prefix>pools/<name>`) and as applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSpec {
    /// `ipv4`, `ipv6` or `nodeport`.
    pub name: String,
    /// IP pools: the CIDRs, in allocation order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<String>,
    /// NodePort pool: `first-last`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    /// How long a released value is held for its owner.
    #[serde(with = "duration_text")]
    pub hold: Duration,
    /// Reserved values by owning object (`namespace/name`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reservations: BTreeMap<String, Vec<String>>,
}

impl PoolSpec {
    /// Where this pool lives in a pools file, for error messages.
    pub fn field_path(&self) -> String {
        match self.name.as_str() {
            NODEPORT => "nodePort".to_string(),
            other => format!("clusterIP.{other}"),
        }
    }

    /// Checks the spec and builds the pool.
    pub fn validate(&self) -> Result<Pool> {
        let path = self.field_path();
        let invalid = |field: String, message: String| Error::InvalidSpec { field, message };
        let (kind, spans) = match self.name.as_str() {
            IPV4 | IPV6 => {
                let family = if self.name == IPV4 {
                    Family::IPv4
                } else {
                    Family::IPv6
                };
                if self.range.is_some() {
                    return Err(invalid(
                        format!("{path}.range"),
                        "an IP pool takes `cidrs`, not `range`".into(),
                    ));
                }
                (
                    PoolKind::ClusterIp(family),
                    cidr_spans(&path, family, &self.cidrs)?,
                )
            }
            NODEPORT => {
                if !self.cidrs.is_empty() {
                    return Err(invalid(
                        format!("{path}.cidrs"),
                        "the NodePort pool takes `range`, not `cidrs`".into(),
                    ));
                }
                let text = self.range.as_deref().unwrap_or(DEFAULT_NODE_PORT_RANGE);
                let (a, b) =
                    parse_port_range(text).map_err(|m| invalid(format!("{path}.range"), m))?;
                (PoolKind::NodePort, vec![Span::of_ports(a, b)])
            }
            other => {
                return Err(invalid(
                    "name".into(),
                    format!(
                        "unknown pool {other:?}; pools are named {}",
                        POOL_NAMES.join(", ")
                    ),
                ));
            }
        };
        let mut pool = Pool {
            name: self.name.clone(),
            kind,
            spans,
            hold: self.hold,
            reserved: BTreeMap::new(),
        };
        for (object, values) in &self.reservations {
            let field = format!("{path}.reservations[{object}]");
            check_object(object).map_err(|m| invalid(field.clone(), m))?;
            for text in values {
                let value = pool.parse_value(text).ok_or_else(|| {
                    invalid(
                        field.clone(),
                        format!("{text:?} is not a valid {}", pool.noun()),
                    )
                })?;
                let raw = pool
                    .raw(value)
                    .filter(|r| pool.contains(*r))
                    .ok_or_else(|| {
                        invalid(
                            field.clone(),
                            format!("{value} is not in the pool ({})", pool.ranges_text()),
                        )
                    })?;
                if let Some(prev) = pool.reserved.insert(raw, object.clone()) {
                    return Err(invalid(
                        field,
                        format!("{value} is already reserved for {prev}"),
                    ));
                }
            }
        }
        Ok(pool)
    }
}

fn cidr_spans(path: &str, family: Family, cidrs: &[String]) -> Result<Vec<Span>> {
    let invalid = |field: String, message: String| Error::InvalidSpec { field, message };
    if cidrs.is_empty() {
        return Err(invalid(
            format!("{path}.cidrs"),
            "at least one CIDR is required, e.g. 10.96.0.0/12".into(),
        ));
    }
    let mut nets: Vec<IpNet> = Vec::new();
    let mut spans = Vec::new();
    for (i, text) in cidrs.iter().enumerate() {
        let field = format!("{path}.cidrs[{i}]");
        let net: IpNet = text.trim().parse().map_err(|_| {
            invalid(field.clone(), format!("{text:?} is not a CIDR; write an address and a prefix length, e.g. 10.96.0.0/12"))
        })?;
        let net_family = if matches!(net, IpNet::V4(_)) {
            Family::IPv4
        } else {
            Family::IPv6
        };
        if net_family != family {
            return Err(invalid(
                field,
                format!("{net} is an {net_family} CIDR in the {family} pool"),
            ));
        }
        if net.trunc() != net {
            return Err(invalid(
                field,
                format!("{net} has host bits set; did you mean {}?", net.trunc()),
            ));
        }
        if let Some(other) = nets.iter().find(|o| o.contains(&net) || net.contains(*o)) {
            return Err(invalid(field, format!("{net} overlaps {other}")));
        }
        let span = Span::of_cidr(&net).ok_or_else(|| {
            invalid(
                field,
                format!("{net} has no usable address; use a shorter prefix"),
            )
        })?;
        nets.push(net);
        spans.push(span);
    }
    Ok(spans)
}

/// Parses `A-B` (inclusive, 1..=65535).
pub fn parse_port_range(text: &str) -> std::result::Result<(u16, u16), String> {
    let fix = "write it as FIRST-LAST, e.g. 30000-32767";
    let (a, b) = text
        .trim()
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not a port range; {fix}"))?;
    let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p > 0);
    let (Some(a), Some(b)) = (port(a), port(b)) else {
        return Err(format!(
            "{text:?} is not a port range: ports are 1-65535; {fix}"
        ));
    };
    if a > b {
        return Err(format!(
            "{text:?}: the first port {a} is greater than the last port {b}; write {b}-{a}"
        ));
    }
    Ok((a, b))
}

/// An owning object is `namespace/name`.
fn check_object(object: &str) -> std::result::Result<(), String> {
    match object.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(()),
        _ => Err(format!(
            "{object:?} is not an object; write namespace/name, e.g. kube-system/kube-dns"
        )),
    }
}

/// The operator's pools file.
///
/// ```yaml
/// clusterIP:
///   ipv4:
///     cidrs: [10.96.0.0/12]
///     hold: 5m
///     reservations:
///       kube-system/kube-dns: 10.96.0.10
/// nodePort:
///   range: 30000-32767
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolsFile {
    #[serde(rename = "clusterIP", default)]
    cluster_ip: Option<ClusterIpPools>,
    #[serde(rename = "nodePort", default)]
    node_port: Option<PoolDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterIpPools {
    ipv4: Option<PoolDoc>,
    ipv6: Option<PoolDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolDoc {
    #[serde(default)]
    cidrs: Vec<String>,
    range: Option<String>,
    hold: Option<String>,
    #[serde(default)]
    reservations: BTreeMap<String, OneOrMany>,
}

/// A reservation is one value or a list; ports may be written as numbers.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(Scalar),
    Many(Vec<Scalar>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Number(u64),
    Text(String),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::Number(n) => n.to_string(),
            Scalar::Text(t) => t,
        }
    }
}

impl PoolDoc {
    fn into_spec(self, name: &str) -> Result<PoolSpec> {
        let hold = match &self.hold {
            None => DEFAULT_HOLD,
            Some(text) => parse_duration(text).map_err(|message| Error::InvalidSpec {
                field: format!(
                    "{}.hold",
                    if name == NODEPORT {
                        "nodePort".into()
                    } else {
                        format!("clusterIP.{name}")
                    }
                ),
                message,
            })?,
        };
        let reservations = self
            .reservations
            .into_iter()
            .map(|(object, v)| {
                let values = match v {
                    OneOrMany::One(s) => vec![s.text()],
                    OneOrMany::Many(list) => list.into_iter().map(Scalar::text).collect(),
                };
                (object, values)
            })
            .collect();
        let spec = PoolSpec {
            name: name.to_string(),
            cidrs: self.cidrs,
            range: self.range,
            hold,
            reservations,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// Parses a pools file (YAML) into validated specs.
pub fn parse_pools_file(text: &str) -> Result<Vec<PoolSpec>> {
    let file: PoolsFile = serde_yaml::from_str(text).map_err(|e| Error::InvalidSpec {
        field: "document".into(),
        message: e.to_string(),
    })?;
    let mut specs = Vec::new();
    if let Some(ips) = file.cluster_ip {
        if let Some(doc) = ips.ipv4 {
            specs.push(doc.into_spec(IPV4)?);
        }
        if let Some(doc) = ips.ipv6 {
            specs.push(doc.into_spec(IPV6)?);
        }
    }
    if let Some(doc) = file.node_port {
        specs.push(doc.into_spec(NODEPORT)?);
    }
    if specs.is_empty() {
        return Err(Error::InvalidSpec {
            field: "document".into(),
            message: "no pools: define clusterIP.ipv4, clusterIP.ipv6 and/or nodePort".into(),
        });
    }
    Ok(specs)
}

/// Builds specs from kube-apiserver-style flags: `--service-cluster-ip-range` (at most one CIDR
/// per family, primary first) and `--service-node-port-range`.
pub fn specs_from_flags(
    cluster_ip_ranges: &[String],
    node_port_range: Option<&str>,
    hold: Duration,
) -> Result<Vec<PoolSpec>> {
    let mut specs = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, text) in cluster_ip_ranges.iter().enumerate() {
        let field = format!("--service-cluster-ip-range[{i}]");
        let net: IpNet = text.trim().parse().map_err(|_| Error::InvalidSpec {
            field: field.clone(),
            message: format!(
                "{text:?} is not a CIDR; e.g. 10.96.0.0/12 or 10.96.0.0/12,fd00:10:96::/108"
            ),
        })?;
        let name = if matches!(net, IpNet::V4(_)) {
            IPV4
        } else {
            IPV6
        };
        if !seen.insert(name) {
            return Err(Error::InvalidSpec {
                field,
                message: format!(
                    "a second {name} CIDR: the flag takes one CIDR per family; use a pools file (-f) for several"
                ),
            });
        }
        let spec = PoolSpec {
            name: name.into(),
            cidrs: vec![net.to_string()],
            range: None,
            hold,
            reservations: BTreeMap::new(),
        };
        spec.validate().map_err(|e| match e {
            Error::InvalidSpec { message, .. } => Error::InvalidSpec {
                field: field.clone(),
                message,
            },
            other => other,
        })?;
        specs.push(spec);
    }
    if let Some(range) = node_port_range {
        parse_port_range(range).map_err(|message| Error::InvalidSpec {
            field: "--service-node-port-range".into(),
            message,
        })?;
        specs.push(PoolSpec {
            name: NODEPORT.into(),
            cidrs: vec![],
            range: Some(range.trim().to_string()),
            hold,
            reservations: BTreeMap::new(),
        });
    }
    Ok(specs)
}

/// Serialises durations as `5m`, `1s 500ms`, `0s`.
mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        etcdconf::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<Vec<PoolSpec>>) -> (String, String) {
        match r {
            Err(Error::InvalidSpec { field, message }) => (field, message),
            other => panic!("expected an invalid spec, got {other:?}"),
        }
    }

    #[test]
    fn a_full_pools_file_parses() {
        let specs = parse_pools_file(
            "clusterIP:\n  ipv4:\n    cidrs: [10.96.0.0/12]\n    hold: 30s\n    reservations:\n      kube-system/kube-dns: 10.96.0.10\n  ipv6:\n    cidrs: ['fd00:10:96::/108']\nnodePort:\n  range: 30000-32767\n  reservations:\n    default/web-nodeport: [30008, '30009']\n",
        )
        .unwrap();
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[0].hold, Duration::from_secs(30));
        assert_eq!(specs[1].hold, DEFAULT_HOLD);
        let pool = specs[0].validate().unwrap();
        assert_eq!(
            pool.reserved.values().next().unwrap(),
            "kube-system/kube-dns"
        );
        assert_eq!(
            specs[2].reservations["default/web-nodeport"],
            vec!["30008", "30009"]
        );
    }

    #[test]
    fn bad_pools_files_name_the_field_and_the_fix() {
        // (file, field, part of the message)
        let rows = [
            (
                "clusterIP:\n  ipv4:\n    cidrs: [10.96.0.0/33]\n",
                "clusterIP.ipv4.cidrs[0]",
                "not a CIDR",
            ),
            (
                "clusterIP:\n  ipv4:\n    cidrs: [10.96.0.1/12]\n",
                "clusterIP.ipv4.cidrs[0]",
                "did you mean 10.96.0.0/12",
            ),
            (
                "clusterIP:\n  ipv4:\n    cidrs: ['fd00::/64']\n",
                "clusterIP.ipv4.cidrs[0]",
                "IPv6 CIDR in the IPv4 pool",
            ),
            (
                "clusterIP:\n  ipv4:\n    cidrs: [10.0.0.0/8, 10.1.0.0/16]\n",
                "clusterIP.ipv4.cidrs[1]",
                "overlaps 10.0.0.0/8",
            ),
            (
                "clusterIP:\n  ipv4:\n    cidrs: [10.0.0.0/32]\n",
                "clusterIP.ipv4.cidrs[0]",
                "no usable address",
            ),
            (
                "clusterIP:\n  ipv4:\n    cidrs: []\n",
                "clusterIP.ipv4.cidrs",
                "at least one CIDR",
            ),
            (
                "nodePort:\n  range: 32767-30000\n",
                "nodePort.range",
                "write 30000-32767",
            ),
            (
                "nodePort:\n  range: 0-100\n",
                "nodePort.range",
                "ports are 1-65535",
            ),
            (
                "nodePort:\n  hold: soon\n",
                "nodePort.hold",
                "not a duration",
            ),
            (
                "clusterIP:\n  ipv4:\n    cidrs: [10.0.0.0/24]\n    reservations:\n      kube-dns: 10.0.0.10\n",
                "clusterIP.ipv4.reservations[kube-dns]",
                "namespace/name",
            ),
            (
                "clusterIP:\n  ipv4:\n    cidrs: [10.0.0.0/24]\n    reservations:\n      a/b: 10.0.1.10\n",
                "clusterIP.ipv4.reservations[a/b]",
                "not in the pool",
            ),
            (
                "clusterIP:\n  ipv4:\n    cidrs: [10.0.0.0/24]\n    reservations:\n      a/b: 10.0.0.10\n      a/c: 10.0.0.10\n",
                "clusterIP.ipv4.reservations[a/c]",
                "already reserved for a/b",
            ),
            (
                "clusterIP:\n  ipv5: {}\n",
                "document",
                "unknown field `ipv5`",
            ),
            ("nodePorts: {}\n", "document", "unknown field `nodePorts`"),
            ("{}\n", "document", "no pools"),
        ];
        for (file, field, msg) in rows {
            let (f, m) = field_of(parse_pools_file(file));
            assert_eq!(f, field, "{file}");
            assert!(m.contains(msg), "{file}: {m}");
        }
    }

    #[test]
    fn range_flags_make_one_pool_per_family() {
        let specs = specs_from_flags(
            &["10.96.0.0/12".into(), "fd00:10:96::/108".into()],
            Some("30000-32767"),
            DEFAULT_HOLD,
        )
        .unwrap();
        let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [IPV4, IPV6, NODEPORT]);
        let (field, msg) = field_of(specs_from_flags(
            &["10.96.0.0/12".into(), "10.100.0.0/16".into()],
            None,
            DEFAULT_HOLD,
        ));
        assert_eq!(field, "--service-cluster-ip-range[1]");
        assert!(msg.contains("one CIDR per family"));
        let (field, _) = field_of(specs_from_flags(&[], Some("5-1"), DEFAULT_HOLD));
        assert_eq!(field, "--service-node-port-range");
    }

    #[test]
    fn stored_specs_round_trip_through_json() {
        let spec = parse_pools_file("nodePort:\n  range: 30000-32767\n  hold: 1m 30s\n")
            .unwrap()
            .remove(0);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<PoolSpec>(&json).unwrap(), spec);
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    }
}
