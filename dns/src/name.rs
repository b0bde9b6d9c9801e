//! The name grammar of Kubernetes DNS (spec §1): what a query name below a served zone means.
//! Pure functions over lower-cased labels; no records, no cache.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What the labels left of a zone name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The zone apex itself.
    Apex,
    /// `svc.<zone>` or `pod.<zone>`: exists, holds no data.
    Base,
    /// `dns-version.<zone>` (a TXT name; any other type finds an invalid name).
    DnsVersion,
    /// `ns.dns.<zone>`: the name server's own name.
    NsDns,
    /// `<ns>.svc.<zone>` (`pods: false`) or `<ns>.pod.<zone>` (`pods: true`).
    Namespace { namespace: String, pods: bool },
    /// `<svc>.<ns>.svc.<zone>`.
    Service { namespace: String, service: String },
    /// `<endpoint>.<svc>.<ns>.svc.<zone>`.
    Endpoint {
        namespace: String,
        service: String,
        endpoint: String,
    },
    /// `_<port>._<proto>.<svc>.<ns>.svc.<zone>`, one leading `_` stripped from each; an empty
    /// label matches any.
    Port {
        namespace: String,
        service: String,
        port: String,
        protocol: String,
    },
    /// `<ip-label>.<ns>.pod.<zone>`; labels further left are ignored.
    Pod { namespace: String, ip_label: String },
    /// Anything else: the name does not exist.
    Invalid,
}

/// Parses the labels left of a zone, lower-cased, in name order (leftmost first).
pub fn parse(labels: &[&str]) -> Parsed {
    let n = labels.len();
    let owned = |i: usize| labels[i].to_string();
    match labels.last() {
        None => Parsed::Apex,
        Some(&"svc") => match n - 1 {
            0 => Parsed::Base,
            1 => Parsed::Namespace {
                namespace: owned(0),
                pods: false,
            },
            2 => Parsed::Service {
                namespace: owned(1),
                service: owned(0),
            },
            3 => Parsed::Endpoint {
                namespace: owned(2),
                service: owned(1),
                endpoint: owned(0),
            },
            4 => Parsed::Port {
                namespace: owned(3),
                service: owned(2),
                port: strip_underscore(labels[0]),
                protocol: strip_underscore(labels[1]),
            },
            _ => Parsed::Invalid,
        },
        Some(&"pod") => match n - 1 {
            0 => Parsed::Base,
            1 => Parsed::Namespace {
                namespace: owned(0),
                pods: true,
            },
            _ => Parsed::Pod {
                namespace: owned(n - 2),
                ip_label: owned(n - 3),
            },
        },
        Some(_) if labels == ["dns-version"] => Parsed::DnsVersion,
        Some(_) if labels == ["ns", "dns"] => Parsed::NsDns,
        Some(_) => Parsed::Invalid,
    }
}

fn strip_underscore(label: &str) -> String {
    label.strip_prefix('_').unwrap_or(label).to_string()
}

/// The address a whole reverse name stands for: four decimal labels under `in-addr.arpa`, or 32
/// nibbles under `ip6.arpa` (labels lower-cased, in name order, zone included).
pub fn reverse_address(labels: &[&str]) -> Option<IpAddr> {
    match labels {
        [d, c, b, a, "in-addr", "arpa"] => {
            let octet = |s: &str| {
                (!s.is_empty() && s.len() <= 3 && s.bytes().all(|c| c.is_ascii_digit()))
                    .then(|| s.parse::<u8>().ok())
                    .flatten()
            };
            Some(IpAddr::V4(Ipv4Addr::new(
                octet(a)?,
                octet(b)?,
                octet(c)?,
                octet(d)?,
            )))
        }
        [nibbles @ .., "ip6", "arpa"] if nibbles.len() == 32 => {
            let mut value: u128 = 0;
            for nibble in nibbles.iter().rev() {
                let [c] = nibble.as_bytes() else { return None };
                value = (value << 4) | u128::from((*c as char).to_digit(16)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(value)))
        }
        _ => None,
    }
}

/// The address a pod name's IP label stands for: with exactly three `-` and no `--` an IPv4
/// address, otherwise every `-` is a `:` (IPv6).
pub fn pod_address(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3 && !label.contains("--") {
        label
            .replace('-', ".")
            .parse::<Ipv4Addr>()
            .ok()
            .map(IpAddr::V4)
    } else {
        label
            .replace('-', ":")
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)
    }
}

/// The dashed form of an address used as an endpoint name: `10-1-0-3`, `5678-abcd--1`, and a
/// trailing `-` gets a `0` (`2001-db8--0`). Written on the stack: making one allocates nothing.
#[derive(Clone, Copy)]
pub struct Dashed {
    /// The longest address text (an IPv6 address with an embedded IPv4 one) is 45 bytes.
    bytes: [u8; 48],
    len: u8,
}

impl Dashed {
    pub fn new(ip: IpAddr) -> Dashed {
        use std::io::Write as _;
        let mut bytes = [0u8; 48];
        let free = {
            let mut rest = &mut bytes[..47];
            // An address's text always fits: it cannot fail.
            let _ = write!(rest, "{ip}");
            rest.len()
        };
        let mut len = 47 - free;
        for b in &mut bytes[..len] {
            if matches!(*b, b'.' | b':') {
                *b = b'-';
            }
        }
        if bytes[len - 1] == b'-' {
            bytes[len] = b'0';
            len += 1;
        }
        Dashed {
            bytes,
            len: len as u8,
        }
    }
}

