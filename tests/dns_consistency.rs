//! A manifest rewritten while queries run: every answer is one version of the Service or the
//! other, never a mix (snapshots and indexes are published whole).

use std::collections::BTreeSet;
use std::net::{IpAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

/// A version of the headless Service `flip`: ten addresses split over two slices, so that a
/// reload applied slice by slice would show one slice of each version.
fn version(third_octet: u8) -> (String, BTreeSet<IpAddr>) {
    let ips: Vec<String> = (1..=10)
        .map(|i| format!("10.3.{third_octet}.{i}"))
        .collect();
    let slice = |name: &str, part: &[String]| {
        let endpoints: String = part
            .iter()
            .map(|ip| format!("- addresses: [{ip}]\n"))
            .collect();
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: testns\n\
             \x20 labels: {{kubernetes.io/service-name: flip}}\naddressType: IPv4\nendpoints:\n{endpoints}"
        )
    };
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: flip, namespace: testns}}\nspec: {{clusterIP: None}}\n{}{}",
        slice("flip-1", &ips[..5]),
        slice("flip-2", &ips[5..])
    );
    (text, ips.iter().map(|ip| ip.parse().unwrap()).collect())
}

/// The server, killed when the test ends however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn query(socket: &UdpSocket, port: u16, id: u16) -> Option<BTreeSet<IpAddr>> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.add_query(Query::query(
        Name::from_ascii("flip.testns.svc.cluster.local.").unwrap(),
        RecordType::A,
    ));
    socket
        .send_to(&m.to_vec().unwrap(), ("127.0.0.1", port))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        let reply = Message::from_vec(&buf[..n]).unwrap();
        if reply.metadata.id != id {
            continue;
        }
        return Some(
            reply
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .collect(),
        );
    }
}

#[test]
fn rewrites_during_queries_never_yield_a_mixed_answer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flip.yaml");
    let (a_text, a_ips) = version(0);
    let (b_text, b_ips) = version(1);
    std::fs::write(&file, &a_text).unwrap();
    // Free for both UDP and TCP: the server binds both.
    let port = testkit::free_dns_port();
    let log = dir.path().join("dns.log");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_svcplane"))
            .args([
                "dns",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--manifests-reload-interval",
                "5ms",
            ])
            .args(["--manifests", &file.display().to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while query(&socket, port, 1).as_ref() != Some(&a_ips) {
        assert!(
            Instant::now() < deadline,
            "svcplane dns never answered: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let writer = {
        let (file, dir) = (file.clone(), dir.path().to_path_buf());
        std::thread::spawn(move || {
            for i in 0..200 {
                let text = if i % 2 == 0 { &b_text } else { &a_text };
                let aside = dir.join("flip.yaml.tmp");
                std::fs::write(&aside, text).unwrap();
                std::fs::rename(&aside, &file).unwrap();
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };
    let (mut seen_a, mut seen_b) = (0, 0);
    let mut answered = 0;
    let mut id: u16 = 2;
    let deadline = Instant::now() + Duration::from_secs(120);
    while answered < 5000 || !writer.is_finished() {
        assert!(
            Instant::now() < deadline,
            "5000 answers did not come within 2 minutes ({answered} did)"
        );
        id = id.wrapping_add(1);
        let Some(ips) = query(&socket, port, id) else {
            continue;
        };
        answered += 1;
        if ips == a_ips {
            seen_a += 1;
        } else if ips == b_ips {
            seen_b += 1;
        } else {
            panic!("a mixed or partial answer: {ips:?}");
        }
    }
    writer.join().unwrap();
    assert!(answered >= 5000);
    assert!(
        seen_a > 0 && seen_b > 0,
        "both versions were served (A {seen_a}, B {seen_b})"
    );
}
