//! The `cache` directive: CoreDNS's response cache. A success cache (answers, delegations) and
//! a denial cache (NXDOMAIN, NODATA, SERVFAIL), each with a capacity, a TTL cap and minimum;
//! `disable success|denial ZONES`; `prefetch` of popular names near expiry; `serve_stale` of
//! expired entries (immediately, or after the upstream failed, as RFC 8767); `keepttl`. Keys
//! are the lower-cased name, type, class, DO and CD. Entries answered from the cluster carry the
//! generation of the cluster index they came from and are never served once it changed, so a
//! cached cluster name is never stale.
//!
//! Pure apart from the clock, which the caller passes in.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{Name, Record, RecordType};

use crate::wire::{Flags, Template};

/// CoreDNS's default capacity of each cache.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Shards of each cache (its capacity is rounded down to a multiple of this, at least 4 each).
const SHARDS: usize = 256;

/// The limits of one of the two caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub capacity: usize,
    /// Longest time an entry is kept (and the TTL answered), seconds.
    pub max_ttl: u32,
    /// Shortest time an entry is kept, seconds.
    pub min_ttl: u32,
}

/// `prefetch AMOUNT [DURATION [PERCENTAGE%]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefetch {
    /// Hits within `window` that make a name popular.
    pub amount: usize,
    pub window: Duration,
    /// Refetch once the remaining TTL is at most this share of the original, percent.
    pub percentage: u32,
}

/// `serve_stale [DURATION] [immediate [RESPONSE_TTL] | verify [TIMEOUT [RESPONSE_TTL]]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeStale {
    /// How long after expiry an entry may still be served.
    pub up_to: Duration,
    /// Ask upstream first and serve the stale entry only when it fails (RFC 8767); otherwise
    /// serve it at once and refresh behind it.
    pub verify: bool,
    /// With `verify`: how long to wait for upstream before serving stale (zero: its own timeout).
    pub verify_timeout: Duration,
    /// TTL of a stale answer, seconds (RFC 8767 recommends 30).
    pub response_ttl: u32,
}

/// What the `cache` directive says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Zones cached (the server block's when the directive names none).
    pub zones: Vec<Name>,
    pub success: Part,
    pub denial: Part,
    /// How long a SERVFAIL is cached; zero: not at all.
    pub servfail: Duration,
    pub prefetch: Option<Prefetch>,
    pub serve_stale: Option<ServeStale>,
    /// `disable success ZONES`.
    pub no_success: Vec<Name>,
    /// `disable denial ZONES`.
    pub no_denial: Vec<Name>,
    /// Answer with the TTL stored, not the remaining one.
    pub keepttl: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            zones: vec![Name::root()],
            success: Part {
                capacity: DEFAULT_CAPACITY,
                max_ttl: 3600,
                min_ttl: 5,
            },
            denial: Part {
                capacity: DEFAULT_CAPACITY,
                max_ttl: 1800,
                min_ttl: 5,
            },
            servfail: Duration::from_secs(5),
            prefetch: None,
            serve_stale: None,
            no_success: Vec::new(),
            no_denial: Vec::new(),
            keepttl: false,
        }
    }
}

/// The two caches, as `coredns_cache_*` label them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Success,
    Denial,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Success => "success",
            Kind::Denial => "denial",
        }
    }
}

/// The cache key: the question on the wire with its name in lower case, then a byte with DO
/// and CD ([`crate::wire::key_of`]), so a hit can be found from a request's bytes alone.
type Key = Box<[u8]>;

fn key_of(request: &Message) -> Option<Key> {
    let q = request.queries.first()?;
    Some(
        crate::wire::key_of(
            q.name(),
            u16::from(q.query_type()),
            u16::from(q.query_class()),
            request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
            request.metadata.checking_disabled,
        )
        .into(),
    )
}

/// One cached reply.
#[derive(Debug)]
pub struct Item {
    rcode: ResponseCode,
    authoritative: bool,
    authentic_data: bool,
    recursion_available: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    /// How long the entry lives, seconds.
    ttl: u32,
    stored: Instant,
    /// The cluster index generation it was answered from; `None` for upstream answers.
    generation: Option<u64>,
    /// Recent hits, for `prefetch`.
    hits: Mutex<VecDeque<Instant>>,
    /// A refresh (prefetch or stale) is in flight.
    refreshing: AtomicBool,
    /// The reply as bytes, made on the first hit answered from bytes (`None`: it cannot be).
    template: OnceLock<Option<Template>>,
}