impl std::ops::Deref for Dashed {
    type Target = str;
    fn deref(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).expect("an address's text is ASCII")
    }
}

impl std::fmt::Debug for Dashed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, s: &str) -> Parsed {
        Parsed::Service {
            namespace: ns.into(),
            service: s.into(),
        }
    }

    #[test]
    fn every_name_shape_of_the_grammar() {
        // (labels left of the zone, meaning)
        let rows: Vec<(&str, Parsed)> = vec![
            // the apex
            ("", Parsed::Apex),
            // `svc` and `pod` alone exist with no data
            ("svc", Parsed::Base),
            ("pod", Parsed::Base),
            // a last label other than svc/pod is invalid
            ("foo", Parsed::Invalid),
            ("foo.bar", Parsed::Invalid),
            // dns-version and ns.dns are special names
            ("dns-version", Parsed::DnsVersion),
            ("ns.dns", Parsed::NsDns),
            ("x.ns.dns", Parsed::Invalid),
            // namespace nodes
            (
                "testns.svc",
                Parsed::Namespace {
                    namespace: "testns".into(),
                    pods: false,
                },
            ),
            (
                "testns.pod",
                Parsed::Namespace {
                    namespace: "testns".into(),
                    pods: true,
                },
            ),
            // a service
            ("svc1.testns.svc", svc("testns", "svc1")),
            // an endpoint of a service
            (
                "ep1a.svc1.testns.svc",
                Parsed::Endpoint {
                    namespace: "testns".into(),
                    service: "svc1".into(),
                    endpoint: "ep1a".into(),
                },
            ),
            // port and protocol, with or without the leading underscores
            (
                "_http._tcp.svc1.testns.svc",
                Parsed::Port {
                    namespace: "testns".into(),
                    service: "svc1".into(),
                    port: "http".into(),
                    protocol: "tcp".into(),
                },
            ),
            (
                "http.tcp.svc1.testns.svc",
                Parsed::Port {
                    namespace: "testns".into(),
                    service: "svc1".into(),
                    port: "http".into(),
                    protocol: "tcp".into(),
                },
            ),
            // an empty label after stripping means any
            (
                "_._tcp.svc1.testns.svc",
                Parsed::Port {
                    namespace: "testns".into(),
                    service: "svc1".into(),
                    port: "".into(),
                    protocol: "tcp".into(),
                },
            ),
            // three or more labels left of the service: too long
            ("a.b.c.svc1.testns.svc", Parsed::Invalid),
            // wildcards are ordinary labels
            ("*.testns.svc", svc("testns", "*")),
            // pod names; extra labels to the left are ignored
            (
                "10-240-0-1.podns.pod",
                Parsed::Pod {
                    namespace: "podns".into(),
                    ip_label: "10-240-0-1".into(),
                },
            ),
            (
                "x.10-240-0-1.podns.pod",
                Parsed::Pod {
                    namespace: "podns".into(),
                    ip_label: "10-240-0-1".into(),
                },
            ),
        ];
        for (name, want) in rows {
            let labels: Vec<&str> = if name.is_empty() {
                vec![]
            } else {
                name.split('.').collect()
            };
            assert_eq!(parse(&labels), want, "{name:?}");
        }
    }

    #[test]
    fn reverse_names_decode_only_whole_addresses() {
        let labels = |s: &str| s.split('.').map(str::to_string).collect::<Vec<_>>();
        let rows = [
            ("100.1.168.192.in-addr.arpa", Some("192.168.1.100")),
            ("1.168.192.in-addr.arpa", None),
            ("300.1.168.192.in-addr.arpa", None),
            (
                "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa",
                Some("4321:0:1:2:3:4:567:89ab"),
            ),
            ("a.9.8.7.ip6.arpa", None),
            ("svc1.testns.svc.0.10.in-addr.arpa", None),
        ];
        for (name, want) in rows {
            let owned = labels(name);
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            assert_eq!(
                reverse_address(&refs),
                want.map(|w| w.parse().unwrap()),
                "{name}"
            );
        }
    }

    #[test]
    fn pod_labels_and_dashed_names_round_trip_the_spec_examples() {
        assert_eq!(
            pod_address("10-240-0-1"),
            Some("10.240.0.1".parse().unwrap())
        );
        assert_eq!(pod_address("fd00--1"), Some("fd00::1".parse().unwrap()));
        assert_eq!(pod_address("blah"), None);
        assert_eq!(pod_address("10-240-0"), None);
        assert_eq!(&*Dashed::new("10.1.0.3".parse().unwrap()), "10-1-0-3");
        assert_eq!(
            &*Dashed::new("5678:abcd::1".parse().unwrap()),
            "5678-abcd--1"
        );
        assert_eq!(&*Dashed::new("2001:db8::".parse().unwrap()), "2001-db8--0");
        assert_eq!(
            &*Dashed::new("::ffff:255.255.255.255".parse().unwrap()),
            "--ffff-255-255-255-255"
        );
    }
}
