//! In-process answers (no sockets): each row is a query and the whole reply — rcode, flags and
//! every section with TTLs — transcribed from the DNS specification's examples and its
//! NXDOMAIN / NODATA table. Fixtures load through the cache's manifests code.

use std::path::PathBuf;

use cache::{Cache, Kind};
use dns::config::{Config, PodsMode, parse_zone};
use dns::index::Index;
use dns::message::{Transport, respond};
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/testns.yaml")
}

fn config() -> Config {
    Config {
        zones: ["cluster.local", "in-addr.arpa", "ip6.arpa"]
            .iter()
            .map(|z| parse_zone(z).unwrap())
            .collect(),
        pods: PodsMode::Insecure,
        ns_addresses: vec!["10.96.0.10".parse().unwrap()],
        ..Config::default()
    }
}

/// An index of the fixture, synced unless `synced` is false.
fn index(config: &Config, synced: bool) -> Index {
    index_of(&[fixture()], config, synced)
}

fn index_of(paths: &[PathBuf], config: &Config, synced: bool) -> Index {
    let cache = Cache::new(&[
        Kind::Namespaces,
        Kind::Services,
        Kind::EndpointSlices,
        Kind::Pods,
    ]);
    let events = cache::manifests::load(paths).unwrap().into_events();
    let events: Vec<_> = events
        .into_iter()
        .filter(|e| synced || !matches!(e, cache::Event::Synced(_)))
        .collect();
    cache.apply(events);
    Index::build(cache.current(), config)
}

/// The reply to `name`/`qtype`, rendered one line per part, the SOA serial replaced by SERIAL.
fn ask_with(index: &Index, config: &Config, name: &str, qtype: RecordType, edns: bool) -> String {
    let mut request = Message::query();
    request.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        request.edns = Some(e);
    }
    let reply =
        respond(index, config, &request.to_vec().unwrap(), Transport::Udp).expect("a reply");
    render(&Message::from_vec(&reply).unwrap())
}

