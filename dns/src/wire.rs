//! The wire form of the commonest query and of a cached reply, for answering a cache hit
//! without decoding the request or encoding the reply: [`Request::peek`] reads a plain query
//! (one question, at most an OPT record) straight from its bytes, and a [`Template`] is a
//! cached reply encoded once, with where its TTLs are and which records `loadbalance` may
//! shuffle. Anything unusual is left to the full path (`None`), which gives the same answer.
//!
//! Pure: no I/O, randomness passed in.

use std::ops::Range;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, Record, RecordType};

/// Largest name on the wire (RFC 1035 §3.1).
const MAX_NAME: usize = 255;
/// Header length.
const HEADER: usize = 12;
const TYPE_OPT: u16 = 41;
const TYPE_HINFO: u16 = 13;
const CLASS_IN: u16 = 1;
/// The EDNS option hickory decodes (ECS) rather than passing through: a request carrying it
/// goes the full way, so a malformed one gets the full path's FORMERR.
const OPTION_SUBNET: u16 = 8;

/// A request's EDNS as the reply echoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The advertised UDP size, at least 512 (as hickory reads it).
    pub payload: u16,
    pub dnssec_ok: bool,
}

/// A plain query read from its bytes: opcode QUERY, one question of class IN, no answer or
/// authority records, no OPT or one OPT of version 0, and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: u16,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    pub authentic_data: bool,
    /// Where the question (name, type, class) is in the request.
    pub question: Range<usize>,
    pub qtype: u16,
    pub edns: Option<Edns>,
}

impl Request {
    /// `bytes` read as a plain query, or `None` for anything else (left to the full path).
    /// HINFO questions are left too: `loop`'s probe is one.
    pub fn peek(bytes: &[u8]) -> Option<Request> {
        if bytes.len() < HEADER {
            return None;
        }
        let flags = u16::from_be_bytes([bytes[2], bytes[3]]);
        let count = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        // QR clear, opcode 0; the rcode and Z bits of a query are ignored, as the full path does.
        if flags & 0xf800 != 0 || count(4) != 1 || count(6) != 0 || count(8) != 0 {
            return None;
        }
        let additional = count(10);
        let name_end = plain_name_end(bytes, HEADER)?;
        let question = HEADER..name_end + 4;
        let fixed = bytes.get(name_end..question.end)?;
        let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
        if qclass != CLASS_IN || qtype == TYPE_HINFO || qtype == TYPE_OPT {
            return None;
        }
        let edns = match additional {
            0 if bytes.len() == question.end => None,
            1 => Some(opt(bytes, question.end)?),
            _ => return None,
        };
        Some(Request {
            id: u16::from_be_bytes([bytes[0], bytes[1]]),
            recursion_desired: flags & 0x0100 != 0,
            authentic_data: flags & 0x0020 != 0,
            checking_disabled: flags & 0x0010 != 0,
            question,
            qtype,
            edns,
        })
    }

    /// The cache key of this request: the question with its name in lower case, then DO and CD.
    pub fn key(&self, bytes: &[u8]) -> QuestionKey {
        let q = &bytes[self.question.clone()];
        let mut key = QuestionKey {
            bytes: [0; KEY_MAX],
            len: q.len() + 1,
        };
        for (to, from) in key.bytes.iter_mut().zip(q) {
            *to = from.to_ascii_lowercase();
        }
        // The type and class were lowered too: put them back as sent.
        key.bytes[q.len() - 4..q.len()].copy_from_slice(&q[q.len() - 4..]);
        key.bytes[q.len()] = flag_byte(
            self.edns.is_some_and(|e| e.dnssec_ok),
            self.checking_disabled,
        );
        key
    }

    /// The name asked, lower-cased, as on the wire.
    pub fn lower_name<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        &key[..self.question.len() - 4]
    }
}

/// Longest key: a name, type, class and the flag byte.
const KEY_MAX: usize = MAX_NAME + 5;

/// A request's key ([`Request::key`]) kept on the stack.
#[derive(Clone, Copy)]
pub struct QuestionKey {
    bytes: [u8; KEY_MAX],
    len: usize,
}

impl std::ops::Deref for QuestionKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Debug for QuestionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Buffers a [`Template`] shuffles in, kept from reply to reply.
#[derive(Debug, Default)]
pub struct Scratch {
    region: Vec<u8>,
    order: Vec<usize>,
}

/// The cache key of a question: the name in lower case on the wire, type, class, then a byte
/// with DO and CD.
pub fn key_of(name: &Name, qtype: u16, qclass: u16, dnssec_ok: bool, cd: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 6);
    key.extend(lower_wire(name));
    key.extend(qtype.to_be_bytes());
    key.extend(qclass.to_be_bytes());
    key.push(flag_byte(dnssec_ok, cd));
    key
}

fn flag_byte(dnssec_ok: bool, cd: bool) -> u8 {
    u8::from(dnssec_ok) | u8::from(cd) << 1
}

/// `name` in lower case as on the wire (uncompressed, ending in the root label).
pub fn lower_wire(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 1);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

/// Whether the wire name `name` is `zone` or below it (both lower case, uncompressed).
pub fn in_zone(zone: &[u8], name: &[u8]) -> bool {
    if zone.len() > name.len() {
        return false;
    }
    let mut at = 0;
    loop {
        if name.len() - at == zone.len() {
            return name[at..] == *zone;
        }
        match name.get(at) {
            Some(&len) if len != 0 => at += 1 + usize::from(len),
            _ => return false,
        }
        if name.len() - at < zone.len() {
            return false;
        }
    }
}

