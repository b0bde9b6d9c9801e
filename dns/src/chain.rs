//! One server block's plugins in CoreDNS's fixed order (prometheus, errors, log, loadbalance,
//! cache, kubernetes, loop, forward, whatever order the Corefile lists them in), and the
//! router that hands a query to the block of the longest matching zone. The cluster answer and
//! a cache hit are computed on the receiving task; anything that waits for an upstream (a
//! forwarded name, an ExternalName target outside the zones, a stale entry being verified)
//! becomes a future the server runs elsewhere.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, Record, RecordType};
use tokio::sync::watch;

use crate::cache::{Cache, Item, Lookup, refreshes};
use crate::config::Config;
use crate::forward::{ForwardError, Forwarder};
use crate::index::Index;
use crate::memo::{Kept, Memo};
use crate::message::{
    Cluster, Parsed, Transport, cluster, cluster_reading, encode, limit_for, parse, precheck,
    reply_to, with_rcode,
};
use crate::metrics::{ServerMetrics, Writer};
use crate::wire::{Flags, Scratch, Template};

/// The `kubernetes` directive at run time: its options and the index it answers from.
#[derive(Debug, Clone)]
pub struct ClusterSource {
    pub config: Arc<Config>,
    pub index: watch::Receiver<Arc<Index>>,
}

/// The `loop` directive: the random name this server asks itself at start, and how often it
/// came back.
#[derive(Debug)]
pub struct LoopProbe {
    pub name: Name,
    /// The zone of the block, for the message.
    pub zone: Name,
    seen: AtomicU32,
    disabled: AtomicBool,
}

impl LoopProbe {
    /// A probe `<random>.<random>.<zone>`; for a zone too long to have such a name below it,
    /// a probe that is never sent nor counted.
    pub fn new(zone: Name) -> LoopProbe {
        let label = || (rand::random::<u64>() >> 2).to_string();
        let name = Name::from_labels([label(), label()].iter().map(|l| l.as_bytes()))
            .and_then(|n| n.append_domain(&zone))
            .ok();
        LoopProbe {
            disabled: AtomicBool::new(name.is_none()),
            name: name.unwrap_or_else(|| zone.clone()),
            zone,
            seen: AtomicU32::new(0),
        }
    }

    /// Counts the probe when `req` is it; true once it came back more than twice (a loop).
    fn looped(&self, req: &Message) -> bool {
        let q = &req.queries[0];
        if q.query_type() != RecordType::HINFO
            || self.disabled.load(Ordering::Relaxed)
            || q.name().to_lowercase() != self.name.to_lowercase()
        {
            return false;
        }
        self.seen.fetch_add(1, Ordering::Relaxed) + 1 > 2
    }

