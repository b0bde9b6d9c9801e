//! The DNS server: UDP workers on threads of their own, a socket each, taking queries in
//! batches ([`crate::datagram`]) and TCP listeners, handing them to a [`Router`], the task
//! that keeps
//! the index in step with the cache, bounded TCP connections, and shutdown that lets queries
//! in flight finish.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cache::Snapshot;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::chain::{Router, Step, Worker};
use crate::config::Config;
use crate::datagram::{self, Batch};
use crate::index::Index;
use crate::memo::Memo;
use crate::message::Transport;
use crate::metrics::{Metrics, programmed};
use crate::{Error, Result};

/// Limits of the server (each a flag of `svcplane dns`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent TCP connections; further connections wait to be accepted.
    pub max_tcp_connections: usize,
    /// A TCP connection idle this long is closed.
    pub tcp_idle_timeout: Duration,
    /// Threads answering UDP on each address, each with a socket of its own.
    pub udp_workers: usize,
    /// Receive and send buffer of each UDP socket (capped by the kernel's `rmem_max`/`wmem_max`):
    /// a burst of queries waits here instead of being dropped.
    pub udp_buffer: usize,
    /// At shutdown, how long queries waiting for an upstream may still finish.
    pub drain: Duration,
    /// Cluster answers each UDP worker keeps as bytes ([`crate::memo`]); 0 keeps none.
    pub kept_answers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tcp_connections: 1000,
            tcp_idle_timeout: Duration::from_secs(10),
            udp_workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            udp_buffer: 4 << 20,
            drain: Duration::from_secs(5),
            kept_answers: crate::memo::DEFAULT_CAPACITY,
        }
    }
}

/// Keeps an index in step with the cache: every published snapshot becomes the next index,
/// and each EndpointSlice change it programs is timed into `metrics` (CoreDNS's DNS programming
/// latency).
pub fn follow(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
) -> watch::Receiver<Arc<Index>> {
    let snapshot = snapshots.borrow_and_update().clone();
    let mut seen = std::collections::HashMap::new();
    let programming = metrics.clone();
    let observe = move |seen: &mut _, snapshot: &Snapshot| {
        for (kind, secs) in programmed(seen, snapshot, std::time::SystemTime::now()) {
            programming.programming[kind].observe(secs);
        }
    };
    let first = Index::build(snapshot.clone(), &config);
    metrics.index_rebuilds.fetch_add(1, Ordering::Relaxed);
    observe(&mut seen, &snapshot);
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        while snapshots.changed().await.is_ok() {
            let snapshot = snapshots.borrow_and_update().clone();
            let (previous, config, next_snapshot) =
                (tx.borrow().clone(), config.clone(), snapshot.clone());
            // A full rebuild of a large cluster takes a while: keep it off the query threads.
            let Ok(next) =
                tokio::task::spawn_blocking(move || previous.next(next_snapshot, &config)).await
            else {
                return;
            };
            if next.whole {
                metrics.index_rebuilds.fetch_add(1, Ordering::Relaxed);
            }
            if tx.send(Arc::new(next)).is_err() {
                return;
            }
            observe(&mut seen, &snapshot);
        }
    });
    rx
}

/// Sockets bound but not yet serving, so binding errors surface before anything starts.
pub struct Bound {
    /// Per address, one UDP socket per worker, all bound to it.
    udp: Vec<Vec<Arc<UdpSocket>>>,
    tcp: Vec<TcpListener>,
}

impl Bound {
    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|sockets| sockets.first()?.local_addr().ok())
            .collect()
    }
}

/// Binds UDP (a socket per worker) and TCP on every address (TCP on the same port as UDP).
pub async fn bind(addrs: &[SocketAddr], limits: &Limits) -> Result<Bound> {
    let mut bound = Bound {
        udp: Vec::new(),
        tcp: Vec::new(),
    };
    for addr in addrs {
        let listen = |addr: SocketAddr| {
            move |e| Error::Listen {
                addr: addr.to_string(),
                source: e,
            }
        };
        let first = datagram::socket(*addr, limits.udp_buffer).map_err(listen(*addr))?;
        let actual = first.local_addr().map_err(listen(*addr))?;
        // TCP binds without sharing: a port another server holds fails here, even one whose
        // UDP sockets would let ours join them.
        let tcp = TcpListener::bind(actual).await.map_err(listen(actual))?;
        let mut sockets = Vec::new();
        for _ in 1..limits.udp_workers.max(1) {
            let socket = datagram::another(&first, limits.udp_buffer).map_err(listen(actual))?;
            sockets.push(Arc::new(socket));
        }
        sockets.insert(0, Arc::new(first));
        bound.udp.push(sockets);
        bound.tcp.push(tcp);
    }
    Ok(bound)
}

