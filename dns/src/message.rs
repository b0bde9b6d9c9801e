//! From request bytes to reply bytes: header and question checks, EDNS, the answer, and the size
//! limits with the truncation rules of spec §11 (records dropped from the end — additional
//! first, then authority, then answers — and TC set whenever anything was dropped).

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record};

use crate::answer::answer;
use crate::config::Config;
use crate::index::Index;

/// How a request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Largest reply over TCP.
const TCP_LIMIT: usize = 65535;
/// The EDNS buffer size this server advertises.
const OUR_PAYLOAD: u16 = 1232;

/// The reply to `request`, or `None` to drop it (not a query, or too short to answer). Names
/// outside the served zones are REFUSED.
pub fn respond(
    index: &Index,
    config: &Config,
    request: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    match handle(index, config, request, transport, &|_| false) {
        Handled::Reply(bytes) => bytes,
        Handled::Forward(req) => encode_within(refused(&req), limit_of(&req, transport)),
    }
}

/// What to do with a request.
#[derive(Debug)]
pub enum Handled {
    /// This reply, or nothing (`None`: drop the request).
    Reply(Option<Vec<u8>>),
    /// A name the cluster zones do not answer (or pass on with `fallthrough`): send it upstream.
    Forward(Box<Message>),
}

/// Answers `request` from the cluster zones, or hands it on when `forwards` takes its name
/// and the zones have no answer (not served, or NXDOMAIN in a `fallthrough` zone).
pub fn handle(
    index: &Index,
    config: &Config,
    request: &[u8],
    transport: Transport,
    forwards: &dyn Fn(&hickory_proto::rr::Name) -> bool,
) -> Handled {
    let req = match Message::from_vec(request) {
        Ok(m) => m,
        Err(_) => return Handled::Reply(format_error(request)),
    };
    if req.metadata.message_type != MessageType::Query {
        return Handled::Reply(None);
    }
    let mut reply = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    reply.metadata = Metadata::response_from_request(&req.metadata);
    reply.queries = req.queries.clone();
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(OUR_PAYLOAD);
        reply.edns = Some(edns);
    }
    let limit = limit_of(&req, transport);
    let rcode = |mut m: Message, code: ResponseCode| {
        m.metadata.response_code = code;
        m
    };
    let reply = if req.metadata.op_code != OpCode::Query {
        rcode(reply, ResponseCode::NotImp)
    } else if req.edns.as_ref().is_some_and(|e| e.version() > 0) {
        rcode(reply, ResponseCode::BADVERS)
    } else if req.queries.len() != 1 {
        rcode(reply, ResponseCode::FormErr)
    } else if req.queries[0].query_class() != DNSClass::IN {
        rcode(reply, ResponseCode::Refused)
    } else {
        let q = &req.queries[0];
        let falls_through = |rcode: ResponseCode| {
            rcode == ResponseCode::NXDomain
                && config.fallthrough.iter().any(|z| z.zone_of(q.name()))
        };
        match answer(index, config, q.name(), q.query_type()) {
            None if forwards(q.name()) => return Handled::Forward(Box::new(req)),
            Some(a) if falls_through(a.rcode) && forwards(q.name()) => {
                return Handled::Forward(Box::new(req));
            }
            // Not a served zone, and nothing to forward to.
            None => rcode(reply, ResponseCode::Refused),
            Some(a) if a.rcode == ResponseCode::Refused => rcode(reply, ResponseCode::Refused),
            Some(a) => {
                let mut reply = rcode(reply, a.rcode);
                reply.metadata.authoritative = true;
                reply.answers = a.answers;
                reply.authorities = a.authority;
                reply.additionals = a.additionals;
                reply
            }
        }
    };
    Handled::Reply(encode_within(reply, limit))
}

/// The largest reply `request` may get over `transport`.
pub(crate) fn limit_of(request: &Message, transport: Transport) -> usize {
    match transport {
        Transport::Tcp => TCP_LIMIT,
        Transport::Udp => usize::from(request.max_payload()),
    }
}

/// A REFUSED reply to `request`.
fn refused(request: &Message) -> Message {
    let mut reply = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    reply.metadata = Metadata::response_from_request(&request.metadata);
    reply.metadata.response_code = ResponseCode::Refused;
    reply.queries = request.queries.clone();
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(OUR_PAYLOAD);
        reply.edns = Some(edns);
    }
    reply
}

/// The line CoreDNS's `log` plugin writes for one query in its default (`{common}`) format:
/// `[INFO] 127.0.0.1:52734 - 43307 "A IN example.org. udp 40 false 512" NOERROR qr,aa,rd 106
/// 0.000154s`. None for a request that does not parse or has no question.
pub fn log_line(
    request: &[u8],
    reply: &[u8],
    peer: std::net::SocketAddr,
    transport: Transport,
    took: std::time::Duration,
) -> Option<String> {
    let req = Message::from_vec(request).ok()?;
    let q = req.queries.first()?;
    let (dnssec_ok, bufsize) = match &req.edns {
        Some(edns) => (edns.flags().dnssec_ok, edns.max_payload().max(512)),
        None => (false, 512),
    };
    let (rcode, flags) = match Message::from_vec(reply) {
        Ok(r) => {
            let m = &r.metadata;
            let flags: Vec<&str> = [
                (m.message_type == MessageType::Response, "qr"),
                (m.authoritative, "aa"),
                (m.truncation, "tc"),
                (m.recursion_desired, "rd"),
                (m.recursion_available, "ra"),
                (m.authentic_data, "ad"),
                (m.checking_disabled, "cd"),
            ]
            .into_iter()
            .filter_map(|(set, name)| set.then_some(name))
            .collect();
            (rcode_name(r.metadata.response_code), flags.join(","))
        }
        Err(_) => ("-".to_string(), "-".to_string()),
    };
    let proto = match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    };
    Some(format!(
        "[INFO] {peer} - {id} \"{qtype} {class} {name} {proto} {size} {dnssec_ok} {bufsize}\" {rcode} {flags} {rsize} {secs}s",
        id = req.metadata.id,
        qtype = q.query_type(),
        class = q.query_class(),
        name = q.name(),
        size = request.len(),
        rsize = reply.len(),
        secs = took.as_secs_f64(),
    ))
}

