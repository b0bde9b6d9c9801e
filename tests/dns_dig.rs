//! `svcplane dns --manifests` over real sockets, checked with `dig` (full output, not +short),
//! over UDP and TCP; SERVFAIL before the first sync; malformed packets.

use std::io::Write;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `svcplane dns`, killed on drop.
struct Dns {
    child: Child,
    port: u16,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    // A port free for both UDP and TCP.
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dns/tests/fixtures/testns.yaml")
}

fn start(extra: &[&str]) -> Dns {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_svcplane"))
        .args([
            "dns",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--zone",
            "cluster.local,in-addr.arpa,ip6.arpa",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start svcplane dns");
    Dns { child, port }
}

/// What dig printed, reduced to the parts a test compares.
#[derive(Debug)]
struct Reply {
    status: String,
    flags: Vec<String>,
    answer: Vec<String>,
    authority: Vec<String>,
    additional: Vec<String>,
}

fn dig(port: u16, args: &[&str]) -> Reply {
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+norec",
            "+time=2",
            "+tries=1",
        ])
        .args(args)
        .output()
        .expect("run dig (apt-get install -y dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut reply = Reply {
        status: String::new(),
        flags: vec![],
        answer: vec![],
        authority: vec![],
        additional: vec![],
    };
    let mut section: Option<&str> = None;
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            reply.status = rest.split(',').next().unwrap_or_default().to_string();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            reply.flags = rest
                .split(';')
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from)
                .collect();
        }
        match line {
            ";; ANSWER SECTION:" => section = Some("an"),
            ";; AUTHORITY SECTION:" => section = Some("ns"),
            ";; ADDITIONAL SECTION:" => section = Some("ad"),
            "" => section = None,
            l if l.starts_with(';') => {}
            l => {
                let norm = l.split_whitespace().collect::<Vec<_>>().join(" ");
                match section {
                    Some("an") => reply.answer.push(norm),
                    Some("ns") => reply.authority.push(norm),
                    Some("ad") => reply.additional.push(norm),
                    _ => {}
                }
            }
        }
    }
    assert!(
        !reply.status.is_empty(),
        "dig {args:?} got no reply:\n{text}"
    );
    reply
}

fn wait_answering(port: u16, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &port.to_string(), "+time=1", "+tries=1"])
            .args(name.split_whitespace())
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("status: NOERROR") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("svcplane dns on {port} never answered {name}");
}

/// A headless Service with `n` ready endpoints, as a manifest.
fn big_headless(n: usize) -> String {
    let endpoints: String = (0..n)
        .map(|i| format!("- addresses: [10.2.{}.{}]\n", i / 250, i % 250 + 1))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: testns}}\nspec: {{clusterIP: None}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: big-1\n  namespace: testns\n  labels: {{kubernetes.io/service-name: big}}\n\
         addressType: IPv4\nendpoints:\n{endpoints}"
    )
}

