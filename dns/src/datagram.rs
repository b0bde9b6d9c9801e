//! UDP datagrams in batches: a receiving task takes every query already waiting on its socket
//! with one `recvmmsg` (up to a batch), answers them, and sends the answers together with one
//! `sendmmsg`. Under load a socket holds several queries at once, and a system call per
//! datagram — with the wake-up of the client each reply causes — costs more than answering a
//! cached name. Replies the kernel does not take at once go out one by one, waiting for the
//! socket as any send does. Both calls go through nix's safe wrappers.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd as _;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams taken per call.
pub(crate) const BATCH: usize = 32;
/// Room for the largest UDP datagram.
const DATAGRAM: usize = 65535;

/// Buffers for one receiving task.
pub(crate) struct Batch {
    /// `BATCH` slots of `DATAGRAM` bytes in one allocation, whose pages are touched only as
    /// far as datagrams fill them.
    buffers: Vec<u8>,
    /// The datagrams of the last receive: length and sender, slot by slot.
    received: Vec<(usize, SocketAddr)>,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            buffers: vec![0; BATCH * DATAGRAM],
            received: Vec::with_capacity(BATCH),
        }
    }
}

impl Batch {
    /// Waits for datagrams on `socket` and takes those waiting, up to a batch, in one call.
    pub(crate) async fn receive(&mut self, socket: &UdpSocket) -> std::io::Result<()> {
        loop {
            socket.readable().await?;
            match socket.try_io(Interest::READABLE, || self.take(socket)) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn take(&mut self, socket: &UdpSocket) -> std::io::Result<()> {
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .buffers
            .chunks_mut(DATAGRAM)
            .map(|b| [IoSliceMut::new(b)])
            .collect();
        // The headers point into the slices, so they live as long as one call.
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let results = recvmmsg(
            socket.as_raw_fd(),
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )?;
        self.received.clear();
        for msg in results {
            // A datagram without a usable sender cannot be answered: its slot stays empty.
            let from = msg.address.as_ref().and_then(std_addr);
            self.received.push(match from {
                Some(from) => (msg.bytes, from),
                None => (0, SocketAddr::from(([0, 0, 0, 0], 0))),
            });
        }
        Ok(())
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

/// Sends `replies` on `socket`: as many as the kernel takes in one call, the rest one by one. A
/// reply that cannot be sent is dropped, as a lost datagram is.
pub(crate) async fn send(socket: &UdpSocket, replies: &[(Vec<u8>, SocketAddr)]) {
    let sent = match replies {
        [] | [_] => 0,
        _ => socket
            .try_io(Interest::WRITABLE, || send_many(socket, replies))
            .unwrap_or(0),
    };
    for (reply, to) in &replies[sent..] {
        let _ = socket.send_to(reply, to).await;
    }
}

/// One `sendmmsg` of `replies`: how many the kernel took.
fn send_many(socket: &UdpSocket, replies: &[(Vec<u8>, SocketAddr)]) -> std::io::Result<usize> {
    let slices: Vec<[IoSlice<'_>; 1]> = replies.iter().map(|(r, _)| [IoSlice::new(r)]).collect();
    let addrs: Vec<Option<SockaddrStorage>> = replies
        .iter()
        .map(|(_, to)| Some(SockaddrStorage::from(*to)))
        .collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(replies.len(), None);
    let sent = sendmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices.iter(),
        addrs,
        [],
        MsgFlags::MSG_DONTWAIT,
    )?;
    Ok(sent.count())
}

fn std_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}
