//! From request bytes to reply bytes: header and question checks, EDNS, the answer, and the size
//! limits with the truncation rules of spec §11 (records dropped from the end — additional
//! first, then authority, then answers — and TC set whenever anything was dropped).

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};

use crate::answer::{Answer, Reads, answer_reading};
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

/// The reply to `request` from the cluster zones alone, or `None` to drop it (not a query, or
/// too short to answer). Names outside the served zones are REFUSED.
pub fn respond(
    index: &Index,
    config: &Config,
    request: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    let req = match parse(request) {
        Parsed::Query(req) => req,
        Parsed::Reply(bytes) => return bytes,
    };
    let reply = match precheck(&req) {
        Some(reply) => reply,
        None => match cluster(index, config, &req) {
            Cluster::Answer(reply) | Cluster::FallsThrough(reply) => reply,
            Cluster::External { reply, .. } => reply,
            Cluster::NotServed => with_rcode(reply_to(&req), ResponseCode::Refused),
        },
    };
    encode(reply, &req, transport)
}

/// A request read off the wire.
#[derive(Debug)]
pub enum Parsed {
    Query(Message),
    /// Not a query to answer: this reply (FORMERR to bytes that do not parse but have a
    /// header), or nothing.
    Reply(Option<Vec<u8>>),
}

/// Reads `request`.
pub fn parse(request: &[u8]) -> Parsed {
    match Message::from_vec(request) {
        Ok(m) if m.metadata.message_type == MessageType::Query => Parsed::Query(m),
        Ok(_) => Parsed::Reply(None),
        Err(_) => Parsed::Reply(format_error(request)),
    }
}

/// The reply to a request no zone may see: an opcode other than QUERY (NOTIMP), an EDNS version
/// above 0 (BADVERS), not exactly one question (FORMERR), a class other than IN (REFUSED).
pub fn precheck(req: &Message) -> Option<Message> {
    let code = if req.metadata.op_code != OpCode::Query {
        ResponseCode::NotImp
    } else if req.edns.as_ref().is_some_and(|e| e.version() > 0) {
        ResponseCode::BADVERS
    } else if req.queries.len() != 1 {
        ResponseCode::FormErr
    } else if req.queries[0].query_class() != DNSClass::IN {
        ResponseCode::Refused
    } else {
        return None;
    };
    Some(with_rcode(reply_to(req), code))
}

/// An empty reply to `req`: its ID, opcode, RD and CD, its question.
pub fn reply_to(req: &Message) -> Message {
    let mut reply = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    reply.metadata = Metadata::response_from_request(&req.metadata);
    reply.queries = req.queries.clone();
    reply
}

/// `reply` with `code`.
pub fn with_rcode(mut reply: Message, code: ResponseCode) -> Message {
    reply.metadata.response_code = code;
    reply
}

/// What the cluster zones say to a (prechecked) request.
#[derive(Debug)]
pub enum Cluster {
    /// Not a name of the cluster zones.
    NotServed,
    /// The answer.
    Answer(Message),
    /// NXDOMAIN in a `fallthrough` zone: the next plugin may answer instead (this is the reply
    /// when none does).
    FallsThrough(Message),
    /// An ExternalName Service's CNAME to a name outside the zones, to be followed by the
    /// target's records of the asked type from the rest of the chain.
    External { reply: Message, target: Name },
}

/// The cluster zones' answer to `req`.
pub fn cluster(index: &Index, config: &Config, req: &Message) -> Cluster {
    cluster_reading(index, config, req).map_or(Cluster::NotServed, |(c, _)| c)
}

/// [`cluster`] with what the answer read of the index; `None` when no cluster zone holds the
/// name.
pub fn cluster_reading(index: &Index, config: &Config, req: &Message) -> Option<(Cluster, Reads)> {
    let q = &req.queries[0];
    let (a, reads) = answer_reading(index, config, q.name(), q.query_type())?;
    Some((cluster_of(config, req, a), reads))
}

fn cluster_of(config: &Config, req: &Message, a: Answer) -> Cluster {
    let q = &req.queries[0];
    let reply = reply_to(req);
    if a.rcode == ResponseCode::Refused {
        return Cluster::Answer(with_rcode(reply, ResponseCode::Refused));
    }
    let mut reply = with_rcode(reply, a.rcode);
    reply.metadata.authoritative = true;
    reply.answers = a.answers;
    reply.authorities = a.authority;
    reply.additionals = a.additionals;
    if a.rcode == ResponseCode::NXDomain && config.fallthrough.iter().any(|z| z.zone_of(q.name())) {
        return Cluster::FallsThrough(reply);
    }
    if let [only] = reply.answers.as_slice()
        && let hickory_proto::rr::RData::CNAME(target) = &only.data
        && matches!(q.query_type(), RecordType::A | RecordType::AAAA)
        && !config.zones.iter().any(|z| z.zone_of(&target.0))
    {
        let target = target.0.clone();
        return Cluster::External { reply, target };
    }
    Cluster::Answer(reply)
}

/// The wire form of `reply` to `req` within the size `req` may receive over `transport`, with
/// an OPT record when the request had one (its buffer size and DO bit echoed, as CoreDNS does).
pub fn encode(mut reply: Message, req: &Message, transport: Transport) -> Option<Vec<u8>> {
    reply.edns = req.edns.as_ref().map(|asked| {
        let mut edns = Edns::new();
        edns.set_max_payload(asked.max_payload().max(512));
        if asked.flags().dnssec_ok {
            edns.set_dnssec_ok(true);
        }
        edns
    });
    encode_within(reply, limit_of(req, transport))
}

/// The largest reply `request` may get over `transport`.
pub(crate) fn limit_of(request: &Message, transport: Transport) -> usize {
    limit_for(transport, request.edns.as_ref().map(Edns::max_payload))
}

/// The largest reply over `transport` to a request advertising `payload` (none: no EDNS).
pub(crate) fn limit_for(transport: Transport, payload: Option<u16>) -> usize {
    match transport {
        Transport::Tcp => TCP_LIMIT,
        Transport::Udp => usize::from(payload.unwrap_or(512).max(512)),
    }
}

/// A record type as miekg/dns names it (`TYPE65534` for one it does not know).
pub(crate) fn type_name(t: RecordType) -> String {
    match t {
        RecordType::Unknown(n) => format!("TYPE{n}"),
        known => known.to_string(),
    }
}

/// An rcode as miekg/dns names it (`RcodeToString`).
pub(crate) fn rcode_name(code: ResponseCode) -> String {
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
}