impl Item {
    /// Seconds left (negative once expired).
    fn remaining(&self, now: Instant) -> i64 {
        i64::from(self.ttl) - now.saturating_duration_since(self.stored).as_secs() as i64
    }

    /// The reply to `request` from this entry, every record with `ttl`.
    fn reply(&self, request: &Message, ttl: u32) -> Message {
        let mut m = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
        m.metadata = Metadata::response_from_request(&request.metadata);
        m.metadata.authoritative = self.authoritative;
        let do_or_ad = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok)
            || request.metadata.authentic_data;
        m.metadata.authentic_data = self.authentic_data && do_or_ad;
        m.metadata.recursion_available = self.recursion_available;
        m.metadata.response_code = self.rcode;
        m.queries = request.queries.clone();
        m.answers = with_ttl(&self.answers, ttl);
        m.authorities = with_ttl(&self.authorities, ttl);
        m.additionals = with_ttl(&self.additionals, ttl);
        m
    }

    /// The reply as a wire template for a question whose wire form is `question`, made once;
    /// `loadbalance` must be the same on every call (the block's).
    pub fn template(&self, question: &[u8], loadbalance: bool) -> Option<&Template> {
        self.template
            .get_or_init(|| {
                let flags = Flags {
                    authoritative: self.authoritative,
                    recursion_available: self.recursion_available,
                    authentic_data: self.authentic_data,
                    rcode: u8::try_from(u16::from(self.rcode)).ok()?,
                };
                let sections = [&self.answers[..], &self.authorities, &self.additionals];
                Template::new(question, flags, sections, loadbalance)
            })
            .as_ref()
    }

    /// Takes the right to refresh this entry (prefetch, or a stale one): false while another
    /// refresh runs.
    pub fn claim_refresh(&self) -> bool {
        self.refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Gives the right to refresh back.
    pub fn end_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }
}

fn with_ttl(records: &[Record], ttl: u32) -> Vec<Record> {
    records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.ttl = ttl;
            r
        })
        .collect()
}

/// What the cache has for a request.
#[derive(Debug)]
pub enum Lookup {
    /// Not cached (or expired beyond use): ask the chain.
    Miss,
    /// A fresh reply; `prefetch` when the chain should be asked again behind it.
    Hit {
        reply: Message,
        kind: Kind,
        prefetch: Option<std::sync::Arc<Item>>,
    },
    /// An expired reply `serve_stale` may give: at once (`verify` false, with a refresh behind
    /// it unless one is running), or after the chain failed to give a fresh one.
    Stale {
        reply: Message,
        kind: Kind,
        item: std::sync::Arc<Item>,
        verify: bool,
        verify_timeout: Duration,
    },
}

/// How CoreDNS classifies a reply for caching (`response.Typify` and the cache's own rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyType {
    NoError,
    NameError,
    NoData,
    ServerError,
    Delegation,
    Other,
}

fn classify(m: &Message) -> ReplyType {
    let rcode = m.metadata.response_code;
    if m.queries
        .first()
        .is_some_and(|q| matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR))
        || m.metadata.op_code != OpCode::Query
    {
        return ReplyType::Other;
    }
    if !m.answers.is_empty() {
        return match rcode {
            ResponseCode::NoError if has_soa(m) && !answers_question(m) => ReplyType::NoData,
            ResponseCode::NoError => ReplyType::NoError,
            _ => ReplyType::Other,
        };
    }
    let soa = has_soa(m);
    let ns = m
        .authorities
        .iter()
        .any(|r| r.record_type() == RecordType::NS);
    match rcode {
        ResponseCode::NoError if soa => ReplyType::NoData,
        ResponseCode::NXDomain => ReplyType::NameError,
        ResponseCode::ServFail | ResponseCode::NotImp => ReplyType::ServerError,
        ResponseCode::NoError if ns => ReplyType::Delegation,
        ResponseCode::NoError => ReplyType::NoError,
        _ => ReplyType::Other,
    }
}