/// The end of an uncompressed name starting at `at`, when it is one hickory reads too.
fn plain_name_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    let start = at;
    loop {
        let len = usize::from(*bytes.get(at)?);
        if len == 0 {
            return (at + 1 - start <= MAX_NAME).then_some(at + 1);
        }
        // Pointers (0xc0) and the extended label types (0x40, 0x80) go the full way.
        if len > 63 {
            return None;
        }
        at += 1 + len;
    }
}

/// The OPT record at `at`, the request's last record: root owner, version 0, options well formed.
fn opt(bytes: &[u8], at: usize) -> Option<Edns> {
    let rr = bytes.get(at..at + 11)?;
    let rtype = u16::from_be_bytes([rr[1], rr[2]]);
    let payload = u16::from_be_bytes([rr[3], rr[4]]);
    let version = rr[6];
    let flags = u16::from_be_bytes([rr[7], rr[8]]);
    let rdlen = usize::from(u16::from_be_bytes([rr[9], rr[10]]));
    if rr[0] != 0 || rtype != TYPE_OPT || version != 0 || bytes.len() != at + 11 + rdlen {
        return None;
    }
    let mut options = &bytes[at + 11..];
    while !options.is_empty() {
        let code = u16::from_be_bytes([options[0], *options.get(1)?]);
        let len = usize::from(u16::from_be_bytes([*options.get(2)?, *options.get(3)?]));
        if code == OPTION_SUBNET || options.len() < 4 + len {
            return None;
        }
        options = &options[4 + len..];
    }
    Some(Edns {
        payload: payload.max(512),
        dnssec_ok: flags & 0x8000 != 0,
    })
}

/// What a reply's header says beyond the request's bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    pub authoritative: bool,
    pub recursion_available: bool,
    pub authentic_data: bool,
    /// The rcode, at most 15 (larger ones need the OPT record: the full path).
    pub rcode: u8,
}

/// Records `loadbalance` shuffles among themselves: `start` is where the first begins, each
/// range a record relative to it, all ranges back to back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    start: usize,
    records: Vec<Range<usize>>,
}

/// A cached reply encoded once: header counts, a question (overwritten by the asker's, which
/// has the same length), the records with TTL placeholders. One allocation holds it all: the
/// lengths and flags ([`META`] bytes), the header and question, the records (as encoded, or
/// LZ4-compressed where that saves a quarter or more: the records of a headless Service's
/// SRV or A reply repeat most of their bytes, and were two thirds of the kept bytes at 10 000
/// Services with 30 endpoints each), then where each record's TTL is, then the shuffled groups
/// (each: its start, its record count, and each record's end from the start), all as
/// little-endian `u16`s (a message is at most 65535 bytes). A template is one pointer and
/// length, as it is kept per question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    data: Box<[u8]>,
}

/// The bytes before a template's reply: the reply's length, the question's length (name,
/// type, class), the number of TTLs (`u16`s), the length of the records as kept, the flag
/// bits ([`Flags`]: 1 authoritative, 2 recursion available, 4 authentic data; and
/// [`COMPRESSED`]) and the rcode.
const META: usize = 10;

/// The flag bit of a template whose records are kept LZ4-compressed.
const COMPRESSED: u8 = 8;

/// Records shorter than this are kept as encoded (a block this small seldom compresses).
const COMPRESS_FROM: usize = 128;

impl Template {
    /// The template of a reply with these `flags` and sections to a question whose wire form
    /// (name, type, class) is `question` (best in lower case: most clients ask so). With `loadbalance`, the sections are put in the order
    /// `loadbalance` gives them (CNAMEs, other records, addresses, MX), and the address and MX
    /// records are shuffled on every answer; `None` when a shuffle cannot move those records
    /// without breaking a compression pointer into them (the full path answers instead).
    pub fn new(
        question: &[u8],
        flags: Flags,
        sections: [&[Record]; 3],
        loadbalance: bool,
    ) -> Option<Template> {
        if flags.rcode > 15 {
            return None;
        }
        let name_end = plain_name_end(question, 0)?;
        let name = Name::from_labels(labels(&question[..name_end])).ok()?;
        let qtype = u16::from_be_bytes([question[name_end], question[name_end + 1]]);
        let mut m = Message::new(0, MessageType::Response, OpCode::Query);
        m.queries.push(Query::query(name, RecordType::from(qtype)));
        let shuffles = loadbalance && flags.rcode == 0;
        let [answers, authorities, additionals] = sections.map(|s| {
            let mut s = s.to_vec();
            if shuffles {
                in_loadbalance_order(&mut s);
            }
            s
        });
        m.answers = answers;
        m.authorities = authorities;
        m.additionals = additionals;
        let mut bytes = m.to_vec().ok()?;
        if bytes.get(HEADER..HEADER + question.len())? != question {
            // hickory wrote the question differently (it never should): leave it.
            return None;
        }
        let layout = layout(&bytes)?;
        let mut groups = Vec::new();
        if shuffles {
            for section in &layout.sections {
                groups.extend(shuffled_groups(section));
            }
        }
        let pointed_into = |g: &Group| {
            let end = g.start + g.records.last().map_or(0, |r| r.end);
            layout.targets.iter().any(|t| (g.start..end).contains(t))
        };
        if !groups.is_empty() && (layout.opaque || groups.iter().any(pointed_into)) {
            return None;
        }
        bytes[2] = 0;
        bytes[3] = 0;
        let reply_len = u16::try_from(bytes.len()).ok()?;
        let mut ttls = 0u16;
        for r in layout.sections.iter().flatten() {
            bytes.extend(u16::try_from(r.range.start + r.ttl_at).ok()?.to_le_bytes());
            ttls += 1;
        }
        for g in &groups {
            bytes.extend(u16::try_from(g.start).ok()?.to_le_bytes());
            bytes.extend(u16::try_from(g.records.len()).ok()?.to_le_bytes());
            let mut prev = 0;
            for r in &g.records {
                // Back to back, as a shuffle writes them.
                if r.start != prev {
                    return None;
                }
                prev = r.end;
                bytes.extend(u16::try_from(r.end).ok()?.to_le_bytes());
            }
        }
        let question_len = u16::try_from(question.len()).ok()?;
        let head = HEADER + question.len();
        let records = &bytes[head..usize::from(reply_len)];
        let compressed = (records.len() >= COMPRESS_FROM)
            .then(|| lz4_flex::block::compress(records))
            .filter(|c| 4 * c.len() <= 3 * records.len());
        let kept = compressed.as_deref().unwrap_or(records);
        let bits = u8::from(flags.authoritative)
            | u8::from(flags.recursion_available) << 1
            | u8::from(flags.authentic_data) << 2
            | if compressed.is_some() { COMPRESSED } else { 0 };
        let rest = &bytes[usize::from(reply_len)..];
        let mut data = Vec::with_capacity(META + head + kept.len() + rest.len());
        data.extend(reply_len.to_le_bytes());
        data.extend(question_len.to_le_bytes());
        data.extend(ttls.to_le_bytes());
        data.extend(u16::try_from(kept.len()).ok()?.to_le_bytes());
        data.extend([bits, flags.rcode]);
        data.extend(&bytes[..head]);
        data.extend(kept);
        data.extend(rest);
        Some(Template { data: data.into() })
    }

