//! The part of a Service that allocation reads, taken from its JSON (as the API server and an
//! AdmissionReview carry it), with upstream's notions of which types need what.

use std::net::IpAddr;

use ipam::Family;
use serde_json::Value;

/// One entry of `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub port: i64,
    pub protocol: String,
    /// 0 when unset.
    pub node_port: i64,
}

/// A Service as allocation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svc {
    pub namespace: String,
    pub name: String,
    pub type_: String,
    /// `spec.clusterIPs`, or `[spec.clusterIP]` when only that is set; `["None"]` for headless.
    pub cluster_ips: Vec<String>,
    pub ip_families: Vec<String>,
    pub ip_family_policy: Option<String>,
    pub has_selector: bool,
    pub ports: Vec<Port>,
    pub allocate_lb_node_ports: Option<bool>,
    pub external_traffic_policy: Option<String>,
    /// 0 when unset.
    pub health_check_node_port: i64,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl Svc {
    pub fn from_json(object: &Value) -> Svc {
        let cluster_ips: Vec<String> =
            match object.pointer("/spec/clusterIPs").and_then(Value::as_array) {
                Some(ips) if !ips.is_empty() => ips
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect(),
                _ => str_at(object, "/spec/clusterIP")
                    .map(|ip| vec![ip.to_string()])
                    .unwrap_or_default(),
            };
        let ports = object
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map(|ports| {
                ports
                    .iter()
                    .map(|p| Port {
                        port: p.get("port").and_then(Value::as_i64).unwrap_or(0),
                        protocol: p
                            .get("protocol")
                            .and_then(Value::as_str)
                            .unwrap_or("TCP")
                            .to_string(),
                        node_port: p.get("nodePort").and_then(Value::as_i64).unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Svc {
            namespace: str_at(object, "/metadata/namespace")
                .unwrap_or("")
                .to_string(),
            name: str_at(object, "/metadata/name").unwrap_or("").to_string(),
            type_: str_at(object, "/spec/type")
                .unwrap_or("ClusterIP")
                .to_string(),
            cluster_ips,
            ip_families: object
                .pointer("/spec/ipFamilies")
                .and_then(Value::as_array)
                .map(|f| {
                    f.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            ip_family_policy: str_at(object, "/spec/ipFamilyPolicy").map(str::to_string),
            has_selector: object
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .is_some_and(|s| !s.is_empty()),
            ports,
            allocate_lb_node_ports: object
                .pointer("/spec/allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool),
            external_traffic_policy: str_at(object, "/spec/externalTrafficPolicy")
                .map(str::to_string),
            health_check_node_port: object
                .pointer("/spec/healthCheckNodePort")
                .and_then(Value::as_i64)
                .unwrap_or(0),
        }
    }

    /// `namespace/name`: the owner of its allocations.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn is_external_name(&self) -> bool {
        self.type_ == "ExternalName"
    }

    pub fn is_headless(&self) -> bool {
        self.cluster_ips.first().is_some_and(|ip| ip == "None")
    }

    /// Every type but ExternalName has cluster IPs (or is headless).
    pub fn needs_cluster_ip(&self) -> bool {
        !self.is_external_name()
    }

    /// NodePort, or LoadBalancer unless `allocateLoadBalancerNodePorts: false`.
    pub fn allocates_node_ports(&self) -> bool {
        self.type_ == "NodePort"
            || (self.type_ == "LoadBalancer" && self.allocate_lb_node_ports != Some(false))
    }

    /// May carry nodePorts at all.
    pub fn may_have_node_ports(&self) -> bool {
        self.type_ == "NodePort" || self.type_ == "LoadBalancer"
    }

    /// LoadBalancer with `externalTrafficPolicy: Local`.
    pub fn needs_health_check_node_port(&self) -> bool {
        self.type_ == "LoadBalancer" && self.external_traffic_policy.as_deref() == Some("Local")
    }
}

/// The family of an IP address string.
pub fn family_of(ip: &str) -> Option<Family> {
    match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(_) => Some(Family::IPv4),
        IpAddr::V6(_) => Some(Family::IPv6),
    }
}

/// `IPv4` / `IPv6` as written in `spec.ipFamilies`.
pub fn parse_family(text: &str) -> Option<Family> {
    match text {
        "IPv4" => Some(Family::IPv4),
        "IPv6" => Some(Family::IPv6),
        _ => None,
    }
}