fn render(m: &Message) -> String {
    let mut out = format!("{}", m.metadata.response_code);
    if m.metadata.authoritative {
        out.push_str(" aa");
    }
    if m.metadata.truncation {
        out.push_str(" tc");
    }
    for (section, records) in [
        ("an", &m.answers),
        ("ns", &m.authorities),
        ("ad", &m.additionals),
    ] {
        for r in records {
            let mut text = r.to_string();
            if r.record_type() == RecordType::SOA {
                let parts: Vec<&str> = text.split_whitespace().collect();
                text = parts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| if i == 6 { "SERIAL" } else { p })
                    .collect::<Vec<_>>()
                    .join(" ");
            }
            out.push_str(&format!(
                "\n{section} {}",
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
    }
    out
}

const SOA: &str = "ns cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 5";

fn check(rows: &[(&str, RecordType, &str)]) {
    let config = config();
    let index = index(&config, true);
    for (name, qtype, want) in rows {
        let got = ask_with(&index, &config, name, *qtype, false);
        let want = want.replace("{SOA}", SOA);
        assert_eq!(got, want, "{name} {qtype}");
    }
}

#[test]
fn cluster_ip_services_answer_a_aaaa_and_srv() {
    use RecordType::*;
    check(&[
        (
            "svc1.testns.svc.cluster.local.",
            A,
            "No Error aa\nan svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1",
        ),
        // The other family: NODATA.
        ("svc1.testns.svc.cluster.local.", AAAA, "No Error aa\n{SOA}"),
        (
            "svc-dual-stack.testns.svc.cluster.local.",
            A,
            "No Error aa\nan svc-dual-stack.testns.svc.cluster.local. 5 IN A 10.0.0.3",
        ),
        (
            "svc-dual-stack.testns.svc.cluster.local.",
            AAAA,
            "No Error aa\nan svc-dual-stack.testns.svc.cluster.local. 5 IN AAAA 10::3",
        ),
        (
            "_http._tcp.svc1.testns.svc.cluster.local.",
            SRV,
            "No Error aa\nan _http._tcp.svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc1.testns.svc.cluster.local.\nad svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1",
        ),
        // Dual-stack, one port: two candidates, weight 50, one SRV, both addresses as glue.
        (
            "svc-dual-stack.testns.svc.cluster.local.",
            SRV,
            "No Error aa\nan svc-dual-stack.testns.svc.cluster.local. 5 IN SRV 0 50 80 svc-dual-stack.testns.svc.cluster.local.\nad svc-dual-stack.testns.svc.cluster.local. 5 IN A 10.0.0.3\nad svc-dual-stack.testns.svc.cluster.local. 5 IN AAAA 10::3",
        ),
        // The port form is accepted for address queries too.
        (
            "_http._tcp.svc1.testns.svc.cluster.local.",
            A,
            "No Error aa\nan _http._tcp.svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1",
        ),
        // No such port or protocol: NXDOMAIN.
        (
            "_grpc._udp.svc1.testns.svc.cluster.local.",
            SRV,
            "Non-Existent Domain aa\n{SOA}",
        ),
        // An endpoint of a ClusterIP Service.
        (
            "ep1a.svc1.testns.svc.cluster.local.",
            A,
            "No Error aa\nan ep1a.svc1.testns.svc.cluster.local. 5 IN A 172.0.0.1",
        ),
    ]);
}

#[test]
fn headless_services_answer_from_ready_endpoints() {
    use RecordType::*;
    check(&[
        (
            "hdls1.testns.svc.cluster.local.",
            A,
            "No Error aa\nan hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2\nan hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3\nan hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4\nan hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5",
        ),
        (
            "hdls1.testns.svc.cluster.local.",
            AAAA,
            "No Error aa\nan hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1\nan hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2",
        ),
        // Two endpoints sharing a hostname: two records.
        (
            "dup-name.hdls1.testns.svc.cluster.local.",
            A,
            "No Error aa\nan dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4\nan dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5",
        ),
        (
            "172-0-0-2.hdls1.testns.svc.cluster.local.",
            A,
            "No Error aa\nan 172-0-0-2.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2",
        ),
        (
            "5678-abcd--1.hdls1.testns.svc.cluster.local.",
            AAAA,
            "No Error aa\nan 5678-abcd--1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1",
        ),
        (
            "bogusendpoint.hdls1.testns.svc.cluster.local.",
            A,
            "Non-Existent Domain aa\n{SOA}",
        ),
        // No ready endpoints: the name does not exist.
        (
            "hdlsempty.testns.svc.cluster.local.",
            A,
            "Non-Existent Domain aa\n{SOA}",
        ),
    ]);
}

#[test]
fn headless_srv_has_one_record_per_target_and_every_address_as_glue() {
    let config = config();
    let index = index(&config, true);
    let got = ask_with(
        &index,
        &config,
        "_http._tcp.hdls1.testns.svc.cluster.local.",
        RecordType::SRV,
        true,
    );
    let mut lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.remove(0), "No Error aa");
    let mut answers: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("an "))
        .collect();
    answers.sort();
    // Six addresses, five targets (dup-name twice), weight floor(10000 / 600) = 16.
    let owner = "an _http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80";
    assert_eq!(
        answers,
        [
            "172-0-0-2",
            "172-0-0-3",
            "5678-abcd--1",
            "5678-abcd--2",
            "dup-name"
        ]
        .map(|t| format!("{owner} {t}.hdls1.testns.svc.cluster.local."))
    );
    let mut glue: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("ad "))
        .collect();
    glue.sort();
    assert_eq!(
        glue,
        [
            "ad 172-0-0-2.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2",
            "ad 172-0-0-3.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3",
            "ad 5678-abcd--1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1",
            "ad 5678-abcd--2.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2",
            "ad dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4",
            "ad dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5",
        ]
    );
}

