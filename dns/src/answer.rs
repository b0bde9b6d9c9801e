//! The answer to one question, from an index: the record synthesis of spec §2–§7 and the
//! NXDOMAIN / NODATA / SERVFAIL rules of §8. Pure: no sockets, no clock.

use std::cell::RefCell;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::config::{Config, PodsMode, is_reverse};
use crate::index::{Entry, EntryKind, Ep, Index};
use crate::name::{Parsed, parse, pod_address, reverse_address};

/// The schema version `dns-version` answers.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// TTL of the `dns-version` record.
const VERSION_TTL: u32 = 28800;
/// Longest ExternalName chain followed inside the zone.
const MAX_CHAIN: usize = 10;

/// The sections of a reply and its rcode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additionals: Vec<Record>,
}

impl Answer {
    fn rcode(rcode: ResponseCode) -> Answer {
        Answer {
            rcode,
            answers: Vec::new(),
            authority: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

/// What a lookup found.
#[derive(Debug)]
enum Found {
    /// The name does not exist.
    NoName,
    /// The name exists without records of the type.
    NoData,
    /// Answer records and additional records.
    Records(Vec<Record>, Vec<Record>),
}

/// What an answer read of the index, so that a copy of it (an answer kept as bytes) is known
/// to hold in a later index while none of that changed.
#[derive(Debug, Clone, Default)]
pub struct Reads {
    /// The Service entries found, in order.
    pub services: Vec<Arc<Entry>>,
    /// Which namespaces exist.
    pub namespaces: bool,
    /// The SOA serial (the snapshot's last change).
    pub serial: bool,
    /// Anything else (a Service that was not there, PTR targets, pods, the name servers): the
    /// answer holds for its index's generation only. (Whether the cache synced is not noted:
    /// answers are kept as bytes only from a synced index.)
    pub whole: bool,
}

/// Answers `qname`/`qtype`, or `None` when the name is in no served zone.
pub fn answer(index: &Index, config: &Config, qname: &Name, qtype: RecordType) -> Option<Answer> {
    answer_reading(index, config, qname, qtype).map(|(a, _)| a)
}

/// [`answer`], with what it read of the index.
pub fn answer_reading(
    index: &Index,
    config: &Config,
    qname: &Name,
    qtype: RecordType,
) -> Option<(Answer, Reads)> {
    let reads = RefCell::new(Reads::default());
    let answer = answer_with(index, config, qname, qtype, &reads)?;
    Some((answer, reads.into_inner()))
}

fn answer_with(
    index: &Index,
    config: &Config,
    qname: &Name,
    qtype: RecordType,
    reads: &RefCell<Reads>,
) -> Option<Answer> {
    let lower = qname.to_lowercase();
    let zone = config
        .zones
        .iter()
        .filter(|z| z.zone_of(&lower))
        .max_by_key(|z| z.num_labels())?;
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return Some(Answer::rcode(ResponseCode::Refused));
    }
    let ctx = Ctx {
        index,
        config,
        reads,
        zone_spelled: qname.trim_to(zone.num_labels() as usize),
        zone,
    };
    let found = ctx.find(qname, &lower, qtype, 0);
    let soa = || vec![ctx.soa()];
    Some(match found {
        Found::Records(answers, additionals) => Answer {
            rcode: ResponseCode::NoError,
            answers,
            authority: vec![],
            additionals,
        },
        Found::NoData => Answer {
            rcode: ResponseCode::NoError,
            answers: vec![],
            authority: soa(),
            additionals: vec![],
        },
        // Never a negative answer before the cache has synced.
        Found::NoName if !index.snapshot.synced => Answer {
            rcode: ResponseCode::ServFail,
            answers: vec![],
            authority: soa(),
            additionals: vec![],
        },
        Found::NoName => Answer {
            rcode: ResponseCode::NXDomain,
            answers: vec![],
            authority: soa(),
            additionals: vec![],
        },
    })
}

struct Ctx<'a> {
    index: &'a Index,
    config: &'a Config,
    /// The matching zone, as configured (lower case).
    zone: &'a Name,
    /// The zone as spelled in the query: synthesised names end with it.
    zone_spelled: Name,
    /// What was read of the index.
    reads: &'a RefCell<Reads>,
}

fn rec(owner: &Name, ttl: u32, data: RData) -> Record {
    Record::from_rdata(owner.clone(), ttl, data)
}

fn address(owner: &Name, ttl: u32, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => rec(owner, ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => rec(owner, ttl, RData::AAAA(AAAA(v6))),
    }
}

fn family_matches(qtype: RecordType, ip: &IpAddr) -> bool {
    matches!(
        (qtype, ip),
        (RecordType::A, IpAddr::V4(_)) | (RecordType::AAAA, IpAddr::V6(_))
    )
}

/// `labels` followed by `zone`.
fn child(labels: &[&str], zone: &Name) -> Option<Name> {
    Name::from_labels(labels.iter().map(|l| l.as_bytes()))
        .ok()?
        .append_domain(zone)
        .ok()
}

/// Address records of the queried family, or NODATA.
fn addresses(
    owner: &Name,
    ttl: u32,
    qtype: RecordType,
    ips: impl IntoIterator<Item = IpAddr>,
) -> Found {
    let mut seen = HashSet::new();
    let records: Vec<Record> = ips
        .into_iter()
        .filter(|ip| family_matches(qtype, ip) && seen.insert(*ip))
        .map(|ip| address(owner, ttl, ip))
        .collect();
    if records.is_empty() {
        Found::NoData
    } else {
        Found::Records(records, vec![])
    }
}

/// SRV weight for `n` candidates: `floor(100 / n)`, at least 1.
fn weight(n: usize) -> u16 {
    (10_000 / (100 * n.max(1))).max(1) as u16
}

fn port_matches(name: &str, protocol: &str, want_port: &str, want_proto: &str) -> bool {
    (want_port.is_empty() || name.eq_ignore_ascii_case(want_port))
        && (want_proto.is_empty() || protocol == want_proto)
}

impl Ctx<'_> {
    fn ttl(&self) -> u32 {
        self.config.ttl
    }

