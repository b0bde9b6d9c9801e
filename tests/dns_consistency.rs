//! A manifest rewritten while queries run: every answer is one version of the Service or the
//! other, never a mix (snapshots and indexes are published whole).

use std::collections::BTreeSet;
use std::net::{IpAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

fn version(third_octet: u8) -> (String, BTreeSet<IpAddr>) {
    let ips: Vec<String> = (1..=5).map(|i| format!("10.3.{third_octet}.{i}")).collect();
    let endpoints: String = ips
        .iter()
        .map(|ip| format!("- addresses: [{ip}]\n"))
        .collect();
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: flip, namespace: testns}}\nspec: {{clusterIP: None}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: flip-1\n  namespace: testns\n  labels: {{kubernetes.io/service-name: flip}}\n\
         addressType: IPv4\nendpoints:\n{endpoints}"
    );
    (text, ips.iter().map(|ip| ip.parse().unwrap()).collect())
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
    let port = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_svcplane"))
        .args([
            "dns",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--manifests-reload-interval",
            "5ms",
        ])
        .args(["--manifests", &file.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while query(&socket, port, 1).as_ref() != Some(&a_ips) {
        assert!(Instant::now() < deadline, "svcplane dns never answered");
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
    while answered < 5000 || !writer.is_finished() {
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
    let _ = child.kill();
    let _ = child.wait();
    assert!(answered >= 5000);
    assert!(
        seen_a > 0 && seen_b > 0,
        "both versions were served (A {seen_a}, B {seen_b})"
    );
}