/// Serves the blocks of the current router on `bound` until `shutdown` fires (a `reload` sends
/// a new router; each query takes the one current when it arrives); queries already being
/// answered (a forwarded one waiting for its upstream) finish first, for at most `drain`.
pub async fn serve(
    bound: Bound,
    router: watch::Receiver<Arc<Router>>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let in_flight = Arc::new(tokio::sync::RwLock::new(()));
    let workers = UdpWorkers::start(bound.udp, &router, &in_flight, limits.kept_answers);
    let mut tasks = JoinSet::new();
    let connections = Arc::new(Semaphore::new(limits.max_tcp_connections.max(1)));
    for listener in bound.tcp {
        tasks.spawn(tcp_loop(
            listener,
            router.clone(),
            connections.clone(),
            limits.tcp_idle_timeout,
        ));
    }
    let _ = shutdown.wait_for(|stop| *stop).await;
    tasks.abort_all();
    // Within the drain: a worker stuck on a full send buffer is left behind (the process ends
    // soon after), not waited for.
    let deadline = tokio::time::Instant::now() + limits.drain;
    let _ = tokio::time::timeout_at(
        deadline,
        tokio::task::spawn_blocking(move || workers.join()),
    )
    .await;
    // Every forwarded query holds a read guard: the write guard waits for the last of them.
    let _ = tokio::time::timeout_at(deadline, in_flight.write()).await;
}