#[test]
fn dig_gets_the_specified_answers_over_udp_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.yaml"), big_headless(100)).unwrap();
    let manifests = format!(
        "{},{}",
        fixture().display(),
        dir.path().join("big.yaml").display()
    );
    let dns = start(&["--manifests", &manifests, "--pods", "insecure"]);
    wait_answering(dns.port, "svc1.testns.svc.cluster.local");
    let soa = "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local.";
    for transport in ["+notcp", "+tcp"] {
        let q = |args: &[&str]| {
            let mut all = vec![transport];
            all.extend(args);
            dig(dns.port, &all)
        };
        let r = q(&["svc1.testns.svc.cluster.local", "A"]);
        assert_eq!(
            (r.status.as_str(), r.answer.clone()),
            (
                "NOERROR",
                vec!["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1".to_string()]
            )
        );
        assert!(
            r.flags.contains(&"aa".to_string()) && !r.flags.contains(&"ra".to_string()),
            "{:?}",
            r.flags
        );

        let r = q(&["svc-dual-stack.testns.svc.cluster.local", "AAAA"]);
        assert_eq!(
            r.answer,
            ["svc-dual-stack.testns.svc.cluster.local. 5 IN AAAA 10::3"]
        );

        let r = q(&["hdls1.testns.svc.cluster.local", "A"]);
        assert_eq!(r.answer.len(), 4, "{:?}", r.answer);
        let r = q(&["hdls1.testns.svc.cluster.local", "AAAA"]);
        assert_eq!(r.answer.len(), 2, "{:?}", r.answer);

        let r = q(&["_http._tcp.svc1.testns.svc.cluster.local", "SRV"]);
        assert_eq!(
            r.answer,
            [
                "_http._tcp.svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc1.testns.svc.cluster.local."
            ]
        );
        assert!(
            r.additional
                .contains(&"svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1".to_string()),
            "{:?}",
            r.additional
        );

        let r = q(&["external.testns.svc.cluster.local", "CNAME"]);
        assert_eq!(
            r.answer,
            ["external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test."]
        );

        let r = q(&["-x", "10.0.0.1"]);
        assert_eq!(
            r.answer,
            ["1.0.0.10.in-addr.arpa. 5 IN PTR svc1.testns.svc.cluster.local."]
        );

        let r = q(&["10-240-0-1.testns.pod.cluster.local", "A"]);
        assert_eq!(
            r.answer,
            ["10-240-0-1.testns.pod.cluster.local. 5 IN A 10.240.0.1"]
        );

        let r = q(&["svc0.testns.svc.cluster.local", "A"]);
        assert_eq!(r.status, "NXDOMAIN");
        assert!(
            r.answer.is_empty() && r.authority[0].starts_with(soa),
            "{:?}",
            r.authority
        );

        let r = q(&["svc1.testns.svc.cluster.local", "AAAA"]);
        assert_eq!(r.status, "NOERROR");
        assert!(
            r.answer.is_empty() && r.authority[0].starts_with(soa),
            "{:?}",
            r.authority
        );

        let r = q(&["SvC1.TeStNs.SvC.cLuStEr.LoCaL", "A"]);
        assert_eq!(r.answer, ["SvC1.TeStNs.SvC.cLuStEr.LoCaL. 5 IN A 10.0.0.1"]);
    }
    // 100 A records do not fit in 512 bytes: UDP without EDNS truncates, TCP returns them all.
    let r = dig(
        dns.port,
        &["+noedns", "+ignore", "big.testns.svc.cluster.local", "A"],
    );
    assert!(r.flags.contains(&"tc".to_string()), "{:?}", r.flags);
    assert!(r.answer.len() < 100);
    let r = dig(dns.port, &["+tcp", "big.testns.svc.cluster.local", "A"]);
    assert!(!r.flags.contains(&"tc".to_string()));
    assert_eq!(r.answer.len(), 100);
}

#[test]
fn before_the_first_sync_unknown_names_get_servfail_not_nxdomain() {
    // A kubeconfig pointing at a listener that accepts and never answers: the watches never sync.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = silent.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://{api}'}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let dns = start(&[
        "--kubeconfig",
        &kubeconfig.display().to_string(),
        "--startup-timeout",
        "200ms",
    ]);
    wait_answering(dns.port, "dns-version.cluster.local TXT");
    let r = dig(dns.port, &["svc0.testns.svc.cluster.local", "A"]);
    assert_eq!(r.status, "SERVFAIL");
    assert!(
        r.authority[0].starts_with("cluster.local. 5 IN SOA"),
        "{:?}",
        r.authority
    );
    drop(silent);

    // Manifests whose first load has not completed: a FIFO nobody has written to yet.
    let fifo = dir.path().join("pending.yaml");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let dns = start(&[
        "--manifests",
        &fifo.display().to_string(),
        "--startup-timeout",
        "200ms",
    ]);
    wait_answering(dns.port, "dns-version.cluster.local TXT");
    assert_eq!(
        dig(dns.port, &["svc1.testns.svc.cluster.local", "A"]).status,
        "SERVFAIL"
    );
    // Once the manifests arrive, the cache syncs and answers are definite.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .unwrap()
        .write_all(std::fs::read_to_string(fixture()).unwrap().as_bytes())
        .unwrap();
    wait_answering(dns.port, "svc1.testns.svc.cluster.local");
    assert_eq!(
        dig(dns.port, &["svc0.testns.svc.cluster.local", "A"]).status,
        "NXDOMAIN"
    );
}

