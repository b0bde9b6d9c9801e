//! The `forward` directive: names the cluster zones do not answer go to upstream servers, as
//! CoreDNS's forward plugin sends them. A query goes upstream over the transport it came in on
//! (`force_tcp`: always TCP; `prefer_udp`: UDP first, TCP again when truncated; a `tls://`
//! upstream: always DNS over TLS, with `tls` and `tls_servername`); each gets a
//! fresh random ID; a reply counts only when its ID and question match; upstreams are tried in
//! the policy's order, round after round, skipping those marked down by failed health checks
//! (`. IN NS` every `health_check` interval after an error, down after `max_fails`), until one
//! answers or 5 s are up. Connections are reused until idle for `expire`. Queries beyond `max_concurrent` are
//! refused. The work happens in its own task per query, so a slow upstream never holds up the
//! cluster answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::message::Transport;
use crate::metrics::ForwardMetrics;

/// Upstreams beyond this are refused, as CoreDNS refuses them.
pub const MAX_UPSTREAMS: usize = 15;

/// How long one query may take over all upstreams (CoreDNS's `defaultTimeout`).
const OVERALL: Duration = Duration::from_secs(5);
/// How long a health check waits for its answer.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The order upstreams are tried in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    Random,
    RoundRobin,
    Sequential,
}

/// What the `forward` directive says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The zone forwarded (`.`: every name).
    pub from: Name,
    pub upstreams: Vec<SocketAddr>,
    pub policy: Policy,
    /// Queries in flight beyond this are REFUSED.
    pub max_concurrent: Option<usize>,
    pub force_tcp: bool,
    /// UDP even for TCP clients, and TCP again when the UDP reply is truncated.
    pub prefer_udp: bool,
    /// Zones below `from` that are not forwarded.
    pub except: Vec<Name>,
    /// How long one upstream has to answer (CoreDNS's read timeout).
    pub timeout: Duration,
    /// Failed health checks after which an upstream is down; 0: never down, no checks.
    pub max_fails: u32,
    /// Interval of the health checks of an upstream that failed.
    pub health_check: Duration,
    /// The name the health check asks NS of.
    pub health_check_domain: Name,
    /// Whether the health check sets RD (`no_rec` clears it).
    pub health_check_recursion: bool,
    /// A connection idle this long is not reused.
    pub expire: Duration,
    /// DNS over TLS to every upstream (`tls://` upstreams).
    pub tls: Option<Tls>,
}

/// `tls [CERT KEY [CA]]` and `tls_servername`: how TLS upstreams are reached.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tls {
    /// A client certificate and its key, if the upstream asks for one.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The CA that signed the upstream's certificate (default: the system's roots).
    pub ca: Option<std::path::PathBuf>,
    /// The name the upstream's certificate must carry (default: its address).
    pub server_name: Option<String>,
}

impl Forward {
    /// Every name to `upstreams`, with CoreDNS's defaults: random order, a 2 s read timeout, no
    /// concurrency limit, the client's transport, health checks every 0.5 s after an error,
    /// down after 2 failed checks, connections reused for 10 s.
    pub fn everything_to(upstreams: Vec<SocketAddr>) -> Forward {
        Forward {
            from: Name::root(),
            upstreams,
            policy: Policy::Random,
            max_concurrent: None,
            force_tcp: false,
            prefer_udp: false,
            except: Vec::new(),
            timeout: Duration::from_secs(2),
            max_fails: 2,
            health_check: Duration::from_millis(500),
            health_check_domain: Name::root(),
            health_check_recursion: true,
            expire: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// Why no upstream reply came.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// `max_concurrent` queries are already in flight.
    #[error("concurrent queries exceeded maximum {0}")]
    LimitExceeded(usize),
    /// Every attempt failed; the last error.
    #[error("{0}")]
    Failed(String),
}

/// A TLS connection to an upstream.
type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Idle connections to one upstream, each with when it was last used.
#[derive(Debug)]
struct Pool<T>(Mutex<Vec<(T, Instant)>>);

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Pool(Mutex::default())
    }
}

