//! The `log` directive: which queries are logged (the names in scope, the classes of reply —
//! success, denial, error — asked for) and the line each gets, from a format with CoreDNS's
//! placeholders (`{remote}`, `{port}`, `{local}`, `{type}`, `{class}`, `{name}`, `{proto}`,
//! `{size}`, `{>id}`, `{>opcode}`, `{>do}`, `{>bufsize}`, `{rcode}`, `{>rflags}`, `{rsize}`,
//! `{duration}`; `{common}` and `{combined}` expanded; metadata `{/label}` as `-`; anything else
//! kept as written). Pure.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use crate::message::{Transport, limit_of, rcode_name, type_name};

/// CoreDNS's `{common}` format, the default.
pub const COMMON: &str = "{remote}:{port} - {>id} \"{type} {class} {name} {proto} {size} {>do} {>bufsize}\" {rcode} {>rflags} {rsize} {duration}";
/// CoreDNS's `{combined}` format.
pub const COMBINED: &str = "{remote}:{port} - {>id} \"{type} {class} {name} {proto} {size} {>do} {>bufsize}\" {rcode} {>rflags} {rsize} {duration} \"{>opcode}\"";

/// A reply's class, as `class` filters them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Success,
    Denial,
    Error,
}

/// One `log` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Names at and below this are logged.
    pub scope: Name,
    /// The line's format, `{common}` and `{combined}` expanded.
    pub format: String,
    /// The classes logged; empty: all.
    pub classes: Vec<Class>,
}

impl Rule {
    /// A rule for `scope` with `format` (`{common}`/`{combined}` expanded) and `classes`.
    pub fn new(scope: Name, format: &str, classes: Vec<Class>) -> Rule {
        Rule {
            scope,
            format: format
                .replace("{common}", COMMON)
                .replace("{combined}", COMBINED),
            classes,
        }
    }

    /// Whether a reply of `class` is logged.
    pub fn logs(&self, class: Class) -> bool {
        self.classes.is_empty() || self.classes.contains(&class)
    }
}

/// The rule that decides for `name`: the first whose scope holds it, as CoreDNS takes them.
pub fn rule_for<'a>(rules: &'a [Rule], name: &Name) -> Option<&'a Rule> {
    rules.iter().find(|r| r.scope.zone_of(name))
}

/// CoreDNS's class of a reply (`response.Typify`, then `Classify`).
pub fn class_of(reply: &Message) -> Class {
    let rcode = reply.metadata.response_code;
    let has_soa = reply
        .authorities
        .iter()
        .any(|r| r.record_type() == RecordType::SOA);
    match rcode {
        ResponseCode::NoError if !reply.answers.is_empty() => Class::Success,
        ResponseCode::NoError if has_soa => Class::Denial,
        ResponseCode::NXDomain if reply.answers.is_empty() => Class::Denial,
        ResponseCode::NoError => Class::Success,
        _ => Class::Error,
    }
}

/// What a line is made of.
#[derive(Debug)]
pub struct Entry<'a> {
    pub request: &'a Message,
    pub size: usize,
    pub reply: &'a Message,
    pub reply_size: usize,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub transport: Transport,
    pub took: Duration,
}

/// The line for `entry` in `format`.
pub fn render(format: &str, entry: &Entry<'_>) -> String {
    let mut out = String::new();
    let mut rest = format;
    // As CoreDNS's replacer: find a `}`, then the last `{` before it.
    while let Some(j) = rest.find('}') {
        let Some(i) = rest[..j].rfind('{') else {
            out.push_str(&rest[..=j]);
            rest = &rest[j + 1..];
            continue;
        };
        let label = &rest[i..=j];
        match value(label, entry) {
            Some(v) => {
                out.push_str(&rest[..i]);
                out.push_str(&v);
            }
            None if label.starts_with("{/") => {
                out.push_str(&rest[..i]);
                out.push('-');
            }
            None => out.push_str(&rest[..=j]),
        }
        rest = &rest[j + 1..];
    }
    out.push_str(rest);
    out
}

fn value(label: &str, e: &Entry<'_>) -> Option<String> {
    let q = e.request.queries.first();
    let edns = e.request.edns.as_ref();
    // Placeholders are matched as written, as CoreDNS's replacer matches them.
    Some(match label {
        "{remote}" => bracketed(e.peer),
        "{port}" => e.peer.port().to_string(),
        "{local}" => bracketed(e.local),
        "{type}" => q.map_or("-".into(), |q| type_name(q.query_type())),
        "{class}" => q.map_or("-".into(), |q| q.query_class().to_string()),
        // CoreDNS's state.Name(): lower-cased.
        "{name}" => q.map_or("-".into(), |q| q.name().to_lowercase().to_string()),
        "{proto}" => match e.transport {
            Transport::Udp => "udp".into(),
            Transport::Tcp => "tcp".into(),
        },
        "{size}" => e.size.to_string(),
        "{>id}" => e.request.metadata.id.to_string(),
        "{>opcode}" => u8::from(e.request.metadata.op_code).to_string(),
        "{>do}" => edns.is_some_and(|e| e.flags().dnssec_ok).to_string(),
        // The size the client may receive: its EDNS buffer (512 without), 64K over TCP.
        "{>bufsize}" => limit_of(e.request, e.transport).to_string(),
        "{rcode}" => rcode_name(e.reply.metadata.response_code),
        "{>rflags}" => flags(e.reply),
        "{rsize}" => e.reply_size.to_string(),
        "{duration}" => format!("{}s", e.took.as_secs_f64()),
        _ => return None,
    })
}