fn has_soa(m: &Message) -> bool {
    m.authorities
        .iter()
        .any(|r| r.record_type() == RecordType::SOA)
}

/// Whether the answer section answers the question: records of the asked type at the end of
/// the CNAME chain from the asked name.
fn answers_question(m: &Message) -> bool {
    let Some(q) = m.queries.first() else {
        return false;
    };
    let same = |a: &Name, b: &Name| a.eq_case(b) || a.to_lowercase() == b.to_lowercase();
    let mut name = q.name().clone();
    let mut seen = Vec::new();
    if q.query_type() == RecordType::ANY {
        return m.answers.iter().any(|r| same(&r.name, &name));
    }
    loop {
        if m.answers
            .iter()
            .any(|r| r.record_type() == q.query_type() && same(&r.name, &name))
        {
            return true;
        }
        let next = m.answers.iter().find_map(|r| match &r.data {
            hickory_proto::rr::RData::CNAME(c) if same(&r.name, &name) => Some(c.0.clone()),
            _ => None,
        });
        match next {
            Some(target) if !seen.iter().any(|s| same(s, &target)) => {
                seen.push(name);
                name = target;
            }
            _ => return false,
        }
    }
}

/// The smallest TTL of the reply's records, at most `max` (5 s when it has none).
fn minimal_ttl(m: &Message, kind: ReplyType, max: u32) -> u32 {
    if !matches!(
        kind,
        ReplyType::NoError | ReplyType::NameError | ReplyType::NoData
    ) {
        return 5;
    }
    if m.answers.is_empty() && m.authorities.is_empty() && m.additionals.is_empty() {
        return 5;
    }
    m.answers
        .iter()
        .chain(&m.authorities)
        .chain(&m.additionals)
        .map(|r| r.ttl)
        .fold(max, u32::min)
}

/// Entries of one cache, in shards, an arbitrary entry of a full shard evicted to make room.
#[derive(Debug)]
struct Store {
    per_shard: usize,
    /// Picks the shard (seeded: names are chosen by clients).
    hasher: foldhash::fast::RandomState,
    shards: Vec<Mutex<HashMap<Key, std::sync::Arc<Item>, foldhash::fast::RandomState>>>,
}

impl Store {
    fn new(capacity: usize) -> Store {
        Store {
            per_shard: (capacity / SHARDS).max(4),
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(
        &self,
        key: &[u8],
    ) -> &Mutex<HashMap<Key, std::sync::Arc<Item>, foldhash::fast::RandomState>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    fn get(&self, key: &[u8]) -> Option<std::sync::Arc<Item>> {
        self.shard(key)
            .lock()
            .expect("cache lock")
            .get(key)
            .cloned()
    }

    /// Adds `item`; true when another entry was evicted for it.
    fn add(&self, key: Key, item: Item) -> bool {
        let mut shard = self.shard(&key).lock().expect("cache lock");
        let mut evicted = false;
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            let victim = shard.keys().next().cloned();
            if let Some(victim) = victim {
                shard.remove(&victim);
                evicted = true;
            }
        }
        shard.insert(key, std::sync::Arc::new(item));
        evicted
    }

    fn remove(&self, key: &[u8]) {
        self.shard(key).lock().expect("cache lock").remove(key);
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("cache lock").len())
            .sum()
    }
}

/// Counters the cache keeps for `coredns_cache_*`.
#[derive(Debug, Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub hits_success: AtomicU64,
    pub hits_denial: AtomicU64,
    pub misses: AtomicU64,
    pub prefetches: AtomicU64,
    pub served_stale: AtomicU64,
    pub drops: AtomicU64,
    pub evictions_success: AtomicU64,
    pub evictions_denial: AtomicU64,
}

/// The response cache of one server block.
#[derive(Debug)]
pub struct Cache {
    pub settings: Settings,
    success: Store,
    denial: Store,
    pub counts: Counts,
    /// `settings.zones` in lower case on the wire.
    zones_wire: Vec<Vec<u8>>,
}

impl Cache {
    pub fn new(settings: Settings) -> Cache {
        Cache {
            success: Store::new(settings.success.capacity),
            denial: Store::new(settings.denial.capacity),
            zones_wire: settings.zones.iter().map(crate::wire::lower_wire).collect(),
            settings,
            counts: Counts::default(),
        }
    }