#[test]
fn malformed_packets_never_stop_the_server() {
    let dns = start(&["--manifests", &fixture().display().to_string()]);
    wait_answering(dns.port, "svc1.testns.svc.cluster.local");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(30)))
        .unwrap();
    let mut seed: u64 = 0x5eed;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // A valid header claiming two questions, one with none, then random bytes of random lengths.
    let mut packets: Vec<Vec<u8>> = vec![
        vec![0x12, 0x34, 0x01, 0x00, 0, 2, 0, 0, 0, 0, 0, 0],
        vec![0x12, 0x35, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![0x12],
    ];
    for _ in 0..300 {
        let len = (next() % 64) as usize;
        packets.push((0..len).map(|_| next() as u8).collect());
    }
    let mut buf = [0u8; 1500];
    for p in &packets {
        socket.send_to(p, ("127.0.0.1", dns.port)).unwrap();
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            // Whatever comes back is a well-formed response header with the request's id.
            assert!(
                n >= 12 && buf[2] & 0x80 != 0,
                "not a response: {:?}",
                &buf[..n]
            );
            if p.len() >= 12 && p[..2] == [0x12, 0x34] {
                assert_eq!(buf[3] & 0x0f, 1, "two questions: FORMERR");
            }
        }
    }
    assert_answers_svc1(dns.port);
}

#[test]
fn a_reply_whose_questions_alone_exceed_512_bytes_still_fits_and_kills_no_worker() {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let dns = start(&["--manifests", &fixture().display().to_string()]);
    wait_answering(dns.port, "svc1.testns.svc.cluster.local");
    // No EDNS, so a UDP reply may have 512 bytes; four questions of ~150 bytes each echo to
    // more than that before any record.
    let mut query = Message::new(0x4242, MessageType::Query, OpCode::Query);
    for i in 0..4 {
        let label = format!("{}{i}", "q".repeat(60));
        let name = Name::from_ascii(format!("{label}.{label}.svc.cluster.local.")).unwrap();
        query.queries.push(Query::query(name, RecordType::A));
    }
    let packet = query.to_vec().unwrap();
    assert!(packet.len() > 512, "{}", packet.len());
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 4096];
    // More times than there are UDP workers: a worker that panicked would be gone for good.
    for _ in 0..8 {
        socket.send_to(&packet, ("127.0.0.1", dns.port)).unwrap();
        let (n, _) = socket.recv_from(&mut buf).expect("a reply");
        assert!(n <= 512, "a {n}-byte reply to a 512-byte client");
        let reply = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(reply.metadata.id, 0x4242);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert!(
            reply.metadata.truncation,
            "TC must be set when the reply was cut"
        );
        assert_eq!(buf[3] & 0x0f, 1, "several questions: FORMERR");
    }
    assert_answers_svc1(dns.port);
}

