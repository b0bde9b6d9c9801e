//! The `forward` directive: names the cluster zones do not answer go to upstream servers, as
//! CoreDNS's forward plugin sends them. Each query gets a fresh random ID and source port; a
//! reply counts only when its ID and question match; a truncated UDP reply is asked again over
//! TCP; upstreams are tried in the policy's order until one answers or the time is up
//! (SERVFAIL), and queries beyond `max_concurrent` are REFUSED. The work happens in its own
//! task per query, so a slow upstream never holds up the cluster answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::Name;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::message::{Transport, encode_within, limit_of};

/// Upstreams beyond this are refused, as CoreDNS refuses them.
pub const MAX_UPSTREAMS: usize = 15;

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
    /// A truncated UDP reply is passed on as it is rather than asked again over TCP.
    pub prefer_udp: bool,
    /// Zones below `from` that are not forwarded.
    pub except: Vec<Name>,
    /// How long one upstream has to answer (CoreDNS's read timeout).
    pub timeout: Duration,
}

impl Forward {
    /// Every name to `upstreams`, with CoreDNS's defaults: random order, a 2 s read timeout, no
    /// concurrency limit, UDP first.
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
        }
    }
}

/// Forwards queries by one [`Forward`].
#[derive(Debug)]
pub struct Forwarder {
    forward: Forward,
    slots: Option<Arc<Semaphore>>,
    next: AtomicUsize,
}

/// How long a query may take over all upstreams before it is answered SERVFAIL.
const OVERALL: Duration = Duration::from_secs(5);

impl Forwarder {
    pub fn new(forward: Forward) -> Forwarder {
        Forwarder {
            slots: forward.max_concurrent.map(|n| Arc::new(Semaphore::new(n))),
            forward,
            next: AtomicUsize::new(0),
        }
    }

    /// Whether queries for `name` go upstream.
    pub fn handles(&self, name: &Name) -> bool {
        self.forward.from.zone_of(name) && !self.forward.except.iter().any(|z| z.zone_of(name))
    }

    /// The reply to `request` (which arrived over `transport`), as bytes for the client.
    pub async fn resolve(&self, request: &Message, transport: Transport) -> Option<Vec<u8>> {
        let limit = limit_of(request, transport);
        let permit = match &self.slots {
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return encode_within(failure(request, ResponseCode::Refused), limit),
            },
            None => None,
        };
        let started = Instant::now();
        let mut reply = None;
        for upstream in self.order() {
            let left = OVERALL.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            let timeout = self.forward.timeout.min(left);
            match self.exchange(request, upstream, transport, timeout).await {
                Ok(answer) => {
                    reply = Some(answer);
                    break;
                }
                Err(e) => tracing::debug!(%upstream, error = %e, "upstream failed"),
            }
        }
        drop(permit);
        let mut reply = reply.unwrap_or_else(|| failure(request, ResponseCode::ServFail));
        reply.metadata.id = request.metadata.id;
        encode_within(reply, limit)
    }

    /// The upstreams in the order this query tries them.
    fn order(&self) -> Vec<SocketAddr> {
        let mut all = self.forward.upstreams.clone();
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

    /// One question to one upstream: UDP (unless `force_tcp`), again over TCP if truncated.
    async fn exchange(
        &self,
        request: &Message,
        upstream: SocketAddr,
        transport: Transport,
        timeout: Duration,
    ) -> std::io::Result<Message> {
        let deadline = tokio::time::Instant::now() + timeout;
        let tcp = self.forward.force_tcp || transport == Transport::Tcp && !self.forward.prefer_udp;
        if !tcp {
            let reply =
                tokio::time::timeout_at(deadline, udp_exchange(request, upstream)).await??;
            if !reply.metadata.truncation || self.forward.prefer_udp {
                return Ok(reply);
            }
        }
        tokio::time::timeout_at(deadline, tcp_exchange(request, upstream)).await?
    }
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
        && reply.queries == request.queries
}

async fn udp_exchange(request: &Message, upstream: SocketAddr) -> std::io::Result<Message> {
    let local: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    let (id, bytes) = outgoing(request)?;
    socket.send(&bytes).await?;
    let mut buf = vec![0u8; 65535];
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

async fn tcp_exchange(request: &Message, upstream: SocketAddr) -> std::io::Result<Message> {
    let mut stream = TcpStream::connect(upstream).await?;
    let (id, bytes) = outgoing(request)?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await?;
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

/// An empty reply to `request` with `rcode`.
fn failure(request: &Message, rcode: ResponseCode) -> Message {
    let mut reply = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    reply.metadata = hickory_proto::op::Metadata::response_from_request(&request.metadata);
    reply.metadata.response_code = rcode;
    reply.queries = request.queries.clone();
    reply
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
        Forwarder::new(Forward {
            from: Name::root(),
            upstreams: upstreams.iter().map(|u| u.parse().unwrap()).collect(),
            policy,
            max_concurrent: None,
            force_tcp: false,
            prefer_udp: false,
            except: vec![Name::from_ascii("cluster.local.").unwrap()],
            timeout: Duration::from_secs(2),
        })
    }

    #[test]
    fn sequential_keeps_the_order_and_round_robin_turns_it() {
        let ups = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let s = forwarder(Policy::Sequential, &ups);
        assert_eq!(s.order(), s.order());
        assert_eq!(s.order()[0], "127.0.0.1:1".parse().unwrap());
        let r = forwarder(Policy::RoundRobin, &ups);
        let firsts: Vec<u16> = (0..3).map(|_| r.order()[0].port()).collect();
        assert_eq!(firsts, [1, 2, 3]);
    }

    #[test]
    fn except_zones_are_not_forwarded() {
        let f = forwarder(Policy::Random, &["127.0.0.1:1"]);
        assert!(f.handles(&Name::from_ascii("example.org.").unwrap()));
        assert!(!f.handles(&Name::from_ascii("web.default.svc.cluster.local.").unwrap()));
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