    /// The index, noting that the answer depends on all of it.
    fn read_whole(&self) -> &Index {
        self.reads.borrow_mut().whole = true;
        self.index
    }

    fn soa(&self) -> Record {
        self.reads.borrow_mut().serial = true;
        let z = &self.zone_spelled;
        let mname = child(&["ns", "dns"], z).unwrap_or_else(|| z.clone());
        let rname = child(&["hostmaster"], z).unwrap_or_else(|| z.clone());
        let serial = self.index.snapshot.last_change as u32;
        let soa = SOA::new(mname, rname, serial, 7200, 1800, 86400, self.ttl());
        rec(z, self.ttl().min(300), RData::SOA(soa))
    }

    fn namespace_exposed(&self, namespace: &str) -> bool {
        self.reads.borrow_mut().namespaces = true;
        self.index.snapshot.namespace_exists(namespace) && self.config.exposes(namespace)
    }

    fn entry(&self, namespace: &str, service: &str) -> Option<&Entry> {
        if !self.namespace_exposed(namespace) {
            return None;
        }
        let found = self.index.service(namespace, service);
        let mut reads = self.reads.borrow_mut();
        match found {
            Some(entry) => reads.services.push(entry.clone()),
            None => reads.whole = true,
        }
        found.map(|e| e.as_ref()).filter(|e| e.exists)
    }

