//! A round-robin TCP proxy on loopback, standing for a Service in front of several webhook
//! replicas: each accepted connection goes to the next backend in turn, bytes copied both ways
//! untouched (TLS passes through). It runs on its own thread and runtime until dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

/// A running proxy; stopped when dropped.
pub struct RoundRobin {
    addr: SocketAddr,
    connections: Arc<Vec<AtomicUsize>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RoundRobin {
    /// Listens on a free loopback port and forwards to `backends` in turn.
    pub fn start(backends: Vec<SocketAddr>) -> RoundRobin {
        assert!(!backends.is_empty(), "a proxy needs a backend");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("a bound address");
        let connections: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let counted = connections.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the proxy");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let next = AtomicUsize::new(0);
                tokio::pin!(stopped);
                loop {
                    let (mut inbound, _) = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok(accepted) => accepted,
                            Err(_) => continue,
                        },
                    };
                    let i = next.fetch_add(1, Ordering::Relaxed) % backends.len();
                    counted[i].fetch_add(1, Ordering::Relaxed);
                    let backend = backends[i];
                    tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            });
        });
        RoundRobin {
            addr,
            connections,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections each backend was given, in the order of the backends.
    pub fn connections(&self) -> Vec<usize> {
        self.connections
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