    /// The `u16` of the meta bytes at `at`.
    fn meta(&self, at: usize) -> usize {
        usize::from(u16::from_le_bytes([self.data[at], self.data[at + 1]]))
    }

    fn reply_len(&self) -> usize {
        self.meta(0)
    }

    fn ttls(&self) -> usize {
        self.meta(4)
    }

    fn flags(&self) -> Flags {
        let bits = self.data[8];
        Flags {
            authoritative: bits & 1 != 0,
            recursion_available: bits & 2 != 0,
            authentic_data: bits & 4 != 0,
            rcode: self.data[9],
        }
    }

    /// The header and question as encoded (ID and flags zero).
    fn head(&self) -> &[u8] {
        &self.data[META..META + HEADER + self.meta(2)]
    }

    /// The records as kept (compressed if the flags say so).
    fn records(&self) -> &[u8] {
        let start = META + HEADER + self.meta(2);
        &self.data[start..start + self.meta(6)]
    }

    /// Where the records as kept end: the TTL offsets begin.
    fn records_end(&self) -> usize {
        META + HEADER + self.meta(2) + self.meta(6)
    }

    /// The question as the template spells it: name, type, class.
    pub fn question(&self) -> &[u8] {
        &self.head()[HEADER..]
    }

    /// Where each record's TTL is.
    fn ttl_offsets(&self) -> impl Iterator<Item = usize> + '_ {
        let start = self.records_end();
        self.data[start..start + 2 * self.ttls()]
            .chunks_exact(2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
    }

    /// Whether the records are kept LZ4-compressed.
    pub fn compressed(&self) -> bool {
        self.data[8] & COMPRESSED != 0
    }