#[test]
fn a_corefile_runs_with_its_port_replaced_and_is_checked_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let corefile = dir.path().join("Corefile");
    std::fs::write(
        &corefile,
        format!(
            "# a Corefile of svcplane's own\n.:53 {{\n    kubernetes cluster.local in-addr.arpa {{\n        ttl {{$TEST_TTL}}\n        manifests {}\n    }}\n}}\n",
            fixture().display()
        ),
    )
    .unwrap();
    let conf = corefile.to_str().unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_svcplane"))
        .args(["dns", "--conf", conf, "--check"])
        .env("TEST_TTL", "30")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_svcplane"))
        .args(["dns", "--conf", conf, "--bind", "127.0.0.1"])
        .args(["--dns-port", &port.to_string()])
        .env("TEST_TTL", "30")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dns = Dns { child, port };
    wait_answering(dns.port, "svc1.testns.svc.cluster.local");
    // The Corefile's ttl, through its environment placeholder.
    assert_eq!(
        dig(dns.port, &["svc1.testns.svc.cluster.local", "A"]).answer,
        ["svc1.testns.svc.cluster.local. 30 IN A 10.0.0.1"]
    );
    // A directive svcplane does not run yet: refused with the file, the line and the list.
    std::fs::write(
        &corefile,
        ".:53 {\n    errors\n    dnssec\n    kubernetes cluster.local\n}\n",
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_svcplane"))
        .args(["dns", "--conf", conf, "--check"])
        .output()
        .unwrap();
    assert!(!check.status.success());
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(
        said.contains(&format!(
            "{conf}:3: dnssec is not supported yet (supported: bind, bufsize, kubernetes, forward, cache, hosts, rewrite, errors, log, health, ready, prometheus, loadbalance, loop, reload)"
        )),
        "{said}"
    );
    // What only starting finds (a TLS file that is not there) is found by the check too.
    std::fs::write(
        &corefile,
        ".:53 {\n    forward . tls://127.0.0.1:853 {\n        tls /nonexistent/ca.pem\n    }\n}\n",
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_svcplane"))
        .args(["dns", "--conf", conf, "--check"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success(), "{said}");
    assert!(said.contains("/nonexistent/ca.pem"), "{said}");
}

/// `svcplane dns --conf COREFILE` with DNS on a free loopback port and `extra` flags; its
/// stdout goes to `COREFILE.out`.
fn spawn_conf(corefile: &std::path::Path, extra: &[&str]) -> Dns {
    let out = std::fs::File::create(corefile.with_extension("out")).unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_svcplane"))
        .args([
            "dns",
            "--conf",
            corefile.to_str().unwrap(),
            "--bind",
            "127.0.0.1",
        ])
        .args(["--dns-port", &port.to_string()])
        .args(extra)
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Dns { child, port }
}

/// The fixture's svc1 is answered as ever.
fn assert_answers_svc1(port: u16) {
    assert_eq!(
        dig(port, &["svc1.testns.svc.cluster.local", "A"]).answer,
        ["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]
    );
}

/// A plain HTTP GET on loopback: the status and the body, or None while nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// `svcplane dns --conf` with every port moved to a free one on loopback: DNS, health, ready.
fn start_conf(corefile: &std::path::Path) -> (Dns, u16, u16) {
    let (health, ready) = (free_port(), free_port());
    let (health_text, ready_text) = (health.to_string(), ready.to_string());
    let dns = spawn_conf(
        corefile,
        &["--health-port", &health_text, "--ready-port", &ready_text],
    );
    (dns, health, ready)
}

fn wait_for_http(port: u16, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(answer) = get(port, path) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "nothing answered {path} on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn health_and_ready_answer_as_coredns_and_a_sigterm_keeps_dns_answering_for_the_lameduck() {
    let dir = tempfile::tempdir().unwrap();
    let corefile = dir.path().join("Corefile");
    std::fs::write(
        &corefile,
        format!(
            ".:53 {{\n  health :8080 {{\n    lameduck 3s\n  }}\n  ready\n  kubernetes cluster.local {{\n    manifests {}\n  }}\n}}\n",
            fixture().display()
        ),
    )
    .unwrap();
    let (mut dns, health, ready) = start_conf(&corefile);
    wait_answering(dns.port, "svc1.testns.svc.cluster.local");
    assert_eq!(wait_for_http(health, "/health"), (200, "OK".to_string()));
    assert_eq!(wait_for_http(ready, "/ready"), (200, "OK".to_string()));
    let pid = nix::unistd::Pid::from_raw(dns.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // At once not ready; still live and still answering, until the lameduck period is over.
    let deadline = Instant::now() + Duration::from_secs(2);
    while get(ready, "/ready") != Some((503, "Shutting down".to_string())) {
        assert!(Instant::now() < deadline, "/ready never turned 503");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(health, "/health"), Some((200, "OK".to_string())));
    assert_answers_svc1(dns.port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = dns.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running after the lameduck period"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn ready_names_kubernetes_until_the_cache_has_synced() {
    let dir = tempfile::tempdir().unwrap();
    // A cluster that never answers: the watch never syncs.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\nusers: [{name: u, user: {}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
    )
    .unwrap();
    let corefile = dir.path().join("Corefile");
    std::fs::write(
        &corefile,
        format!(
            ".:53 {{\n  health\n  ready\n  kubernetes cluster.local {{\n    kubeconfig {}\n    startup_timeout 1s\n  }}\n}}\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    let (_dns, health, ready) = start_conf(&corefile);
    assert_eq!(wait_for_http(health, "/health"), (200, "OK".to_string()));
    assert_eq!(
        wait_for_http(ready, "/ready"),
        (503, "kubernetes".to_string())
    );
}

#[test]
fn other_names_are_forwarded_to_the_resolv_conf_upstream_and_fail_as_servfail_once_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    // The upstream: CoreDNS serving example.org from a zone file.
    let zone = dir.path().join("db.example.org");
    std::fs::write(
        &zone,
        "$ORIGIN example.org.\n@ 3600 IN SOA ns.example.org. admin.example.org. 1 7200 3600 1209600 3600\n@ 3600 IN NS ns.example.org.\nns 3600 IN A 192.0.2.53\nwww 300 IN A 192.0.2.1\n@ 300 IN MX 10 mail.example.org.\n@ 300 IN TXT \"hello\"\n",
    )
    .unwrap();
    let upstream = testkit::CoreDns::start(&format!(
        ".:{{port}} {{\n  bind 127.0.0.1\n  ready 127.0.0.1:{{ready}}\n  file {} example.org\n}}\n",
        zone.display()
    ));
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver 127.0.0.1:{}\n", upstream.port)).unwrap();
    let corefile = dir.path().join("Corefile");
    std::fs::write(
        &corefile,
        format!(
            ".:53 {{\n  kubernetes cluster.local {{\n    manifests {}\n  }}\n  forward . /etc/resolv.conf {{\n    max_concurrent 1000\n  }}\n}}\n",
            fixture().display()
        ),
    )
    .unwrap();
    let dns = spawn_conf(&corefile, &["--resolv-conf", resolv.to_str().unwrap()]);
    wait_answering(dns.port, "svc1.testns.svc.cluster.local");
    // The same answers as the upstream's own, through svcplane.
    for (name, qtype) in [
        ("www.example.org", "A"),
        ("example.org", "MX"),
        ("example.org", "TXT"),
        ("nope.example.org", "A"),
    ] {
        let ours = dig(dns.port, &["+rec", name, qtype]);
        let theirs = dig(upstream.port, &["+rec", name, qtype]);
        assert_eq!(ours.status, theirs.status, "{name} {qtype}");
        assert_eq!(ours.answer, theirs.answer, "{name} {qtype}");
    }
    assert_eq!(
        dig(dns.port, &["www.example.org", "A"]).answer,
        ["www.example.org. 300 IN A 192.0.2.1"]
    );
    assert_eq!(dig(dns.port, &["nope.example.org", "A"]).status, "NXDOMAIN");
    // The cluster zone is still answered from the cache.
    assert_answers_svc1(dns.port);
    // The upstream gone: SERVFAIL after the timeout, while cluster names answer at once.
    drop(upstream);
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &dns.port.to_string(),
            "+time=8",
            "+tries=1",
        ])
        .args(["www.example.org", "A"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("status: SERVFAIL"), "{text}");
    assert_answers_svc1(dns.port);
}

/// A fake upstream on a loopback UDP port, answering every query with `answer(query)`: the
/// datagrams to send back, in order.
fn fake_upstream(
    answer: impl Fn(&hickory_proto::op::Message) -> Vec<Vec<u8>> + Send + 'static,
) -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let Ok(query) = hickory_proto::op::Message::from_vec(&buf[..n]) else {
                continue;
            };
            for datagram in answer(&query) {
                let _ = socket.send_to(&datagram, peer);
            }
        }
    });
    port
}