    fn find(&self, qname: &Name, lower: &Name, qtype: RecordType, depth: usize) -> Found {
        let n = (lower.num_labels() - self.zone.num_labels()) as usize;
        let labels: Vec<String> = lower
            .iter()
            .take(n)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        // SOA is answered at the apex only; any other name gets NODATA, even one that does not
        // exist (a CoreDNS quirk clients see).
        if qtype == RecordType::SOA && !labels.is_empty() {
            return Found::NoData;
        }
        // Below a reverse zone only whole addresses exist, and only for PTR; the forward
        // grammar does not apply there.
        if is_reverse(self.zone) && !labels.is_empty() {
            let all: Vec<String> = lower
                .iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect();
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            return match (qtype, reverse_address(&all)) {
                (RecordType::PTR, Some(ip)) => self.ptr(qname, ip),
                _ => Found::NoName,
            };
        }
        match parse(&labels) {
            Parsed::Apex => match qtype {
                RecordType::SOA => Found::Records(vec![self.soa()], vec![]),
                // Quirk: the apex test for NS compares the lower-cased name with the zone as
                // spelled, so a mixed-case apex NS query finds no data.
                RecordType::NS if self.zone_spelled.eq_case(self.zone) => self.ns(),
                _ => Found::NoData,
            },
            Parsed::Base => Found::NoData,
            Parsed::DnsVersion => match qtype {
                RecordType::TXT => Found::Records(
                    vec![rec(
                        qname,
                        VERSION_TTL,
                        RData::TXT(TXT::new(vec![SCHEMA_VERSION.into()])),
                    )],
                    vec![],
                ),
                _ => Found::NoName,
            },
            Parsed::NsDns => match qtype {
                // The same addresses as the NS glue.
                RecordType::A | RecordType::AAAA => {
                    let glue = self.ns_targets().into_iter().flat_map(|(_, ips)| ips);
                    addresses(qname, self.ttl(), qtype, glue)
                }
                RecordType::TXT => Found::NoName,
                _ => Found::NoData,
            },
            Parsed::Namespace { namespace, pods } => {
                if pods && self.config.pods == PodsMode::Disabled
                    || !self.namespace_exposed(&namespace)
                {
                    Found::NoName
                } else {
                    Found::NoData
                }
            }
            Parsed::Service { namespace, service } => match self.entry(&namespace, &service) {
                None => Found::NoName,
                Some(e) => self.service(qname, qtype, &namespace, &service, e, depth),
            },
            Parsed::Endpoint {
                namespace,
                service,
                endpoint,
            } => {
                let Some(e) = self.entry(&namespace, &service) else {
                    return Found::NoName;
                };
                if e.named(&endpoint).next().is_none() {
                    return Found::NoName;
                }
                match qtype {
                    RecordType::A | RecordType::AAAA => addresses(
                        qname,
                        self.ttl(),
                        qtype,
                        e.named(&endpoint).map(|ep| ep.addr),
                    ),
                    _ => Found::NoData,
                }
            }
            Parsed::Port {
                namespace,
                service,
                port,
                protocol,
            } => {
                let Some(e) = self.entry(&namespace, &service) else {
                    return Found::NoName;
                };
                self.port(qname, qtype, &namespace, &service, e, &port, &protocol)
            }
            Parsed::Pod {
                namespace,
                ip_label,
            } => self.pod(qname, qtype, &namespace, &ip_label),
            Parsed::Invalid => Found::NoName,
        }
    }

    fn service(
        &self,
        qname: &Name,
        qtype: RecordType,
        namespace: &str,
        service: &str,
        e: &Entry,
        depth: usize,
    ) -> Found {
        match (e.kind(), qtype) {
            (EntryKind::ClusterIp(ips), RecordType::A | RecordType::AAAA) => {
                addresses(qname, self.ttl(), qtype, ips.iter().copied())
            }
            (EntryKind::Headless, RecordType::A | RecordType::AAAA) => {
                addresses(qname, self.ttl(), qtype, e.endpoints().map(|ep| ep.addr))
            }
            (EntryKind::ClusterIp(_) | EntryKind::Headless, RecordType::SRV) => {
                match self.srv(qname, namespace, service, e, "", "") {
                    Some((records, extra)) => Found::Records(records, extra),
                    None => Found::NoData,
                }
            }
            (EntryKind::ExternalName(target), RecordType::CNAME) => match self.cname(qname, target)
            {
                Some(r) => Found::Records(vec![r], vec![]),
                None => Found::NoData,
            },
            // TXT is not chased: CoreDNS answers a Service name's TXT with NODATA
            // (`plugin/kubernetes/kubernetes.go`, `Services`), though spec §4 lists it.
            (EntryKind::ExternalName(target), RecordType::A | RecordType::AAAA) => {
                self.chase(qname, target, qtype, depth)
            }
            _ => Found::NoData,
        }
    }

    fn cname(&self, qname: &Name, target: &str) -> Option<Record> {
        let mut name = Name::from_ascii(target).ok()?;
        name.set_fqdn(true);
        Some(rec(qname, self.ttl(), RData::CNAME(CNAME(name))))
    }

