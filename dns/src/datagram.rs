//! UDP datagrams in batches, on threads of their own: each worker owns one socket of the
//! address (all bound with `SO_REUSEPORT`, so the kernel spreads clients over them), blocks in
//! `recvmmsg` until a query arrives and takes every query already waiting (up to a batch) in
//! the same call, answers them, and sends the answers with one `sendmmsg`. Under load a socket
//! holds several queries at once, and a system call per datagram — with the wake-up of the
//! client each reply causes — costs more than answering a cached name; a blocking worker also
//! needs no readiness poll and no failed read before it sleeps. All calls go through nix's safe
//! wrappers.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::ops::Range;
use std::os::fd::AsRawFd as _;

use nix::errno::Errno;
use nix::sys::socket::{
    MsgFlags, MultiHeaders, Shutdown, SockaddrStorage, recvmmsg, sendmmsg, sendto, shutdown,
};

/// Datagrams taken per call.
pub(crate) const BATCH: usize = 32;
/// Room for the largest UDP datagram.
const DATAGRAM: usize = 65535;

/// The first UDP socket of an address (port 0 picks one) for one worker: blocking, large
/// buffers. It binds without `SO_REUSEPORT`, so the port it gets (or is given) is one no other
/// socket holds, even one that shares its own; then it takes the option, so the other workers'
/// sockets ([`another`]) can join it.
pub(crate) fn socket(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    let socket = unbound(addr, buffer)?;
    socket.bind(&addr.into())?;
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReusePort, &true)?;
    Ok(socket.into())
}

/// One more socket on the address `first` is bound to, for another worker.
pub(crate) fn another(first: &UdpSocket, buffer: usize) -> std::io::Result<UdpSocket> {
    let addr = first.local_addr()?;
    let socket = unbound(addr, buffer)?;
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReusePort, &true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn unbound(addr: SocketAddr, buffer: usize) -> std::io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Larger buffers are an optimisation: a kernel that refuses them still serves.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    Ok(socket)
}

/// Wakes a worker blocked on `socket` for good: later receives return at once with nothing.
/// (Linux lets `shutdown` end the reads of an unconnected UDP socket; it reports `ENOTCONN`
/// while doing it.)
pub(crate) fn stop(socket: &UdpSocket) {
    match shutdown(socket.as_raw_fd(), Shutdown::Read) {
        Ok(()) | Err(Errno::ENOTCONN) => {}
        Err(e) => tracing::debug!(error = %e, "cannot shut a udp socket down"),
    }
}

/// Buffers for one worker, kept from batch to batch (nothing is allocated per datagram).
pub(crate) struct Batch {
    /// `BATCH` slots of `DATAGRAM` bytes in one allocation, whose pages are touched only as
    /// far as datagrams fill them.
    buffers: Vec<u8>,
    /// The message headers `recvmmsg` fills.
    headers: MultiHeaders<SockaddrStorage>,
    /// The datagrams of the last receive: length and sender, slot by slot.
    received: Vec<(usize, SocketAddr)>,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            buffers: vec![0; BATCH * DATAGRAM],
            headers: MultiHeaders::preallocate(BATCH, None),
            received: Vec::with_capacity(BATCH),
        }
    }
}

impl Batch {
    /// Blocks until a datagram arrives on `socket` (blocking), then takes it and those already
    /// waiting, up to a batch, in one call. After [`stop`] it returns at once with no datagram.
    pub(crate) fn receive(&mut self, socket: &UdpSocket) -> std::io::Result<()> {
        self.received.clear();
        loop {
            // nix ties the slices' lifetime to the call's: they are made afresh for each.
            let mut slices: [[IoSliceMut<'_>; 1]; BATCH] = {
                let mut chunks = self.buffers.chunks_mut(DATAGRAM);
                std::array::from_fn(|_| [IoSliceMut::new(chunks.next().expect("BATCH chunks"))])
            };
            let results = match recvmmsg(
                socket.as_raw_fd(),
                &mut self.headers,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Err(Errno::EINTR) => continue,
                other => other?,
            };
            for msg in results {
                // An empty datagram (as are the reads of a socket that was shut down, whose
                // sender is not filled in) cannot be a query, and one without a usable sender
                // cannot be answered: its slot stays empty.
                let from = (msg.bytes > 0)
                    .then(|| msg.address.as_ref().and_then(std_addr))
                    .flatten();
                self.received.push(match from {
                    Some(from) => (msg.bytes, from),
                    None => (0, SocketAddr::from(([0, 0, 0, 0], 0))),
                });
            }
            return Ok(());
        }
    }

    /// The datagrams of the last receive, with their senders.
    pub(crate) fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.received
            .iter()
            .enumerate()
            .filter(|(_, (len, _))| *len > 0)
            .map(|(slot, &(len, from))| {
                let start = slot * DATAGRAM;
                (&self.buffers[start..start + len], from)
            })
    }
}