    /// Sends the probe to `addr` once a second for up to 30 s until something answers, then
    /// stops watching for it, as CoreDNS's `loop` does.
    pub async fn run(self: Arc<Self>, addr: SocketAddr) {
        if self.disabled.load(Ordering::Relaxed) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut probe = Message::query();
        probe.metadata.recursion_desired = true;
        probe.queries.push(hickory_proto::op::Query::query(
            self.name.clone(),
            RecordType::HINFO,
        ));
        while Instant::now() < deadline {
            probe.metadata.id = rand::random();
            if ask_once(&probe, addr).await.is_ok() {
                break;
            }
            self.seen.store(0, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.disabled.store(true, Ordering::Relaxed);
    }
}

async fn ask_once(probe: &Message, addr: SocketAddr) -> std::io::Result<()> {
    let local: SocketAddr = if addr.is_ipv4() {
        ([127, 0, 0, 1], 0).into()
    } else {
        ([0u16, 0, 0, 0, 0, 0, 0, 1], 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local).await?;
    let target = if addr.ip().is_unspecified() {
        SocketAddr::new(local.ip(), addr.port())
    } else {
        addr
    };
    let bytes = probe
        .to_vec()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    socket.send_to(&bytes, target).await?;
    let mut buf = vec![0u8; 4096];
    // CoreDNS's client waits 2 s for the reply.
    tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("timeout"))??;
    Ok(())
}

/// One server block.
#[derive(Debug)]
pub struct Chain {
    pub cluster: Option<ClusterSource>,
    pub cache: Option<Arc<Cache>>,
    pub hosts: Option<Arc<crate::hosts::Hosts>>,
    pub forward: Option<Arc<Forwarder>>,
    pub loadbalance: bool,
    /// The `log` rules (none: no line).
    pub log: Vec<crate::log::Rule>,
    pub errors: Option<Arc<crate::errors::ErrorLog>>,
    pub loop_probe: Option<Arc<LoopProbe>>,
    /// `bufsize`: the largest EDNS buffer size a request is taken to have.
    pub bufsize: Option<u16>,
    /// `rewrite name` rules, in order.
    pub rewrite: Vec<crate::rewrite::NameRule>,
}

/// A route: a zone of a block's keys, the block, and the metrics of that zone.
#[derive(Debug, Clone)]
pub struct Route {
    pub zone: Name,
    pub chain: Arc<Chain>,
    pub metrics: Arc<ServerMetrics>,
}

/// The blocks listening on one address, chosen by the longest zone that holds the name.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    /// Each route's zone in lower case on the wire, in the same order.
    zones_wire: Vec<Vec<u8>>,
}

/// What the receiving task does with a query.
pub enum Step {
    /// The reply is appended to the caller's buffer (true), or there is none to send (false).
    Done(bool),
    /// Run this elsewhere and send what it gives.
    Later(Pin<Box<dyn std::future::Future<Output = Option<Vec<u8>>> + Send>>),
}

/// A query in flight.
#[derive(Debug, Clone)]
struct Query {
    /// The request as the block's plugins see it (after `rewrite`).
    req: Message,
    /// The request as the client sent it, when `rewrite` changed it (else it is `req`).
    asked: Option<Box<Message>>,
    /// How `rewrite` maps the reply back.
    back: Vec<crate::rewrite::ResponseRule>,
    transport: Transport,
    peer: SocketAddr,
    /// The address the query came in on.
    local: SocketAddr,
    started: Instant,
    size: usize,
    route: Route,
}

impl Query {
    /// The request as the client sent it.
    fn asked(&self) -> &Message {
        self.asked.as_deref().unwrap_or(&self.req)
    }
}

/// Where a block's answer stands after the synchronous part.
enum Start {
    Done(Message, Writer),
    Wait(Wait),
}

/// What an answer waits for.
enum Wait {
    /// The upstream; with `serve_stale verify`, the stale reply to give if it fails, and how
    /// long to wait before giving it anyway (zero: the upstream's own timeout).
    Forward {
        stale: Option<(Message, Arc<Item>, Duration)>,
    },
    /// The records of an ExternalName target outside the zones.
    External {
        reply: Message,
        target: Name,
        generation: u64,
    },
}

/// What the cluster and the forwarder give, before the cache.
enum Rest {
    Reply(Message, Option<u64>),
    Forward,
    External {
        reply: Message,
        target: Name,
        generation: u64,
    },
    /// No plugin of the block takes the name (outside `kubernetes`' zones, no `forward` for
    /// it): SERVFAIL, as CoreDNS's chain ends ("no next plugin found").
    Unhandled,
    /// A plugin failed the query without an error to report (`hosts` on an unknown name):
    /// SERVFAIL, written by the server.
    Failed,
}

/// What a receiving thread keeps from query to query: its cluster answers as bytes, buffers
/// for shuffles, and the RNG `loadbalance` draws from (on either path).
pub struct Worker<R> {
    pub memo: Memo,
    scratch: Scratch,
    pub rng: R,
    /// False: every query takes the full path (the reference the fast one is held to).
    fast: bool,
}

impl<R: rand::Rng> Worker<R> {
    pub fn new(memo: Memo, rng: R) -> Worker<R> {
        Worker {
            memo,
            scratch: Scratch::default(),
            rng,
            fast: true,
        }
    }

    /// A worker that answers every query by the full path.
    pub fn reference(rng: R) -> Worker<R> {
        Worker {
            fast: false,
            ..Worker::new(Memo::new(0), rng)
        }
    }
}

/// `reply`, if any, appended to `out`.
fn sent(reply: Option<Vec<u8>>, out: &mut Vec<u8>) -> Step {
    match reply {
        Some(reply) => {
            out.extend_from_slice(&reply);
            Step::Done(true)
        }
        None => Step::Done(false),
    }
}

impl Router {
    pub fn new(mut routes: Vec<Route>) -> Router {
        // Longest zone first, so the first match is the best.
        routes.sort_by_key(|r| std::cmp::Reverse(r.zone.num_labels()));
        let zones_wire = routes
            .iter()
            .map(|r| crate::wire::lower_wire(&r.zone))
            .collect();
        Router { routes, zones_wire }
    }

    fn route(&self, name: &Name) -> Option<&Route> {
        self.routes.iter().find(|r| r.zone.zone_of(name))
    }

    /// Handles the bytes of one query from `peer` to `local`, appending the reply to `out`.
    pub fn handle<R: rand::Rng>(
        self: &Arc<Self>,
        bytes: &[u8],
        transport: Transport,
        peer: SocketAddr,
        local: SocketAddr,
        worker: &mut Worker<R>,
        out: &mut Vec<u8>,
    ) -> Step {
        let started = Instant::now();
        if worker.fast && self.answer_bytes(bytes, transport, peer, started, worker, out) {
            return Step::Done(true);
        }
        self.decoded(bytes, transport, peer, local, started, &mut worker.rng, out)
    }