    /// The CNAME of an ExternalName Service, followed by the target's records when the target is
    /// in a served zone; a target in the zone that yields nothing drops the CNAME too.
    fn chase(&self, qname: &Name, target: &str, qtype: RecordType, depth: usize) -> Found {
        let Some(cname) = self.cname(qname, target) else {
            return Found::NoData;
        };
        let RData::CNAME(CNAME(target_name)) = cname.data.clone() else {
            return Found::NoData;
        };
        let target_lower = target_name.to_lowercase();
        let Some(zone) = self
            .config
            .zones
            .iter()
            .filter(|z| z.zone_of(&target_lower))
            .max_by_key(|z| z.num_labels())
        else {
            // Out of the zone: just the CNAME until forwarding resolves the target.
            return Found::Records(vec![cname], vec![]);
        };
        if depth >= MAX_CHAIN || target_lower == qname.to_lowercase() {
            return Found::NoData;
        }
        let inner = Ctx {
            index: self.index,
            config: self.config,
            reads: self.reads,
            zone,
            zone_spelled: target_name.trim_to(zone.num_labels() as usize),
        };
        match inner.find(&target_name, &target_lower, qtype, depth + 1) {
            Found::Records(mut records, extra) if !records.is_empty() => {
                records.insert(0, cname);
                Found::Records(records, extra)
            }
            _ => Found::NoData,
        }
    }

    /// SRV records of the ports matching `want_port`/`want_proto` ("" matches any), with the
    /// targets' addresses as additional records; `None` when no port matches.
    fn srv(
        &self,
        owner: &Name,
        namespace: &str,
        service: &str,
        e: &Entry,
        want_port: &str,
        want_proto: &str,
    ) -> Option<(Vec<Record>, Vec<Record>)> {
        let ttl = self.ttl();
        let svc_name = child(&[service, namespace, "svc"], &self.zone_spelled)?;
        // (target, port, addresses of the target)
        let mut candidates: Vec<(Name, u16, Vec<IpAddr>)> = Vec::new();
        match e.kind() {
            EntryKind::ClusterIp(ips) => {
                for p in e
                    .ports()
                    .iter()
                    .filter(|p| port_matches(&p.name, p.protocol.as_str(), want_port, want_proto))
                {
                    for _ in ips.iter() {
                        candidates.push((svc_name.clone(), p.port, ips.to_vec()));
                    }
                    if ips.is_empty() {
                        candidates.push((svc_name.clone(), p.port, vec![]));
                    }
                }
            }
            EntryKind::Headless => {
                for ep in e.endpoints() {
                    let name = ep.name();
                    for p in ep.ports.iter().filter(|p| {
                        port_matches(&p.name, p.protocol.as_str(), want_port, want_proto)
                    }) {
                        let Some(target) =
                            child(&[&name, service, namespace, "svc"], &self.zone_spelled)
                        else {
                            continue;
                        };
                        let addrs = e.named(&name).map(|ep| ep.addr).collect();
                        candidates.push((target, p.port, addrs));
                    }
                }
            }
            EntryKind::ExternalName(_) => return None,
        }
        if candidates.is_empty() {
            return None;
        }
        let w = weight(candidates.len());
        let mut seen = HashSet::new();
        let mut glue_seen = HashSet::new();
        let (mut records, mut extra) = (Vec::new(), Vec::new());
        for (target, port, addrs) in candidates {
            if !seen.insert((target.clone(), port)) {
                continue;
            }
            records.push(rec(
                owner,
                ttl,
                RData::SRV(SRV::new(0, w, port, target.clone())),
            ));
            for ip in addrs {
                if glue_seen.insert((target.clone(), ip)) {
                    extra.push(address(&target, ttl, ip));
                }
            }
        }
        Some((records, extra))
    }