/// `svcplane dns` with the fixture's cluster zone and `forward . 127.0.0.1:UPSTREAM { OPTIONS }`.
fn forwarding_to(upstream: u16, options: &str) -> (Dns, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let corefile = dir.path().join("Corefile");
    std::fs::write(
        &corefile,
        format!(
            ".:53 {{\n  kubernetes cluster.local {{\n    manifests {}\n  }}\n  forward . 127.0.0.1:{upstream} {{\n{options}\n  }}\n}}\n",
            fixture().display()
        ),
    )
    .unwrap();
    let dns = spawn_conf(&corefile, &[]);
    wait_answering(dns.port, "svc1.testns.svc.cluster.local");
    (dns, dir)
}

#[test]
fn a_reply_with_another_id_or_question_is_ignored() {
    use hickory_proto::op::{Message, MessageType, Query};
    use hickory_proto::rr::{Name, RData, Record, rdata::A};
    let upstream = fake_upstream(|query| {
        let reply = |id: u16, name: &str| {
            let mut m = Message::new(id, MessageType::Response, query.metadata.op_code);
            m.metadata.recursion_desired = query.metadata.recursion_desired;
            let name = Name::from_ascii(name).unwrap();
            m.queries
                .push(Query::query(name.clone(), query.queries[0].query_type()));
            m.answers
                .push(Record::from_rdata(name, 60, RData::A(A::new(192, 0, 2, 7))));
            m.to_vec().unwrap()
        };
        let (id, asked) = (query.metadata.id, query.queries[0].name().to_ascii());
        vec![
            reply(id.wrapping_add(1), &asked), // another ID
            reply(id, "spoofed.example.net."), // another question
            reply(id, &asked),                 // the reply
        ]
    });
    let (dns, _dir) = forwarding_to(upstream, "");
    let reply = dig(dns.port, &["+rec", "www.example.org", "A"]);
    assert_eq!(reply.status, "NOERROR");
    assert_eq!(reply.answer, ["www.example.org. 60 IN A 192.0.2.7"]);
}

