//! Asking two DNS servers the same question and comparing their replies: a query sent as a
//! client without EDNS, with EDNS 512 or 1232 over UDP, or over TCP; the reply normalised to
//! rcode, AA, TC, RA, each section as a set of records (the SOA serial left out) and the OPT
//! record's presence, version and DO bit.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// How a question is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP, no OPT record: replies are limited to 512 bytes.
    Udp,
    /// UDP with EDNS, advertising a 512-byte buffer.
    Udp512,
    /// UDP with EDNS, advertising a 1232-byte buffer (the DNS flag day's value).
    Udp1232,
    /// TCP, no OPT record.
    Tcp,
}

/// Every way a row is asked.
pub const TRANSPORTS: [Transport; 4] = [
    Transport::Udp,
    Transport::Udp512,
    Transport::Udp1232,
    Transport::Tcp,
];

/// One question.
#[derive(Debug, Clone)]
pub struct Question {
    pub name: String,
    pub qtype: RecordType,
    pub class: DNSClass,
}

impl Question {
    pub fn new(name: &str, qtype: RecordType) -> Question {
        Question {
            name: name.to_string(),
            qtype,
            class: DNSClass::IN,
        }
    }

    pub fn class(mut self, class: DNSClass) -> Question {
        self.class = class;
        self
    }
}

impl fmt::Display for Question {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.name, self.class, self.qtype)
    }
}

/// A reply reduced to what two servers must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub rcode: String,
    pub aa: bool,
    pub tc: bool,
    pub ra: bool,
    pub answer: BTreeSet<String>,
    pub authority: BTreeSet<String>,
    pub additional: BTreeSet<String>,
    /// `version N do=B` of the OPT record, if any.
    pub opt: Option<String>,
}

impl Reply {
    /// The header facts alone (for truncated UDP replies, whose surviving records depend on
    /// each server's record order).
    pub fn header(&self) -> (String, bool, bool, bool, Option<String>) {
        (
            self.rcode.clone(),
            self.aa,
            self.tc,
            self.ra,
            self.opt.clone(),
        )
    }

    /// Whether `other` has the same header and records, TTLs allowed to differ by `slack`
    /// seconds (for answers two caches count down independently).
    pub fn same_within(&self, other: &Reply, slack: u32) -> bool {
        fn keyed(records: &BTreeSet<String>) -> Option<Vec<(String, u32)>> {
            let mut out: Vec<(String, u32)> = records
                .iter()
                .map(|r| {
                    let mut parts = r.splitn(3, ' ');
                    let (name, ttl, rest) = (parts.next()?, parts.next()?, parts.next()?);
                    Some((format!("{name} {rest}"), ttl.parse().ok()?))
                })
                .collect::<Option<_>>()?;
            out.sort();
            Some(out)
        }
        let close = |a: &BTreeSet<String>, b: &BTreeSet<String>| match (keyed(a), keyed(b)) {
            (Some(a), Some(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(&b)
                        .all(|((ka, ta), (kb, tb))| ka == kb && ta.abs_diff(*tb) <= slack)
            }
            _ => false,
        };
        self.header() == other.header()
            && close(&self.answer, &other.answer)
            && close(&self.authority, &other.authority)
            && close(&self.additional, &other.additional)
    }

    /// The answer section's records of one type, as `data` strings.
    pub fn answers_of(&self, rtype: &str) -> BTreeSet<String> {
        self.answer
            .iter()
            .filter_map(|r| {
                let mut parts = r.splitn(4, ' ');
                let (_, _, t, data) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
                (t == rtype).then(|| data.to_string())
            })
            .collect()
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {} aa={} tc={} ra={} opt={:?}",
            self.rcode, self.aa, self.tc, self.ra, self.opt
        )?;
        for (section, records) in [
            ("answer", &self.answer),
            ("authority", &self.authority),
            ("additional", &self.additional),
        ] {
            for r in records {
                writeln!(f, "  {section}: {r}")?;
            }
        }
        Ok(())
    }
}

