//! The name grammar on any labels: parsing never panics, and an address written as a pod or
//! endpoint label, or as a reverse name, reads back as itself.
#![no_main]

use std::net::IpAddr;

use dns::name::{Dashed, parse, pod_address, reverse_address};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).to_ascii_lowercase();
    let labels: Vec<&str> = text.split('.').collect();
    let _ = parse(&labels);
    let _ = reverse_address(&labels);
    for label in &labels {
        let _ = pod_address(label);
    }
    let ip = match data.len() {
        4..=15 => IpAddr::from(<[u8; 4]>::try_from(&data[..4]).unwrap()),
        16.. => IpAddr::from(<[u8; 16]>::try_from(&data[..16]).unwrap()),
        _ => return,
    };
    // IPv4-mapped and -compatible IPv6 addresses print with dots: not a label's form.
    if !ip.to_string().contains(':') || !ip.to_string().contains('.') {
        let dashed = Dashed::new(ip);
        assert_eq!(pod_address(&dashed), Some(ip), "{ip} as {}", &*dashed);
    }
    let reverse: Vec<String> = match ip {
        IpAddr::V4(v4) => v4.octets().iter().rev().map(u8::to_string).collect(),
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .rev()
            .flat_map(|b| [format!("{:x}", b & 0xf), format!("{:x}", b >> 4)])
            .collect(),
    };
    let zone: &[&str] = if ip.is_ipv4() {
        &["in-addr", "arpa"]
    } else {
        &["ip6", "arpa"]
    };
    let mut labels: Vec<&str> = reverse.iter().map(String::as_str).collect();
    labels.extend(zone);
    assert_eq!(reverse_address(&labels), Some(ip), "{labels:?}");
});