    /// The shuffled groups: each one's start and its records' ends (little-endian `u16`s).
    fn groups(&self) -> impl Iterator<Item = (usize, &[u8])> + '_ {
        let mut rest = &self.data[self.records_end() + 2 * self.ttls()..];
        std::iter::from_fn(move || {
            let (head, tail) = rest.split_at_checked(4)?;
            let start = usize::from(u16::from_le_bytes([head[0], head[1]]));
            let n = usize::from(u16::from_le_bytes([head[2], head[3]]));
            let (ends, tail) = tail.split_at(2 * n);
            rest = tail;
            Some((start, ends))
        })
    }

    /// The reply to `request` (whose bytes are `asked`), every record with `ttl`, records
    /// shuffled by `rng` where the template says, then cut as the full path cuts a reply
    /// larger than `limit` (the longest run of records from the first that fits, TC set);
    /// `None` when not even the header and question fit (the full path answers), or the
    /// question is spelt otherwise than the template's (hickory compresses a record's name into
    /// the question only where both are spelt alike, so the bytes of a reply depend on the
    /// spelling asked).
    pub fn reply(
        &self,
        request: &Request,
        asked: &[u8],
        ttl: u32,
        limit: usize,
        rng: &mut impl rand::Rng,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.reply_into(
            request,
            asked,
            Some(ttl),
            limit,
            rng,
            &mut out,
            &mut Scratch::default(),
        )
        .then_some(out)
    }

    /// [`Template::reply`] appended to `out` (true), or nothing appended (false); `ttl: None`
    /// keeps the records' TTLs as encoded. Allocates nothing once `out` and `scratch` have
    /// grown to their work.
    #[allow(clippy::too_many_arguments)]
    pub fn reply_into(
        &self,
        request: &Request,
        asked: &[u8],
        ttl: Option<u32>,
        limit: usize,
        rng: &mut impl rand::Rng,
        out: &mut Vec<u8>,
        scratch: &mut Scratch,
    ) -> bool {
        let opt_len = if request.edns.is_some() { 11 } else { 0 };
        let q = request.question.clone();
        let cut = self.reply_len() + opt_len > limit;
        if cut && HEADER + q.len() + opt_len > limit || self.question() != &asked[q.clone()] {
            return false;
        }
        let base = out.len();
        out.extend_from_slice(self.head());
        if self.compressed() {
            let start = out.len();
            out.resize(base + self.reply_len(), 0);
            let made = lz4_flex::block::decompress_into(self.records(), &mut out[start..]);
            if !matches!(made, Ok(n) if n == out.len() - start) {
                // Compressed from these very records when the template was made: never.
                out.truncate(base);
                return false;
            }
        } else {
            out.extend_from_slice(self.records());
        }
        let reply = &mut out[base..];
        reply[..2].copy_from_slice(&request.id.to_be_bytes());
        let f = self.flags();
        reply[2] = 0x80
            | if f.authoritative { 0x04 } else { 0 }
            | if request.recursion_desired { 0x01 } else { 0 };
        let do_or_ad = request.edns.is_some_and(|e| e.dnssec_ok) || request.authentic_data;
        reply[3] = if f.recursion_available { 0x80 } else { 0 }
            | if f.authentic_data && do_or_ad {
                0x20
            } else {
                0
            }
            | if request.checking_disabled { 0x10 } else { 0 }
            | f.rcode;
        reply[HEADER..HEADER + q.len()].copy_from_slice(&asked[q.clone()]);
        if let Some(ttl) = ttl {
            for at in self.ttl_offsets() {
                reply[at..at + 4].copy_from_slice(&ttl.to_be_bytes());
            }
        }
        for (start, ends) in self.groups() {
            shuffle(reply, start, ends, rng, scratch);
        }
        if cut {
            let Some(end) = cut_records(reply, HEADER + q.len(), limit - opt_len) else {
                out.truncate(base);
                return false;
            };
            out.truncate(base + end);
        }
        let reply = &mut out[base..];
        if let Some(edns) = request.edns {
            let additional = u16::from_be_bytes([reply[10], reply[11]]) + 1;
            reply[10..12].copy_from_slice(&additional.to_be_bytes());
            out.push(0);
            out.extend(TYPE_OPT.to_be_bytes());
            out.extend(edns.payload.to_be_bytes());
            out.extend([0, 0, if edns.dnssec_ok { 0x80 } else { 0 }, 0]);
            out.extend([0, 0]);
        }
        true
    }
}

/// Cuts the records of `reply` (they begin at `first`) to the longest run from the first that
/// ends within `room`, sets the sections' counts and TC; returns where the reply now ends.
fn cut_records(reply: &mut [u8], first: usize, room: usize) -> Option<usize> {
    let count = |at: usize| usize::from(u16::from_be_bytes([reply[at], reply[at + 1]]));
    let (answers, authorities) = (count(6), count(8));
    let total = answers + authorities + count(10);
    let (mut end, mut kept) = (first, 0);
    while kept < total {
        let mut at = end;
        loop {
            let len = *reply.get(at)?;
            if len & 0xC0 == 0xC0 {
                at += 2;
                break;
            }
            at += 1 + usize::from(len);
            if len == 0 {
                break;
            }
        }
        let rdlen = usize::from(u16::from_be_bytes([
            *reply.get(at + 8)?,
            *reply.get(at + 9)?,
        ]));
        let next = at + 10 + rdlen;
        if next > room {
            break;
        }
        (end, kept) = (next, kept + 1);
    }
    let an = kept.min(answers);
    let ns = (kept - an).min(authorities);
    for (at, n) in [(6, an), (8, ns), (10, kept - an - ns)] {
        reply[at..at + 2].copy_from_slice(&u16::try_from(n).ok()?.to_be_bytes());
    }
    reply[2] |= 0x02;
    Some(end)
}

/// A query for the wire `question` (an uncompressed name, type and class), as the full path
/// reads it; `None` for a name hickory would not read.
pub fn question_message(question: &[u8]) -> Option<Message> {
    let name_end = plain_name_end(question, 0)?;
    let fixed = question.get(name_end..name_end + 4)?;
    let name = Name::from_labels(labels(&question[..name_end])).ok()?;
    let mut query = Query::query(
        name,
        RecordType::from(u16::from_be_bytes([fixed[0], fixed[1]])),
    );
    query.set_query_class(u16::from_be_bytes([fixed[2], fixed[3]]).into());
    let mut m = Message::new(0, MessageType::Query, OpCode::Query);
    m.queries.push(query);
    Some(m)
}

/// The labels of an uncompressed wire name.
fn labels(mut wire: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = wire.split_first() {
        if len == 0 {
            break;
        }
        out.push(&rest[..usize::from(len)]);
        wire = &rest[usize::from(len)..];
    }
    out
}

/// `section` in `loadbalance`'s order with nothing shuffled: the order a shuffle starts from.
fn in_loadbalance_order(section: &mut [Record]) {
    // round_robin's own partition, stable, without its shuffles.
    if section.len() <= 1 || section.iter().any(|r| is_transfer(r.record_type())) {
        return;
    }
    let first = section[0].record_type();
    if is_address(first) && section.iter().all(|r| r.record_type() == first) {
        return;
    }
    let rank = |t: RecordType| match t {
        RecordType::CNAME => 0,
        RecordType::A | RecordType::AAAA => 2,
        RecordType::MX => 3,
        _ => 1,
    };
    section.sort_by_key(|r| rank(r.record_type()));
}