#[test]
fn external_names_are_cnames_chased_inside_the_zone() {
    use RecordType::*;
    check(&[
        (
            "external.testns.svc.cluster.local.",
            CNAME,
            "No Error aa\nan external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test.",
        ),
        // Out of the zone: the CNAME, which the server follows through `forward` (the index
        // alone has nothing more).
        (
            "external.testns.svc.cluster.local.",
            A,
            "No Error aa\nan external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test.",
        ),
        // TXT is not followed at all, as in CoreDNS.
        (
            "external.testns.svc.cluster.local.",
            TXT,
            "No Error aa\n{SOA}",
        ),
        (
            "internal.testns.svc.cluster.local.",
            A,
            "No Error aa\nan internal.testns.svc.cluster.local. 5 IN CNAME svc1.testns.svc.cluster.local.\nan svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1",
        ),
        // In the zone with nothing of the type: the CNAME goes too.
        (
            "internal.testns.svc.cluster.local.",
            AAAA,
            "No Error aa\n{SOA}",
        ),
        (
            "external.testns.svc.cluster.local.",
            SRV,
            "No Error aa\n{SOA}",
        ),
        (
            "endpoint.external.testns.svc.cluster.local.",
            CNAME,
            "Non-Existent Domain aa\n{SOA}",
        ),
        // An IP address as externalName is no record: the Service does not exist.
        (
            "ipname.testns.svc.cluster.local.",
            A,
            "Non-Existent Domain aa\n{SOA}",
        ),
    ]);
}

#[test]
fn reverse_names_point_at_services_then_endpoints() {
    use RecordType::*;
    check(&[
        (
            "1.0.0.10.in-addr.arpa.",
            PTR,
            "No Error aa\nan 1.0.0.10.in-addr.arpa. 5 IN PTR svc1.testns.svc.cluster.local.",
        ),
        (
            "1.0.0.172.in-addr.arpa.",
            PTR,
            "No Error aa\nan 1.0.0.172.in-addr.arpa. 5 IN PTR ep1a.svc1.testns.svc.cluster.local.",
        ),
        (
            "2.0.0.172.in-addr.arpa.",
            PTR,
            "No Error aa\nan 2.0.0.172.in-addr.arpa. 5 IN PTR 172-0-0-2.hdls1.testns.svc.cluster.local.",
        ),
        (
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.8.7.6.5.ip6.arpa.",
            PTR,
            "No Error aa\nan 1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.8.7.6.5.ip6.arpa. 5 IN PTR 5678-abcd--1.hdls1.testns.svc.cluster.local.",
        ),
        // Not ready: no PTR.
        (
            "9.0.0.172.in-addr.arpa.",
            PTR,
            "Non-Existent Domain aa\nns in-addr.arpa. 5 IN SOA ns.dns.in-addr.arpa. hostmaster.in-addr.arpa. SERIAL 7200 1800 86400 5",
        ),
        // A forward name in a reverse zone.
        (
            "svc1.testns.svc.0.10.in-addr.arpa.",
            A,
            "Non-Existent Domain aa\nns in-addr.arpa. 5 IN SOA ns.dns.in-addr.arpa. hostmaster.in-addr.arpa. SERIAL 7200 1800 86400 5",
        ),
        // PTR for a forward name that exists: NODATA.
        ("svc1.testns.svc.cluster.local.", PTR, "No Error aa\n{SOA}"),
    ]);
}