    /// A plain query answered straight from its bytes — by a fresh cache entry, or by a
    /// cluster answer the worker keeps ([`Memo`]) — with what the full path gives for it (the
    /// same bytes; with `loadbalance` the same shuffle from the same RNG) and the same
    /// metrics. False leaves it to the full path: a query that is not plain
    /// ([`crate::wire::Request::peek`]), a block with `rewrite` or `log` (they need the decoded
    /// message), no fresh entry or kept answer, a cache with `prefetch`, a reply too large, a
    /// question spelt otherwise than the kept answer's where its records take that spelling.
    fn answer_bytes<R: rand::Rng>(
        &self,
        bytes: &[u8],
        transport: Transport,
        peer: SocketAddr,
        started: Instant,
        worker: &mut Worker<R>,
        out: &mut Vec<u8>,
    ) -> bool {
        let Some(mut request) = crate::wire::Request::peek(bytes) else {
            return false;
        };
        let key = request.key(bytes);
        let name = request.lower_name(&key);
        let Some((route, _)) = self
            .routes
            .iter()
            .zip(&self.zones_wire)
            .find(|(_, zone)| crate::wire::in_zone(zone, name))
        else {
            return false;
        };
        let chain = &route.chain;
        if !chain.rewrite.is_empty() || !chain.log.is_empty() {
            return false;
        }
        if let (Some(size), Some(edns)) = (chain.bufsize, request.edns.as_mut())
            && edns.payload > size
        {
            edns.payload = size.max(512);
        }
        let limit = limit_for(transport, request.edns.map(|e| e.payload));
        // A template's question is the key's, in lower case, as most clients spell it.
        let question = &key[..request.question.len()];
        let cache = chain.cache.as_ref().filter(|c| c.covers_wire(name));
        let index = chain.cluster.as_ref().map(|c| c.index.borrow().clone());
        let generation = index.as_ref().map_or(0, |i| i.snapshot.generation);
        let Worker {
            memo, scratch, rng, ..
        } = worker;
        let base = out.len();
        match (cache, index) {
            (Some(cache), _) if !cache.misses(&key, started, generation) => {
                let Some((item, kind, ttl)) = cache.fresh(&key, started, generation) else {
                    return false;
                };
                let Some(template) = item.template(question, chain.loadbalance) else {
                    return false;
                };
                if !template.reply_into(&request, bytes, Some(ttl), limit, rng, out, scratch) {
                    return false;
                }
                cache.count_request(kind);
            }
            (cache, Some(index)) => {
                if chain.hosts.is_some() || !memo.keeps() {
                    return false;
                }
                if let Kept::Unknown = memo.get(&key, chain, &index) {
                    let (template, reads) = cluster_template(chain, cache, &index, question);
                    memo.put(&key, chain, &index, reads, template);
                }
                let Kept::Answer(template) = memo.get(&key, chain, &index) else {
                    return false;
                };
                if !template.reply_into(&request, bytes, None, limit, rng, out, scratch) {
                    return false;
                }
                if let Some(cache) = cache {
                    cache.count_miss();
                }
            }
            _ => return false,
        }
        route.metrics.report(
            transport,
            peer.is_ipv6(),
            RecordType::from(request.qtype),
            request.edns.is_some_and(|e| e.dnssec_ok),
            bytes.len(),
            out.len() - base,
            ResponseCode::from(0, out[base + 3] & 0x0f),
            Writer::Chain,
            started.elapsed(),
        );
        true
    }

    /// The full path: the request decoded, each plugin of the block in turn.
    #[allow(clippy::too_many_arguments)]
    fn decoded(
        self: &Arc<Self>,
        bytes: &[u8],
        transport: Transport,
        peer: SocketAddr,
        local: SocketAddr,
        started: Instant,
        rng: &mut impl rand::Rng,
        out: &mut Vec<u8>,
    ) -> Step {
        let req = match parse(bytes) {
            Parsed::Query(req) => req,
            Parsed::Reply(reply) => return sent(reply, out),
        };
        if let Some(reply) = precheck(&req) {
            return sent(encode(reply, &req, transport), out);
        }
        let Some(route) = self.route(req.queries[0].name()).cloned() else {
            // No block holds the name: refused before any plugin, as CoreDNS does.
            let reply = with_rcode(reply_to(&req), ResponseCode::Refused);
            return sent(encode(reply, &req, transport), out);
        };
        let mut req = req;
        if let (Some(size), Some(edns)) = (route.chain.bufsize, req.edns.as_mut())
            && edns.max_payload() > size
        {
            edns.set_max_payload(size);
        }
        // The request as asked is kept apart only when `rewrite` changed it: no copy per query.
        let (inner, asked, back) = match crate::rewrite::apply(&route.chain.rewrite, &req) {
            Ok(Some(rewritten)) => (rewritten.request, Some(Box::new(req)), rewritten.back),
            Ok(None) => (req, None, Vec::new()),
            // CoreDNS: SERVFAIL, the question as asked.
            Err(e) => {
                route.chain.report_error(2, &req, &e);
                let reply = with_rcode(reply_to(&req), ResponseCode::ServFail);
                return sent(encode(reply, &req, transport), out);
            }
        };
        let query = Query {
            req: inner,
            asked,
            back,
            transport,
            peer,
            local,
            started,
            size: bytes.len(),
            route,
        };
        match self.start(&query) {
            Start::Done(reply, writer) => sent(finish(&query, reply, writer, rng), out),
            Start::Wait(wait) => {
                let router = self.clone();
                Step::Later(Box::pin(async move {
                    let (reply, writer) = router.complete(&query, wait).await;
                    finish(&query, reply, writer, &mut rand::rng())
                }))
            }
        }
    }