impl<T> Pool<T> {
    /// An idle connection used within `expire`, dropping the older ones.
    fn take(&self, expire: Duration) -> Option<T> {
        let mut idle = self.0.lock().expect("pool lock");
        idle.retain(|(_, used)| used.elapsed() < expire);
        idle.pop().map(|(conn, _)| conn)
    }

    /// Keeps `conn` for reuse, unless connections are never reused (`expire 0`).
    fn keep(&self, conn: T, expire: Duration) {
        if !expire.is_zero() {
            self.0
                .lock()
                .expect("pool lock")
                .push((conn, Instant::now()));
        }
    }
}

/// One upstream: its health and idle connections.
#[derive(Debug)]
struct Upstream {
    addr: SocketAddr,
    label: String,
    fails: AtomicU32,
    checking: AtomicBool,
    udp: Pool<Arc<UdpSocket>>,
    tcp: Pool<TcpStream>,
    tls: Pool<TlsStream>,
}

/// The client side of DNS over TLS: the configuration and the name checked.
#[derive(Clone)]
struct TlsClient {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<rustls::pki_types::ServerName<'static>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsClient {
    fn new(tls: &Tls) -> Result<TlsClient, String> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca {
            Some(ca) => {
                for cert in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("tls: cannot read the CA {} ({e})", ca.display()))?
                {
                    let cert = cert.map_err(|e| {
                        format!("tls: {} is not a PEM certificate ({e})", ca.display())
                    })?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("tls: {}: {e}", ca.display()))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_root_certificates(roots);
        let config = match &tls.client {
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<_, _>>())
                    .map_err(|e| format!("tls: cannot read {} ({e})", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("tls: cannot read the key {} ({e})", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("tls: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        let server_name = match &tls.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| format!("tls_servername {name:?}: {e}"))?,
            ),
            None => None,
        };
        Ok(TlsClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<TlsStream> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
        let tcp = TcpStream::connect(addr).await?;
        self.connector.connect(name, tcp).await
    }
}

/// Forwards queries by one [`Forward`].
#[derive(Debug)]
pub struct Forwarder {
    forward: Forward,
    tls: Option<TlsClient>,
    upstreams: Vec<Arc<Upstream>>,
    slots: Option<Arc<Semaphore>>,
    next: AtomicUsize,
    metrics: Arc<ForwardMetrics>,
}

impl Forwarder {
    /// The forwarder of `forward`, or why its TLS settings do not load.
    pub fn new(forward: Forward, metrics: Arc<ForwardMetrics>) -> Result<Forwarder, String> {
        let tls = forward.tls.as_ref().map(TlsClient::new).transpose()?;
        Ok(Forwarder {
            tls,
            upstreams: forward
                .upstreams
                .iter()
                .map(|addr| {
                    Arc::new(Upstream {
                        addr: *addr,
                        label: addr.to_string(),
                        fails: AtomicU32::new(0),
                        checking: AtomicBool::new(false),
                        udp: Pool::default(),
                        tcp: Pool::default(),
                        tls: Pool::default(),
                    })
                })
                .collect(),
            slots: forward.max_concurrent.map(|n| Arc::new(Semaphore::new(n))),
            forward,
            next: AtomicUsize::new(0),
            metrics,
        })
    }

    /// Whether queries for `name` go upstream.
    pub fn handles(&self, name: &Name) -> bool {
        self.forward.from.zone_of(name) && !self.forward.except.iter().any(|z| z.zone_of(name))
    }

    /// The upstream's reply to `request` (which arrived over `transport`), its ID set back to
    /// the request's.
    pub async fn resolve(
        &self,
        request: &Message,
        transport: Transport,
    ) -> Result<Message, ForwardError> {
        let _permit = match &self.slots {
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    self.metrics
                        .max_concurrent_rejects
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(ForwardError::LimitExceeded(
                        self.forward.max_concurrent.unwrap_or(0),
                    ));
                }
            },
            None => None,
        };
        let started = Instant::now();
        let mut last_error = String::from("no healthy upstream");
        let order = self.order();
        // As CoreDNS: round after round over the upstreams until one answers or the time is up;
        // down upstreams are skipped, and when all are down a random one is tried anyway.
        let (mut i, mut down) = (0, 0);
        while started.elapsed() < OVERALL {
            if i >= order.len() {
                i = 0;
                down = 0;
            }
            let mut upstream = &order[i];
            i += 1;
            if self.is_down(upstream) {
                down += 1;
                if down < order.len() {
                    continue;
                }
                self.metrics
                    .healthcheck_broken
                    .fetch_add(1, Ordering::Relaxed);
                use rand::seq::IndexedRandom as _;
                upstream = order.choose(&mut rand::rng()).expect("an upstream");
            }
            let timeout = self
                .forward
                .timeout
                .min(OVERALL.saturating_sub(started.elapsed()));
            let asked = Instant::now();
            match self.exchange(request, upstream, transport, timeout).await {
                Ok(mut reply) => {
                    self.metrics.observe(
                        &upstream.label,
                        reply.metadata.response_code,
                        asked.elapsed(),
                    );
                    reply.metadata.id = request.metadata.id;
                    return Ok(reply);
                }
                Err(e) => {
                    tracing::debug!(upstream = %upstream.addr, error = %e, "upstream failed");
                    last_error = format!("{}: {e}", upstream.addr);
                    if self.forward.max_fails != 0 {
                        self.start_health_check(upstream);
                    }
                    if down >= order.len() {
                        break;
                    }
                }
            }
        }
        Err(ForwardError::Failed(last_error))
    }

    fn is_down(&self, upstream: &Upstream) -> bool {
        self.forward.max_fails != 0
            && upstream.fails.load(Ordering::Relaxed) > self.forward.max_fails
    }

    /// Checks `upstream` with `. IN NS` every `health_check` until it answers.
    fn start_health_check(&self, upstream: &Arc<Upstream>) {
        if upstream.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let (upstream, metrics, tls) = (upstream.clone(), self.metrics.clone(), self.tls.clone());
        let (interval, domain, recursion) = (
            self.forward.health_check,
            self.forward.health_check_domain.clone(),
            self.forward.health_check_recursion,
        );
        tokio::spawn(async move {
            let mut probe = Message::new(0, MessageType::Query, OpCode::Query);
            probe.metadata.recursion_desired = recursion;
            probe.queries.push(Query::query(domain, RecordType::NS));
            loop {
                // Over the upstream's own transport: TLS for a DNS-over-TLS upstream.
                let check = async {
                    match &tls {
                        Some(tls) => {
                            let mut stream = tls.connect(upstream.addr).await?;
                            exchange_on(&probe, &mut stream).await
                        }
                        None => udp_exchange(&probe, None, upstream.addr).await,
                    }
                };
                let answered = tokio::time::timeout(HEALTH_CHECK_TIMEOUT, check).await;
                if let Ok(Ok(_)) = answered {
                    upstream.fails.store(0, Ordering::Relaxed);
                    break;
                }
                upstream.fails.fetch_add(1, Ordering::Relaxed);
                metrics.healthcheck_failed(&upstream.label);
                tokio::time::sleep(interval).await;
            }
            upstream.checking.store(false, Ordering::Release);
        });
    }

    /// The upstreams in the order this query tries them.
    fn order(&self) -> Vec<Arc<Upstream>> {
        let mut all = self.upstreams.clone();
        match self.forward.policy {
            Policy::Sequential => {}
            Policy::RoundRobin => {
                let at = self.next.fetch_add(1, Ordering::Relaxed) % all.len().max(1);
                all.rotate_left(at);
            }
            Policy::Random => {
                use rand::seq::SliceRandom as _;
                all.shuffle(&mut rand::rng());
            }
        }
        all
    }

    /// One question to one upstream over the transport the options and the client choose.
    async fn exchange(
        &self,
        request: &Message,
        upstream: &Upstream,
        transport: Transport,
        timeout: Duration,
    ) -> std::io::Result<Message> {
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some(tls) = &self.tls {
            return tokio::time::timeout_at(deadline, self.tls_exchange(request, upstream, tls))
                .await?;
        }
        let tcp = self.forward.force_tcp || transport == Transport::Tcp && !self.forward.prefer_udp;
        if !tcp {
            let socket = self.udp_socket(upstream).await?;
            let reply = tokio::time::timeout_at(
                deadline,
                udp_exchange(request, Some(&socket), upstream.addr),
            )
            .await??;
            self.keep_udp(upstream, socket);
            if !(reply.metadata.truncation && self.forward.prefer_udp) {
                return Ok(reply);
            }
        }
        tokio::time::timeout_at(deadline, self.tcp_exchange(request, upstream)).await?
    }

    /// A connected UDP socket to `upstream`: an idle one not expired, or a new one.
    async fn udp_socket(&self, upstream: &Upstream) -> std::io::Result<Arc<UdpSocket>> {
        let reused = upstream.udp.take(self.forward.expire);
        self.metrics
            .connection(&upstream.label, "udp", reused.is_some());
        match reused {
            Some(socket) => Ok(socket),
            None => Ok(Arc::new(connect_udp(upstream.addr).await?)),
        }
    }

    fn keep_udp(&self, upstream: &Upstream, socket: Arc<UdpSocket>) {
        upstream.udp.keep(socket, self.forward.expire);
    }

    async fn tcp_exchange(
        &self,
        request: &Message,
        upstream: &Upstream,
    ) -> std::io::Result<Message> {
        let addr = upstream.addr;
        self.stream_exchange(request, upstream, &upstream.tcp, "tcp", || {
            TcpStream::connect(addr)
        })
        .await
    }

    /// One question over TLS.
    async fn tls_exchange(
        &self,
        request: &Message,
        upstream: &Upstream,
        tls: &TlsClient,
    ) -> std::io::Result<Message> {
        let addr = upstream.addr;
        self.stream_exchange(request, upstream, &upstream.tls, "tcp-tls", || {
            tls.connect(addr)
        })
        .await
    }

    /// One question over a stream from `pool` (an idle one not expired, or a new one from
    /// `connect`; once more on a new one if the idle one was closed), kept for reuse after.
    async fn stream_exchange<S, F>(
        &self,
        request: &Message,
        upstream: &Upstream,
        pool: &Pool<S>,
        proto: &'static str,
        connect: impl Fn() -> F,
    ) -> std::io::Result<Message>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        F: std::future::Future<Output = std::io::Result<S>>,
    {
        let reused = pool.take(self.forward.expire);
        self.metrics
            .connection(&upstream.label, proto, reused.is_some());
        let (mut stream, was_idle) = match reused {
            Some(stream) => (stream, true),
            None => (connect().await?, false),
        };
        let reply = match exchange_on(request, &mut stream).await {
            Ok(reply) => reply,
            // The upstream may have closed an idle connection.
            Err(_) if was_idle => {
                stream = connect().await?;
                exchange_on(request, &mut stream).await?
            }
            Err(e) => return Err(e),
        };
        pool.keep(stream, self.forward.expire);
        Ok(reply)
    }
}

async fn connect_udp(upstream: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    Ok(socket)
}

/// `request` with a fresh random ID, and the ID.
fn outgoing(request: &Message) -> std::io::Result<(u16, Vec<u8>)> {
    let mut query = request.clone();
    let id: u16 = rand::random();
    query.metadata.id = id;
    let bytes = query
        .to_vec()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok((id, bytes))
}

/// Whether `reply` answers the query `id` asked with `request`'s question.
fn answers(reply: &Message, id: u16, request: &Message) -> bool {
    reply.metadata.id == id
        && reply.metadata.message_type == MessageType::Response
        && reply.queries.len() == request.queries.len()
        && reply.queries.iter().zip(&request.queries).all(|(a, b)| {
            a.query_type() == b.query_type()
                && a.query_class() == b.query_class()
                && a.name().to_lowercase() == b.name().to_lowercase()
        })
}

/// One question over UDP on `socket` (a new socket when `None`).
async fn udp_exchange(
    request: &Message,
    socket: Option<&UdpSocket>,
    upstream: SocketAddr,
) -> std::io::Result<Message> {
    let own;
    let socket = match socket {
        Some(s) => s,
        None => {
            own = connect_udp(upstream).await?;
            &own
        }
    };
    let (id, bytes) = outgoing(request)?;
    socket.send(&bytes).await?;
    // A reply is at most the size the query advertises (512 without EDNS); a little room above
    // it spares a zeroed 64 KiB buffer per query.
    let mut buf = vec![0u8; usize::from(request.max_payload()).max(4096)];
    loop {
        let n = socket.recv(&mut buf).await?;
        // Anything that is not the reply to this question (a spoof, a late reply) is ignored.
        if let Ok(reply) = Message::from_vec(&buf[..n])
            && answers(&reply, id, request)
        {
            return Ok(reply);
        }
    }
}

/// One question over a stream (TCP or TLS), framed with its length as RFC 1035 frames TCP.
async fn exchange_on<S>(request: &Message, stream: &mut S) -> std::io::Result<Message>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (id, bytes) = outgoing(request)?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await?;
    // A TLS stream may hold the record until flushed.
    stream.flush().await?;
    loop {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut buf).await?;
        if let Ok(reply) = Message::from_vec(&buf)
            && answers(&reply, id, request)
        {
            return Ok(reply);
        }
    }
}