#[test]
fn the_nxdomain_and_nodata_table_of_the_spec() {
    use RecordType::*;
    check(&[
        ("svc1.testns.svc.cluster.local.", TXT, "No Error aa\n{SOA}"),
        ("svc1.testns.svc.cluster.local.", SOA, "No Error aa\n{SOA}"),
        (
            "svc0.testns.svc.cluster.local.",
            A,
            "Non-Existent Domain aa\n{SOA}",
        ),
        (
            "svc0.nsnoexist.svc.cluster.local.",
            A,
            "Non-Existent Domain aa\n{SOA}",
        ),
        ("testns.svc.cluster.local.", A, "No Error aa\n{SOA}"),
        ("testns.svc.cluster.local.", NS, "No Error aa\n{SOA}"),
        (
            "nsnoexist.svc.cluster.local.",
            A,
            "Non-Existent Domain aa\n{SOA}",
        ),
        ("svc.cluster.local.", MX, "No Error aa\n{SOA}"),
        ("pod.cluster.local.", A, "No Error aa\n{SOA}"),
        ("foo.cluster.local.", NS, "Non-Existent Domain aa\n{SOA}"),
        (
            "foo.svc.cluster.local.",
            NS,
            "Non-Existent Domain aa\n{SOA}",
        ),
        (
            "a.b.c.svc1.testns.svc.cluster.local.",
            A,
            "Non-Existent Domain aa\n{SOA}",
        ),
        // Quirk: SOA on a name that does not exist is NODATA.
        ("svc0.testns.svc.cluster.local.", SOA, "No Error aa\n{SOA}"),
        ("cluster.local.", A, "No Error aa\n{SOA}"),
        ("cluster.local.", SRV, "No Error aa\n{SOA}"),
        ("cluster.local.", HINFO, "No Error aa\n{SOA}"),
        // Other types decide by existence.
        (
            "svc1.testns.svc.cluster.local.",
            HINFO,
            "No Error aa\n{SOA}",
        ),
        (
            "svc0.testns.svc.cluster.local.",
            HINFO,
            "Non-Existent Domain aa\n{SOA}",
        ),
    ]);
}

#[test]
fn apex_soa_ns_and_the_version_record() {
    use RecordType::*;
    check(&[
        (
            "cluster.local.",
            SOA,
            "No Error aa\nan cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 5",
        ),
        (
            "cluster.local.",
            NS,
            "No Error aa\nan cluster.local. 5 IN NS ns.dns.cluster.local.\nad ns.dns.cluster.local. 5 IN A 10.96.0.10",
        ),
        (
            "ns.dns.cluster.local.",
            A,
            "No Error aa\nan ns.dns.cluster.local. 5 IN A 10.96.0.10",
        ),
        ("ns.dns.cluster.local.", AAAA, "No Error aa\n{SOA}"),
        (
            "ns.dns.cluster.local.",
            TXT,
            "Non-Existent Domain aa\n{SOA}",
        ),
        (
            "dns-version.cluster.local.",
            TXT,
            "No Error aa\nan dns-version.cluster.local. 28800 IN TXT 1.1.0",
        ),
        // Quirk: dns-version is only a TXT name.
        (
            "dns-version.cluster.local.",
            A,
            "Non-Existent Domain aa\n{SOA}",
        ),
    ]);
}

#[test]
fn pod_records_in_insecure_mode() {
    use RecordType::*;
    check(&[
        (
            "10-240-0-1.testns.pod.cluster.local.",
            A,
            "No Error aa\nan 10-240-0-1.testns.pod.cluster.local. 5 IN A 10.240.0.1",
        ),
        (
            "fd00--1.testns.pod.cluster.local.",
            AAAA,
            "No Error aa\nan fd00--1.testns.pod.cluster.local. 5 IN AAAA fd00::1",
        ),
        ("fd00--1.testns.pod.cluster.local.", A, "No Error aa\n{SOA}"),
        (
            "blah.testns.pod.cluster.local.",
            A,
            "Non-Existent Domain aa\n{SOA}",
        ),
        (
            "10-240-0-1.nsnoexist.pod.cluster.local.",
            A,
            "Non-Existent Domain aa\n{SOA}",
        ),
        ("testns.pod.cluster.local.", A, "No Error aa\n{SOA}"),
    ]);
}