/// An rcode as miekg/dns names it (`RcodeToString`).
fn rcode_name(code: ResponseCode) -> String {
    let value = u16::from(code);
    let name = match value {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADVERS",
        _ => return value.to_string(),
    };
    name.to_string()
}

/// A FORMERR reply to bytes that do not parse, when at least the header can be read.
fn format_error(request: &[u8]) -> Option<Vec<u8>> {
    if request.len() < 12 || request[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([request[0], request[1]]);
    let op_code = OpCode::from_u8((request[2] >> 3) & 0x0f);
    let mut reply = Message::new(id, MessageType::Response, op_code);
    reply.metadata.response_code = ResponseCode::FormErr;
    reply.to_vec().ok()
}

/// Encodes `reply` within `limit` bytes, dropping records from the end (additional, then
/// authority, then answers) and setting TC when anything is dropped. The OPT record stays.
pub(crate) fn encode_within(mut reply: Message, limit: usize) -> Option<Vec<u8>> {
    let full = reply.to_vec().ok()?;
    if full.len() <= limit {
        return Some(full);
    }
    let answers = std::mem::take(&mut reply.answers);
    let authorities = std::mem::take(&mut reply.authorities);
    let additionals = std::mem::take(&mut reply.additionals);
    let all: Vec<(u8, Record)> = answers
        .into_iter()
        .map(|r| (0, r))
        .chain(authorities.into_iter().map(|r| (1, r)))
        .chain(additionals.into_iter().map(|r| (2, r)))
        .collect();
    reply.metadata.truncation = true;
    let with = |keep: usize| {
        let mut m = reply.clone();
        for (section, r) in all.iter().take(keep) {
            match section {
                0 => m.answers.push(r.clone()),
                1 => m.authorities.push(r.clone()),
                _ => m.additionals.push(r.clone()),
            }
        }
        m.to_vec().ok()
    };
    let fits = |keep: usize| with(keep).filter(|b| b.len() <= limit);
    // The largest prefix of the records that fits (the whole does not).
    let (mut lo, mut hi) = (0usize, all.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid).is_some() {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    if let Some(bytes) = fits(lo) {
        return Some(bytes);
    }
    // Not even the header and questions fit (several long ones, no EDNS): the header alone,
    // with TC, so the client asks again over TCP.
    let mut bare = reply;
    bare.queries.clear();
    bare.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};

    fn query_with(questions: usize) -> Message {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        for i in 0..questions {
            let label = format!("{}{i}", "q".repeat(60));
            let name = Name::from_ascii(format!("{label}.{label}.example.")).unwrap();
            m.queries.push(Query::query(name, RecordType::A));
        }
        m
    }

    #[test]
    fn a_reply_of_questions_alone_too_long_keeps_only_the_header_with_tc() {
        let bytes = encode_within(query_with(4), 512).expect("encoded");
        assert!(bytes.len() <= 512, "{}", bytes.len());
        let reply = Message::from_vec(&bytes).unwrap();
        assert!(reply.metadata.truncation);
        assert!(reply.queries.is_empty());
        assert_eq!(reply.metadata.id, 7);
    }

    #[test]
    fn a_reply_that_fits_is_left_whole() {
        let message = query_with(1);
        let whole = message.to_vec().unwrap();
        assert_eq!(encode_within(message, 512), Some(whole));
    }

    #[test]
    fn a_query_is_logged_in_coredns_common_format() {
        let mut request = Message::new(43307, MessageType::Query, OpCode::Query);
        request.metadata.recursion_desired = true;
        request.queries.push(Query::query(
            Name::from_ascii("example.org.").unwrap(),
            RecordType::A,
        ));
        let bytes = request.to_vec().unwrap();
        let mut reply = Message::new(43307, MessageType::Response, OpCode::Query);
        reply.metadata.authoritative = true;
        reply.metadata.recursion_desired = true;
        reply.queries = request.queries.clone();
        let reply = reply.to_vec().unwrap();
        let line = log_line(
            &bytes,
            &reply,
            "127.0.0.1:52734".parse().unwrap(),
            Transport::Udp,
            std::time::Duration::from_micros(154),
        )
        .unwrap();
        assert_eq!(
            line,
            format!(
                "[INFO] 127.0.0.1:52734 - 43307 \"A IN example.org. udp {} false 512\" NOERROR qr,aa,rd {} 0.000154s",
                bytes.len(),
                reply.len()
            )
        );
    }
}
