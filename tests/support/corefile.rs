//! `svcplane dns --conf` on loopback for tests of the Corefile's directives: every port moved
//! to a free one by flags, the Corefile's `{fixture}` standing for the DNS spec's manifests,
//! its output captured; and scripted upstreams that count what they are asked, over UDP and
//! TCP, and can be silenced.

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, Record};
use testkit::process::Watched;

/// The DNS spec's objects (namespace testns), served through `kubernetes { manifests }`.
pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dns/tests/fixtures/testns.yaml")
}

/// A running `svcplane dns --conf`.
pub struct ConfDns {
    process: Watched,
    pub port: u16,
    pub health_port: u16,
    pub ready_port: u16,
    pub metrics_port: u16,
    pub corefile: PathBuf,
    _dir: tempfile::TempDir,
}

impl ConfDns {
    /// Writes `corefile` (`{fixture}` replaced) and starts `svcplane dns` on it with `extra`
    /// flags, on free loopback ports; waits until it serves.
    pub fn start(corefile: &str, extra: &[&str]) -> ConfDns {
        ConfDns::spawn(corefile, extra).serving()
    }

    /// Waits until it serves, up to 30 s.
    fn serving(self) -> ConfDns {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log().contains("svcplane dns: serving") {
            assert!(
                Instant::now() < deadline,
                "svcplane dns never served:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self
    }

    /// As [`ConfDns::start`], without waiting (for a server expected to exit).
    pub fn spawn(corefile: &str, extra: &[&str]) -> ConfDns {
        ConfDns::spawn_on(testkit::free_dns_port(), corefile, extra)
    }

    /// As [`ConfDns::spawn`], DNS on `port`.
    pub fn spawn_on(port: u16, corefile: &str, extra: &[&str]) -> ConfDns {
        ConfDns::spawn_with(port, corefile, extra, true)
    }

    /// As [`ConfDns::start`], the Corefile's own `bind` kept (no `--bind`).
    pub fn start_as_bound(corefile: &str, extra: &[&str]) -> ConfDns {
        ConfDns::spawn_with(testkit::free_dns_port(), corefile, extra, false).serving()
    }

    fn spawn_with(port: u16, corefile: &str, extra: &[&str], bind: bool) -> ConfDns {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Corefile");
        std::fs::write(
            &path,
            corefile.replace("{fixture}", &fixture().display().to_string()),
        )
        .unwrap();
        let (health_port, ready_port, metrics_port) = (
            testkit::free_port(),
            testkit::free_port(),
            testkit::free_port(),
        );
        let mut args: Vec<std::ffi::OsString> = vec!["dns".into(), "--conf".into()];
        args.push(path.clone().into());
        if bind {
            args.push("--bind".into());
            args.push("127.0.0.1".into());
        }
        for (flag, value) in [
            ("--dns-port", port.to_string()),
            ("--health-port", health_port.to_string()),
            ("--ready-port", ready_port.to_string()),
            ("--metrics-port", metrics_port.to_string()),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        args.extend(extra.iter().map(Into::into));
        let process = Watched::spawn(
            Path::new(env!("CARGO_BIN_EXE_svcplane")),
            args,
            &[],
            &dir.path().join("svcplane-dns.log"),
            None,
        );
        ConfDns {
            process,
            port,
            health_port,
            ready_port,
            metrics_port,
            corefile: path,
            _dir: dir,
        }
    }

    /// Everything it printed (the `log` and `errors` lines are on stdout).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Its exit status, once it exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.exited()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        self.process.signal(signal);
    }

    /// The value of one sample of `/metrics` (the sum over matching label sets), 0 if absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (status, body) =
            super::http(self.metrics_port, "GET", "/metrics", &[], None).expect("/metrics");
        assert_eq!(status, 200);
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
                (metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }
}

/// What a [`FakeUpstream`] answers a question with.
pub type Answer = dyn Fn(&Message) -> Option<Message> + Send + Sync;

/// A scripted upstream on one loopback port, UDP and TCP: answers with a function of the
/// question (nothing: no reply), counts the questions per transport, and can be silenced.
pub struct FakeUpstream {
    pub port: u16,
    pub udp_questions: Arc<AtomicUsize>,
    pub tcp_questions: Arc<AtomicUsize>,
    /// While set, nothing is answered.
    pub silent: Arc<AtomicBool>,
    /// Every question's name, in order.
    pub asked: Arc<Mutex<Vec<String>>>,
}

impl FakeUpstream {
    pub fn start(answer: impl Fn(&Message) -> Option<Message> + Send + Sync + 'static) -> Self {
        // Both sockets stay bound from the start: a port freed and bound again could be taken
        // in between (by a forwarder's ephemeral socket in a test running beside this one).
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) {
                break (udp, tcp);
            }
        };
        let port = udp.local_addr().unwrap().port();
        let answer: Arc<Answer> = Arc::new(answer);
        let upstream = FakeUpstream {
            port,
            udp_questions: Arc::default(),
            tcp_questions: Arc::default(),
            silent: Arc::default(),
            asked: Arc::default(),
        };
        let reply = {
            let (silent, asked, answer) = (
                upstream.silent.clone(),
                upstream.asked.clone(),
                answer.clone(),
            );
            move |bytes: &[u8]| -> Option<Vec<u8>> {
                let query = Message::from_vec(bytes).ok()?;
                asked
                    .lock()
                    .unwrap()
                    .push(query.queries.first()?.name().to_ascii());
                if silent.load(Ordering::Relaxed) {
                    return None;
                }
                answer(&query)?.to_vec().ok()
            }
        };
        let (udp_reply, udp_count) = (reply.clone(), upstream.udp_questions.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 65535];
            while let Ok((n, peer)) = udp.recv_from(&mut buf) {
                udp_count.fetch_add(1, Ordering::Relaxed);
                if let Some(bytes) = udp_reply(&buf[..n]) {
                    let _ = udp.send_to(&truncated(&buf[..n], bytes), peer);
                }
            }
        });
        let tcp_count = upstream.tcp_questions.clone();
        std::thread::spawn(move || {
            for stream in tcp.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (reply, count) = (reply.clone(), tcp_count.clone());
                std::thread::spawn(move || {
                    loop {
                        let mut len = [0u8; 2];
                        if stream.read_exact(&mut len).is_err() {
                            return;
                        }
                        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if stream.read_exact(&mut buf).is_err() {
                            return;
                        }
                        count.fetch_add(1, Ordering::Relaxed);
                        if let Some(bytes) = reply(&buf) {
                            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
                            framed.extend_from_slice(&bytes);
                            if stream.write_all(&framed).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        upstream
    }

    /// Questions asked so far, over both transports (health checks included).
    pub fn questions(&self) -> usize {
        self.udp_questions.load(Ordering::Relaxed) + self.tcp_questions.load(Ordering::Relaxed)
    }
}

/// `reply` as a server sends it over UDP to `query`: within 512 bytes, or the query's EDNS
/// size; too big, the records go and TC is set.
fn truncated(query: &[u8], reply: Vec<u8>) -> Vec<u8> {
    let limit = Message::from_vec(query)
        .ok()
        .and_then(|q| q.edns.map(|e| usize::from(e.max_payload().max(512))))
        .unwrap_or(512);
    if reply.len() <= limit {
        return reply;
    }
    let Ok(mut message) = Message::from_vec(&reply) else {
        return reply;
    };
    message.answers.clear();
    message.authorities.clear();
    message.additionals.clear();
    message.metadata.truncation = true;
    message.to_vec().unwrap_or(reply)
}

/// A reply to `query` with `records` in the answer section (RA set, as a resolver's).
pub fn reply_with(query: &Message, records: Vec<Record>) -> Message {
    let mut m = Message::new(
        query.metadata.id,
        MessageType::Response,
        query.metadata.op_code,
    );
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.queries = query.queries.clone();
    m.edns = query.edns.clone();
    m.answers = records;
    m
}

/// An A record for the question's name.
pub fn a_record(query: &Message, ttl: u32, ip: [u8; 4]) -> Record {
    Record::from_rdata(
        query.queries[0].name().clone(),
        ttl,
        RData::A(hickory_proto::rr::rdata::A::from(std::net::Ipv4Addr::from(
            ip,
        ))),
    )
}

/// A reply to `query` with `rcode` and nothing else.
pub fn rcode_reply(query: &Message, rcode: ResponseCode) -> Message {
    let mut m = reply_with(query, Vec::new());
    m.metadata.response_code = rcode;
    m
}

/// Queries without pause from a thread of their own, the `names` (type A) in turn, each with
/// when it was sent, its name and dig's status, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(std::time::Instant, String, String)>>,
}

impl Load {
    pub fn start(port: u16, names: &[&str]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut results = Vec::new();
                for name in names.iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let sent = std::time::Instant::now();
                    let status = super::dig(port, &[name, "A"]).status;
                    results.push((sent, name.clone(), status));
                }
                results
            })
        };
        Load { stop, thread }
    }

    /// Stops the queries: what each gave.
    pub fn stop(self) -> Vec<(std::time::Instant, String, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the load thread")
    }
}