#[test]
fn owner_names_echo_the_query_spelling() {
    let config = config();
    let index = index(&config, true);
    let got = ask_with(
        &index,
        &config,
        "SvC1.TeStNs.SvC.cLuStEr.LoCaL.",
        RecordType::A,
        false,
    );
    assert_eq!(
        got,
        "No Error aa\nan SvC1.TeStNs.SvC.cLuStEr.LoCaL. 5 IN A 10.0.0.1"
    );
    let got = ask_with(
        &index,
        &config,
        "_HTTP._TCP.svc1.testns.svc.CLUSTER.local.",
        RecordType::SRV,
        false,
    );
    assert_eq!(
        got,
        "No Error aa\nan _HTTP._TCP.svc1.testns.svc.CLUSTER.local. 5 IN SRV 0 100 80 svc1.testns.svc.CLUSTER.local.\nad svc1.testns.svc.CLUSTER.local. 5 IN A 10.0.0.1"
    );
    // Quirk: a mixed-case apex NS query finds no data.
    let got = ask_with(&index, &config, "Cluster.Local.", RecordType::NS, false);
    assert!(
        got.starts_with("No Error aa\nns Cluster.Local. 5 IN SOA"),
        "{got}"
    );
}

#[test]
fn names_that_would_not_exist_get_servfail_until_the_cache_has_synced() {
    let config = config();
    let index = index(&config, false);
    assert!(
        ask_with(
            &index,
            &config,
            "svc0.testns.svc.cluster.local.",
            RecordType::A,
            false
        )
        .starts_with("Server Failure aa\nns cluster.local.")
    );
    // What the partial cache holds is answered.
    assert_eq!(
        ask_with(
            &index,
            &config,
            "svc1.testns.svc.cluster.local.",
            RecordType::A,
            false
        ),
        "No Error aa\nan svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"
    );
}

#[test]
fn zone_transfers_and_other_zones_are_refused() {
    let config = config();
    let index = index(&config, true);
    assert_eq!(
        ask_with(&index, &config, "cluster.local.", RecordType::AXFR, false),
        "Query Refused"
    );
    assert_eq!(
        ask_with(&index, &config, "example.com.", RecordType::A, false),
        "Query Refused"
    );
}

#[test]
fn options_change_the_answers() {
    let mut config = config();
    // ttl
    config.ttl = 30;
    let idx = index(&config, true);
    assert_eq!(
        ask_with(
            &idx,
            &config,
            "svc1.testns.svc.cluster.local.",
            RecordType::A,
            false
        ),
        "No Error aa\nan svc1.testns.svc.cluster.local. 30 IN A 10.0.0.1"
    );
    // endpoint_pod_names: the pod name replaces the dashed address
    config.endpoint_pod_names = true;
    let idx = index(&config, true);
    assert!(
        ask_with(
            &idx,
            &config,
            "1.0.0.172.in-addr.arpa.",
            RecordType::PTR,
            false
        )
        .contains("PTR ep1a.svc1"),
        "hostname still wins"
    );
    // noendpoints: headless and endpoint names vanish, cluster IPs stay
    config.noendpoints = true;
    let idx = index(&config, true);
    assert!(
        ask_with(
            &idx,
            &config,
            "hdls1.testns.svc.cluster.local.",
            RecordType::A,
            false
        )
        .starts_with("Non-Existent Domain")
    );
    assert!(
        ask_with(
            &idx,
            &config,
            "ep1a.svc1.testns.svc.cluster.local.",
            RecordType::A,
            false
        )
        .starts_with("Non-Existent Domain")
    );
    assert!(
        ask_with(
            &idx,
            &config,
            "svc1.testns.svc.cluster.local.",
            RecordType::A,
            false
        )
        .starts_with("No Error aa\nan")
    );
    // namespaces: others are not exposed
    let mut config = self::config();
    config.namespaces = Some(["other".to_string()].into());
    let idx = index(&config, true);
    assert!(
        ask_with(
            &idx,
            &config,
            "svc1.testns.svc.cluster.local.",
            RecordType::A,
            false
        )
        .starts_with("Non-Existent Domain")
    );
    // pods disabled
    let mut config = self::config();
    config.pods = PodsMode::Disabled;
    let idx = index(&config, true);
    assert!(
        ask_with(
            &idx,
            &config,
            "10-240-0-1.testns.pod.cluster.local.",
            RecordType::A,
            false
        )
        .starts_with("Non-Existent Domain")
    );
    assert!(
        ask_with(
            &idx,
            &config,
            "testns.pod.cluster.local.",
            RecordType::A,
            false
        )
        .starts_with("Non-Existent Domain")
    );
}

