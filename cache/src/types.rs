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

/// An endpoint of an EndpointSlice, as converted; a slice keeps its endpoints by column
/// ([`Endpoints`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addresses: Addresses,
    /// `conditions.ready`, with absent counted as ready (as CoreDNS does).
    pub ready: bool,
    /// `hostname`, set from the pod's `spec.hostname` when its subdomain is the Service's name;
    /// in lower case.
    pub hostname: Option<Name>,
    /// The pod's name, from a `targetRef` of kind Pod; in lower case.
    pub pod_name: Option<Name>,
}

/// An endpoint as a slice holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointRef<'a> {
    pub addresses: &'a [IpAddr],
    pub ready: bool,
    pub hostname: Option<&'a str>,
    pub pod_name: Option<&'a str>,
}

impl EndpointRef<'_> {
    pub fn to_owned(&self) -> Endpoint {
        Endpoint {
            addresses: self.addresses.iter().copied().collect(),
            ready: self.ready,
            hostname: self.hostname.map(Name::new),
            pod_name: self.pod_name.map(Name::new),
        }
    }
}

/// The endpoints of a slice, by column: each endpoint costs its address (17 bytes) and its
/// ready flag; the columns of names and of address counts exist only in slices that need
/// them (a slice where some endpoint has a hostname, names a pod, or has other than one
/// address). Made from [`Endpoint`]s (`collect`), read as [`EndpointRef`]s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Every endpoint's addresses, one endpoint after another.
    addresses: Box<[IpAddr]>,
    /// Where each endpoint's addresses end in `addresses`; empty when every endpoint has
    /// exactly one.
    ends: Box<[u32]>,
    ready: Box<[bool]>,
    /// Empty when no endpoint has a hostname.
    hostnames: Box<[Option<Name>]>,
    /// Empty when no endpoint names a pod.
    pod_names: Box<[Option<Name>]>,
}

impl Endpoints {
    pub fn len(&self) -> usize {
        self.ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }

    /// The `i`th endpoint.
    pub fn get(&self, i: usize) -> Option<EndpointRef<'_>> {
        let ready = *self.ready.get(i)?;
        let addresses = if self.ends.is_empty() {
            &self.addresses[i..=i]
        } else {
            let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
            &self.addresses[start..self.ends[i] as usize]
        };
        Some(EndpointRef {
            addresses,
            ready,
            hostname: self.hostnames.get(i).and_then(|n| n.as_deref()),
            pod_name: self.pod_names.get(i).and_then(|n| n.as_deref()),
        })
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = EndpointRef<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i).expect("an index below the length"))
    }
}

impl FromIterator<Endpoint> for Endpoints {
    fn from_iter<I: IntoIterator<Item = Endpoint>>(endpoints: I) -> Endpoints {
        let endpoints: Vec<Endpoint> = endpoints.into_iter().collect();
        let mut addresses = Vec::new();
        let mut ends = Vec::new();
        for e in &endpoints {
            addresses.extend(e.addresses.iter().copied());
            ends.push(addresses.len() as u32);
        }
        let one_each = endpoints.iter().all(|e| e.addresses.len() == 1);
        let column = |name: fn(&Endpoint) -> &Option<Name>| -> Box<[Option<Name>]> {
            if endpoints.iter().any(|e| name(e).is_some()) {
                endpoints.iter().map(|e| name(e).clone()).collect()
            } else {
                Box::default()
            }
        };
        Endpoints {
            addresses: addresses.into(),
            ends: if one_each {
                Box::default()
            } else {
                ends.into()
            },
            ready: endpoints.iter().map(|e| e.ready).collect(),
            hostnames: column(|e| &e.hostname),
            pod_names: column(|e| &e.pod_name),
        }
    }
}

impl From<Vec<Endpoint>> for Endpoints {
    fn from(endpoints: Vec<Endpoint>) -> Endpoints {
        endpoints.into_iter().collect()
    }
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
    pub endpoints: Endpoints,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(
        addresses: &[&str],
        ready: bool,
        host: Option<&str>,
        pod: Option<&str>,
    ) -> Endpoint {
        Endpoint {
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            ready,
            hostname: host.map(Name::new),
            pod_name: pod.map(Name::new),
        }
    }

    #[test]
    fn endpoints_kept_by_column_read_back_as_they_were_given() {
        let cases = [
            vec![],
            vec![
                endpoint(&["10.0.0.1"], true, None, None),
                endpoint(&["10.0.0.2"], false, None, None),
            ],
            vec![
                endpoint(&["10.0.0.1"], true, None, Some("web-a")),
                endpoint(&["10.0.0.2", "10.0.0.3"], true, Some("web-0"), None),
                endpoint(&[], false, None, None),
                endpoint(&["fd00::1"], true, None, Some("web-b")),
            ],
        ];
        for given in cases {
            let kept: Endpoints = given.iter().cloned().collect();
            assert_eq!(kept.len(), given.len());
            let read: Vec<Endpoint> = kept.iter().map(|e| e.to_owned()).collect();
            assert_eq!(read, given);
            assert!(kept.get(given.len()).is_none());
        }
        // Columns a slice does not need are not kept.
        let plain: Endpoints = vec![endpoint(&["10.0.0.1"], true, None, None)].into();
        assert!(plain.ends.is_empty() && plain.hostnames.is_empty() && plain.pod_names.is_empty());
    }
}
