//! The `reload` directive's decisions: the Corefile's digest (SHA-512 of the parsed blocks, as
//! CoreDNS computes it, though over svcplane's own form of them), when to look next (the interval moved by a random share of the jitter), and
//! whether a changed plan can replace the running one in place — new chains behind the same
//! listeners — or needs a restart (other ports, another `kubernetes` directive, other HTTP
//! endpoints).

use std::time::Duration;

use crate::plan::{Plan, Reload};

/// The hex SHA-512 of `text`.
pub fn digest(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA512, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The digest of a parsed Corefile (its blocks, imports expanded, with their lines), so an
/// edit of an imported file is a change and a Corefile that does not parse has none.
pub fn digest_of(corefile: &crate::corefile::Corefile) -> String {
    digest(&format!("{:?}", corefile.blocks))
}

/// The wait before the next look: the interval plus a uniform share of the jitter in
/// `[-jitter/2, jitter/2)`, as CoreDNS draws it once.
pub fn interval(reload: Reload, rng: &mut impl rand::Rng) -> Duration {
    let jitter = reload.jitter.as_millis() as i64;
    if jitter == 0 {
        return reload.interval;
    }
    let shift = rng.random_range(0..jitter) - jitter / 2;
    let millis = reload.interval.as_millis() as i64 + shift;
    Duration::from_millis(millis.max(0) as u64)
}

/// Why `next` cannot replace `running` without a restart, or `None` when it can.
pub fn needs_restart(running: &Plan, next: &Plan) -> Option<String> {
    let ports = |p: &Plan| {
        let mut ports: Vec<u16> = p.blocks.iter().map(|b| b.port).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    };
    if ports(running) != ports(next) {
        return Some(format!(
            "the ports change ({:?} to {:?})",
            ports(running),
            ports(next)
        ));
    }
    let binds = |p: &Plan| {
        let mut binds: Vec<(u16, Vec<std::net::IpAddr>)> =
            p.blocks.iter().map(|b| (b.port, b.bind.clone())).collect();
        binds.sort();
        binds.dedup();
        binds
    };
    if binds(running) != binds(next) {
        return Some("the bind addresses change".into());
    }
    if running.kubernetes != next.kubernetes {
        return Some("the kubernetes directive changes".into());
    }
    if running.health != next.health || running.ready != next.ready {
        return Some("the health or ready endpoint changes".into());
    }
    if running.prometheus != next.prometheus {
        return Some("the prometheus address changes".into());
    }
    if running.reload != next.reload {
        return Some("the reload interval changes".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    fn plan(text: &str) -> Plan {
        crate::corefile::parse(text, "Corefile", |_| None)
            .unwrap()
            .plan(&|_| Ok(vec![]))
            .unwrap()
    }

    #[test]
    fn the_digest_is_sha512_in_hex() {
        assert_eq!(
            digest("abc"),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }

    #[test]
    fn the_next_look_is_the_interval_give_or_take_half_the_jitter() {
        let reload = Reload {
            interval: Duration::from_secs(30),
            jitter: Duration::from_secs(15),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let wait = interval(reload, &mut rng);
            assert!(
                wait >= Duration::from_millis(22_500) && wait < Duration::from_millis(37_500),
                "{wait:?}"
            );
        }
    }

    #[test]
    fn a_changed_plugin_reloads_in_place_and_a_changed_port_or_cluster_needs_a_restart() {
        let base = plan(".:53 {\n  kubernetes cluster.local\n  forward . 10.0.0.1\n}\n");
        let forward =
            plan(".:53 {\n  kubernetes cluster.local\n  forward . 10.0.0.2\n  cache\n}\n");
        assert_eq!(needs_restart(&base, &forward), None);
        let stub = plan(
            ".:53 {\n  kubernetes cluster.local\n}\ncorp.example:53 {\n  forward . 10.0.0.53\n}\n",
        );
        assert_eq!(needs_restart(&base, &stub), None);
        let port = plan(".:54 {\n  kubernetes cluster.local\n}\n");
        assert!(needs_restart(&base, &port).unwrap().contains("ports"));
        let ttl = plan(".:53 {\n  kubernetes cluster.local {\n    ttl 30\n  }\n}\n");
        assert!(needs_restart(&base, &ttl).unwrap().contains("kubernetes"));
    }
}