/// Sends `replies` (each a range of `out` and its destination) on `socket` (blocking), up to a
/// batch per `sendmmsg`; a reply the kernel refuses is dropped, as a lost datagram is.
pub(crate) fn send(
    socket: &UdpSocket,
    headers: &mut MultiHeaders<SockaddrStorage>,
    out: &[u8],
    replies: &[(Range<usize>, SocketAddr)],
) {
    let mut rest = replies;
    while !rest.is_empty() {
        let sent = match rest {
            [(reply, to)] => socket.send_to(&out[reply.clone()], to).map(|_| 1),
            _ => send_many(socket, headers, out, &rest[..rest.len().min(BATCH)]),
        };
        // An error belongs to the first reply not sent (a destination that cannot be reached,
        // say): drop it and go on with the others.
        rest = &rest[sent.unwrap_or(0).max(1)..];
    }
}

/// One `sendmmsg` of at most a batch of `replies`: how many the kernel took. Nothing is
/// allocated: the slices and addresses live on the stack.
fn send_many(
    socket: &UdpSocket,
    headers: &mut MultiHeaders<SockaddrStorage>,
    out: &[u8],
    replies: &[(Range<usize>, SocketAddr)],
) -> std::io::Result<usize> {
    let n = replies.len().min(BATCH);
    let slices: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|i| {
        [IoSlice::new(
            replies.get(i).map_or(&[][..], |(r, _)| &out[r.clone()]),
        )]
    });
    let addrs: [Option<SockaddrStorage>; BATCH] =
        std::array::from_fn(|i| replies.get(i).map(|(_, to)| SockaddrStorage::from(*to)));
    loop {
        match sendmmsg(
            socket.as_raw_fd(),
            headers,
            slices[..n].iter(),
            &addrs[..n],
            [],
            MsgFlags::empty(),
        ) {
            Err(Errno::EINTR) => continue,
            other => return Ok(other?.count()),
        }
    }
}

/// Sends one reply from a task of the runtime: at once when the socket takes it, else (its send
/// buffer full, as in a burst) from a blocking thread that waits for room, so a forwarded
/// answer is not lost to a burst of cached ones.
pub(crate) async fn send_from_task(
    socket: std::sync::Arc<UdpSocket>,
    reply: Vec<u8>,
    to: SocketAddr,
) {
    let now = sendto(
        socket.as_raw_fd(),
        &reply,
        &SockaddrStorage::from(to),
        MsgFlags::MSG_DONTWAIT,
    );
    if let Err(Errno::EAGAIN | Errno::EINTR) = now {
        let _ = tokio::task::spawn_blocking(move || socket.send_to(&reply, to)).await;
    }
}

fn std_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UdpSocket, UdpSocket) {
        let server = socket("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        (server, client)
    }

    #[test]
    fn waiting_datagrams_are_taken_in_one_receive_with_their_senders() {
        let (server, client) = pair();
        let to = server.local_addr().unwrap();
        for n in 0..5u8 {
            client.send_to(&[n; 3], to).unwrap();
        }
        // Loopback delivers at once; still, allow the kernel a moment.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut batch = Batch::default();
        batch.receive(&server).unwrap();
        let got: Vec<_> = batch
            .datagrams()
            .map(|(d, from)| (d.to_vec(), from))
            .collect();
        let from = client.local_addr().unwrap();
        let want: Vec<_> = (0..5u8).map(|n| (vec![n; 3], from)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn replies_go_out_in_order_even_beyond_a_batch() {
        let (server, client) = pair();
        let to = client.local_addr().unwrap();
        let out: Vec<u8> = (0..(BATCH as u16 + 7)).flat_map(u16::to_be_bytes).collect();
        let replies: Vec<_> = (0..(BATCH + 7)).map(|n| (2 * n..2 * n + 2, to)).collect();
        let mut headers = MultiHeaders::preallocate(BATCH, None);
        send(&server, &mut headers, &out, &replies);
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 8];
        for n in 0..(BATCH as u16 + 7) {
            let (len, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(
                (&buf[..len], from),
                (&n.to_be_bytes()[..], server.local_addr().unwrap())
            );
        }
    }

    #[test]
    fn a_worker_blocked_in_receive_returns_when_its_socket_is_stopped() {
        let (server, _client) = pair();
        let server = std::sync::Arc::new(server);
        let blocked = server.clone();
        let worker = std::thread::spawn(move || {
            let mut batch = Batch::default();
            let result = batch.receive(&blocked);
            (result.is_ok(), batch.datagrams().count())
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        stop(&server);
        assert_eq!(worker.join().unwrap(), (true, 0));
    }

    #[test]
    fn sockets_of_one_address_share_it_and_a_first_socket_takes_no_shared_port() {
        let first = socket("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let addr = first.local_addr().unwrap();
        let second = another(&first, 1 << 20).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        // A socket that did not ask to share is still refused.
        assert!(UdpSocket::bind(addr).is_err());
        // And a first socket given that address is refused too: it never joins another
        // server's sockets.
        assert!(socket(addr, 1 << 20).is_err());
    }
}