#[test]
fn ignore_empty_service_hides_cluster_ip_services_without_ready_endpoints() {
    let mut config = config();
    config.ignore_empty_service = true;
    let idx = index(&config, true);
    // svc1 has a ready endpoint, svc-dual-stack has none.
    assert!(
        ask_with(
            &idx,
            &config,
            "svc1.testns.svc.cluster.local.",
            RecordType::A,
            false
        )
        .starts_with("No Error aa\nan")
    );
    assert!(
        ask_with(
            &idx,
            &config,
            "svc-dual-stack.testns.svc.cluster.local.",
            RecordType::A,
            false
        )
        .starts_with("Non-Existent Domain")
    );
}

#[test]
fn verified_pod_records_need_a_live_pod_with_that_ip() {
    let mut config = config();
    config.pods = PodsMode::Verified;
    let idx = index(&config, true);
    assert_eq!(
        ask_with(
            &idx,
            &config,
            "10-240-0-7.testns.pod.cluster.local.",
            RecordType::A,
            false
        ),
        "No Error aa\nan 10-240-0-7.testns.pod.cluster.local. 5 IN A 10.240.0.7"
    );
    // No pod has this IP; the pod with this one has finished; the pod lives in another namespace.
    for name in [
        "10-240-0-1.testns.pod.cluster.local.",
        "10-240-0-8.testns.pod.cluster.local.",
    ] {
        assert!(
            ask_with(&idx, &config, name, RecordType::A, false)
                .starts_with("Non-Existent Domain aa"),
            "{name}"
        );
    }
}

#[test]
fn a_namespace_outside_the_exposed_list_does_not_exist() {
    let mut config = config();
    // svc-nons exists and holds svc0; only testns is exposed.
    let all = index(&config, true);
    assert!(
        ask_with(
            &all,
            &config,
            "svc0.svc-nons.svc.cluster.local.",
            RecordType::A,
            false
        )
        .starts_with("No Error aa\nan")
    );
    config.namespaces = Some(["testns".to_string()].into());
    let idx = index(&config, true);
    assert!(
        ask_with(
            &idx,
            &config,
            "svc0.svc-nons.svc.cluster.local.",
            RecordType::A,
            false
        )
        .starts_with("Non-Existent Domain aa")
    );
    assert!(
        ask_with(
            &idx,
            &config,
            "svc-nons.svc.cluster.local.",
            RecordType::A,
            false
        )
        .starts_with("Non-Existent Domain aa")
    );
    assert!(
        ask_with(
            &idx,
            &config,
            "1.0.0.10.in-addr.arpa.",
            RecordType::PTR,
            false
        )
        .contains("PTR svc1.testns")
    );
    assert!(
        ask_with(
            &idx,
            &config,
            "50.0.0.10.in-addr.arpa.",
            RecordType::PTR,
            false
        )
        .starts_with("Non-Existent Domain aa")
    );
    assert!(
        ask_with(
            &idx,
            &config,
            "svc1.testns.svc.cluster.local.",
            RecordType::A,
            false
        )
        .starts_with("No Error aa\nan")
    );
}