    /// Whether queries for `name` go through this cache.
    pub fn covers(&self, name: &Name) -> bool {
        self.settings.zones.iter().any(|z| z.zone_of(name))
    }

    /// Whether queries for the lower-case wire name `name` go through this cache.
    pub fn covers_wire(&self, name: &[u8]) -> bool {
        self.zones_wire
            .iter()
            .any(|z| crate::wire::in_zone(z, name))
    }

    /// Entries in the success and denial caches.
    pub fn entries(&self) -> (usize, usize) {
        (self.success.len(), self.denial.len())
    }

    /// What is cached for `request`, at `now`; `generation` is the current cluster index's.
    pub fn get(&self, request: &Message, now: Instant, generation: u64) -> Lookup {
        self.counts.requests.fetch_add(1, Ordering::Relaxed);
        let found = key_of(request).and_then(|key| self.find(&key, now, generation));
        let Some((item, kind)) = found else {
            self.counts.misses.fetch_add(1, Ordering::Relaxed);
            return Lookup::Miss;
        };
        self.count_hit(kind);
        let left = item.remaining(now);
        if left <= 0 {
            let stale = self
                .settings
                .serve_stale
                .expect("usable only with serve_stale");
            // With `verify`, counted only if the upstream fails and the entry is given.
            if !stale.verify {
                self.served_stale();
            }
            return Lookup::Stale {
                reply: item.reply(request, stale.response_ttl),
                kind,
                item,
                verify: stale.verify,
                verify_timeout: stale.verify_timeout,
            };
        }
        let reply = item.reply(request, self.answer_ttl(&item, left));
        let prefetch = self.should_prefetch(&item, now).then_some(item);
        Lookup::Hit {
            reply,
            kind,
            prefetch,
        }
    }

    /// The entry for `key` that may be given at `now`: fresh, or expired within `serve_stale`.
    fn find(
        &self,
        key: &[u8],
        now: Instant,
        generation: u64,
    ) -> Option<(std::sync::Arc<Item>, Kind)> {
        let stale_for = self
            .settings
            .serve_stale
            .map_or(0, |s| s.up_to.as_secs() as i64);
        let usable = |item: &Item| {
            let left = item.remaining(now);
            let current = item.generation.is_none_or(|g| g == generation);
            current && (left > 0 || (stale_for > 0 && -left < stale_for))
        };
        // The denial cache first, as CoreDNS: a cached SERVFAIL gives way to a success entry.
        if let Some(item) = self.denial.get(key).filter(|i| usable(i)) {
            if item.rcode == ResponseCode::ServFail
                && let Some(success) = self.success.get(key).filter(|i| usable(i))
            {
                return Some((success, Kind::Success));
            }
            return Some((item, Kind::Denial));
        }
        self.success
            .get(key)
            .filter(|i| usable(i))
            .map(|i| (i, Kind::Success))
    }

    /// A fresh entry for the wire `key` ([`crate::wire::Request::key`]) and the TTL to answer
    /// with, counting nothing: `None` when [`Cache::get`] would not give a plain hit (a miss, a
    /// stale entry, or `prefetch` configured, which needs the full path). Count the request with
    /// [`Cache::count_request`] once it is answered.
    pub fn fresh(
        &self,
        key: &[u8],
        now: Instant,
        generation: u64,
    ) -> Option<(std::sync::Arc<Item>, Kind, u32)> {
        if self.settings.prefetch.is_some_and(|p| p.amount > 0) {
            return None;
        }
        let (item, kind) = self.find(key, now, generation)?;
        let left = item.remaining(now);
        if left <= 0 {
            return None;
        }
        let ttl = self.answer_ttl(&item, left);
        Some((item, kind, ttl))
    }

    /// Whether [`Cache::get`] would miss the wire `key` at `now` (nothing usable is kept for
    /// it), counting nothing; count the request with [`Cache::count_miss`] once it is answered.
    pub fn misses(&self, key: &[u8], now: Instant, generation: u64) -> bool {
        self.find(key, now, generation).is_none()
    }

