//! The `hosts` directive: A, AAAA and PTR answers from a hosts file (re-read when its time or
//! size changes, every `reload`; a missing file serves nothing until it appears) and from
//! entries inline in the Corefile, as CoreDNS's `hosts` plugin gives them: names only within the
//! plugin's zones, `*.` wildcards matching one label, a PTR for every name of an address unless
//! `no_reverse`, and a name it does not know passed on only under `fallthrough` (SERVFAIL
//! otherwise, the plugin having no SOA to deny with).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use hickory_proto::op::Message;
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::message::reply_to;

/// What the `hosts` directive says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The hosts file (default `/etc/hosts`).
    pub file: PathBuf,
    /// Zones answered (the block's without).
    pub zones: Vec<Name>,
    /// Lines in hosts-file form written in the Corefile.
    pub inline: Vec<String>,
    pub ttl: u32,
    /// How often the file is checked for a change; zero: never.
    pub reload: Duration,
    /// No PTR answers.
    pub no_reverse: bool,
    /// Names of these zones (empty: all) that the plugin does not know pass on.
    pub fallthrough: Option<Vec<Name>>,
    /// Other query types of those zones pass on too.
    pub fallthrough_unsupported: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            file: PathBuf::from("/etc/hosts"),
            zones: vec![Name::root()],
            inline: Vec::new(),
            ttl: 3600,
            reload: Duration::from_secs(5),
            no_reverse: false,
            fallthrough: None,
            fallthrough_unsupported: false,
        }
    }
}

/// Names and addresses of one source (the file, or the inline entries).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Table {
    names: HashMap<String, Vec<IpAddr>>,
    /// `*.rest.` owner names.
    wild: HashMap<String, Vec<IpAddr>>,
    /// Names by address, for PTR.
    addrs: HashMap<IpAddr, Vec<String>>,
}