/// The nameservers of a resolv.conf text, with `nameserver IP:PORT` accepted beside plain
/// addresses (svcplane's extension, so tests can point it at a loopback port); port 53 else.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let addr = words.next()?;
            addr.parse::<SocketAddr>().ok().or_else(|| {
                addr.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarder(policy: Policy, upstreams: &[&str]) -> Forwarder {
        Forwarder::new(
            Forward {
                policy,
                except: vec![Name::from_ascii("cluster.local.").unwrap()],
                ..Forward::everything_to(upstreams.iter().map(|u| u.parse().unwrap()).collect())
            },
            Arc::default(),
        )
        .expect("no TLS to load")
    }

    #[test]
    fn sequential_keeps_the_order_and_round_robin_turns_it() {
        let ups = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let s = forwarder(Policy::Sequential, &ups);
        let first = |f: &Forwarder| f.order()[0].addr.port();
        assert_eq!(first(&s), 1);
        assert_eq!(first(&s), 1);
        let r = forwarder(Policy::RoundRobin, &ups);
        let firsts: Vec<u16> = (0..3).map(|_| first(&r)).collect();
        assert_eq!(firsts, [1, 2, 3]);
    }

    #[test]
    fn except_zones_are_not_forwarded() {
        let f = forwarder(Policy::Random, &["127.0.0.1:1"]);
        assert!(f.handles(&Name::from_ascii("example.org.").unwrap()));
        assert!(!f.handles(&Name::from_ascii("web.default.svc.cluster.local.").unwrap()));
    }

    #[test]
    fn an_upstream_is_down_only_after_more_than_max_fails_failed_checks() {
        let f = forwarder(Policy::Sequential, &["127.0.0.1:1"]);
        let up = &f.upstreams[0];
        up.fails.store(2, Ordering::Relaxed);
        assert!(!f.is_down(up));
        up.fails.store(3, Ordering::Relaxed);
        assert!(f.is_down(up));
    }

    #[test]
    fn resolv_conf_gives_nameservers_with_an_optional_port() {
        let text = "# generated\nsearch default.svc.cluster.local\nnameserver 10.0.0.2\nnameserver 127.0.0.1:5300\nnameserver ::1\noptions ndots:5\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            [
                "10.0.0.2:53".parse().unwrap(),
                "127.0.0.1:5300".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
