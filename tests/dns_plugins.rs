//! Each directive and option of the Corefile, observed over the wire: `cache` (TTL cap and
//! minimum, capacity and eviction, `disable`, `prefetch`, `serve_stale`, `servfail`, `keepttl`,
//! an answer served while the upstream is gone), `forward` (`policy`, `max_fails` and
//! `health_check`, `force_tcp`, `prefer_udp`, `expire`, `except`), `loadbalance`, `loop`,
//! `reload`, `errors`, several server blocks routed by the longest zone, and a burst of
//! queries from many clients answered once each. The upstreams are
//! Debian's Unbound, or scripted ones that count what they are asked and can be silenced.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use support::corefile::{ConfDns, FakeUpstream, Load, a_record, rcode_reply, reply_with};
use support::dns_compare::{Question, Transport, ask, exchange};
use testkit::Unbound;

fn q(name: &str, qtype: RecordType) -> Question {
    Question::new(name, qtype)
}

/// The TTL of the first answer record.
fn ttl(port: u16, question: &Question) -> u32 {
    let reply = exchange(port, question, Transport::Udp);
    reply
        .answers
        .first()
        .map_or_else(|| panic!("no answer to {question}: {reply:?}"), |r| r.ttl)
}

/// An upstream answering every A question with `192.0.2.N`, N counting the questions, TTL 300.
fn counting_upstream() -> FakeUpstream {
    let n = AtomicUsize::new(0);
    FakeUpstream::start(move |query| {
        let i = n.fetch_add(1, Ordering::Relaxed) as u8 + 1;
        Some(reply_with(
            query,
            vec![a_record(query, 300, [192, 0, 2, i])],
        ))
    })
}

/// A Corefile forwarding every name to `upstream` with `forward_options`, and a cache block.
fn forwarding(upstream: u16, forward_options: &str, cache: &str) -> String {
    format!(
        ".:53 {{\n  prometheus\n  errors\n  forward . 127.0.0.1:{upstream} {{\n{forward_options}\n  }}\n{cache}\n}}\n"
    )
}

#[test]
fn cache_caps_and_raises_ttls_and_serves_a_forwarded_answer_after_the_upstream_stops() {
    let unbound = Unbound::start(&[
        "www.example.org. 300 IN A 192.0.2.10",
        "short.example.org. 1 IN A 192.0.2.20",
    ]);
    let dns = ConfDns::start(
        &format!(
            ".:53 {{\n  prometheus\n  forward . 127.0.0.1:{}\n  cache 3\n}}\n",
            unbound.port
        ),
        &[],
    );
    let www = q("www.example.org.", RecordType::A);
    assert_eq!(ttl(dns.port, &www), 3, "300 capped at the cache's 3");
    // `cache 3` caps both minimum and maximum: a TTL of 1 is raised to 3 (CoreDNS's
    // min(max(ttl, 5), 3)).
    assert_eq!(ttl(dns.port, &q("short.example.org.", RecordType::A)), 3);
    drop(unbound);
    // Within the TTL the cache still answers; after it, nothing does.
    let cached = ask(dns.port, &www, Transport::Udp);
    assert_eq!(cached.rcode, "NoError", "{cached}");
    assert_eq!(cached.answers_of("A"), ["192.0.2.10".to_string()].into());
    std::thread::sleep(Duration::from_millis(3100));
    assert_eq!(ask(dns.port, &www, Transport::Udp).rcode, "ServFail");
    assert_eq!(
        dns.metric("coredns_cache_hits_total", &[("type", "success")]),
        1.0
    );
}

#[test]
fn the_denial_cache_holds_its_capacity_by_evicting() {
    let unbound = Unbound::start(&[]);
    let dns = ConfDns::start(
        &format!(
            ".:53 {{\n  prometheus\n  forward . 127.0.0.1:{}\n  cache {{\n    denial 1024\n  }}\n}}\n",
            unbound.port
        ),
        &[],
    );
    for i in 0..1500 {
        let reply = ask(
            dns.port,
            &q(&format!("n{i}.nowhere.example."), RecordType::A),
            Transport::Udp,
        );
        assert_eq!(reply.rcode, "NXDomain");
    }
    let entries = dns.metric("coredns_cache_entries", &[("type", "denial")]);
    assert!(entries <= 1024.0 && entries > 900.0, "{entries}");
    assert!(dns.metric("coredns_cache_evictions_total", &[("type", "denial")]) >= 476.0);
}

#[test]
fn disable_keeps_a_zone_out_of_one_cache_and_keepttl_answers_the_ttl_stored() {
    let upstream = counting_upstream();
    let dns = ConfDns::start(
        &forwarding(
            upstream.port,
            "",
            "  cache 30 {\n    disable success example.org\n    keepttl\n  }",
        ),
        &[],
    );
    let org = q("www.example.org.", RecordType::A);
    let net = q("www.example.net.", RecordType::A);
    // example.org is never cached: every question goes upstream (and gets a new address).
    let first = ask(dns.port, &org, Transport::Udp).answers_of("A");
    let second = ask(dns.port, &org, Transport::Udp).answers_of("A");
    assert_ne!(first, second);
    // example.net is (the cache's zone is `.`): one question upstream, and with keepttl the TTL
    // does not count down.
    let asked = upstream.questions();
    assert_eq!(ttl(dns.port, &net), 30);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(ttl(dns.port, &net), 30);
    assert_eq!(upstream.questions(), asked + 1);
}

