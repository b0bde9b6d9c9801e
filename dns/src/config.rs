//! What the DNS server answers for: zones and the options of the CoreDNS `kubernetes` plugin.

use std::collections::BTreeSet;
use std::net::IpAddr;

use hickory_proto::rr::Name;

use crate::{Error, Result};

/// `pods` mode (spec §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodsMode {
    /// No pod records (CoreDNS's default).
    #[default]
    Disabled,
    /// Any IP label in an existing namespace answers (kube-dns compatible).
    Insecure,
    /// Only the primary IP of a live pod in that namespace answers.
    Verified,
}

impl std::str::FromStr for PodsMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "disabled" => Ok(PodsMode::Disabled),
            "insecure" => Ok(PodsMode::Insecure),
            "verified" => Ok(PodsMode::Verified),
            other => Err(format!(
                "{other:?} is not a pods mode; use disabled, insecure or verified"
            )),
        }
    }
}

/// The answering configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Served zones, lower-case, fully qualified; forward and reverse.
    pub zones: Vec<Name>,
    /// TTL of every synthesised record (0..=3600).
    pub ttl: u32,
    pub pods: PodsMode,
    pub endpoint_pod_names: bool,
    pub ignore_empty_service: bool,
    pub noendpoints: bool,
    /// Exposed namespaces; `None` exposes all.
    pub namespaces: Option<BTreeSet<String>>,
    /// Zones whose NXDOMAIN answers go to the next resolver once forwarding exists.
    pub fallthrough: Vec<Name>,
    /// The server's own addresses, for NS records and `ns.dns.<zone>`.
    pub ns_addresses: Vec<IpAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            zones: vec![Name::from_ascii("cluster.local.").expect("a valid name")],
            ttl: 5,
            pods: PodsMode::Disabled,
            endpoint_pod_names: false,
            ignore_empty_service: false,
            noendpoints: false,
            namespaces: None,
            fallthrough: Vec::new(),
            ns_addresses: Vec::new(),
        }
    }
}

/// True for names under `in-addr.arpa` or `ip6.arpa` (checked on every query: no allocation).
pub fn is_reverse(zone: &Name) -> bool {
    let mut labels = zone.iter().rev();
    labels
        .next()
        .is_some_and(|l| l.eq_ignore_ascii_case(b"arpa"))
        && labels
            .next()
            .is_some_and(|l| l.eq_ignore_ascii_case(b"in-addr") || l.eq_ignore_ascii_case(b"ip6"))
}

/// Parses a zone given on the command line (`cluster.local`, `in-addr.arpa.`).
pub fn parse_zone(text: &str) -> Result<Name> {
    let mut name = Name::from_ascii(text.trim()).map_err(|e| Error::Config {
        flag: "--zone".into(),
        message: format!("{text:?} is not a domain name ({e})"),
    })?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

impl Config {
    /// Checks the option values.
    pub fn validate(&self) -> Result<()> {
        if self.ttl > 3600 {
            return Err(Error::Config {
                flag: "--ttl".into(),
                message: format!("{} is out of range; use 0 to 3600", self.ttl),
            });
        }
        if self.primary_zone().is_none() {
            return Err(Error::Config {
                flag: "--zone".into(),
                message: "at least one zone must be a forward zone such as cluster.local".into(),
            });
        }
        Ok(())
    }

    /// The first forward zone: PTR targets are written under it.
    pub fn primary_zone(&self) -> Option<&Name> {
        self.zones.iter().find(|z| !is_reverse(z))
    }

    /// A namespace is exposed when no list is configured or the list holds it.
    pub fn exposes(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|list| list.contains(namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_zones_are_recognised_by_their_last_two_labels() {
        // (zone, reverse?)
        let rows = [
            ("in-addr.arpa.", true),
            ("0.10.IN-ADDR.arpa.", true),
            ("ip6.arpa.", true),
            ("cluster.local.", false),
            ("arpa.", false),
            ("in-addr.arpa.example.", false),
        ];
        for (zone, want) in rows {
            assert_eq!(is_reverse(&Name::from_ascii(zone).unwrap()), want, "{zone}");
        }
    }

    #[test]
    fn bad_option_values_name_the_flag() {
        let config = Config {
            ttl: 3601,
            ..Config::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "--ttl: 3601 is out of range; use 0 to 3600"
        );
        let config = Config {
            zones: vec![parse_zone("in-addr.arpa").unwrap()],
            ..Config::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("--zone: at least one zone must be a forward zone")
        );
        assert!(parse_zone("bad..zone").is_err());
    }
}