/// An address as RFC 3986 writes a host: IPv6 in brackets.
fn bracketed(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    }
}

/// The reply's header flags as miekg names them, comma-separated (`-` for none).
fn flags(reply: &Message) -> String {
    let m = &reply.metadata;
    let set: Vec<&str> = [
        (m.message_type == MessageType::Response, "qr"),
        (m.authoritative, "aa"),
        (m.truncation, "tc"),
        (m.recursion_desired, "rd"),
        (m.recursion_available, "ra"),
        (m.authentic_data, "ad"),
        (m.checking_disabled, "cd"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if set.is_empty() {
        "-".into()
    } else {
        set.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, OpCode, Query};

    fn request() -> Message {
        let mut request = Message::new(43307, MessageType::Query, OpCode::Query);
        request.metadata.recursion_desired = true;
        request.queries.push(Query::query(
            Name::from_ascii("example.org.").unwrap(),
            RecordType::A,
        ));
        request
    }

    fn reply(request: &Message) -> Message {
        let mut reply = Message::new(43307, MessageType::Response, OpCode::Query);
        reply.metadata.authoritative = true;
        reply.metadata.recursion_desired = true;
        reply.queries = request.queries.clone();
        reply
    }

    fn entry<'a>(request: &'a Message, reply: &'a Message, transport: Transport) -> Entry<'a> {
        Entry {
            request,
            size: 40,
            reply,
            reply_size: 106,
            peer: "127.0.0.1:52734".parse().unwrap(),
            local: "[::1]:53".parse().unwrap(),
            transport,
            took: Duration::from_micros(154),
        }
    }

    #[test]
    fn the_common_format_is_coredns_own() {
        let (request, reply) = (request(), reply(&request()));
        assert_eq!(
            render(COMMON, &entry(&request, &reply, Transport::Udp)),
            "127.0.0.1:52734 - 43307 \"A IN example.org. udp 40 false 512\" NOERROR qr,aa,rd 106 0.000154s"
        );
        // Over TCP the client may receive 64K.
        assert!(
            render(COMMON, &entry(&request, &reply, Transport::Tcp)).contains(" false 65535\"")
        );
    }

    #[test]
    fn a_custom_format_keeps_literals_unknown_labels_and_blanks_metadata() {
        let mut request = request();
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.set_dnssec_ok(true);
        request.edns = Some(edns);
        let reply = reply(&request);
        let rule = Rule::new(
            Name::root(),
            "{local} {>do} {>bufsize} {/kubernetes/namespace} {nope} } {combined}",
            vec![],
        );
        assert_eq!(
            render(&rule.format, &entry(&request, &reply, Transport::Udp)),
            "[::1] true 1232 - {nope} } 127.0.0.1:52734 - 43307 \"A IN example.org. udp 40 true 1232\" NOERROR qr,aa,rd 106 0.000154s \"0\""
        );
    }

    #[test]
    fn placeholders_match_as_written_and_name_and_type_are_as_coredns_writes_them() {
        let mut request = request();
        request.queries[0] = Query::query(
            Name::from_ascii("WWW.Example.ORG.").unwrap(),
            RecordType::Unknown(65534),
        );
        let reply = reply(&request);
        assert_eq!(
            render(
                "{name} {type} {NAME}",
                &entry(&request, &reply, Transport::Udp)
            ),
            "www.example.org. TYPE65534 {NAME}"
        );
    }

    #[test]
    fn replies_are_classed_as_coredns_classes_them() {
        let request = request();
        let mut nx = reply(&request);
        nx.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(class_of(&nx), Class::Denial);
        let mut fail = reply(&request);
        fail.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(class_of(&fail), Class::Error);
        assert_eq!(class_of(&reply(&request)), Class::Success);
        let rule = Rule::new(Name::root(), COMMON, vec![Class::Denial, Class::Error]);
        assert!(rule.logs(Class::Error) && !rule.logs(Class::Success));
    }

    #[test]
    fn the_first_rule_whose_scope_holds_the_name_decides() {
        let rules = [
            Rule::new(
                Name::from_ascii("example.org.").unwrap(),
                COMMON,
                vec![Class::Error],
            ),
            Rule::new(Name::root(), COMMON, vec![]),
        ];
        let org = Name::from_ascii("www.example.org.").unwrap();
        assert_eq!(rule_for(&rules, &org).unwrap().classes, [Class::Error]);
        let net = Name::from_ascii("www.example.net.").unwrap();
        assert!(rule_for(&rules, &net).unwrap().classes.is_empty());
    }
}