/// The threads answering UDP, one per socket; dropped, they stop (so an aborted `serve`
/// leaves none behind).
struct UdpWorkers {
    sockets: Vec<Arc<UdpSocket>>,
    stopped: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UdpWorkers {
    fn start(
        udp: Vec<Vec<Arc<UdpSocket>>>,
        router: &watch::Receiver<Arc<Router>>,
        in_flight: &Arc<tokio::sync::RwLock<()>>,
        kept_answers: usize,
    ) -> UdpWorkers {
        let stopped = Arc::new(AtomicBool::new(false));
        let (mut sockets, mut threads) = (Vec::new(), Vec::new());
        for socket in udp.into_iter().flatten() {
            let worker = UdpWorker {
                socket: socket.clone(),
                router: router.clone(),
                in_flight: in_flight.clone(),
                stopped: stopped.clone(),
                runtime: tokio::runtime::Handle::current(),
                kept_answers,
            };
            let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
            match std::thread::Builder::new()
                .name(format!("dns-udp-{port}"))
                .spawn(move || worker.run())
            {
                Ok(thread) => {
                    sockets.push(socket);
                    threads.push(thread);
                }
                // Its socket is closed here, so the kernel gives its share of clients to the
                // other workers' sockets instead of to one nobody reads.
                Err(e) => tracing::error!(error = %e, port, "cannot start a udp worker"),
            }
        }
        UdpWorkers {
            sockets,
            stopped,
            threads,
        }
    }

    /// Stops the workers and waits for them (blocking).
    fn join(mut self) {
        self.stop();
        for thread in std::mem::take(&mut self.threads) {
            let _ = thread.join();
        }
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        for socket in &self.sockets {
            datagram::stop(socket);
        }
    }
}

impl Drop for UdpWorkers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One UDP socket's worker: takes queries in batches, answers what needs no upstream in place
/// and hands forwarded queries to the runtime, whose tasks send their replies on the same
/// socket.
struct UdpWorker {
    socket: Arc<UdpSocket>,
    router: watch::Receiver<Arc<Router>>,
    in_flight: Arc<tokio::sync::RwLock<()>>,
    /// Set when the server stops (a socket that still has queries waiting is left anyway).
    stopped: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
    kept_answers: usize,
}

impl UdpWorker {
    fn run(self) {
        // Plugins start tasks of their own (a prefetch, a refresh behind a stale answer).
        let _runtime = self.runtime.enter();
        let mut batch = Batch::default();
        let mut headers = nix::sys::socket::MultiHeaders::preallocate(datagram::BATCH, None);
        let mut worker = Worker::new(Memo::new(self.kept_answers), rand::rng());
        // The batch's replies back to back, and where each is and goes.
        let mut out = Vec::with_capacity(datagram::BATCH * 512);
        let mut replies = Vec::with_capacity(datagram::BATCH);
        let local = self
            .socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        loop {
            let received = batch.receive(&self.socket);
            // Set before the socket is shut down, so the wake-up of the shutdown sees it.
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            if let Err(e) = received {
                tracing::debug!(error = %e, "udp receive failed");
                continue;
            }
            let current = self.router.borrow().clone();
            for (request, peer) in batch.datagrams() {
                let start = out.len();
                match current.handle(request, Transport::Udp, peer, local, &mut worker, &mut out) {
                    Step::Done(true) => replies.push((start..out.len(), peer)),
                    Step::Done(false) => {}
                    // Upstream in a task of its own: this worker goes back to its socket.
                    Step::Later(answer) => {
                        // Never refused while workers run: the drain takes the write side only
                        // once they have stopped.
                        let Ok(guard) = self.in_flight.clone().try_read_owned() else {
                            continue;
                        };
                        let socket = self.socket.clone();
                        tokio::spawn(async move {
                            if let Some(reply) = answer.await {
                                datagram::send_from_task(socket, reply, peer).await;
                            }
                            drop(guard);
                        });
                    }
                }
            }
            datagram::send(&self.socket, &mut headers, &out, &replies);
            replies.clear();
            out.clear();
        }
    }
}

async fn tcp_loop(
    listener: TcpListener,
    router: watch::Receiver<Arc<Router>>,
    connections: Arc<Semaphore>,
    idle: Duration,
) {
    // Connections live in this set, so stopping the listener stops them too.
    let mut open = JoinSet::new();
    loop {
        while open.try_join_next().is_some() {}
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: back off rather than spin.
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let router = router.clone();
        open.spawn(async move {
            let _ = tcp_connection(stream, router, idle).await;
            drop(permit);
        });
    }
}

/// Answers length-prefixed queries on one connection until it closes, errs or stalls: every
/// read and write must finish within `idle`.
async fn tcp_connection(
    mut stream: TcpStream,
    router: watch::Receiver<Arc<Router>>,
    idle: Duration,
) -> std::io::Result<()> {
    let (peer, local) = (stream.peer_addr()?, stream.local_addr()?);
    // Answers are not kept per connection: the cache and the full path answer TCP.
    let rng: rand::rngs::StdRng = rand::SeedableRng::from_rng(&mut rand::rng());
    let mut worker = Worker::new(Memo::new(0), rng);
    let mut framed = Vec::new();
    loop {
        let mut len = [0u8; 2];
        let Ok(Ok(_)) = tokio::time::timeout(idle, stream.read_exact(&mut len)).await else {
            return Ok(());
        };
        let mut request = vec![0u8; usize::from(u16::from_be_bytes(len))];
        let Ok(Ok(_)) = tokio::time::timeout(idle, stream.read_exact(&mut request)).await else {
            return Ok(());
        };
        let current = router.borrow().clone();
        // Room for the length, written once the reply is.
        framed.clear();
        framed.extend_from_slice(&[0, 0]);
        match current.handle(
            &request,
            Transport::Tcp,
            peer,
            local,
            &mut worker,
            &mut framed,
        ) {
            Step::Done(true) => {}
            Step::Done(false) => continue,
            Step::Later(answer) => match answer.await {
                Some(reply) => framed.extend_from_slice(&reply),
                None => continue,
            },
        }
        let len = (framed.len() - 2) as u16;
        framed[..2].copy_from_slice(&len.to_be_bytes());
        if tokio::time::timeout(idle, stream.write_all(&framed))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
}