fn is_address(t: RecordType) -> bool {
    matches!(t, RecordType::A | RecordType::AAAA)
}

fn is_transfer(t: RecordType) -> bool {
    matches!(t, RecordType::AXFR | RecordType::IXFR)
}

/// The groups `loadbalance` shuffles in a section already in its order.
fn shuffled_groups(section: &[Located]) -> Vec<Group> {
    if section.len() <= 1 || section.iter().any(|r| is_transfer(r.rtype)) {
        return Vec::new();
    }
    let mut groups = Vec::new();
    for wanted in [is_address as fn(RecordType) -> bool, |t| {
        t == RecordType::MX
    }] {
        let run: Vec<&Located> = section.iter().filter(|r| wanted(r.rtype)).collect();
        if run.len() > 1 {
            let start = run[0].range.start;
            groups.push(Group {
                start,
                records: run
                    .iter()
                    .map(|r| r.range.start - start..r.range.end - start)
                    .collect(),
            });
        }
    }
    groups
}

/// Shuffles the records of a group in place (the same draws of `rng` as shuffling a slice of
/// them): they start at `start`, back to back, and end at `ends` from it (little-endian `u16`s).
fn shuffle(
    out: &mut [u8],
    start: usize,
    ends: &[u8],
    rng: &mut impl rand::Rng,
    scratch: &mut Scratch,
) {
    use rand::seq::SliceRandom as _;
    let n = ends.len() / 2;
    let end = |i: usize| usize::from(u16::from_le_bytes([ends[2 * i], ends[2 * i + 1]]));
    let begin = |i: usize| if i == 0 { 0 } else { end(i - 1) };
    scratch.region.clear();
    scratch
        .region
        .extend_from_slice(&out[start..start + n.checked_sub(1).map_or(0, end)]);
    scratch.order.clear();
    scratch.order.extend(0..n);
    scratch.order.shuffle(rng);
    let mut at = start;
    for &i in &scratch.order {
        let (b, e) = (begin(i), end(i));
        out[at..at + e - b].copy_from_slice(&scratch.region[b..e]);
        at += e - b;
    }
}

/// One record of an encoded message.
#[derive(Debug)]
struct Located {
    range: Range<usize>,
    rtype: RecordType,
    /// Where its TTL is, from its start.
    ttl_at: usize,
}

/// Where the records of an encoded message are and which offsets its compression pointers
/// point at.
struct Layout {
    sections: [Vec<Located>; 3],
    targets: Vec<usize>,
    /// A record whose data may hold compressed names this reader does not know how to find.
    opaque: bool,
}

fn layout(bytes: &[u8]) -> Option<Layout> {
    let count = |at: usize| usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
    let mut targets = Vec::new();
    let mut at = name_end(bytes, HEADER, &mut targets)? + 4;
    let mut opaque = false;
    let mut sections: [Vec<Located>; 3] = Default::default();
    for (i, section) in sections.iter_mut().enumerate() {
        for _ in 0..count(6 + 2 * i) {
            let start = at;
            let fixed = name_end(bytes, at, &mut targets)?;
            let rr = bytes.get(fixed..fixed + 10)?;
            let rtype = RecordType::from(u16::from_be_bytes([rr[0], rr[1]]));
            let rdlen = usize::from(u16::from_be_bytes([rr[8], rr[9]]));
            let data = fixed + 10..fixed + 10 + rdlen;
            bytes.get(data.clone())?;
            // The names inside the data of the types hickory compresses; any other type with
            // names is opaque.
            let names_at: &[usize] = match rtype {
                RecordType::CNAME | RecordType::NS | RecordType::PTR | RecordType::DNAME => &[0],
                RecordType::MX => &[2],
                RecordType::SRV => &[6],
                RecordType::A | RecordType::AAAA | RecordType::TXT => &[],
                RecordType::SOA => {
                    let second = name_end(bytes, data.start, &mut targets)?;
                    name_end(bytes, second, &mut targets)?;
                    &[]
                }
                _ => {
                    opaque = true;
                    &[]
                }
            };
            for &offset in names_at {
                name_end(bytes, data.start + offset, &mut targets)?;
            }
            section.push(Located {
                range: start..data.end,
                rtype,
                ttl_at: fixed + 4 - start,
            });
            at = data.end;
        }
    }
    (at == bytes.len()).then_some(Layout {
        sections,
        targets,
        opaque,
    })
}