    /// The whole chain for a query made inside the server (an ExternalName target): the
    /// reply, counted and logged like any other.
    fn lookup(
        self: Arc<Self>,
        query: Query,
    ) -> Pin<Box<dyn std::future::Future<Output = Message> + Send>> {
        Box::pin(async move {
            let (reply, writer) = match self.start(&query) {
                Start::Done(reply, writer) => (reply, writer),
                Start::Wait(wait) => self.complete(&query, wait).await,
            };
            let reply = shuffled(&query, reverted(&query, reply), &mut rand::rng());
            let size = reply.to_vec().map_or(0, |b| b.len());
            report(&query, reply.metadata.response_code, size, writer);
            log(&query, &reply, size);
            reply
        })
    }

    /// The part of the chain that needs no upstream.
    fn start(self: &Arc<Self>, q: &Query) -> Start {
        let chain = &q.route.chain;
        if let Some(probe) = &chain.loop_probe
            && probe.looped(&q.req)
        {
            let message = format!(
                "[FATAL] plugin/loop: Loop ({} -> {}) detected for zone \"{}\", see https://coredns.io/plugins/loop#troubleshooting. Query: \"HINFO {}\" — a forward upstream sends this server's queries back to it (often a resolv.conf naming 127.0.0.53 or this server itself); point forward at a resolver that does not",
                q.peer, q.route.metrics.server, probe.zone, probe.name
            );
            eprintln!("{message}");
            println!("{message}");
            std::process::exit(1);
        }
        let now = Instant::now();
        let generation = chain.generation();
        let mut stale = None;
        if let Some(cache) = chain.covering_cache(q.req.queries[0].name()) {
            match cache.get(&q.req, now, generation) {
                Lookup::Hit {
                    reply, prefetch, ..
                } => {
                    if let Some(item) = prefetch
                        && item.claim_refresh()
                    {
                        cache.prefetched();
                        self.refresh_behind(q, item, false);
                    }
                    return Start::Done(reply, Writer::Chain);
                }
                Lookup::Stale {
                    reply,
                    item,
                    verify: false,
                    ..
                } => {
                    if item.claim_refresh() {
                        self.refresh_behind(q, item, true);
                    }
                    return Start::Done(reply, Writer::Chain);
                }
                Lookup::Stale {
                    reply,
                    item,
                    verify_timeout,
                    ..
                } => stale = Some((reply, item, verify_timeout)),
                Lookup::Miss => {}
            }
        }
        match chain.rest(&q.req) {
            Rest::Reply(reply, generation) => {
                Start::Done(chain.cached(&q.req, reply, now, generation), Writer::Chain)
            }
            Rest::Unhandled => {
                chain.report_error(2, &q.req, "no next plugin found");
                Start::Done(
                    with_rcode(reply_to(&q.req), ResponseCode::ServFail),
                    Writer::Server,
                )
            }
            Rest::Failed => Start::Done(
                with_rcode(reply_to(&q.req), ResponseCode::ServFail),
                Writer::Server,
            ),
            Rest::Forward => Start::Wait(Wait::Forward { stale }),
            Rest::External {
                reply,
                target,
                generation,
            } => Start::Wait(Wait::External {
                reply,
                target,
                generation,
            }),
        }
    }

    /// The part of the chain that waits.
    async fn complete(self: &Arc<Self>, q: &Query, wait: Wait) -> (Message, Writer) {
        let chain = &q.route.chain;
        match wait {
            Wait::Forward { stale } => {
                let forward = chain
                    .forward
                    .as_ref()
                    .expect("forward waits need a forwarder");
                let asked = forward.resolve(&q.req, q.transport);
                let result = match &stale {
                    Some((_, item, timeout)) if !timeout.is_zero() => {
                        match tokio::time::timeout(*timeout, asked).await {
                            Ok(result) => result,
                            Err(_) => {
                                // The refresh goes on behind the stale answer, as CoreDNS's.
                                if item.claim_refresh() {
                                    self.refresh_behind(q, item.clone(), true);
                                }
                                Err(ForwardError::Failed("serve_stale verify timeout".into()))
                            }
                        }
                    }
                    _ => asked.await,
                };
                let stale_given = || {
                    if let Some(cache) = chain.covering_cache(q.req.queries[0].name()) {
                        cache.served_stale();
                    }
                };
                match (result, stale) {
                    (Ok(reply), Some((stale, _, _))) if !refreshes(&reply) => {
                        stale_given();
                        (stale, Writer::Chain)
                    }
                    (Ok(reply), _) => (
                        chain.cached(&q.req, reply, Instant::now(), None),
                        Writer::Chain,
                    ),
                    (Err(_), Some((stale, _, _))) => {
                        stale_given();
                        (stale, Writer::Chain)
                    }
                    (Err(e), None) => {
                        chain.report_error(u16::from(failure_code(&e)), &q.req, &e.to_string());
                        if let Some(cache) = chain.covering_cache(q.req.queries[0].name())
                            && matches!(e, ForwardError::Failed(_))
                        {
                            cache.put_failure(&q.req, Instant::now());
                        }
                        (
                            with_rcode(reply_to(&q.req), failure_code(&e)),
                            Writer::Server,
                        )
                    }
                }
            }
            Wait::External {
                mut reply,
                target,
                generation,
            } => {
                let mut sub = q.req.clone();
                sub.queries[0].set_name(target.clone());
                let target_reply = match self.route(&target).cloned() {
                    Some(route) => {
                        let inner = Query {
                            asked: None,
                            req: sub,
                            back: Vec::new(),
                            route,
                            ..q.clone()
                        };
                        Some(self.clone().lookup(inner).await)
                    }
                    None => None,
                };
                if let Some(found) = target_reply {
                    reply.answers.extend(found.answers);
                    reply.metadata.truncation |= found.metadata.truncation;
                }
                (
                    chain.cached(&q.req, reply, Instant::now(), Some(generation)),
                    Writer::Chain,
                )
            }
        }
    }