    #[allow(clippy::too_many_arguments)]
    fn port(
        &self,
        qname: &Name,
        qtype: RecordType,
        namespace: &str,
        service: &str,
        e: &Entry,
        port: &str,
        protocol: &str,
    ) -> Found {
        if matches!(e.kind(), EntryKind::ExternalName(_)) {
            return Found::NoName;
        }
        let Some((srv, extra)) = self.srv(qname, namespace, service, e, port, protocol) else {
            return Found::NoName;
        };
        match qtype {
            RecordType::SRV => Found::Records(srv, extra),
            RecordType::A | RecordType::AAAA => match e.kind() {
                EntryKind::ClusterIp(ips) => {
                    addresses(qname, self.ttl(), qtype, ips.iter().copied())
                }
                _ => {
                    let matching = e.endpoints().filter(|ep: &Ep<'_>| {
                        ep.ports
                            .iter()
                            .any(|p| port_matches(&p.name, p.protocol.as_str(), port, protocol))
                    });
                    addresses(qname, self.ttl(), qtype, matching.map(|ep| ep.addr))
                }
            },
            _ => Found::NoData,
        }
    }

    fn pod(&self, qname: &Name, qtype: RecordType, namespace: &str, ip_label: &str) -> Found {
        if self.config.pods == PodsMode::Disabled || !self.namespace_exposed(namespace) {
            return Found::NoName;
        }
        let Some(ip) = pod_address(ip_label) else {
            return Found::NoName;
        };
        if self.config.pods == PodsMode::Verified
            && !self.read_whole().snapshot.pod_has_ip(namespace, ip)
        {
            return Found::NoName;
        }
        addresses(qname, self.ttl(), qtype, [ip])
    }

    /// PTR: a Service's cluster IP first (the first Service only), else every ready endpoint
    /// with this address, named under the primary zone.
    fn ptr(&self, qname: &Name, ip: IpAddr) -> Found {
        let Some(primary) = self.config.primary_zone() else {
            return Found::NoName;
        };
        let exposed: Vec<_> = self
            .read_whole()
            .ptr(ip)
            .filter(|t| self.namespace_exposed(&t.service().namespace))
            .collect();
        let names: Vec<Name> = match exposed.iter().find(|t| t.endpoint().is_none()) {
            Some(t) => child(&[&t.service().name, &t.service().namespace, "svc"], primary)
                .into_iter()
                .collect(),
            None => {
                let mut seen = HashSet::new();
                exposed
                    .iter()
                    .filter_map(|t| {
                        child(
                            &[
                                &t.endpoint()?,
                                &t.service().name,
                                &t.service().namespace,
                                "svc",
                            ],
                            primary,
                        )
                    })
                    .filter(|n| seen.insert(n.clone()))
                    .collect()
            }
        };
        if names.is_empty() {
            return Found::NoName;
        }
        Found::Records(
            names
                .into_iter()
                .map(|n| rec(qname, self.ttl(), RData::PTR(PTR(n))))
                .collect(),
            vec![],
        )
    }

    /// The name servers: the Services whose ready endpoints are this server's addresses (their
    /// name and cluster IPs; for headless Services the endpoint's name and address), else
    /// `ns.dns.<zone>` with the server's addresses.
    fn ns_targets(&self) -> Vec<(Name, Vec<IpAddr>)> {
        let z = &self.zone_spelled;
        let mut targets: Vec<(Name, Vec<IpAddr>)> = Vec::new();
        for addr in &self.config.ns_addresses {
            for t in self.read_whole().ptr(*addr) {
                let Some(endpoint) = t.endpoint() else {
                    continue;
                };
                let Some(e) = self.entry(&t.service().namespace, &t.service().name) else {
                    continue;
                };
                let (ns, svc) = (t.service().namespace.as_str(), t.service().name.as_str());
                let target = match e.kind() {
                    EntryKind::ClusterIp(ips) => {
                        child(&[svc, ns, "svc"], z).map(|n| (n, ips.to_vec()))
                    }
                    EntryKind::Headless => {
                        child(&[&endpoint, svc, ns, "svc"], z).map(|n| (n, vec![*addr]))
                    }
                    EntryKind::ExternalName(_) => None,
                };
                targets.extend(target);
            }
        }
        // Without an address of its own (a server on loopback only), there is no name server to
        // name: NODATA, as CoreDNS answers.
        if targets.is_empty() && !self.config.ns_addresses.is_empty() {
            targets.extend(child(&["ns", "dns"], z).map(|n| (n, self.config.ns_addresses.clone())));
        }
        targets
    }

    /// NS at the apex, with glue; duplicate targets collapse, glue does not.
    fn ns(&self) -> Found {
        let ttl = self.ttl();
        let mut seen = HashSet::new();
        let (mut records, mut glue) = (Vec::new(), Vec::new());
        for (target, ips) in self.ns_targets() {
            if seen.insert(target.clone()) {
                records.push(rec(&self.zone_spelled, ttl, RData::NS(NS(target.clone()))));
            }
            glue.extend(ips.into_iter().map(|ip| address(&target, ttl, ip)));
        }
        if records.is_empty() {
            Found::NoData
        } else {
            Found::Records(records, glue)
        }
    }
}