impl Table {
    /// The entries of `text` (hosts-file lines: an address, then names; `#` comments) whose
    /// names fall in `zones`.
    pub fn parse(text: &str, zones: &[Name], reverse: bool) -> Table {
        let mut table = Table::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut fields = line.split_whitespace();
            let Some(addr) = fields.next() else { continue };
            // An IPv6 zone index (`fe80::1%eth0`) is dropped, as Go's parser drops it.
            let Ok(addr) = addr.split('%').next().unwrap_or(addr).parse::<IpAddr>() else {
                continue;
            };
            // `::ffff:1.2.3.4` is an IPv4 address, as Go's To4 has it.
            let addr = addr.to_canonical();
            for field in fields {
                let name = normalise(field);
                let Ok(parsed) = Name::from_ascii(&name) else {
                    continue;
                };
                if !zones.iter().any(|z| z.zone_of(&parsed)) {
                    continue;
                }
                if name.starts_with("*.") {
                    table.wild.entry(name).or_default().push(addr);
                    continue;
                }
                table.names.entry(name.clone()).or_default().push(addr);
                if reverse {
                    table.addrs.entry(addr).or_default().push(name);
                }
            }
        }
        table
    }

    /// The addresses of one family (`v4`) for `name`: its own, else the wildcard's of that
    /// family, as CoreDNS keeps a map per family.
    fn lookup(&self, name: &str, v4: bool) -> Vec<IpAddr> {
        let of_family = |list: &Vec<IpAddr>| -> Vec<IpAddr> {
            list.iter()
                .copied()
                .filter(|ip| ip.is_ipv4() == v4)
                .collect()
        };
        let exact = self.names.get(name).map(of_family).unwrap_or_default();
        if !exact.is_empty() {
            return exact;
        }
        match name.split_once('.') {
            Some((_, rest)) if !rest.is_empty() => self
                .wild
                .get(&format!("*.{rest}"))
                .map(of_family)
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

/// Lower case, fully qualified.
fn normalise(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with('.') {
        lower
    } else {
        format!("{lower}.")
    }
}

/// What the plugin does with a question.
#[derive(Debug)]
pub enum Outcome {
    /// Not its to answer: the next plugin.
    Pass,
    Reply(Message),
    /// An unknown name without `fallthrough`: SERVFAIL, written by the server.
    Fail,
}

/// The running plugin: the inline entries and the file's, re-read when it changes.
#[derive(Debug)]
pub struct Hosts {
    pub settings: Settings,
    inline: Table,
    file: RwLock<(Table, Option<(SystemTime, u64)>)>,
}

impl Hosts {
    /// The plugin with the file read now (missing: nothing yet) and, with a reload interval,
    /// a task re-reading it that ends with the plugin.
    pub fn start(settings: Settings) -> Arc<Hosts> {
        let reverse = !settings.no_reverse;
        let hosts = Arc::new(Hosts {
            inline: Table::parse(&settings.inline.join("\n"), &settings.zones, reverse),
            file: RwLock::default(),
            settings,
        });
        hosts.reread();
        if !hosts.settings.reload.is_zero() {
            let weak = Arc::downgrade(&hosts);
            tokio::spawn(watch(weak, hosts.settings.reload));
        }
        hosts
    }

    /// Reads the file again if its modification time or size changed.
    pub fn reread(&self) {
        let stamp = std::fs::metadata(&self.settings.file)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if self.file.read().expect("hosts lock").1 == stamp {
            return;
        }
        // A file that cannot be read keeps what was read before, as CoreDNS's; bytes that are
        // not UTF-8 (a Latin-1 comment) do not hide the rest.
        let Ok(bytes) = std::fs::read(&self.settings.file) else {
            return;
        };
        let text = String::from_utf8_lossy(&bytes);
        let table = Table::parse(&text, &self.settings.zones, !self.settings.no_reverse);
        *self.file.write().expect("hosts lock") = (table, stamp);
    }

    /// The plugin's answer to `req`.
    pub fn answer(&self, req: &Message) -> Outcome {
        let q = &req.queries[0];
        let qname = q.name().to_ascii().to_ascii_lowercase();
        let in_zones = self.settings.zones.iter().any(|z| z.zone_of(q.name()));
        if !in_zones && q.query_type() != RecordType::PTR {
            return Outcome::Pass;
        }
        let file = self.file.read().expect("hosts lock");
        let addresses = |name: &str, v4: bool| {
            let mut all = file.0.lookup(name, v4);
            all.extend(self.inline.lookup(name, v4));
            all
        };
        let falls = |name: &Name| {
            self.settings
                .fallthrough
                .as_ref()
                .is_some_and(|zones| zones.is_empty() || zones.iter().any(|z| z.zone_of(name)))
        };
        let ttl = self.settings.ttl;
        let answers: Vec<Record> = match q.query_type() {
            RecordType::PTR => {
                let lower = q.name().to_ascii().to_ascii_lowercase();
                let labels: Vec<&str> = lower.trim_end_matches('.').split('.').collect();
                let Some(addr) = crate::name::reverse_address(&labels) else {
                    return Outcome::Pass;
                };
                let mut names = file.0.addrs.get(&addr).cloned().unwrap_or_default();
                names.extend(self.inline.addrs.get(&addr).cloned().unwrap_or_default());
                if names.is_empty() {
                    return Outcome::Pass;
                }
                names
                    .iter()
                    .filter_map(|n| Name::from_ascii(n).ok())
                    .map(|n| Record::from_rdata(q.name().clone(), ttl, RData::PTR(PTR(n))))
                    .collect()
            }
            RecordType::A | RecordType::AAAA => addresses(&qname, q.query_type() == RecordType::A)
                .into_iter()
                .map(|ip| match ip {
                    IpAddr::V4(v4) => RData::A(A(v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                })
                .map(|data| Record::from_rdata(q.name().clone(), ttl, data))
                .collect(),
            _ => {
                if self.settings.fallthrough_unsupported && falls(q.name()) {
                    return Outcome::Pass;
                }
                Vec::new()
            }
        };
        if answers.is_empty()
            && addresses(&qname, true).is_empty()
            && addresses(&qname, false).is_empty()
        {
            return if falls(q.name()) {
                Outcome::Pass
            } else {
                Outcome::Fail
            };
        }
        let mut reply = reply_to(req);
        reply.metadata.authoritative = true;
        reply.answers = answers;
        Outcome::Reply(reply)
    }
}

/// Re-reads the file every `every` while the plugin lives.
async fn watch(hosts: Weak<Hosts>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(hosts) = hosts.upgrade() else { return };
        // File reads are quick but blocking: off the query threads.
        let _ = tokio::task::spawn_blocking(move || hosts.reread()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};

    fn ask(hosts: &Hosts, name: &str, qtype: RecordType) -> Outcome {
        let mut m = Message::new(1, MessageType::Query, OpCode::Query);
        m.queries
            .push(Query::query(Name::from_ascii(name).unwrap(), qtype));
        hosts.answer(&m)
    }

    fn hosts(settings: Settings) -> Hosts {
        let reverse = !settings.no_reverse;
        Hosts {
            inline: Table::parse(&settings.inline.join("\n"), &settings.zones, reverse),
            file: RwLock::default(),
            settings,
        }
    }

    fn answers(outcome: Outcome) -> Vec<String> {
        match outcome {
            Outcome::Reply(m) => m.answers.iter().map(|r| r.data.to_string()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_wildcards_and_reverse_names_are_answered_as_coredns_answers_them() {
        let h = hosts(Settings {
            inline: vec![
                "10.0.0.1 node-a node-a.example.  # a comment".into(),
                "fd00::1 node-a".into(),
                "10.0.0.9 *.apps.example".into(),
                "not-an-address ignored".into(),
            ],
            ..Settings::default()
        });
        assert_eq!(answers(ask(&h, "NODE-A.", RecordType::A)), ["10.0.0.1"]);
        assert_eq!(answers(ask(&h, "node-a.", RecordType::AAAA)), ["fd00::1"]);
        assert_eq!(
            answers(ask(&h, "x.apps.example.", RecordType::A)),
            ["10.0.0.9"]
        );
        // A name it knows, asked another type: NOERROR without records.
        assert!(answers(ask(&h, "node-a.", RecordType::MX)).is_empty());
        assert_eq!(
            answers(ask(&h, "1.0.0.10.in-addr.arpa.", RecordType::PTR)),
            ["node-a.", "node-a.example."]
        );
        // Unknown: SERVFAIL without fallthrough; an unknown address passes on.
        assert!(matches!(ask(&h, "other.", RecordType::A), Outcome::Fail));
        assert!(matches!(
            ask(&h, "2.0.0.10.in-addr.arpa.", RecordType::PTR),
            Outcome::Pass
        ));
        assert!(ignored("ignored.", &h));
    }

    #[test]
    fn each_family_falls_back_to_its_own_wildcard_and_mapped_v4_addresses_are_v4() {
        let h = hosts(Settings {
            inline: vec![
                "fd00::1 a.example".into(),
                "10.0.0.9 *.example".into(),
                "::ffff:10.0.0.7 mapped.test".into(),
            ],
            ..Settings::default()
        });
        // CoreDNS keeps a map per family: a.example has no IPv4 of its own, so the wildcard's.
        assert_eq!(answers(ask(&h, "a.example.", RecordType::A)), ["10.0.0.9"]);
        assert_eq!(
            answers(ask(&h, "a.example.", RecordType::AAAA)),
            ["fd00::1"]
        );
        assert_eq!(
            answers(ask(&h, "mapped.test.", RecordType::A)),
            ["10.0.0.7"]
        );
        assert_eq!(
            answers(ask(&h, "7.0.0.10.in-addr.arpa.", RecordType::PTR)),
            ["mapped.test."]
        );
    }

    #[test]
    fn a_file_that_goes_away_keeps_its_entries_and_bytes_that_are_not_utf8_hide_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, b"# caf\xe9\n10.0.0.1 node-a\n").unwrap();
        let h = hosts(Settings {
            file: path.clone(),
            ..Settings::default()
        });
        h.reread();
        assert_eq!(answers(ask(&h, "node-a.", RecordType::A)), ["10.0.0.1"]);
        std::fs::remove_file(&path).unwrap();
        h.reread();
        assert_eq!(answers(ask(&h, "node-a.", RecordType::A)), ["10.0.0.1"]);
    }

    fn ignored(name: &str, h: &Hosts) -> bool {
        matches!(ask(h, name, RecordType::A), Outcome::Fail)
    }

    #[test]
    fn zones_fallthrough_and_no_reverse_limit_what_is_answered() {
        let h = hosts(Settings {
            zones: vec![Name::from_ascii("example.").unwrap()],
            inline: vec!["10.0.0.1 a.example other.test".into()],
            fallthrough: Some(vec![]),
            no_reverse: true,
            ..Settings::default()
        });
        // Outside the zones: not its question.
        assert!(matches!(
            ask(&h, "other.test.", RecordType::A),
            Outcome::Pass
        ));
        // Unknown in the zones, with fallthrough: passed on.
        assert!(matches!(
            ask(&h, "b.example.", RecordType::A),
            Outcome::Pass
        ));
        assert!(matches!(
            ask(&h, "1.0.0.10.in-addr.arpa.", RecordType::PTR),
            Outcome::Pass
        ));
        assert_eq!(answers(ask(&h, "a.example.", RecordType::A)), ["10.0.0.1"]);
    }
}