/// The end of a possibly compressed name at `at`, noting where its pointer points.
fn name_end(bytes: &[u8], mut at: usize, targets: &mut Vec<usize>) -> Option<usize> {
    loop {
        let len = *bytes.get(at)?;
        match len {
            0 => return Some(at + 1),
            1..=63 => at += 1 + usize::from(len),
            0xc0..=0xff => {
                let low = *bytes.get(at + 1)?;
                targets.push(usize::from(u16::from_be_bytes([len & 0x3f, low])));
                return Some(at + 2);
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Edns as HickoryEdns;
    use hickory_proto::rr::RData;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA, SRV};
    use rand::SeedableRng;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn query(qname: &str, qtype: RecordType, edns: Option<(u16, bool)>) -> Message {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.queries.push(Query::query(name(qname), qtype));
        if let Some((payload, dnssec_ok)) = edns {
            let mut e = HickoryEdns::new();
            e.set_max_payload(payload);
            e.set_dnssec_ok(dnssec_ok);
            m.edns = Some(e);
        }
        m
    }

    fn a(owner: &str, last: u8) -> Record {
        Record::from_rdata(name(owner), 30, RData::A(A::new(10, 0, 0, last)))
    }

    /// The template of a NOERROR answer of `sections` to `asked`, without `loadbalance`.
    fn answer_template(asked: (&str, RecordType), sections: &[Vec<Record>; 3]) -> Template {
        template(
            asked.0,
            asked.1,
            NOERROR,
            sections.each_ref().map(|s| &s[..]),
            false,
        )
        .unwrap()
    }

    /// The template of `sections` for the question `qname`/`qtype` in lower case.
    fn template(
        qname: &str,
        qtype: RecordType,
        flags: Flags,
        sections: [&[Record]; 3],
        loadbalance: bool,
    ) -> Option<Template> {
        let stored = query(qname, qtype, None).to_vec().unwrap();
        Template::new(&stored[HEADER..], flags, sections, loadbalance)
    }

    #[test]
    fn a_plain_query_is_read_from_its_bytes() {
        let bytes = query("Web.Default.svc.cluster.local.", RecordType::A, None)
            .to_vec()
            .unwrap();
        let r = Request::peek(&bytes).unwrap();
        assert_eq!(r.id, 0x1234);
        assert!(r.recursion_desired);
        assert_eq!(r.qtype, 1);
        assert_eq!(r.edns, None);
        let key = r.key(&bytes);
        assert_eq!(
            r.lower_name(&key),
            lower_wire(&name("web.default.svc.cluster.local."))
        );
        assert_eq!(
            *key,
            key_of(&name("web.default.svc.cluster.local."), 1, 1, false, false)
        );
    }

    #[test]
    fn a_query_with_edns_gives_its_size_and_do_bit() {
        let bytes = query("a.example.", RecordType::AAAA, Some((1232, true)))
            .to_vec()
            .unwrap();
        let r = Request::peek(&bytes).unwrap();
        assert_eq!(
            r.edns,
            Some(Edns {
                payload: 1232,
                dnssec_ok: true
            })
        );
        let small = query("a.example.", RecordType::A, Some((100, false)))
            .to_vec()
            .unwrap();
        assert_eq!(Request::peek(&small).unwrap().edns.unwrap().payload, 512);
    }

    #[test]
    fn anything_but_a_plain_query_is_left_to_the_full_path() {
        let ok = query("a.example.", RecordType::A, Some((1232, false)))
            .to_vec()
            .unwrap();
        assert!(Request::peek(&ok).is_some());
        let mut reply = ok.clone();
        reply[2] |= 0x80;
        let mut notify = ok.clone();
        notify[2] |= 4 << 3;
        let mut version1 = ok.clone();
        let opt = ok.len() - 11;
        version1[opt + 6] = 1;
        let mut trailing = ok.clone();
        trailing.push(0);
        let hinfo = query("a.example.", RecordType::HINFO, None)
            .to_vec()
            .unwrap();
        let mut chaos = query("a.example.", RecordType::TXT, None).to_vec().unwrap();
        let n = chaos.len();
        chaos[n - 1] = 3;
        for (what, bytes) in [
            ("a reply", reply),
            ("NOTIFY", notify),
            ("EDNS version 1", version1),
            ("a trailing byte", trailing),
            ("HINFO", hinfo),
            ("class CH", chaos),
            ("a short header", ok[..11].to_vec()),
            ("a cut question", ok[..15].to_vec()),
        ] {
            assert_eq!(Request::peek(&bytes), None, "{what}");
        }
    }

    #[test]
    fn a_zone_holds_its_names_at_label_boundaries() {
        let zone = lower_wire(&name("cluster.local."));
        assert!(in_zone(&zone, &lower_wire(&name("cluster.local."))));
        assert!(in_zone(&zone, &lower_wire(&name("a.svc.cluster.local."))));
        assert!(!in_zone(&zone, &lower_wire(&name("xcluster.local."))));
        assert!(!in_zone(&zone, &lower_wire(&name("local."))));
        assert!(in_zone(&[0], &lower_wire(&name("anything."))));
    }

    /// The full path's reply: hickory's encoding of the same message.
    fn full(req: &Message, flags: Flags, sections: [Vec<Record>; 3], ttl: u32) -> Message {
        let mut m = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
        m.metadata.recursion_desired = req.metadata.recursion_desired;
        m.metadata.authoritative = flags.authoritative;
        m.metadata.recursion_available = flags.recursion_available;
        m.metadata.response_code = hickory_proto::op::ResponseCode::from(0, flags.rcode);
        m.queries = req.queries.clone();
        let [an, ns, ar] = sections.map(|s| {
            s.into_iter()
                .map(|mut r| {
                    r.ttl = ttl;
                    r
                })
                .collect::<Vec<_>>()
        });
        m.answers = an;
        m.authorities = ns;
        m.additionals = ar;
        m.edns = req.edns.as_ref().map(|asked| {
            let mut e = HickoryEdns::new();
            e.set_max_payload(asked.max_payload());
            e.set_dnssec_ok(asked.flags().dnssec_ok);
            e
        });
        m
    }

    const NOERROR: Flags = Flags {
        authoritative: true,
        recursion_available: true,
        authentic_data: false,
        rcode: 0,
    };

    fn render(req: &Message, t: &Template, ttl: u32) -> Vec<u8> {
        let bytes = req.to_vec().unwrap();
        let r = Request::peek(&bytes).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        t.reply(&r, &bytes, ttl, 65535, &mut rng).unwrap()
    }

    #[test]
    fn a_template_gives_the_bytes_the_full_path_encodes() {
        let asked = ("www.example.", RecordType::A);
        let sections = [
            vec![
                Record::from_rdata(
                    name("www.example."),
                    60,
                    RData::CNAME(CNAME(name("edge.cdn.example."))),
                ),
                a("edge.cdn.example.", 1),
            ],
            vec![],
            vec![],
        ];
        let t = answer_template(asked, &sections);
        for req in [
            query("www.example.", RecordType::A, None),
            query("www.example.", RecordType::A, Some((4096, true))),
            query("www.example.", RecordType::A, Some((1232, false))),
        ] {
            assert_eq!(
                render(&req, &t, 17),
                full(&req, NOERROR, sections.clone(), 17).to_vec().unwrap()
            );
        }
    }

    #[test]
    fn repetitive_records_are_kept_compressed_and_answer_the_same_bytes() {
        let asked = ("web.example.", RecordType::A);
        let answers: Vec<Record> = (1..=30).map(|i| a("web.example.", i)).collect();
        let sections = [answers, vec![], vec![]];
        let t = answer_template(asked, &sections);
        let req = query(asked.0, asked.1, Some((4096, false)));
        let want = full(&req, NOERROR, sections.clone(), 21).to_vec().unwrap();
        assert!(t.compressed());
        assert!(
            t.data.len() < want.len() / 2,
            "{} bytes kept for a {}-byte reply",
            t.data.len(),
            want.len()
        );
        assert_eq!(render(&req, &t, 21), want);
        // A reply of a few records is kept as encoded.
        let one = [a("web.example.", 1)];
        let small = template(asked.0, asked.1, NOERROR, [&one, &[], &[]], false).unwrap();
        assert!(!small.compressed());
        assert_eq!(
            render(&req, &small, 21),
            full(&req, NOERROR, [one.to_vec(), vec![], vec![]], 21)
                .to_vec()
                .unwrap()
        );
    }

    #[test]
    fn a_template_answers_with_the_askers_header_bits() {
        let asked = ("www.example.", RecordType::A);
        let sections = [vec![a("edge.cdn.test.", 1)], vec![], vec![]];
        let t = answer_template(asked, &sections);
        let mut req = query("www.example.", RecordType::A, None);
        req.metadata.recursion_desired = false;
        req.metadata.checking_disabled = true;
        let got = Message::from_vec(&render(&req, &t, 5)).unwrap();
        assert_eq!(got.queries[0].name().to_ascii(), "www.example.");
        assert_eq!(got.answers[0].name.to_ascii(), "edge.cdn.test.");
        assert!(!got.metadata.recursion_desired);
        assert!(got.metadata.checking_disabled);
        assert!(got.metadata.authoritative && got.metadata.recursion_available);
        assert_eq!(got.metadata.message_type, MessageType::Response);
        assert_eq!(got.answers[0].ttl, 5);
    }

    #[test]
    fn records_spelt_as_the_question_answer_only_that_spelling() {
        let asked = ("www.example.", RecordType::A);
        let sections = [vec![a("www.example.", 1)], vec![], vec![]];
        let t = answer_template(asked, &sections);
        let same = query("www.example.", RecordType::A, None);
        assert_eq!(
            render(&same, &t, 5),
            full(&same, NOERROR, sections.clone(), 5).to_vec().unwrap()
        );
        // The full path keeps the records' own spelling for a question spelt otherwise (as
        // CoreDNS does), and compresses them against the question only where the spelling is
        // the same: another spelling goes the full way, whatever the records are.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for other in ["WWW.example.", "www.EXAMPLE."] {
            let bytes = query(other, RecordType::A, None).to_vec().unwrap();
            let r = Request::peek(&bytes).unwrap();
            assert_eq!(t.reply(&r, &bytes, 5, 65535, &mut rng), None, "{other}");
        }
        let elsewhere = [vec![a("edge.cdn.test.", 1)], vec![], vec![]];
        let t = template(
            asked.0,
            asked.1,
            NOERROR,
            elsewhere.each_ref().map(|s| &s[..]),
            false,
        )
        .unwrap();
        let bytes = query("WwW.example.", RecordType::A, None).to_vec().unwrap();
        let r = Request::peek(&bytes).unwrap();
        assert_eq!(t.reply(&r, &bytes, 5, 65535, &mut rng), None);
    }

    #[test]
    fn a_denial_keeps_its_rcode_and_soa() {
        let asked = ("nope.example.", RecordType::A);
        let soa = Record::from_rdata(
            name("example."),
            60,
            RData::SOA(SOA::new(
                name("ns.example."),
                name("admin.example."),
                1,
                7200,
                1800,
                86400,
                60,
            )),
        );
        let nx = Flags {
            rcode: 3,
            ..NOERROR
        };
        let sections = [vec![], vec![soa], vec![]];
        let t = template(
            asked.0,
            asked.1,
            nx,
            sections.each_ref().map(|s| &s[..]),
            true,
        )
        .unwrap();
        let req = query("nope.example.", RecordType::A, Some((1232, false)));
        assert_eq!(
            render(&req, &t, 9),
            full(&req, nx, sections, 9).to_vec().unwrap()
        );
    }

    #[test]
    fn loadbalance_shuffles_addresses_and_keeps_the_rest_in_its_order() {
        let asked = ("www.example.", RecordType::A);
        let answers = vec![
            a("edge.cdn.example.", 1),
            Record::from_rdata(
                name("www.example."),
                60,
                RData::CNAME(CNAME(name("edge.cdn.example."))),
            ),
            a("edge.cdn.example.", 2),
            a("edge.cdn.example.", 3),
            Record::from_rdata(
                name("edge.cdn.example."),
                60,
                RData::AAAA(AAAA::new(0xfd00, 0, 0, 0, 0, 0, 0, 4)),
            ),
        ];
        let t = template(asked.0, asked.1, NOERROR, [&answers, &[], &[]], true).unwrap();
        let req = query("www.example.", RecordType::A, None);
        let bytes = req.to_vec().unwrap();
        let r = Request::peek(&bytes).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut orders = std::collections::HashSet::new();
        for _ in 0..50 {
            let got = Message::from_vec(&t.reply(&r, &bytes, 9, 512, &mut rng).unwrap()).unwrap();
            assert_eq!(got.answers[0].record_type(), RecordType::CNAME);
            let mut addresses: Vec<String> = got.answers[1..]
                .iter()
                .map(|r| r.data.to_string())
                .collect();
            orders.insert(addresses.clone());
            addresses.sort();
            assert_eq!(addresses, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::4"]);
            assert!(got.answers.iter().all(|r| r.ttl == 9));
        }
        assert!(orders.len() > 1, "the addresses were never shuffled");
    }

    #[test]
    fn records_a_shuffle_would_break_are_left_to_the_full_path() {
        let asked = ("mail.example.", RecordType::MX);
        let mx = |pref, host: &str| {
            Record::from_rdata(
                name("mail.example."),
                60,
                RData::MX(MX::new(pref, name(host))),
            )
        };
        // The additional address of mx1 points into the first MX record's exchange name.
        let answers = vec![mx(10, "mx1.example."), mx(20, "mx2.example.")];
        let additionals = vec![a("mx1.example.", 1)];
        assert_eq!(
            template(
                asked.0,
                asked.1,
                NOERROR,
                [&answers, &[], &additionals],
                true
            ),
            None
        );
        // Without loadbalance nothing moves: the template serves.
        assert!(
            template(
                asked.0,
                asked.1,
                NOERROR,
                [&answers, &[], &additionals],
                false
            )
            .is_some()
        );
        // The addresses of an SRV target point into the SRV record, outside what is shuffled.
        let srv = vec![Record::from_rdata(
            name("_http._tcp.web.default.svc.cluster.local."),
            30,
            RData::SRV(SRV::new(0, 50, 80, name("web.default.svc.cluster.local."))),
        )];
        let asked = ("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
        let stored = query(asked.0, asked.1, None);
        let additionals = vec![
            a("web.default.svc.cluster.local.", 1),
            a("web.default.svc.cluster.local.", 2),
        ];
        let t = template(asked.0, asked.1, NOERROR, [&srv, &[], &additionals], true).unwrap();
        let got = Message::from_vec(&render(&stored, &t, 3)).unwrap();
        assert_eq!(got.additionals.len(), 2);
    }

    #[test]
    fn a_reply_larger_than_the_limit_is_cut_as_the_full_path_cuts_it() {
        let ttl = 30;
        // Forty addresses; and SRV records with their targets' addresses as additionals, so
        // a cut may fall in either section.
        let addresses: Vec<Record> = (1..=40).map(|i| a("big.example.", i)).collect();
        let targets: Vec<String> = (1..=12).map(|i| format!("ep-{i}.big.example.")).collect();
        let srv: Vec<Record> = targets
            .iter()
            .map(|t| {
                Record::from_rdata(
                    name("_http._tcp.big.example."),
                    ttl,
                    RData::SRV(SRV::new(0, 8, 80, name(t))),
                )
            })
            .collect();
        let glue: Vec<Record> = targets.iter().zip(1..).map(|(t, i)| a(t, i)).collect();
        let cases = [
            (("big.example.", RecordType::A), [addresses, vec![], vec![]]),
            (
                ("_http._tcp.big.example.", RecordType::SRV),
                [srv, vec![], glue],
            ),
        ];
        for ((qname, qtype), sections) in cases {
            let t = template(
                qname,
                qtype,
                NOERROR,
                sections.each_ref().map(|s| &s[..]),
                false,
            )
            .unwrap();
            assert!(
                t.compressed(),
                "{qname}: records this repetitive are kept compressed"
            );
            for (edns, limit) in [
                (None, 512),
                (Some((600, false)), 600),
                (Some((650, true)), 650),
            ] {
                let req = query(qname, qtype, edns);
                let bytes = req.to_vec().unwrap();
                let r = Request::peek(&bytes).unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(1);
                let got = t.reply(&r, &bytes, ttl, limit, &mut rng).unwrap();
                let want = crate::message::encode_within(
                    full(&req, NOERROR, sections.clone(), ttl),
                    limit,
                )
                .unwrap();
                assert!(
                    got.len() <= limit && got[2] & 0x02 != 0,
                    "{qname} cut to {limit}"
                );
                assert_eq!(got, want, "{qname} cut to {limit}");
            }
        }
        // Not even the header and question fit: the full path answers (a bare header).
        let long = format!("{}.example.", ["q".repeat(60).as_str(); 4].join("."));
        let answers = [a(&long, 1), a(&long, 2)];
        let t = template(&long, RecordType::A, NOERROR, [&answers, &[], &[]], false).unwrap();
        let bytes = query(&long, RecordType::A, None).to_vec().unwrap();
        let r = Request::peek(&bytes).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(t.reply(&r, &bytes, ttl, bytes.len() - 1, &mut rng), None);
    }
}