#[test]
fn a_popular_name_is_prefetched_before_it_expires() {
    let upstream = counting_upstream();
    let dns = ConfDns::start(
        &forwarding(upstream.port, "", "  cache 4 {\n    prefetch 2 1m 50%\n  }"),
        &[],
    );
    let name = q("popular.example.org.", RecordType::A);
    ask(dns.port, &name, Transport::Udp);
    ask(dns.port, &name, Transport::Udp);
    assert_eq!(upstream.questions(), 1);
    // Half the TTL gone and popular (two hits a minute): the next hit fetches it again behind
    // the answer.
    std::thread::sleep(Duration::from_millis(2100));
    ask(dns.port, &name, Transport::Udp);
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.questions() < 2 {
        assert!(Instant::now() < deadline, "no prefetch\n{}", dns.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(dns.metric("coredns_cache_prefetch_total", &[]), 1.0);
    // The prefetched entry is fresh again: past the old expiry it is still a hit.
    std::thread::sleep(Duration::from_millis(2100));
    let asked = upstream.questions();
    assert_eq!(
        ask(dns.port, &name, Transport::Udp).answers_of("A"),
        ["192.0.2.2".to_string()].into()
    );
    assert_eq!(upstream.questions(), asked);
}

#[test]
fn serve_stale_answers_an_expired_entry_only_once_the_upstream_failed() {
    let upstream = counting_upstream();
    let dns = ConfDns::start(
        &forwarding(
            upstream.port,
            "    max_fails 0",
            "  cache 2 {\n    serve_stale 1h verify 500ms 30s\n  }",
        ),
        &[],
    );
    let name = q("stale.example.org.", RecordType::A);
    assert_eq!(ttl(dns.port, &name), 2);
    // Expired, upstream answering: the fresh answer, not the stale one.
    std::thread::sleep(Duration::from_millis(2100));
    let fresh = exchange(dns.port, &name, Transport::Udp);
    assert_eq!(fresh.answers[0].ttl, 2);
    assert_eq!(fresh.answers[0].data.to_string(), "192.0.2.2");
    assert_eq!(dns.metric("coredns_cache_served_stale_total", &[]), 0.0);
    // Expired, upstream silent: after the verify timeout, the stale answer with RFC 8767's
    // 30 s TTL.
    std::thread::sleep(Duration::from_millis(2100));
    upstream.silent.store(true, Ordering::Relaxed);
    let stale = exchange(dns.port, &name, Transport::Udp);
    assert_eq!(stale.metadata.response_code, ResponseCode::NoError);
    assert_eq!(stale.answers[0].ttl, 30);
    assert_eq!(stale.answers[0].data.to_string(), "192.0.2.2");
    assert_eq!(dns.metric("coredns_cache_served_stale_total", &[]), 1.0);
}

#[test]
fn an_upstream_nxdomain_replaces_a_stale_answer() {
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let upstream = {
        let gone = gone.clone();
        FakeUpstream::start(move |query| {
            Some(if gone.load(Ordering::Relaxed) {
                rcode_reply(query, ResponseCode::NXDomain)
            } else {
                reply_with(query, vec![a_record(query, 300, [192, 0, 2, 1])])
            })
        })
    };
    let dns = ConfDns::start(
        &forwarding(
            upstream.port,
            "",
            "  cache 2 {\n    serve_stale 1h verify 0s 30s\n  }",
        ),
        &[],
    );
    let name = q("removed.example.org.", RecordType::A);
    assert_eq!(ask(dns.port, &name, Transport::Udp).rcode, "NoError");
    std::thread::sleep(Duration::from_millis(2100));
    gone.store(true, Ordering::Relaxed);
    assert_eq!(ask(dns.port, &name, Transport::Udp).rcode, "NXDomain");
}

#[test]
fn servfail_is_cached_for_its_duration_and_zero_turns_it_off() {
    for (servfail, upstream_questions) in [("5s", 1), ("0s", 2)] {
        let upstream =
            FakeUpstream::start(|query| Some(rcode_reply(query, ResponseCode::ServFail)));
        let dns = ConfDns::start(
            &forwarding(
                upstream.port,
                "",
                &format!("  cache {{\n    servfail {servfail}\n  }}"),
            ),
            &[],
        );
        let name = q("broken.example.org.", RecordType::A);
        for _ in 0..2 {
            assert_eq!(ask(dns.port, &name, Transport::Udp).rcode, "ServFail");
        }
        assert_eq!(
            upstream.questions(),
            upstream_questions,
            "servfail {servfail}"
        );
    }
}

#[test]
fn policies_order_the_upstreams_as_coredns_does() {
    let answer = |query: &hickory_proto::op::Message| {
        Some(reply_with(
            query,
            vec![a_record(query, 300, [192, 0, 2, 1])],
        ))
    };
    for (policy, check) in [
        ("sequential", "all to the first"),
        ("round_robin", "alternating"),
        ("random", "both asked"),
    ] {
        let (first, second) = (FakeUpstream::start(answer), FakeUpstream::start(answer));
        let dns = ConfDns::start(
            &format!(
                ".:53 {{\n  forward . 127.0.0.1:{} 127.0.0.1:{} {{\n    policy {policy}\n  }}\n}}\n",
                first.port, second.port
            ),
            &[],
        );
        for i in 0..20 {
            let name = q(&format!("n{i}.example.org."), RecordType::A);
            assert_eq!(ask(dns.port, &name, Transport::Udp).rcode, "NoError");
        }
        let (a, b) = (first.questions(), second.questions());
        match policy {
            "sequential" => assert_eq!((a, b), (20, 0), "{check}"),
            "round_robin" => assert_eq!((a, b), (10, 10), "{check}"),
            _ => assert!(a > 0 && b > 0 && a + b == 20, "{check}: {a} and {b}"),
        }
    }
}

#[test]
fn an_upstream_that_stops_fails_its_health_checks_and_is_used_again_once_they_pass() {
    let upstream = counting_upstream();
    let dns = ConfDns::start(
        &forwarding(
            upstream.port,
            "    max_fails 2\n    health_check 100ms no_rec domain probe.example.",
            "",
        ),
        &[],
    );
    assert_eq!(
        ask(
            dns.port,
            &q("a.example.org.", RecordType::A),
            Transport::Udp
        )
        .rcode,
        "NoError"
    );
    upstream.silent.store(true, Ordering::Relaxed);
    let started = Instant::now();
    assert_eq!(
        ask(
            dns.port,
            &q("b.example.org.", RecordType::A),
            Transport::Udp
        )
        .rcode,
        "ServFail"
    );
    // After the 2 s read timeout, not at once.
    assert!(started.elapsed() >= Duration::from_millis(1900));
    assert!(
        dns.log()
            .contains("[ERROR] plugin/errors: 2 b.example.org. A:"),
        "{}",
        dns.log()
    );
    // The health checks (`. IN NS` every 100 ms) fail and are counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dns.metric("coredns_proxy_healthcheck_failures_total", &[]) < 3.0 {
        assert!(Instant::now() < deadline, "{}", dns.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        upstream
            .asked
            .lock()
            .unwrap()
            .iter()
            .any(|name| name == "probe.example.")
    );
    // Back: a passing check marks it up, and queries go through again.
    upstream.silent.store(false, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ask(
        dns.port,
        &q("c.example.org.", RecordType::A),
        Transport::Udp,
    )
    .rcode
        != "NoError"
    {
        assert!(Instant::now() < deadline, "never recovered\n{}", dns.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_upstream_down_after_max_fails_is_skipped_for_the_next_one() {
    let (down, up) = (counting_upstream(), counting_upstream());
    let dns = ConfDns::start(
        &format!(
            ".:53 {{\n  prometheus\n  forward . 127.0.0.1:{} 127.0.0.1:{} {{\n    policy sequential\n    max_fails 2\n    health_check 100ms\n  }}\n}}\n",
            down.port, up.port
        ),
        &[],
    );
    down.silent.store(true, Ordering::Relaxed);
    // The first upstream times out and the next answers; the failure starts its health checks.
    assert_eq!(
        ask(
            dns.port,
            &q("a.example.org.", RecordType::A),
            Transport::Udp
        )
        .rcode,
        "NoError"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while dns.metric("coredns_proxy_healthcheck_failures_total", &[]) < 3.0 {
        assert!(Instant::now() < deadline, "{}", dns.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Down after more than max_fails failed checks (CoreDNS's Down: fails > max_fails):
    // questions go to the next upstream only (the first still gets its `. IN NS` checks).
    let names_asked = |upstream: &FakeUpstream| {
        upstream
            .asked
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n.ends_with(".example.org."))
            .count()
    };
    let before = (names_asked(&down), names_asked(&up));
    for i in 0..5 {
        let name = format!("n{i}.example.org.");
        assert_eq!(
            ask(dns.port, &q(&name, RecordType::A), Transport::Udp).rcode,
            "NoError"
        );
    }
    assert_eq!(names_asked(&down), before.0, "a down upstream was asked");
    assert_eq!(names_asked(&up), before.1 + 5);
}

#[test]
fn the_transport_upstream_follows_the_client_unless_force_tcp_or_prefer_udp() {
    // A reply too big for 512 bytes: truncated over UDP without EDNS.
    let big = |query: &hickory_proto::op::Message| {
        let records = (0..40)
            .map(|i| a_record(query, 300, [192, 0, 2, i]))
            .collect();
        let mut reply = reply_with(query, records);
        reply.edns = None;
        Some(reply)
    };
    let udp_client = q("big.example.org.", RecordType::A);
    for (options, udp, tcp, truncated) in [
        // The client's transport: UDP, and the truncated reply goes back as it is.
        ("", 1, 0, true),
        // Always TCP upstream; the client still gets at most 512 bytes over UDP.
        ("    force_tcp", 0, 1, true),
        // UDP first, then TCP again because the reply was truncated.
        ("    prefer_udp", 1, 1, true),
    ] {
        let upstream = FakeUpstream::start(big);
        let dns = ConfDns::start(&forwarding(upstream.port, options, ""), &[]);
        let reply = exchange(dns.port, &udp_client, Transport::Udp);
        assert_eq!(reply.metadata.truncation, truncated, "{options}");
        // What the server wrote to the upstream, as the upstream saw it. A UDP reply that
        // arrives truncated is passed on truncated; under TCP it arrives whole.
        let (u, t) = (
            upstream.udp_questions.load(Ordering::Relaxed),
            upstream.tcp_questions.load(Ordering::Relaxed),
        );
        assert_eq!((u, t), (udp, tcp), "{options:?}");
    }
    // A TCP client: TCP upstream by default, UDP first with prefer_udp.
    for (options, udp) in [("", 0), ("    prefer_udp", 1)] {
        let upstream = FakeUpstream::start(big);
        let dns = ConfDns::start(&forwarding(upstream.port, options, ""), &[]);
        let reply = exchange(dns.port, &udp_client, Transport::Tcp);
        assert_eq!(reply.answers.len(), 40, "{options}");
        assert_eq!(
            upstream.udp_questions.load(Ordering::Relaxed),
            udp,
            "{options:?}"
        );
    }
}

#[test]
fn connections_are_reused_until_expire() {
    for (expire, reused) in [("10s", 2.0), ("1ms", 0.0)] {
        let upstream = counting_upstream();
        let dns = ConfDns::start(
            &format!(
                ".:53 {{\n  prometheus\n  forward . 127.0.0.1:{} {{\n    expire {expire}\n  }}\n}}\n",
                upstream.port
            ),
            &[],
        );
        for i in 0..3 {
            ask(
                dns.port,
                &q(&format!("n{i}.example.org."), RecordType::A),
                Transport::Udp,
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            dns.metric("coredns_proxy_conn_cache_hits_total", &[("proto", "udp")]),
            reused,
            "expire {expire}"
        );
        assert_eq!(
            dns.metric("coredns_proxy_conn_cache_misses_total", &[("proto", "udp")]),
            3.0 - reused,
            "expire {expire}"
        );
    }
}

#[test]
fn except_keeps_a_zone_from_the_upstream() {
    let upstream = counting_upstream();
    let dns = ConfDns::start(
        &forwarding(upstream.port, "    except internal.example.org", ""),
        &[],
    );
    assert_eq!(
        ask(
            dns.port,
            &q("www.example.org.", RecordType::A),
            Transport::Udp
        )
        .rcode,
        "NoError"
    );
    // No other plugin takes it: SERVFAIL, as CoreDNS's chain ends.
    assert_eq!(
        ask(
            dns.port,
            &q("db.internal.example.org.", RecordType::A),
            Transport::Udp
        )
        .rcode,
        "ServFail"
    );
    assert_eq!(upstream.questions(), 1);
}

#[test]
fn several_blocks_on_one_port_are_chosen_by_the_longest_zone() {
    let answer = |last: u8| {
        move |query: &hickory_proto::op::Message| {
            Some(reply_with(
                query,
                vec![a_record(query, 300, [192, 0, 2, last])],
            ))
        }
    };
    let (default, corp, sub) = (
        FakeUpstream::start(answer(1)),
        FakeUpstream::start(answer(2)),
        FakeUpstream::start(answer(3)),
    );
    let dns = ConfDns::start(
        &format!(
            ".:53 {{\n  kubernetes cluster.local {{\n    manifests {{fixture}}\n  }}\n  forward . 127.0.0.1:{}\n}}\ncorp.example:53 {{\n  forward . 127.0.0.1:{}\n}}\nsub.corp.example:53 {{\n  forward . 127.0.0.1:{}\n}}\n",
            default.port, corp.port, sub.port
        ),
        &[],
    );
    let last = |name: &str| {
        ask(dns.port, &q(name, RecordType::A), Transport::Udp)
            .answers_of("A")
            .into_iter()
            .next()
            .unwrap_or_default()
    };
    assert_eq!(last("www.example.org."), "192.0.2.1");
    assert_eq!(last("www.corp.example."), "192.0.2.2");
    assert_eq!(last("db.sub.corp.example."), "192.0.2.3");
    assert_eq!(last("svc1.testns.svc.cluster.local."), "10.0.0.1");
}

#[test]
fn loadbalance_shuffles_addresses_and_without_it_the_order_holds() {
    let headless = q("hdls1.testns.svc.cluster.local.", RecordType::A);
    let orders = |corefile: &str| {
        let dns = ConfDns::start(corefile, &[]);
        let mut seen = BTreeSet::new();
        for _ in 0..30 {
            let reply = exchange(dns.port, &headless, Transport::Udp);
            let order: Vec<String> = reply.answers.iter().map(|r| r.data.to_string()).collect();
            assert_eq!(order.len(), 4);
            seen.insert(order);
        }
        seen.len()
    };
    let kubernetes = "  kubernetes cluster.local {\n    manifests {fixture}\n  }\n";
    assert_eq!(orders(&format!(".:53 {{\n{kubernetes}}}\n")), 1);
    assert!(orders(&format!(".:53 {{\n{kubernetes}  loadbalance\n}}\n")) > 1);
    // Cached answers are shuffled too (a hit is answered from the cached reply's bytes), and
    // without loadbalance a cached answer keeps its order.
    assert!(
        orders(&format!(
            ".:53 {{\n{kubernetes}  cache 30\n  loadbalance\n}}\n"
        )) > 1
    );
    assert_eq!(orders(&format!(".:53 {{\n{kubernetes}  cache 30\n}}\n")), 1);
}

/// A burst: `clients` sockets each send `per_client` queries for `names` names (mixed case,
/// every fourth one with EDNS) without waiting, then read every reply. Returns how many came,
/// each checked against the question it answers: its ID, the name as asked, the address, OPT
/// only when sent.
fn burst(port: u16, clients: usize, per_client: usize, names: usize) -> usize {
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::Name;
    let sockets: Vec<std::net::UdpSocket> = (0..clients)
        .map(|_| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    let asked = |client: usize, i: usize| -> (String, usize) {
        let n = (client * per_client + i) % names;
        let name = if i.is_multiple_of(2) {
            format!("N{n}.Burst.Example.")
        } else {
            format!("n{n}.burst.example.")
        };
        (name, n)
    };
    for (client, socket) in sockets.iter().enumerate() {
        for i in 0..per_client {
            let mut m = Message::query();
            m.metadata.id = i as u16;
            m.metadata.recursion_desired = true;
            let (name, _) = asked(client, i);
            m.queries.push(Query::query(
                Name::from_ascii(&name).unwrap(),
                RecordType::A,
            ));
            if i % 4 == 1 {
                let mut edns = Edns::new();
                edns.set_max_payload(1232);
                m.edns = Some(edns);
            }
            socket
                .send_to(&m.to_vec().unwrap(), ("127.0.0.1", port))
                .unwrap();
        }
    }
    let mut answered = 0;
    for (client, socket) in sockets.iter().enumerate() {
        let mut seen = BTreeSet::new();
        let mut buf = [0u8; 4096];
        while seen.len() < per_client {
            let (n, _) = socket.recv_from(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "client {client}: {} of {per_client} answered: {e}",
                    seen.len()
                )
            });
            let reply = Message::from_vec(&buf[..n]).unwrap();
            let i = usize::from(reply.metadata.id);
            assert!(seen.insert(i), "client {client}: query {i} answered twice");
            let (name, number) = asked(client, i);
            assert_eq!(
                reply.queries[0].name().to_ascii(),
                name,
                "the name as asked"
            );
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
            let addresses: Vec<String> = reply.answers.iter().map(|r| r.data.to_string()).collect();
            assert_eq!(addresses, [format!("192.0.2.{}", number + 1)], "{reply}");
            assert_eq!(
                reply.edns.is_some(),
                i % 4 == 1,
                "OPT echoed only when sent"
            );
            answered += 1;
        }
    }
    answered
}

#[test]
fn a_burst_from_many_clients_is_answered_once_each_and_counted_as_the_cache_answered_it() {
    // nN.burst.example. is 192.0.2.(N+1).
    let upstream = FakeUpstream::start(|query| {
        let name = query.queries[0].name().to_ascii().to_ascii_lowercase();
        let n: u8 = name
            .trim_start_matches('n')
            .split('.')
            .next()?
            .parse()
            .ok()?;
        Some(reply_with(
            query,
            vec![a_record(query, 300, [192, 0, 2, n + 1])],
        ))
    });
    let dns = ConfDns::start(&forwarding(upstream.port, "", "  cache 30"), &[]);
    let requests = || dns.metric("coredns_dns_requests_total", &[]);
    let hits = || dns.metric("coredns_cache_hits_total", &[("type", "success")]);
    let requests_before = requests();
    // Questions for the burst's names that reached the upstream (its health checks aside; a
    // query the single-threaded upstream dropped is asked again, so there may be more than 400).
    let asked_upstream = || {
        upstream
            .asked
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n.to_ascii_lowercase().ends_with(".burst.example."))
            .count()
    };
    // The first burst fills the cache (misses go upstream, some names asked several times
    // before the first answer is cached); the second is answered from it alone.
    assert_eq!(burst(dns.port, 4, 100, 50), 400);
    let after_first = asked_upstream();
    assert!(after_first >= 50, "every name was asked: {after_first}");
    let hits_after_first = hits();
    assert_eq!(burst(dns.port, 4, 100, 50), 400);
    assert_eq!(
        asked_upstream(),
        after_first,
        "the second burst is all cache hits"
    );
    assert_eq!(hits() - hits_after_first, 400.0);
    assert_eq!(requests() - requests_before, 800.0);
}

#[test]
fn loop_ends_the_process_when_forward_sends_queries_back_to_it() {
    let port = testkit::free_dns_port();
    let mut dns = ConfDns::spawn_on(
        port,
        &format!(".:53 {{\n  forward . 127.0.0.1:{port}\n  loop\n}}\n"),
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = dns.exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "no loop detected\n{}", dns.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = dns.log();
    assert!(
        log.contains("[FATAL] plugin/loop: Loop (") && log.contains("detected for zone \".\""),
        "{log}"
    );
    assert!(log.contains("resolv.conf"), "{log}");
}

#[test]
fn reload_applies_an_edit_without_failing_a_query_and_keeps_serving_through_a_broken_one() {
    let answer = |last: u8| {
        move |query: &hickory_proto::op::Message| {
            Some(reply_with(
                query,
                vec![a_record(query, 300, [192, 0, 2, last])],
            ))
        }
    };
    let (before, after) = (
        FakeUpstream::start(answer(1)),
        FakeUpstream::start(answer(2)),
    );
    let corefile = |upstream: u16, hosts: &str| {
        format!(
            ".:53 {{\n  prometheus\n  reload 2s 1s\n  hosts /nonexistent {{\n{hosts}    fallthrough\n  }}\n  kubernetes cluster.local {{\n    manifests {{fixture}}\n  }}\n  forward . 127.0.0.1:{upstream}\n}}\n"
        )
    };
    let dns = ConfDns::start(&corefile(before.port, "    10.0.7.1 first.example\n"), &[]);
    let www = q("www.example.org.", RecordType::A);
    let answered = |dns: &ConfDns| {
        let reply = ask(dns.port, &www, Transport::Udp);
        assert_eq!(
            reply.rcode,
            "NoError",
            "a query failed during the reload\n{}",
            dns.log()
        );
        reply.answers_of("A").into_iter().next().unwrap()
    };
    assert_eq!(answered(&dns), "192.0.2.1");
    // Queries without pause all through the edits: a forwarded name, a hosts name and a cluster
    // name in turn.
    let load = Load::start(
        dns.port,
        &[
            "www.example.org",
            "first.example",
            "svc1.testns.svc.cluster.local",
        ],
    );
    std::fs::write(
        &dns.corefile,
        corefile(
            after.port,
            "    10.0.7.1 first.example\n    10.0.7.2 added.example\n",
        )
        .replace(
            "{fixture}",
            &support::corefile::fixture().display().to_string(),
        ),
    )
    .unwrap();
    // Queries all along; the new upstream within two intervals (2 s ± 0.5 s each).
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered(&dns) != "192.0.2.2" {
        assert!(
            Instant::now() < deadline,
            "the edit never applied\n{}",
            dns.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        dns.log().contains("[INFO] Reloading complete"),
        "{}",
        dns.log()
    );
    // The hosts entry the edit added answers too (the upstream switched in the same reload).
    assert_eq!(
        ask(
            dns.port,
            &q("added.example.", RecordType::A),
            Transport::Udp
        )
        .answers_of("A"),
        ["10.0.7.2".to_string()].into()
    );
    // A broken edit: logged, counted, and the running configuration stays.
    std::fs::write(&dns.corefile, ".:53 {\n  forward .\n}\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dns.metric("coredns_reload_failed_total", &[]) < 1.0 {
        assert_eq!(answered(&dns), "192.0.2.2");
        assert!(Instant::now() < deadline, "no failed reload\n{}", dns.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        dns.log().contains("[ERROR] Restart failed:"),
        "{}",
        dns.log()
    );
    assert_eq!(answered(&dns), "192.0.2.2");
    assert_eq!(
        ask(
            dns.port,
            &q("svc1.testns.svc.cluster.local.", RecordType::A),
            Transport::Udp
        )
        .answers_of("A"),
        ["10.0.0.1".to_string()].into()
    );
    let results = load.stop();
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, _, status)| status != "NOERROR")
        .collect();
    assert!(results.len() > 100, "only {} queries", results.len());
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
}

#[test]
fn serve_stale_immediate_gives_the_expired_entry_at_once_and_refreshes_it_behind() {
    let upstream = counting_upstream();
    let dns = ConfDns::start(
        &forwarding(
            upstream.port,
            "",
            "  cache 2 {\n    serve_stale 1h immediate 30s\n  }",
        ),
        &[],
    );
    let name = q("soon.example.org.", RecordType::A);
    assert_eq!(ttl(dns.port, &name), 2);
    std::thread::sleep(Duration::from_millis(2100));
    // Expired: the old answer at once, with the stale TTL, while the upstream is asked again.
    let stale = exchange(dns.port, &name, Transport::Udp);
    assert_eq!(stale.answers[0].ttl, 30);
    assert_eq!(stale.answers[0].data.to_string(), "192.0.2.1");
    let mut stale_answers = 1.0;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = exchange(dns.port, &name, Transport::Udp);
        if reply.answers[0].data.to_string() == "192.0.2.2" {
            assert_eq!(reply.answers[0].ttl, 2);
            break;
        }
        assert_eq!(reply.answers[0].ttl, 30);
        stale_answers += 1.0;
        assert!(Instant::now() < deadline, "never refreshed\n{}", dns.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // One refresh behind however many stale answers went out meanwhile.
    assert_eq!(upstream.questions(), 2);
    assert_eq!(
        dns.metric("coredns_cache_served_stale_total", &[]),
        stale_answers
    );
}

#[test]
fn a_sigterm_under_load_answers_every_query_through_the_lameduck_with_ready_503_and_exits_zero() {
    let upstream = counting_upstream();
    let mut dns = ConfDns::start(
        &format!(
            ".:53 {{\n  health {{\n    lameduck 2s\n  }}\n  ready\n  kubernetes cluster.local {{\n    manifests {{fixture}}\n  }}\n  forward . 127.0.0.1:{}\n}}\n",
            upstream.port
        ),
        &[],
    );
    while support::get_status(dns.ready_port, "/ready") != Some(200) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Queries without pause, a cluster name and a forwarded one in turn.
    let load = Load::start(
        dns.port,
        &["svc1.testns.svc.cluster.local", "n.example.org"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let term = Instant::now();
    dns.signal(nix::sys::signal::Signal::SIGTERM);
    let mut ready = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = dns.exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running\n{}", dns.log());
        ready.push((
            term.elapsed(),
            support::get_status(dns.ready_port, "/ready"),
        ));
        std::thread::sleep(Duration::from_millis(20));
    };
    let results = load.stop();
    assert!(status.success(), "{status}\n{}", dns.log());
    // Every query sent before the lameduck's end (a margin for the last in flight) answered.
    let lameduck: Vec<&(Instant, String, String)> = results
        .iter()
        .filter(|(sent, _, _)| *sent < term + Duration::from_millis(1800))
        .collect();
    let during = lameduck.iter().filter(|(sent, _, _)| *sent >= term).count();
    assert!(during > 20, "only {during} queries during the lameduck");
    let failed: Vec<_> = lameduck
        .iter()
        .filter(|(_, _, status)| status != "NOERROR")
        .collect();
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    // /ready said 503 as soon as the signal was handled (a sample racing the delivery aside)
    // and from then to the end (or nothing, once the process was gone).
    let first = ready
        .iter()
        .position(|(_, s)| *s == Some(503))
        .expect("/ready never said 503");
    assert!(ready[first].0 < Duration::from_millis(100), "{ready:?}");
    assert!(
        ready[first..]
            .iter()
            .all(|(_, s)| matches!(s, Some(503) | None)),
        "{ready:?}"
    );
}

#[test]
fn log_takes_names_a_format_and_classes_and_the_first_rule_holding_a_name_decides() {
    let upstream = FakeUpstream::start(|query| {
        Some(if query.queries[0].name().to_ascii().starts_with("nope") {
            rcode_reply(query, ResponseCode::NXDomain)
        } else {
            reply_with(query, vec![a_record(query, 300, [192, 0, 2, 1])])
        })
    });
    let dns = ConfDns::start(
        &format!(
            ".:53 {{\n  log example.org {{\n    class denial\n  }}\n  log . \"{{type}} {{name}} {{rcode}} {{>rflags}} {{/meta}} {{proto}}\"\n  kubernetes cluster.local {{\n    manifests {{fixture}}\n  }}\n  forward . 127.0.0.1:{}\n}}\n",
            upstream.port
        ),
        &[],
    );
    for (name, qtype) in [
        ("www.example.org.", RecordType::A),
        ("nope.example.org.", RecordType::A),
        ("svc1.testns.svc.cluster.local.", RecordType::A),
        ("www.example.net.", RecordType::AAAA),
    ] {
        ask(dns.port, &q(name, qtype), Transport::Tcp);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dns.log().contains("AAAA www.example.net.") {
        assert!(Instant::now() < deadline, "{}", dns.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines: Vec<String> = dns
        .log()
        .lines()
        .filter(|l| l.starts_with("[INFO] ") && !l.contains("plugin/"))
        .map(String::from)
        .collect();
    // example.org: only the denial, in the common format; the rest in the custom one.
    assert!(
        !lines.iter().any(|l| l.contains("www.example.org.")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("[INFO] 127.0.0.1:")
            && l.contains("\"A IN nope.example.org. tcp ")
            && l.contains(" false 65535\" NXDOMAIN qr,rd,ra ")),
        "{lines:#?}"
    );
    assert!(
        lines.contains(
            &"[INFO] A svc1.testns.svc.cluster.local. NOERROR qr,aa,rd - tcp".to_string()
        ),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"[INFO] AAAA www.example.net. NOERROR qr,rd,ra - tcp".to_string()),
        "{lines:#?}"
    );
}

#[test]
fn errors_writes_a_line_per_failure_and_consolidate_folds_those_of_a_pattern() {
    let upstream = counting_upstream();
    upstream.silent.store(true, Ordering::Relaxed);
    let dns = ConfDns::start(
        &format!(
            ".:53 {{\n  errors {{\n    consolidate 1s \"^no next plugin\" warning\n  }}\n  forward . 127.0.0.1:{} {{\n    except bad.example\n    max_fails 0\n  }}\n}}\n",
            upstream.port
        ),
        &[],
    );
    for i in 0..3 {
        let name = q(&format!("n{i}.bad.example."), RecordType::A);
        assert_eq!(ask(dns.port, &name, Transport::Udp).rcode, "ServFail");
    }
    // The silent upstream: its own line, not folded.
    ask(
        dns.port,
        &q("slow.example.org.", RecordType::A),
        Transport::Tcp,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dns.log().contains("errors like") {
        assert!(Instant::now() < deadline, "{}", dns.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = dns.log();
    assert!(
        log.contains(
            "[WARNING] plugin/errors: 3 errors like '^no next plugin' occurred in last 1s"
        ),
        "{log}"
    );
    assert!(!log.contains("bad.example. A: no next plugin"), "{log}");
    assert!(
        log.contains("[ERROR] plugin/errors: 2 slow.example.org. A: "),
        "{log}"
    );
}

#[test]
fn cache_zones_limit_what_is_cached() {
    let upstream = counting_upstream();
    let dns = ConfDns::start(
        &forwarding(upstream.port, "", "  cache 30 example.org"),
        &[],
    );
    for name in [
        "www.example.org.",
        "www.example.org.",
        "www.example.net.",
        "www.example.net.",
    ] {
        ask(dns.port, &q(name, RecordType::A), Transport::Udp);
    }
    // example.org asked once, example.net (outside the cache's zone) twice.
    let asked = upstream.asked.lock().unwrap().clone();
    assert_eq!(
        asked.iter().filter(|n| *n == "www.example.org.").count(),
        1,
        "{asked:?}"
    );
    assert_eq!(
        asked.iter().filter(|n| *n == "www.example.net.").count(),
        2,
        "{asked:?}"
    );
}

/// Questions over the DNS spec's fixture whose answers the kubernetes options change.
fn option_rows() -> Vec<Question> {
    [
        ("svc1.testns.svc.cluster.local.", RecordType::A),
        ("svc1.testns.svc.cluster.local.", RecordType::SRV),
        ("hdls1.testns.svc.cluster.local.", RecordType::A),
        (
            "_http._tcp.hdls1.testns.svc.cluster.local.",
            RecordType::SRV,
        ),
        ("hdlsempty.testns.svc.cluster.local.", RecordType::A),
        ("svc-dual-stack.testns.svc.cluster.local.", RecordType::AAAA),
        ("ep1a.svc1.testns.svc.cluster.local.", RecordType::A),
        ("1-2-3-4.testns.pod.cluster.local.", RecordType::A),
        ("svc1.testns.svc.cluster.local.", RecordType::TXT),
    ]
    .into_iter()
    .map(|(name, qtype)| q(name, qtype))
    .collect()
}

#[test]
fn kubernetes_options_in_a_corefile_answer_as_the_same_flags_do() {
    for (options, flags) in [
        (
            "    ttl 30\n    pods insecure\n    endpoint_pod_names\n    startup_timeout 3s",
            &[
                "--ttl",
                "30",
                "--pods",
                "insecure",
                "--endpoint-pod-names",
                "--startup-timeout",
                "3s",
            ][..],
        ),
        (
            "    namespaces other\n    ignore empty_service",
            &["--namespaces", "other", "--ignore-empty-service"][..],
        ),
        ("    noendpoints", &["--noendpoints"][..]),
    ] {
        let from_corefile = ConfDns::start(
            &format!(
                ".:53 {{\n  kubernetes cluster.local {{\n    manifests {{fixture}}\n{options}\n  }}\n}}\n"
            ),
            &[],
        );
        let port = testkit::free_dns_port();
        let fixture = support::corefile::fixture();
        let mut args = vec![
            "dns".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--manifests".into(),
            fixture.display().to_string(),
        ];
        args.extend(flags.iter().map(|f| f.to_string()));
        let mut from_flags = std::process::Command::new(env!("CARGO_BIN_EXE_svcplane"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while support::dig(port, &["cluster.local", "SOA"]).status == "NO ANSWER" {
            assert!(
                Instant::now() < deadline,
                "svcplane dns with {flags:?} never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut differences = Vec::new();
        for row in option_rows() {
            let (a, b) = (
                ask(from_corefile.port, &row, Transport::Tcp),
                ask(port, &row, Transport::Tcp),
            );
            // The SOA serial is the time of the last change, which each server saw apart.
            if !a.same_within(&b, 0) {
                differences.push(format!(
                    "{row} with {options:?}:\n Corefile:\n{a} flags:\n{b}"
                ));
            }
        }
        let _ = from_flags.kill();
        let _ = from_flags.wait();
        assert!(differences.is_empty(), "{}", differences.join("\n"));
    }
}

#[test]
fn hosts_answers_from_its_file_and_inline_entries_and_rereads_the_file() {
    let upstream = counting_upstream();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("NodeHosts");
    // The file appears only later: until then, nothing from it.
    let dns = ConfDns::start(
        &format!(
            ".:53 {{\n  hosts {} {{\n    10.0.0.5 inline-node\n    ttl 60\n    reload 200ms\n    fallthrough\n  }}\n  forward . 127.0.0.1:{}\n}}\n",
            file.display(),
            upstream.port
        ),
        &[],
    );
    let a = |name: &str| ask(dns.port, &q(name, RecordType::A), Transport::Udp);
    let inline = exchange(dns.port, &q("inline-node.", RecordType::A), Transport::Udp);
    assert_eq!(inline.answers[0].ttl, 60);
    assert_eq!(inline.answers[0].data.to_string(), "10.0.0.5");
    assert!(inline.metadata.authoritative);
    // Not in the hosts: fallthrough to forward.
    assert_eq!(
        a("node-1.").answers_of("A"),
        ["192.0.2.1".to_string()].into()
    );
    std::fs::write(&file, "10.0.1.1 node-1\n10.0.1.2 node-2\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a("node-2.").answers_of("A") != ["10.0.1.2".to_string()].into() {
        assert!(
            Instant::now() < deadline,
            "the file was never read\n{}",
            dns.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        ask(
            dns.port,
            &q("2.1.0.10.in-addr.arpa.", RecordType::PTR),
            Transport::Udp
        )
        .answers_of("PTR"),
        ["node-2.".to_string()].into()
    );
}

#[test]
fn hosts_without_fallthrough_fails_an_unknown_name() {
    let dns = ConfDns::start(
        ".:53 {\n  hosts /nonexistent {\n    10.0.0.5 known\n  }\n}\n",
        &[],
    );
    assert_eq!(
        ask(dns.port, &q("known.", RecordType::A), Transport::Udp).rcode,
        "NoError"
    );
    assert_eq!(
        ask(dns.port, &q("unknown.", RecordType::A), Transport::Udp).rcode,
        "ServFail"
    );
}

#[test]
fn bind_listens_on_the_named_addresses_only() {
    let dns = ConfDns::start_as_bound(
        ".:53 {\n  bind 127.0.0.2\n  kubernetes cluster.local {\n    manifests {fixture}\n  }\n}\n",
        &[],
    );
    let query = support::dns_compare::encode(
        &q("svc1.testns.svc.cluster.local.", RecordType::A),
        Transport::Udp,
        77,
    );
    let asks = |ip: &str| {
        let socket = std::net::UdpSocket::bind((ip, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        socket.send_to(&query, (ip, dns.port)).unwrap();
        let mut buf = [0u8; 512];
        socket.recv_from(&mut buf).is_ok()
    };
    assert!(asks("127.0.0.2"), "{}", dns.log());
    assert!(!asks("127.0.0.1"));
}

#[test]
fn bufsize_caps_the_buffer_a_client_asks_for_and_what_goes_upstream() {
    for (bufsize, truncated) in [("", false), ("  bufsize 512\n", true)] {
        // The EDNS size each question reached the upstream with.
        let seen: Arc<std::sync::Mutex<Vec<Option<u16>>>> = Arc::default();
        let upstream = FakeUpstream::start({
            let seen = seen.clone();
            move |query: &hickory_proto::op::Message| {
                let size = query.edns.as_ref().map(|e| e.max_payload());
                seen.lock().unwrap().push(size);
                Some(reply_with(
                    query,
                    (0..40)
                        .map(|i| a_record(query, 300, [192, 0, 2, i]))
                        .collect(),
                ))
            }
        });
        let dns = ConfDns::start(
            &format!(
                ".:53 {{\n{bufsize}  forward . 127.0.0.1:{}\n}}\n",
                upstream.port
            ),
            &[],
        );
        let reply = exchange(
            dns.port,
            &q("big.example.org.", RecordType::A),
            Transport::Udp1232,
        );
        assert_eq!(reply.metadata.truncation, truncated, "{bufsize:?}");
        let advertised = reply.edns.as_ref().map(|e| e.max_payload());
        assert_eq!(
            advertised,
            Some(if truncated { 512 } else { 1232 }),
            "{bufsize:?}"
        );
        let expected = Some(if truncated { 512 } else { 1232 });
        let seen = seen.lock().unwrap().clone();
        assert!(
            !seen.is_empty() && seen.iter().all(|size| *size == expected),
            "{bufsize:?}: the upstream saw {seen:?}"
        );
    }
}

#[test]
fn forward_over_tls_reaches_an_unbound_serving_dns_over_tls_and_checks_its_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let tls = testkit::make_certs(certs.path());
    let unbound = Unbound::start_tls(&["www.example.org. 300 IN A 192.0.2.10"], &tls);
    let tls_port = unbound.tls_port.expect("a DNS-over-TLS port");
    let www = q("www.example.org.", RecordType::A);
    // The test CA, and the name on the certificate: answered.
    let dns = ConfDns::start(
        &format!(
            ".:53 {{\n  prometheus\n  forward . tls://127.0.0.1:{tls_port} {{\n    tls {}\n    tls_servername localhost\n  }}\n}}\n",
            tls.ca.display()
        ),
        &[],
    );
    let reply = ask(dns.port, &www, Transport::Udp);
    assert_eq!(
        reply.answers_of("A"),
        ["192.0.2.10".to_string()].into(),
        "{}",
        dns.log()
    );
    assert_eq!(
        dns.metric(
            "coredns_proxy_conn_cache_misses_total",
            &[("proto", "tcp-tls")]
        ),
        1.0
    );
    // The connection is kept: a second question reuses it.
    let other = q("www.example.org.", RecordType::AAAA);
    assert_eq!(ask(dns.port, &other, Transport::Udp).rcode, "NoError");
    assert_eq!(
        dns.metric(
            "coredns_proxy_conn_cache_hits_total",
            &[("proto", "tcp-tls")]
        ),
        1.0
    );
    // A name the certificate does not carry: the upstream is not trusted, SERVFAIL.
    let misnamed = ConfDns::start(
        &format!(
            ".:53 {{\n  forward . tls://127.0.0.1:{tls_port} {{\n    tls {}\n    tls_servername wrong.example\n    max_fails 0\n  }}\n}}\n",
            tls.ca.display()
        ),
        &[],
    );
    assert_eq!(ask(misnamed.port, &www, Transport::Tcp).rcode, "ServFail");
    // The system's roots do not know the test CA: the upstream is not trusted, SERVFAIL.
    let untrusted = ConfDns::start(
        &format!(".:53 {{\n  forward . tls://127.0.0.1:{tls_port} {{\n    max_fails 0\n  }}\n}}\n"),
        &[],
    );
    assert_eq!(ask(untrusted.port, &www, Transport::Tcp).rcode, "ServFail");
}
