//! The cache's own lean types: only the fields a reader (DNS today, the controller later) needs,
//! converted from API objects at the boundary ([`crate::convert`]).

use std::fmt;
use std::net::IpAddr;

use smallvec::SmallVec;

/// A name (of a namespace, object, port or host): up to 24 bytes are kept inline, so the
/// names of a typical cluster cost no allocation, and a copy (a map key, an index entry) is
/// a copy of those bytes.
pub type Name = compact_str::CompactString;

/// An endpoint's or a Service's addresses: one, nearly always (an endpoint has exactly one
/// today; a Service one per family).
pub type Addresses = SmallVec<[IpAddr; 1]>;

/// `namespace/name` of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: Name,
    pub name: Name,
}

impl Key {
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Key {
        Key {
            namespace: Name::new(namespace),
            name: Name::new(name),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses `TCP`, `UDP` or `SCTP` (any case); Kubernetes defaults an absent protocol to TCP.
    pub fn parse(text: Option<&str>) -> Option<Protocol> {
        match text.map(str::to_ascii_uppercase).as_deref() {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }

    /// Lower-case name, as in `_tcp` SRV labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// What a Service is for DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// ClusterIP, NodePort or LoadBalancer with its cluster IPs (`spec.clusterIPs`, else
    /// `spec.clusterIP`), in order, a repeated one once; empty while none is allocated.
    ClusterIp(Addresses),
    /// `clusterIP: None`: answers come from the endpoints.
    Headless,
    /// `type: ExternalName`: a CNAME to this name (in lower case, without a trailing dot).
    ExternalName(Name),
}

/// A Service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// Empty for the single unnamed port.
    pub name: Name,
    pub protocol: Protocol,
    pub port: u16,
}

/// A Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub key: Key,
    pub kind: ServiceKind,
    /// Shared by every Service with the same ports (the cache interns them).
    pub ports: std::sync::Arc<[ServicePort]>,
}

/// An endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addresses: Addresses,
    /// `conditions.ready`, with absent counted as ready (as CoreDNS does).
    pub ready: bool,
    /// `hostname`, set from the pod's `spec.hostname` when its subdomain is the Service's name.
    pub hostname: Option<Name>,
    /// The pod's name, from a `targetRef` of kind Pod.
    pub pod_name: Option<Name>,
}

/// A port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointPort {
    pub name: Name,
    pub protocol: Protocol,
    pub port: u16,
}

/// An EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    pub key: Key,
    /// The Service it belongs to (label `kubernetes.io/service-name`); slices without it are
    /// ignored by DNS.
    pub service: Option<Name>,
    /// Shared by every slice with the same ports (the cache interns them) and with the DNS
    /// index's entries.
    pub ports: std::sync::Arc<[EndpointPort]>,
    pub endpoints: Box<[Endpoint]>,
    /// `endpoints.kubernetes.io/last-change-trigger-time`: when the change that made this
    /// version began (the endpoint controllers write it), for DNS programming latency.
    pub last_change_trigger: Option<std::time::SystemTime>,
}

/// A Pod, for `pods verified`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub key: Key,
    /// Every address of `status.podIPs` (both families of a dual-stack pod, as CoreDNS 1.15
    /// indexes them), or `status.podIP` alone when the list is absent.
    pub ips: Addresses,
    /// False for pods that are finished (Succeeded, Failed, Unknown) or being deleted.
    pub live: bool,
}