fn record_text(record: &Record) -> String {
    let data = match &record.data {
        RData::SOA(soa) => format!(
            "{} {} SERIAL {} {} {} {}",
            soa.mname, soa.rname, soa.refresh, soa.retry, soa.expire, soa.minimum
        ),
        other => other.to_string(),
    };
    format!(
        "{} {} {} {}",
        record.name,
        record.ttl,
        record.record_type(),
        data
    )
}

fn normalise(message: &Message) -> Reply {
    let set = |records: &[Record]| records.iter().map(record_text).collect();
    Reply {
        rcode: format!("{:?}", message.metadata.response_code),
        aa: message.metadata.authoritative,
        tc: message.metadata.truncation,
        ra: message.metadata.recursion_available,
        answer: set(&message.answers),
        authority: set(&message.authorities),
        additional: set(&message.additionals),
        opt: message
            .edns
            .as_ref()
            .map(|e| format!("version {} do={}", e.version(), e.flags().dnssec_ok)),
    }
}

/// The wire form of `question` as `transport` sends it, with recursion desired as dig sets it.
pub fn encode(question: &Question, transport: Transport, id: u16) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.metadata.recursion_desired = true;
    let name = Name::from_ascii(&question.name)
        .unwrap_or_else(|e| panic!("a test name {}: {e}", question.name));
    let mut query = Query::query(name, question.qtype);
    query.set_query_class(question.class);
    message.add_query(query);
    let payload = match transport {
        Transport::Udp512 => Some(512),
        Transport::Udp1232 => Some(1232),
        Transport::Udp | Transport::Tcp => None,
    };
    if let Some(size) = payload {
        let mut edns = Edns::new();
        edns.set_max_payload(size);
        message.set_edns(edns);
    }
    message.to_vec().expect("encode a test query")
}

/// Sends `question` to 127.0.0.1:`port` and returns the normalised reply (three tries of 3 s
/// over UDP); panics when nothing answers.
pub fn ask(port: u16, question: &Question, transport: Transport) -> Reply {
    normalise(&exchange(port, question, transport))
}

/// As [`ask`], the reply as it came (records in their order).
pub fn exchange(port: u16, question: &Question, transport: Transport) -> Message {
    let id: u16 = rand_id();
    let wire = encode(question, transport, id);
    let bytes = match transport {
        Transport::Tcp => tcp(port, &wire),
        _ => udp(port, &wire, id),
    }
    .unwrap_or_else(|e| panic!("no answer from port {port} to {question} over {transport:?}: {e}"));
    Message::from_vec(&bytes).unwrap_or_else(|e| {
        panic!("an unreadable reply from port {port} to {question}: {e}: {bytes:02x?}")
    })
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0x5a5a);
    NEXT.fetch_add(7919, Ordering::Relaxed)
}

fn udp(port: u16, wire: &[u8], id: u16) -> std::io::Result<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut last = None;
    for _ in 0..3 {
        socket.send_to(wire, ("127.0.0.1", port))?;
        let mut buf = vec![0u8; 65535];
        loop {
            match socket.recv_from(&mut buf) {
                Ok((n, _)) if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                    return Ok(buf[..n].to_vec());
                }
                Ok(_) => continue,
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no reply")))
}

fn tcp(port: u16, wire: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(wire);
    stream.write_all(&framed)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

/// How two replies to one question differ, or `None` when they agree. Over UDP, when either
/// reply is truncated, only the header facts are compared (which records survive truncation
/// depends on each server's record order); the caller asks over TCP as well, where everything
/// must agree.
pub fn difference(
    question: &Question,
    transport: Transport,
    ours: &Reply,
    theirs: &Reply,
) -> Option<String> {
    let truncated = transport != Transport::Tcp && (ours.tc || theirs.tc);
    let same = if truncated {
        ours.header() == theirs.header()
    } else {
        ours == theirs
    };
    (!same)
        .then(|| format!("{question} over {transport:?}:\n svcplane:\n{ours} CoreDNS:\n{theirs}"))
}