#[test]
fn a_hanging_upstream_never_slows_cluster_names_and_max_concurrent_refuses_the_rest() {
    let upstream = fake_upstream(|_| Vec::new()); // answers nothing
    let (dns, _dir) = forwarding_to(upstream, "    max_concurrent 2");
    let time_cluster_name = || {
        let started = Instant::now();
        for _ in 0..20 {
            assert_eq!(
                dig(dns.port, &["svc1.testns.svc.cluster.local", "A"]).answer,
                ["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]
            );
        }
        started.elapsed()
    };
    let calm = time_cluster_name();
    // Two forwarded queries hang (the limit); a third is REFUSED at once.
    let hanging: Vec<_> = (0..2)
        .map(|i| {
            Command::new("dig")
                .args([
                    "@127.0.0.1",
                    "-p",
                    &dns.port.to_string(),
                    "+time=8",
                    "+tries=1",
                ])
                .arg(format!("hang{i}.example.org"))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        dig(dns.port, &["+rec", "third.example.org", "A"]).status,
        "REFUSED"
    );
    let busy = time_cluster_name();
    // The cluster path does not wait for the upstream: 20 cluster answers while two forwarded
    // queries hang take no more than a few times as long as without them (a hanging
    // upstream would add seconds per query).
    assert!(
        busy < calm * 5 + Duration::from_millis(500),
        "cluster names took {busy:?} beside a hanging upstream, {calm:?} without"
    );
    for child in hanging {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("status: SERVFAIL"), "{text}");
    }
}

#[test]
fn log_writes_a_line_per_query_in_coredns_common_format() {
    let dir = tempfile::tempdir().unwrap();
    let corefile = dir.path().join("Corefile");
    std::fs::write(
        &corefile,
        format!(
            ".:53 {{\n  log\n  kubernetes cluster.local {{\n    manifests {}\n  }}\n}}\n",
            fixture().display()
        ),
    )
    .unwrap();
    let dns = spawn_conf(&corefile, &[]);
    wait_answering(dns.port, "svc1.testns.svc.cluster.local");
    assert_answers_svc1(dns.port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = std::fs::read_to_string(corefile.with_extension("out")).unwrap();
        // `[INFO] 127.0.0.1:PORT - ID "A IN name. udp SIZE false 1232" NOERROR qr,aa SIZE 0.000123s`
        // (dig sends EDNS with a 1232-byte buffer and, with +norec, no RD).
        let line = out.lines().find(|l| {
            l.starts_with("[INFO] 127.0.0.1:")
                && l.contains("\"A IN svc1.testns.svc.cluster.local. udp ")
                && l.contains(" false 1232\" NOERROR qr,aa ")
                && l.ends_with('s')
        });
        if line.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no log line for the query in:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bad_flags_and_manifests_exit_non_zero_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: Service\nmetadata: {name: w}\nspec: {ports: [{port: 99999}]}\n",
    )
    .unwrap();
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    // (arguments, what stderr must say)
    let rows: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--ttl".into(), "4000".into()],
            "--ttl: 4000 is out of range; use 0 to 3600",
        ),
        (
            vec!["--pods".into(), "maybe".into()],
            "\"maybe\" is not a pods mode",
        ),
        (
            vec!["--zone".into(), "in-addr.arpa".into()],
            "at least one zone must be a forward zone",
        ),
        (
            vec!["--manifests".into(), bad.display().to_string()],
            "bad.yaml: document 1 (Service default/w): spec.ports[0].port: 99999 is not a port number",
        ),
        (
            vec![
                "--manifests".into(),
                dir.path().join("missing.yaml").display().to_string(),
            ],
            "missing.yaml",
        ),
    ];
    for (args, want) in rows {
        let out = Command::new(env!("CARGO_BIN_EXE_svcplane"))
            .args(["dns", "--listen", &listen])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
    }
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut dns = start(&["--manifests", &fixture().display().to_string()]);
    wait_answering(dns.port, "svc1.testns.svc.cluster.local");
    let pid = nix::unistd::Pid::from_raw(dns.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = dns.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tcp_connections_are_bounded_and_a_freed_slot_is_reused() {
    let dns = start(&[
        "--manifests",
        &fixture().display().to_string(),
        "--max-tcp-connections",
        "1",
    ]);
    wait_answering(dns.port, "svc1.testns.svc.cluster.local");
    // One idle connection takes the only slot: a TCP query waits and dig gives up.
    let held = std::net::TcpStream::connect(("127.0.0.1", dns.port)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &dns.port.to_string(),
            "+tcp",
            "+time=1",
            "+tries=1",
            "svc1.testns.svc.cluster.local",
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("status: NOERROR"),
        "a second connection was served"
    );
    // Closing it frees the slot.
    drop(held);
    let r = dig(dns.port, &["+tcp", "svc1.testns.svc.cluster.local", "A"]);
    assert_eq!(r.answer, ["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]);
}