    /// Asks the rest of the chain again for a cached question (prefetch, or an expired entry
    /// served at once) and caches what comes back.
    fn refresh_behind(self: &Arc<Self>, q: &Query, item: Arc<Item>, stale: bool) {
        let (router, q) = (self.clone(), q.clone());
        tokio::spawn(async move {
            let chain = &q.route.chain;
            match chain.rest(&q.req) {
                Rest::Reply(reply, generation) => {
                    chain.cached(&q.req, reply, Instant::now(), generation);
                }
                Rest::Forward => {
                    if let Some(forward) = &chain.forward
                        && let Ok(reply) = forward.resolve(&q.req, q.transport).await
                        && (!stale || refreshes(&reply))
                    {
                        chain.cached(&q.req, reply, Instant::now(), None);
                    }
                }
                Rest::External {
                    reply,
                    target,
                    generation,
                } => {
                    let wait = Wait::External {
                        reply,
                        target,
                        generation,
                    };
                    router.complete(&q, wait).await;
                }
                Rest::Unhandled | Rest::Failed => {}
            }
            item.end_refresh();
        });
    }
}

/// The rcode of a forwarding failure: REFUSED over `max_concurrent`, SERVFAIL else.
fn failure_code(e: &ForwardError) -> ResponseCode {
    match e {
        ForwardError::LimitExceeded(_) => ResponseCode::Refused,
        ForwardError::Failed(_) => ResponseCode::ServFail,
    }
}

impl Chain {
    /// Writes `errors`' line for `req` answered with `rcode` because of `error`, when the block
    /// has `errors`.
    fn report_error(&self, rcode: u16, req: &Message, error: &str) {
        if let Some(errors) = &self.errors {
            let q = &req.queries[0];
            // CoreDNS's state.Name() and state.Type(): lower-cased, miekg's type names.
            errors.report(
                rcode,
                &q.name().to_lowercase().to_string(),
                &crate::message::type_name(q.query_type()),
                error,
            );
        }
    }

    /// The generation of the cluster snapshot answered from (0 without `kubernetes`).
    fn generation(&self) -> u64 {
        self.cluster
            .as_ref()
            .map_or(0, |c| c.index.borrow().snapshot.generation)
    }

    fn covering_cache(&self, name: &Name) -> Option<&Arc<Cache>> {
        self.cache.as_ref().filter(|c| c.covers(name))
    }

    /// `reply` as the cache passes it on (TTLs set), stored when it may be.
    fn cached(
        &self,
        req: &Message,
        reply: Message,
        now: Instant,
        generation: Option<u64>,
    ) -> Message {
        match self.covering_cache(req.queries[0].name()) {
            Some(cache) => cache.put(req, reply, now, generation),
            None => reply,
        }
    }