    /// Counts a request that missed, answered without [`Cache::get`].
    pub fn count_miss(&self) {
        self.counts.requests.fetch_add(1, Ordering::Relaxed);
        self.counts.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// The TTL a fresh entry with `left` seconds to live is answered with.
    fn answer_ttl(&self, item: &Item, left: i64) -> u32 {
        if self.settings.keepttl {
            item.ttl
        } else {
            left as u32
        }
    }

    /// Counts a request answered by an entry of `kind`.
    fn count_hit(&self, kind: Kind) {
        match kind {
            Kind::Success => &self.counts.hits_success,
            Kind::Denial => &self.counts.hits_denial,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request answered from bytes ([`Cache::fresh`]).
    pub fn count_request(&self, kind: Kind) {
        self.counts.requests.fetch_add(1, Ordering::Relaxed);
        self.count_hit(kind);
    }

    fn should_prefetch(&self, item: &Item, now: Instant) -> bool {
        let Some(p) = self.settings.prefetch.filter(|p| p.amount > 0) else {
            return false;
        };
        let hits = {
            let mut hits = item.hits.lock().expect("hits lock");
            while hits
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > p.window)
            {
                hits.pop_front();
            }
            hits.push_back(now);
            while hits.len() > p.amount {
                hits.pop_front();
            }
            hits.len()
        };
        let threshold = (f64::from(p.percentage) / 100.0 * f64::from(item.ttl)).ceil() as i64;
        hits >= p.amount && item.remaining(now) <= threshold
    }

    /// Counts an expired entry given to a client (`verify`: once the upstream failed).
    pub fn served_stale(&self) {
        self.counts.served_stale.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a prefetch sent upstream.
    pub fn prefetched(&self) {
        self.counts.prefetches.fetch_add(1, Ordering::Relaxed);
    }

    /// Stores `reply` to `request` when it may be cached and returns it as the client gets it:
    /// every record's TTL set to how long the entry lives (the TTL capped and raised to the
    /// minimum), as CoreDNS's cache writes it even when it does not keep it. `generation`:
    /// the cluster index generation of an answer from the cluster.
    pub fn put(
        &self,
        request: &Message,
        mut reply: Message,
        now: Instant,
        generation: Option<u64>,
    ) -> Message {
        let Some((kind, secs)) = self.settle(&mut reply) else {
            return reply;
        };
        let Some(key) = key_of(request) else {
            return reply;
        };
        if !answers_request(request, &reply) {
            self.counts.drops.fetch_add(1, Ordering::Relaxed);
            return reply;
        }
        if self.disabled(kind, request.queries[0].name()) {
            return reply;
        }
        let item = Item {
            rcode: reply.metadata.response_code,
            authoritative: reply.metadata.authoritative,
            authentic_data: reply.metadata.authentic_data,
            recursion_available: reply.metadata.recursion_available,
            answers: reply.answers.clone(),
            authorities: reply.authorities.clone(),
            additionals: reply.additionals.clone(),
            ttl: secs,
            stored: now,
            generation,
            hits: Mutex::default(),
            refreshing: AtomicBool::new(false),
            template: OnceLock::new(),
        };
        match kind {
            ReplyType::NoError | ReplyType::Delegation => {
                if self.success.add(key.clone(), item) {
                    self.counts
                        .evictions_success
                        .fetch_add(1, Ordering::Relaxed);
                }
                // A fresh answer replaces a cached failure of the same question.
                self.denial.remove(&key);
            }
            _ => {
                if self.denial.add(key, item) {
                    self.counts.evictions_denial.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        reply
    }

    /// `reply` as [`Cache::put`] passes it on when `put` would neither keep it nor count it:
    /// `None` when it would (only `put` may take that reply). Changes nothing.
    pub fn pass_through(&self, request: &Message, mut reply: Message) -> Option<Message> {
        let Some((kind, _)) = self.settle(&mut reply) else {
            return Some(reply);
        };
        if key_of(request).is_none() {
            return Some(reply);
        }
        (answers_request(request, &reply) && self.disabled(kind, request.queries[0].name()))
            .then_some(reply)
    }

    /// Whether `disable` keeps replies of `kind` for `name` out.
    fn disabled(&self, kind: ReplyType, name: &Name) -> bool {
        let zones = match kind {
            ReplyType::NoError | ReplyType::Delegation => &self.settings.no_success,
            _ => &self.settings.no_denial,
        };
        zones.iter().any(|z| z.zone_of(name))
    }

    /// Sets the TTLs of `reply` to what the cache answers with; its kind and that TTL when it
    /// may be kept at all.
    fn settle(&self, reply: &mut Message) -> Option<(ReplyType, u32)> {
        let kind = classify(reply);
        let secs = match kind {
            ReplyType::NameError | ReplyType::NoData => {
                let p = self.settings.denial;
                minimal_ttl(reply, kind, p.max_ttl).clamp(p.min_ttl.min(p.max_ttl), p.max_ttl)
            }
            ReplyType::ServerError => self.settings.servfail.as_secs() as u32,
            _ => {
                let p = self.settings.success;
                minimal_ttl(reply, kind, p.max_ttl).clamp(p.min_ttl.min(p.max_ttl), p.max_ttl)
            }
        };
        for r in reply
            .answers
            .iter_mut()
            .chain(reply.authorities.iter_mut())
            .chain(reply.additionals.iter_mut())
        {
            r.ttl = secs;
        }
        // Not kept: truncated replies, other rcodes, and NXDOMAIN or a NOERROR that does not
        // answer the question without an SOA (CoreDNS's `key`).
        let soa = has_soa(reply);
        let cacheable = !reply.metadata.truncation
            && !reply.queries.is_empty()
            && kind != ReplyType::Other
            && (kind != ReplyType::NameError || soa)
            && (kind != ReplyType::NoError
                || soa
                || reply.answers.is_empty()
                || answers_question(reply));
        (cacheable && secs != 0).then_some((kind, secs))
    }

    /// Caches a SERVFAIL for `request` (the chain failed without a reply), for `servfail`.
    pub fn put_failure(&self, request: &Message, now: Instant) {
        if self.settings.servfail.is_zero() {
            return;
        }
        let mut reply = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
        reply.metadata = Metadata::response_from_request(&request.metadata);
        reply.metadata.response_code = ResponseCode::ServFail;
        reply.queries = request.queries.clone();
        self.put(request, reply, now, None);
    }
}

/// Whether `reply`'s question is `request`'s (names compared without case).
fn answers_request(request: &Message, reply: &Message) -> bool {
    reply.queries.len() == 1
        && request.queries.first().is_some_and(|q| {
            let r = &reply.queries[0];
            r.query_type() == q.query_type()
                && r.query_class() == q.query_class()
                && r.name().to_lowercase() == q.name().to_lowercase()
        })
}

/// Whether a refreshed reply may replace a stale entry (`serve_stale verify`): NOERROR or
/// NXDOMAIN, not truncated.
pub fn refreshes(reply: &Message) -> bool {
    !reply.metadata.truncation
        && matches!(
            reply.metadata.response_code,
            ResponseCode::NoError | ResponseCode::NXDomain
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Query};
    use hickory_proto::rr::RData;
    use hickory_proto::rr::rdata::{A, SOA};

    fn request(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::new(42, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.queries
            .push(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    }

    fn answer(req: &Message, ttl: u32) -> Message {
        let mut m = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
        m.metadata = Metadata::response_from_request(&req.metadata);
        m.metadata.recursion_available = true;
        m.queries = req.queries.clone();
        m.answers.push(Record::from_rdata(
            req.queries[0].name().clone(),
            ttl,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        m
    }

    fn nxdomain(req: &Message, soa_ttl: u32) -> Message {
        let mut m = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
        m.metadata = Metadata::response_from_request(&req.metadata);
        m.metadata.response_code = ResponseCode::NXDomain;
        m.queries = req.queries.clone();
        m.authorities.push(Record::from_rdata(
            Name::from_ascii("example.").unwrap(),
            soa_ttl,
            RData::SOA(SOA::new(
                Name::from_ascii("ns.example.").unwrap(),
                Name::from_ascii("admin.example.").unwrap(),
                1,
                7200,
                1800,
                86400,
                soa_ttl,
            )),
        ));
        m
    }

    fn with_max(ttl: u32) -> Settings {
        let mut s = Settings::default();
        s.success.max_ttl = ttl;
        s.denial.max_ttl = ttl;
        s
    }

    #[test]
    fn an_answer_is_served_from_the_cache_with_its_ttl_counting_down() {
        let cache = Cache::new(with_max(30));
        let (t0, req) = (Instant::now(), request("www.example.", RecordType::A));
        let sent = cache.put(&req, answer(&req, 300), t0, None);
        assert_eq!(sent.answers[0].ttl, 30, "capped at the cache's TTL");
        let Lookup::Hit { reply, kind, .. } = cache.get(&req, t0 + Duration::from_secs(12), 0)
        else {
            panic!("a hit");
        };
        assert_eq!(kind, Kind::Success);
        assert_eq!(reply.answers[0].ttl, 18);
        assert!(reply.metadata.recursion_available);
        assert!(matches!(
            cache.get(&req, t0 + Duration::from_secs(30), 0),
            Lookup::Miss
        ));
    }

    #[test]
    fn a_short_ttl_is_raised_to_the_minimum() {
        let cache = Cache::new(Settings::default());
        let (t0, req) = (Instant::now(), request("short.example.", RecordType::A));
        let sent = cache.put(&req, answer(&req, 1), t0, None);
        assert_eq!(sent.answers[0].ttl, 5);
    }

    #[test]
    fn keys_tell_apart_case_insensitive_names_dnssec_ok_and_checking_disabled() {
        let cache = Cache::new(Settings::default());
        let t0 = Instant::now();
        let req = request("www.example.", RecordType::A);
        cache.put(&req, answer(&req, 60), t0, None);
        assert!(matches!(
            cache.get(&request("WWW.Example.", RecordType::A), t0, 0),
            Lookup::Hit { .. }
        ));
        let mut dnssec = request("www.example.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_dnssec_ok(true);
        dnssec.edns = Some(edns);
        assert!(matches!(cache.get(&dnssec, t0, 0), Lookup::Miss));
        let mut cd = request("www.example.", RecordType::A);
        cd.metadata.checking_disabled = true;
        assert!(matches!(cache.get(&cd, t0, 0), Lookup::Miss));
        assert!(matches!(
            cache.get(&request("www.example.", RecordType::AAAA), t0, 0),
            Lookup::Miss
        ));
    }

    #[test]
    fn nxdomain_goes_to_the_denial_cache_only_with_an_soa() {
        let cache = Cache::new(Settings::default());
        let t0 = Instant::now();
        let req = request("nope.example.", RecordType::A);
        let sent = cache.put(&req, nxdomain(&req, 60), t0, None);
        assert_eq!(sent.authorities[0].ttl, 60);
        assert!(matches!(
            cache.get(&req, t0, 0),
            Lookup::Hit {
                kind: Kind::Denial,
                ..
            }
        ));
        let bare = request("bare.example.", RecordType::A);
        let mut reply = nxdomain(&bare, 60);
        reply.authorities.clear();
        cache.put(&bare, reply, t0, None);
        assert!(matches!(cache.get(&bare, t0, 0), Lookup::Miss));
    }

    #[test]
    fn disable_keeps_the_named_zones_out_of_each_cache() {
        let settings = Settings {
            no_success: vec![Name::from_ascii("cluster.local.").unwrap()],
            no_denial: vec![Name::from_ascii("cluster.local.").unwrap()],
            ..Settings::default()
        };
        let cache = Cache::new(settings);
        let t0 = Instant::now();
        let svc = request("web.default.svc.cluster.local.", RecordType::A);
        let sent = cache.put(&svc, answer(&svc, 30), t0, Some(1));
        assert_eq!(sent.answers[0].ttl, 30, "TTLs still written");
        assert!(matches!(cache.get(&svc, t0, 1), Lookup::Miss));
        let gone = request("gone.default.svc.cluster.local.", RecordType::A);
        cache.put(&gone, nxdomain(&gone, 30), t0, Some(1));
        assert!(matches!(cache.get(&gone, t0, 1), Lookup::Miss));
        let other = request("www.example.", RecordType::A);
        cache.put(&other, answer(&other, 30), t0, None);
        assert!(matches!(cache.get(&other, t0, 1), Lookup::Hit { .. }));
    }

    #[test]
    fn a_cluster_answer_is_not_served_once_the_cluster_changed() {
        let cache = Cache::new(Settings::default());
        let t0 = Instant::now();
        let svc = request("web.default.svc.cluster.local.", RecordType::A);
        cache.put(&svc, answer(&svc, 30), t0, Some(7));
        assert!(matches!(cache.get(&svc, t0, 7), Lookup::Hit { .. }));
        assert!(matches!(cache.get(&svc, t0, 8), Lookup::Miss));
    }

    #[test]
    fn a_full_cache_evicts_and_holds_its_capacity() {
        let settings = Settings {
            denial: Part {
                capacity: 1024,
                max_ttl: 60,
                min_ttl: 5,
            },
            ..Settings::default()
        };
        let cache = Cache::new(settings);
        let t0 = Instant::now();
        for i in 0..5000 {
            let req = request(&format!("n{i}.example."), RecordType::A);
            cache.put(&req, nxdomain(&req, 60), t0, None);
        }
        let (_, denial) = cache.entries();
        assert!(denial <= 1024, "{denial}");
        assert!(denial > 900, "{denial}");
        assert!(cache.counts.evictions_denial.load(Ordering::Relaxed) >= 5000 - 1024);
    }

    #[test]
    fn an_expired_entry_is_stale_only_with_serve_stale_and_within_its_window() {
        let settings = Settings {
            serve_stale: Some(ServeStale {
                up_to: Duration::from_secs(3600),
                verify: true,
                verify_timeout: Duration::ZERO,
                response_ttl: 30,
            }),
            ..with_max(10)
        };
        let cache = Cache::new(settings);
        let t0 = Instant::now();
        let req = request("www.example.", RecordType::A);
        cache.put(&req, answer(&req, 60), t0, None);
        match cache.get(&req, t0 + Duration::from_secs(11), 0) {
            Lookup::Stale { reply, verify, .. } => {
                assert!(verify);
                assert_eq!(reply.answers[0].ttl, 30);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            cache.get(&req, t0 + Duration::from_secs(3700), 0),
            Lookup::Miss
        ));
        let plain = Cache::new(with_max(10));
        plain.put(&req, answer(&req, 60), t0, None);
        assert!(matches!(
            plain.get(&req, t0 + Duration::from_secs(11), 0),
            Lookup::Miss
        ));
    }

    #[test]
    fn a_popular_name_is_prefetched_near_expiry() {
        let settings = Settings {
            prefetch: Some(Prefetch {
                amount: 2,
                window: Duration::from_secs(60),
                percentage: 10,
            }),
            ..with_max(100)
        };
        let cache = Cache::new(settings);
        let t0 = Instant::now();
        let req = request("www.example.", RecordType::A);
        cache.put(&req, answer(&req, 100), t0, None);
        let prefetch = |at: u64| match cache.get(&req, t0 + Duration::from_secs(at), 0) {
            Lookup::Hit { prefetch, .. } => prefetch.is_some(),
            other => panic!("{other:?}"),
        };
        assert!(!prefetch(1), "one hit, far from expiry");
        assert!(!prefetch(50), "two hits, far from expiry");
        assert!(prefetch(91), "popular and within 10% of its TTL");
    }

    #[test]
    fn a_servfail_is_cached_briefly_and_gives_way_to_an_answer() {
        let cache = Cache::new(Settings::default());
        let t0 = Instant::now();
        let req = request("flaky.example.", RecordType::A);
        cache.put_failure(&req, t0);
        match cache.get(&req, t0 + Duration::from_secs(4), 0) {
            Lookup::Hit { reply, kind, .. } => {
                assert_eq!(kind, Kind::Denial);
                assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            cache.get(&req, t0 + Duration::from_secs(5), 0),
            Lookup::Miss
        ));
        cache.put_failure(&req, t0);
        cache.put(&req, answer(&req, 60), t0, None);
        assert!(matches!(
            cache.get(&req, t0, 0),
            Lookup::Hit {
                kind: Kind::Success,
                ..
            }
        ));
    }

    #[test]
    fn a_truncated_reply_is_not_cached() {
        let cache = Cache::new(Settings::default());
        let t0 = Instant::now();
        let req = request("big.example.", RecordType::TXT);
        let mut reply = answer(&req, 60);
        reply.metadata.truncation = true;
        cache.put(&req, reply, t0, None);
        assert!(matches!(cache.get(&req, t0, 0), Lookup::Miss));
    }
}