#[test]
fn a_big_headless_answer_is_cut_from_the_end_with_tc_over_udp() {
    let dir = std::env::temp_dir().join(format!("svcplane-answers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let endpoints: String = (1..=40)
        .map(|i| format!("- addresses: [10.9.0.{i}]\n"))
        .collect();
    let big = dir.join("big.yaml");
    std::fs::write(
        &big,
        format!(
            "kind: Service\nmetadata: {{name: big, namespace: testns}}\nspec: {{clusterIP: None, ports: [{{name: http, port: 80}}]}}\n---\n\
             kind: EndpointSlice\nmetadata: {{name: big-1, namespace: testns, labels: {{kubernetes.io/service-name: big}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 80, protocol: TCP}}]\nendpoints:\n{endpoints}"
        ),
    )
    .unwrap();
    let config = config();
    let idx = index_of(&[fixture(), big], &config, true);
    std::fs::remove_dir_all(&dir).unwrap();
    let mut request = Message::query();
    request.add_query(Query::query(
        Name::from_ascii("_http._tcp.big.testns.svc.cluster.local.").unwrap(),
        RecordType::SRV,
    ));
    let request = request.to_vec().unwrap();
    // Over plain UDP (512 bytes) 40 SRV and 40 glue records do not fit: the end is cut, TC set.
    let bytes = respond(&idx, &config, &request, Transport::Udp).unwrap();
    assert!(bytes.len() <= 512);
    let reply = Message::from_vec(&bytes).unwrap();
    assert!(
        reply.metadata.truncation,
        "TC is set when anything was dropped"
    );
    assert!(
        reply.additionals.is_empty(),
        "additional records go before answers"
    );
    assert!(
        !reply.answers.is_empty() && reply.answers.len() < 40,
        "{}",
        reply.answers.len()
    );
    // Over TCP everything fits.
    let reply =
        Message::from_vec(&respond(&idx, &config, &request, Transport::Tcp).unwrap()).unwrap();
    assert!(!reply.metadata.truncation);
    assert_eq!((reply.answers.len(), reply.additionals.len()), (40, 40));
}

#[test]
fn a_bare_srv_query_lists_every_port_with_weights_split() {
    use RecordType::*;
    check(&[
        (
            "svc-two.testns.svc.cluster.local.",
            SRV,
            "No Error aa\nan svc-two.testns.svc.cluster.local. 5 IN SRV 0 50 80 svc-two.testns.svc.cluster.local.\nan svc-two.testns.svc.cluster.local. 5 IN SRV 0 50 443 svc-two.testns.svc.cluster.local.\nad svc-two.testns.svc.cluster.local. 5 IN A 10.0.0.4",
        ),
        ("cluster.local.", AAAA, "No Error aa\n{SOA}"),
        // A headless Service whose slice has no ports: addresses, but no SRV.
        (
            "podnamed.testns.svc.cluster.local.",
            SRV,
            "No Error aa\n{SOA}",
        ),
    ]);
}

#[test]
fn endpoint_pod_names_replace_the_dashed_address() {
    let mut config = config();
    let idx = index(&config, true);
    assert_eq!(
        ask_with(
            &idx,
            &config,
            "172-0-1-1.podnamed.testns.svc.cluster.local.",
            RecordType::A,
            false
        ),
        "No Error aa\nan 172-0-1-1.podnamed.testns.svc.cluster.local. 5 IN A 172.0.1.1"
    );
    config.endpoint_pod_names = true;
    let idx = index(&config, true);
    assert_eq!(
        ask_with(
            &idx,
            &config,
            "web-0.podnamed.testns.svc.cluster.local.",
            RecordType::A,
            false
        ),
        "No Error aa\nan web-0.podnamed.testns.svc.cluster.local. 5 IN A 172.0.1.1"
    );
    assert!(
        ask_with(
            &idx,
            &config,
            "172-0-1-1.podnamed.testns.svc.cluster.local.",
            RecordType::A,
            false
        )
        .starts_with("Non-Existent Domain")
    );
    assert_eq!(
        ask_with(
            &idx,
            &config,
            "1.1.0.172.in-addr.arpa.",
            RecordType::PTR,
            false
        ),
        "No Error aa\nan 1.1.0.172.in-addr.arpa. 5 IN PTR web-0.podnamed.testns.svc.cluster.local."
    );
}

#[test]
fn below_a_narrow_reverse_zone_only_whole_addresses_exist() {
    let mut config = config();
    config.zones = ["cluster.local", "0.10.in-addr.arpa"]
        .iter()
        .map(|z| parse_zone(z).unwrap())
        .collect();
    let idx = index(&config, true);
    let soa = "Non-Existent Domain aa\nns 0.10.in-addr.arpa. 5 IN SOA ns.dns.0.10.in-addr.arpa. hostmaster.0.10.in-addr.arpa. SERIAL 7200 1800 86400 5";
    assert_eq!(
        ask_with(
            &idx,
            &config,
            "svc1.testns.svc.0.10.in-addr.arpa.",
            RecordType::A,
            false
        ),
        soa
    );
    assert_eq!(
        ask_with(
            &idx,
            &config,
            "svc.0.10.in-addr.arpa.",
            RecordType::A,
            false
        ),
        soa
    );
    assert_eq!(
        ask_with(
            &idx,
            &config,
            "1.0.0.10.in-addr.arpa.",
            RecordType::PTR,
            false
        ),
        "No Error aa\nan 1.0.0.10.in-addr.arpa. 5 IN PTR svc1.testns.svc.cluster.local."
    );
}

#[test]
fn an_index_updated_step_by_step_answers_as_one_built_from_scratch() {
    use cache::{Event, Object};
    let config = config();
    let cache = Cache::new(&[]);
    let loaded = cache::manifests::load(&[fixture()]).unwrap();
    let mut index = Index::build(cache.current(), &config);
    let queries = [
        ("svc1.testns.svc.cluster.local.", RecordType::A),
        ("hdls1.testns.svc.cluster.local.", RecordType::A),
        (
            "_http._tcp.hdls1.testns.svc.cluster.local.",
            RecordType::SRV,
        ),
        ("dup-name.hdls1.testns.svc.cluster.local.", RecordType::A),
        ("1.0.0.10.in-addr.arpa.", RecordType::PTR),
        ("2.0.0.172.in-addr.arpa.", RecordType::PTR),
        ("internal.testns.svc.cluster.local.", RecordType::A),
    ];
    let compare = |index: &Index, step: &str| {
        let scratch = Index::build(index.snapshot.clone(), &config);
        for (name, qtype) in queries {
            assert_eq!(
                ask_with(index, &config, name, qtype, false),
                ask_with(&scratch, &config, name, qtype, false),
                "{step}: {name} {qtype}"
            );
        }
    };
    // One object at a time: namespaces, then Services, then slices; then changes and deletes.
    let mut steps: Vec<(String, Event)> = Vec::new();
    steps.extend(loaded.namespaces.iter().map(|n| {
        (
            format!("namespace {n}"),
            Event::Apply(Object::Namespace(n.clone())),
        )
    }));
    steps.extend(loaded.services.iter().map(|s| {
        (
            format!("service {}", s.key),
            Event::Apply(Object::Service(s.clone())),
        )
    }));
    steps.extend(loaded.slices.iter().map(|s| {
        (
            format!("slice {}", s.key),
            Event::Apply(Object::EndpointSlice(s.clone())),
        )
    }));
    let mut emptied = loaded
        .slices
        .iter()
        .find(|s| s.key.name == "hdls1-v4")
        .unwrap()
        .clone();
    emptied.endpoints = emptied
        .endpoints
        .iter()
        .take(1)
        .map(|e| e.to_owned())
        .collect();
    steps.push((
        "shrink hdls1-v4".into(),
        Event::Apply(Object::EndpointSlice(emptied)),
    ));
    steps.push((
        "delete svc1".into(),
        Event::Delete(Kind::Services, cache::Key::new("testns", "svc1")),
    ));
    steps.push((
        "delete hdls1-v6".into(),
        Event::Delete(Kind::EndpointSlices, cache::Key::new("testns", "hdls1-v6")),
    ));
    for (step, event) in steps {
        cache.apply([event]);
        let next = index.next(cache.current(), &config);
        assert_eq!(
            next.snapshot.generation,
            index.snapshot.generation + 1,
            "{step}: each step is one generation"
        );
        index = next;
        compare(&index, &step);
    }
    assert!(
        ask_with(
            &index,
            &config,
            "svc1.testns.svc.cluster.local.",
            RecordType::A,
            false
        )
        .starts_with("Non-Existent Domain")
    );
    assert_eq!(
        ask_with(
            &index,
            &config,
            "hdls1.testns.svc.cluster.local.",
            RecordType::A,
            false
        ),
        "No Error aa\nan hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2"
    );
}