    /// The cluster's answer, or where the question goes instead.
    fn rest(&self, req: &Message) -> Rest {
        let name = req.queries[0].name();
        if let Some(hosts) = &self.hosts {
            match hosts.answer(req) {
                crate::hosts::Outcome::Pass => {}
                crate::hosts::Outcome::Reply(reply) => return Rest::Reply(reply, None),
                crate::hosts::Outcome::Fail => return Rest::Failed,
            }
        }
        let forwards = self.forward.as_ref().is_some_and(|f| f.handles(name));
        if let Some(source) = &self.cluster {
            let index = source.index.borrow().clone();
            let generation = index.snapshot.generation;
            match cluster(&index, &source.config, req) {
                Cluster::NotServed => {}
                Cluster::Answer(reply) => return Rest::Reply(reply, Some(generation)),
                Cluster::FallsThrough(_) if forwards => return Rest::Forward,
                Cluster::FallsThrough(reply) => return Rest::Reply(reply, Some(generation)),
                Cluster::External { reply, target } => {
                    return Rest::External {
                        reply,
                        target,
                        generation,
                    };
                }
            }
        }
        if forwards {
            Rest::Forward
        } else {
            Rest::Unhandled
        }
    }
}

/// The cluster's answer to the lower-case `question` as a template, with what it read of the
/// index; no template when the full path must answer it: a name the cluster does not answer
/// alone (outside its zones, falling through, an ExternalName leaving them), a reply the
/// covering `cache` would keep, one the template cannot hold.
fn cluster_template(
    chain: &Chain,
    cache: Option<&Arc<Cache>>,
    index: &Index,
    question: &[u8],
) -> (Option<Template>, crate::answer::Reads) {
    let whole = || crate::answer::Reads {
        whole: true,
        ..Default::default()
    };
    let Some(source) = &chain.cluster else {
        return (None, whole());
    };
    let Some(req) = crate::wire::question_message(question) else {
        return (None, whole());
    };
    let Some((answer, reads)) = cluster_reading(index, &source.config, &req) else {
        return (None, whole());
    };
    let Cluster::Answer(reply) = answer else {
        return (None, reads);
    };
    let reply = match cache {
        Some(cache) => match cache.pass_through(&req, reply) {
            Some(reply) => reply,
            None => return (None, reads),
        },
        None => reply,
    };
    let Ok(rcode) = u8::try_from(u16::from(reply.metadata.response_code)) else {
        return (None, reads);
    };
    let flags = Flags {
        authoritative: reply.metadata.authoritative,
        recursion_available: reply.metadata.recursion_available,
        authentic_data: reply.metadata.authentic_data,
        rcode,
    };
    let sections = [&reply.answers[..], &reply.authorities, &reply.additionals];
    (
        Template::new(question, flags, sections, chain.loadbalance),
        reads,
    )
}

/// `reply` with `loadbalance`'s shuffle applied when the block has it.
fn shuffled(q: &Query, mut reply: Message, rng: &mut impl rand::Rng) -> Message {
    if q.route.chain.loadbalance && reply.metadata.response_code == ResponseCode::NoError {
        for section in [
            &mut reply.answers,
            &mut reply.authorities,
            &mut reply.additionals,
        ] {
            round_robin(section, rng);
        }
    }
    reply
}

/// CoreDNS's `loadbalance` on one section: addresses and MX records shuffled; CNAMEs first,
/// then the other records, then the addresses, then the MX records (a section of addresses
/// alone is just shuffled).
pub fn round_robin(section: &mut Vec<Record>, rng: &mut impl rand::Rng) {
    use rand::seq::SliceRandom as _;
    if section.len() <= 1
        || section
            .iter()
            .any(|r| matches!(r.record_type(), RecordType::AXFR | RecordType::IXFR))
    {
        return;
    }
    let is_address = |r: &Record| matches!(r.record_type(), RecordType::A | RecordType::AAAA);
    let first = section[0].record_type();
    if is_address(&section[0]) && section.iter().all(|r| r.record_type() == first) {
        section.shuffle(rng);
        return;
    }
    let (mut cname, mut address, mut mx, mut rest) = (vec![], vec![], vec![], vec![]);
    for r in section.drain(..) {
        match r.record_type() {
            RecordType::CNAME => cname.push(r),
            RecordType::A | RecordType::AAAA => address.push(r),
            RecordType::MX => mx.push(r),
            _ => rest.push(r),
        }
    }
    address.shuffle(rng);
    mx.shuffle(rng);
    section.extend(cname);
    section.extend(rest);
    section.extend(address);
    section.extend(mx);
}

/// The bytes for the client: shuffled, encoded within the client's size, counted, logged.
fn finish(q: &Query, reply: Message, writer: Writer, rng: &mut impl rand::Rng) -> Option<Vec<u8>> {
    let reply = shuffled(q, reverted(q, reply), rng);
    let rcode = reply.metadata.response_code;
    let bytes = encode(reply, q.asked(), q.transport)?;
    report(q, rcode, bytes.len(), writer);
    if !q.route.chain.log.is_empty()
        && let Ok(sent) = Message::from_vec(&bytes)
    {
        log(q, &sent, bytes.len());
    }
    Some(bytes)
}

/// `reply` as `rewrite` maps it back to what the client asked.
fn reverted(q: &Query, mut reply: Message) -> Message {
    if let Some(asked) = &q.asked {
        crate::rewrite::revert(&mut reply, asked, &q.back);
    }
    reply
}

/// Counts the query in the block's metrics.
fn report(q: &Query, rcode: ResponseCode, size: usize, writer: Writer) {
    let question = &q.asked().queries[0];
    q.route.metrics.report(
        q.transport,
        q.peer.is_ipv6(),
        question.query_type(),
        q.asked().edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        q.size,
        size,
        rcode,
        writer,
        q.started.elapsed(),
    );
}

/// Writes the query's `log` line to stdout, when a rule of the block takes its name and class.
fn log(q: &Query, reply: &Message, size: usize) {
    use crate::log::{Entry, class_of, render, rule_for};
    let Some(rule) = rule_for(&q.route.chain.log, q.asked().queries[0].name()) else {
        return;
    };
    if !rule.logs(class_of(reply)) {
        return;
    }
    let entry = Entry {
        request: q.asked(),
        size: q.size,
        reply,
        reply_size: size,
        peer: q.peer,
        local: q.local,
        transport: q.transport,
        took: q.started.elapsed(),
    };
    println!("[INFO] {}", render(&rule.format, &entry));
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::RData;
    use hickory_proto::rr::rdata::{A, CNAME, MX, TXT};
    use rand::SeedableRng as _;

    fn record(data: RData) -> Record {
        Record::from_rdata(Name::from_ascii("x.example.").unwrap(), 30, data)
    }

    #[test]
    fn loadbalance_keeps_cnames_first_and_shuffles_addresses_and_mx() {
        let mut section = vec![
            record(RData::A(A::new(192, 0, 2, 1))),
            record(RData::MX(MX::new(
                10,
                Name::from_ascii("mx1.example.").unwrap(),
            ))),
            record(RData::CNAME(CNAME(Name::from_ascii("y.example.").unwrap()))),
            record(RData::TXT(TXT::new(vec!["t".into()]))),
            record(RData::A(A::new(192, 0, 2, 2))),
            record(RData::MX(MX::new(
                20,
                Name::from_ascii("mx2.example.").unwrap(),
            ))),
        ];
        let mut seen_orders = std::collections::BTreeSet::new();
        for seed in 0..32 {
            let mut s = section.clone();
            round_robin(&mut s, &mut rand::rngs::StdRng::seed_from_u64(seed));
            let types: Vec<RecordType> = s.iter().map(|r| r.record_type()).collect();
            assert_eq!(
                types,
                [
                    RecordType::CNAME,
                    RecordType::TXT,
                    RecordType::A,
                    RecordType::A,
                    RecordType::MX,
                    RecordType::MX
                ]
            );
            seen_orders.insert(format!(
                "{:?}",
                s.iter().map(|r| r.data.to_string()).collect::<Vec<_>>()
            ));
        }
        assert!(seen_orders.len() > 1, "the addresses were never shuffled");
        section.truncate(1);
        let before = section.clone();
        round_robin(&mut section, &mut rand::rng());
        assert_eq!(section, before);
    }

    /// A router of one root block with a cache holding `replies` (each stored for the request
    /// it answers).
    fn cached_router(
        loadbalance: bool,
        bufsize: Option<u16>,
        log: Vec<crate::log::Rule>,
        replies: &[Message],
    ) -> Arc<Router> {
        let cache = Arc::new(Cache::new(crate::cache::Settings::default()));
        for reply in replies {
            let mut req = reply.clone();
            req.metadata.message_type = hickory_proto::op::MessageType::Query;
            req.answers.clear();
            req.authorities.clear();
            req.additionals.clear();
            cache.put(&req, reply.clone(), Instant::now(), None);
        }
        let chain = Arc::new(Chain {
            cluster: None,
            cache: Some(cache),
            hosts: None,
            forward: None,
            loadbalance,
            log,
            errors: None,
            loop_probe: None,
            bufsize,
            rewrite: Vec::new(),
        });
        Arc::new(Router::new(vec![Route {
            zone: Name::root(),
            chain,
            metrics: Arc::new(ServerMetrics::new("dns://:53".into(), ".".into(), "cache")),
        }]))
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn the_loop_probe_of_the_root_zone_is_a_random_name_below_it() {
        // Found by the differential fuzz target: the probe of `.` was `.` itself, so three
        // HINFO questions for the root from anyone ended the process as a loop.
        let probe = LoopProbe::new(Name::root());
        assert_eq!(probe.name.num_labels(), 2, "{}", probe.name);
        let root = ask(".", RecordType::HINFO, None);
        assert!((0..5).all(|_| !probe.looped(&root)));
        let mut own = root.clone();
        own.queries[0].set_name(probe.name.clone());
        assert!(!probe.looped(&own) && !probe.looped(&own) && probe.looped(&own));
        let long_label = "a".repeat(63);
        let zone = Name::from_ascii(format!(
            "{long_label}.{long_label}.{long_label}.{}.",
            "b".repeat(40)
        ))
        .unwrap();
        let long = LoopProbe::new(zone.clone());
        let mut at_zone = root.clone();
        at_zone.queries[0].set_name(zone.clone());
        assert_eq!(long.name, zone, "no room below the zone for a probe");
        assert!(
            (0..5).all(|_| !long.looped(&at_zone)),
            "a zone with no room for a probe below it has none"
        );
    }

    fn worker() -> Worker<rand::rngs::StdRng> {
        Worker::new(Memo::new(0), rand::rngs::StdRng::seed_from_u64(1))
    }

    fn ask(qname: &str, qtype: RecordType, edns: Option<(u16, bool)>) -> Message {
        let mut m = Message::query();
        m.metadata.id = 4321;
        m.metadata.recursion_desired = true;
        m.queries
            .push(hickory_proto::op::Query::query(name(qname), qtype));
        if let Some((payload, dnssec_ok)) = edns {
            let mut e = hickory_proto::op::Edns::new();
            e.set_max_payload(payload);
            e.set_dnssec_ok(dnssec_ok);
            m.edns = Some(e);
        }
        m
    }

    fn reply(req: &Message, rcode: ResponseCode, answers: Vec<Record>, soa: bool) -> Message {
        let mut m = reply_to(req);
        m.metadata.response_code = rcode;
        m.metadata.recursion_available = true;
        m.metadata.authentic_data = true;
        m.edns = req.edns.clone();
        m.answers = answers;
        if soa {
            m.authorities.push(Record::from_rdata(
                name("example."),
                60,
                RData::SOA(hickory_proto::rr::rdata::SOA::new(
                    name("ns.example."),
                    name("admin.example."),
                    1,
                    7200,
                    1800,
                    86400,
                    60,
                )),
            ));
        }
        m
    }

    #[test]
    fn a_cache_hit_from_bytes_is_what_the_full_path_answers() {
        let at = |owner: &str, last: u8| {
            Record::from_rdata(name(owner), 300, RData::A(A::new(192, 0, 2, last)))
        };
        let www = ask("www.example.", RecordType::A, None);
        let many = ask("many.example.", RecordType::A, None);
        let nope = ask("nope.example.", RecordType::A, None);
        let signed = ask("www.example.", RecordType::A, Some((1232, true)));
        let replies = [
            reply(
                &signed,
                ResponseCode::NoError,
                vec![at("www.example.", 9)],
                false,
            ),
            reply(
                &www,
                ResponseCode::NoError,
                vec![at("www.example.", 1)],
                false,
            ),
            reply(
                &many,
                ResponseCode::NoError,
                vec![
                    record(RData::CNAME(CNAME(name("edge.example.")))),
                    at("edge.example.", 1),
                    at("edge.example.", 2),
                    at("edge.example.", 3),
                ]
                .into_iter()
                .map(|mut r| {
                    if r.record_type() == RecordType::CNAME {
                        r.name = name("many.example.");
                    }
                    r
                })
                .collect(),
                false,
            ),
            reply(&nope, ResponseCode::NXDomain, vec![], true),
        ];
        let peer: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let questions = [
            ask("www.example.", RecordType::A, None),
            ask("WWW.Example.", RecordType::A, Some((1232, false))),
            ask("many.example.", RecordType::A, Some((4096, false))),
            ask("www.example.", RecordType::A, Some((4096, true))),
            ask("nope.example.", RecordType::A, None),
            ask("NOPE.example.", RecordType::A, Some((600, false))),
        ];
        for loadbalance in [false, true] {
            for bufsize in [None, Some(700)] {
                let router = cached_router(loadbalance, bufsize, Vec::new(), &replies);
                let mut answered = 0;
                for (question, transport) in questions
                    .iter()
                    .flat_map(|q| [(q, Transport::Udp), (q, Transport::Tcp)])
                {
                    let bytes = question.to_vec().unwrap();
                    let started = Instant::now();
                    let what = format!(
                        "{question} over {transport:?}, loadbalance {loadbalance}, bufsize {bufsize:?}"
                    );

                    // A mixed-case question whose records take the question's spelling goes
                    // the full way (the records keep their own spelling there).
                    let mixed = question.queries[0].name().to_ascii()
                        != question.queries[0].name().to_lowercase().to_ascii();
                    // Both paths draw from RNGs seeded alike: the same shuffle.
                    let seed = answered;
                    let mut worker =
                        Worker::new(Memo::new(0), rand::rngs::StdRng::seed_from_u64(seed));
                    let mut fast = Vec::new();
                    if !router.answer_bytes(
                        &bytes,
                        transport,
                        peer,
                        started,
                        &mut worker,
                        &mut fast,
                    ) {
                        assert!(mixed, "{what}: a fresh entry is answered from bytes");
                        let Step::Done(true) = router.decoded(
                            &bytes,
                            transport,
                            peer,
                            local,
                            started,
                            &mut rand::rng(),
                            &mut Vec::new(),
                        ) else {
                            panic!("{what}: the full path answers a cache hit at once");
                        };
                        answered += 1;
                        continue;
                    };
                    answered += 2;
                    let mut full = Vec::new();
                    let Step::Done(true) = router.decoded(
                        &bytes,
                        transport,
                        peer,
                        local,
                        started,
                        &mut rand::rngs::StdRng::seed_from_u64(seed),
                        &mut full,
                    ) else {
                        panic!("the full path answers a cache hit at once");
                    };
                    assert_eq!(fast, full, "{what}: the same bytes");
                    let fast = Message::from_vec(&fast).unwrap();
                    assert_eq!(
                        fast.queries[0].name().to_ascii(),
                        question.queries[0].name().to_ascii(),
                        "{what}: the name as asked"
                    );
                }
                let cache = router.routes[0].chain.cache.as_ref().unwrap();
                assert_eq!(
                    cache.counts.requests.load(Ordering::Relaxed),
                    answered,
                    "both paths count every request"
                );
            }
        }
    }

    #[test]
    fn blocks_that_need_the_decoded_message_take_the_full_path() {
        let www = ask("www.example.", RecordType::A, None);
        let answer = Record::from_rdata(name("www.example."), 300, RData::A(A::new(192, 0, 2, 1)));
        let replies = [reply(&www, ResponseCode::NoError, vec![answer], false)];
        let router = cached_router(false, None, Vec::new(), &replies);
        let peer: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let bytes = www.to_vec().unwrap();
        assert!(router.answer_bytes(
            &bytes,
            Transport::Udp,
            peer,
            Instant::now(),
            &mut worker(),
            &mut Vec::new()
        ));
        let logged = crate::log::Rule::new(Name::root(), "{common}", Vec::new());
        let with_log = cached_router(false, None, vec![logged], &replies);
        assert!(!with_log.answer_bytes(
            &bytes,
            Transport::Udp,
            peer,
            Instant::now(),
            &mut worker(),
            &mut Vec::new()
        ));
        let other = ask("other.example.", RecordType::A, None).to_vec().unwrap();
        assert!(
            !router.answer_bytes(
                &other,
                Transport::Udp,
                peer,
                Instant::now(),
                &mut worker(),
                &mut Vec::new()
            ),
            "a miss"
        );
    }
}
