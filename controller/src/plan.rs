//! Pure allocation decisions, as kube-apiserver makes them (controller spec part A): IP
//! families and policy (A.5), headless and ExternalName (A.6), type changes (A.7), NodePort
//! rules (A.8), and which values a Service carries. No I/O: a [`Plan`] says what to keep, what
//! to request and what to pick; `allocation` carries it out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipam::{Family, Value};

use crate::service::{Svc, family_of, parse_family};

/// What the cluster is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Service IP families, primary (the default family) first; one or two.
    pub families: Vec<Family>,
}

impl Cluster {
    fn has(&self, family: Family) -> bool {
        self.families.contains(&family)
    }

    fn dual_stack(&self) -> bool {
        self.families.len() == 2
    }

    fn primary(&self) -> Family {
        self.families[0]
    }
}

/// The pool of a family's ClusterIPs, and of NodePorts.
pub fn pool_of(family: Family) -> &'static str {
    match family {
        Family::IPv4 => ipam::spec::IPV4,
        Family::IPv6 => ipam::spec::IPV6,
    }
}

fn other(family: Family) -> Family {
    match family {
        Family::IPv4 => Family::IPv6,
        Family::IPv6 => Family::IPv4,
    }
}

/// How one value is to be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want<T> {
    /// The Service already carries it (from before this write).
    Keep(T),
    /// The client asked for exactly this one.
    Request(T),
    /// Any free one.
    Any,
}

/// One nodePort number shared by the port entries at `ports` (same `port`, other protocols).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePortGroup {
    pub want: Want<u16>,
    pub ports: Vec<usize>,
}

/// What a Service write needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `spec.ipFamilies` to store; empty for ExternalName.
    pub ip_families: Vec<Family>,
    /// `spec.ipFamilyPolicy` to store; None for ExternalName.
    pub ip_family_policy: Option<String>,
    pub headless: bool,
    /// One per family of `ip_families`, unless headless or ExternalName.
    pub cluster_ips: Vec<Want<IpAddr>>,
    pub node_ports: Vec<NodePortGroup>,
    /// Port entries whose nodePort is cleared (their type no longer takes one).
    pub clear_node_ports: bool,
    pub health_check: Option<Want<u16>>,
}

/// A refusal of the request, in upstream's field-error form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    /// The whole `field: Invalid value: v: detail` text.
    pub message: String,
    /// Upstream answers this one as an internal error (500), not as Invalid.
    pub internal: bool,
}

fn invalid(field: impl Into<String>, value: &str, detail: &str) -> FieldError {
    let field = field.into();
    FieldError {
        message: format!("{field}: Invalid value: {value}: {detail}"),
        field,
        internal: false,
    }
}

fn quoted(text: &str) -> String {
    format!("{text:?}")
}

/// A string slice as apimachinery's field errors print it: JSON (`["a","b"]`), since v0.31.
pub fn go_strings(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_default()
}

/// Upstream's `patchAllocatedValues`: an update that omits values the Service already has
/// (a `kubectl replace` of the original manifest) keeps them.
pub fn inherit(old: &Svc, new: &Svc) -> Svc {
    let mut new = new.clone();
    if old.needs_cluster_ip() && new.needs_cluster_ip() {
        if new.cluster_ips.is_empty() {
            new.cluster_ips = old.cluster_ips.clone();
        }
        if new.ip_family_policy.is_none() {
            new.ip_family_policy = old.ip_family_policy.clone();
        }
        if new.ip_families.is_empty() && new.cluster_ips == old.cluster_ips {
            new.ip_families = old.ip_families.clone();
        }
    }
    if old.may_have_node_ports() && new.may_have_node_ports() {
        for port in new.ports.iter_mut().filter(|p| p.node_port == 0) {
            if let Some(previous) = old
                .ports
                .iter()
                .find(|o| o.port == port.port && o.protocol == port.protocol && o.node_port != 0)
            {
                port.node_port = previous.node_port;
            }
        }
    }
    if old.needs_health_check_node_port()
        && new.needs_health_check_node_port()
        && new.health_check_node_port == 0
    {
        new.health_check_node_port = old.health_check_node_port;
    }
    new
}

/// Decides what `new` needs, given the stored `old` (None on create). `new` should already
/// have been through [`inherit`] on updates.
pub fn plan(cluster: &Cluster, old: Option<&Svc>, new: &Svc) -> Result<Plan, FieldError> {
    let mut plan = Plan {
        ip_families: Vec::new(),
        ip_family_policy: None,
        headless: false,
        cluster_ips: Vec::new(),
        node_ports: Vec::new(),
        clear_node_ports: false,
        health_check: None,
    };
    if new.needs_cluster_ip() {
        plan_families(cluster, old, new, &mut plan)?;
    }
    plan_node_ports(old, new, &mut plan)?;
    let node_port_numbers: BTreeSet<i64> = new
        .ports
        .iter()
        .map(|p| p.node_port)
        .filter(|n| *n != 0)
        .collect();
    if new.needs_health_check_node_port() {
        let carried = old
            .filter(|o| o.needs_health_check_node_port())
            .map(|o| o.health_check_node_port);
        let hc = new.health_check_node_port;
        if hc != 0 && node_port_numbers.contains(&hc) {
            return Err(FieldError {
                field: "spec.healthCheckNodePort".into(),
                message: format!(
                    "failed to allocate requested HealthCheck NodePort {hc}: provided port is already allocated"
                ),
                internal: true,
            });
        }
        plan.health_check = Some(match new.health_check_node_port {
            0 => Want::Any,
            n if carried == Some(n) => Want::Keep(port_number(n, "spec.healthCheckNodePort")?),
            n => Want::Request(port_number(n, "spec.healthCheckNodePort")?),
        });
    }
    Ok(plan)
}

fn port_number(n: i64, field: &str) -> Result<u16, FieldError> {
    u16::try_from(n).map_err(|_| {
        invalid(
            field,
            &n.to_string(),
            "must be between 0 and 65535, inclusive",
        )
    })
}

fn plan_families(
    cluster: &Cluster,
    old: Option<&Svc>,
    new: &Svc,
    plan: &mut Plan,
) -> Result<(), FieldError> {
    let old = old.filter(|o| o.needs_cluster_ip());
    let headless = new.is_headless();
    // Headless without a selector may be dual-stack even on a single-stack cluster.
    let unrestricted = headless && !new.has_selector;
    let policy = match &new.ip_family_policy {
        Some(p) => p.clone(),
        None if unrestricted => "RequireDualStack".to_string(),
        None => "SingleStack".to_string(),
    };
    let given_ips: Vec<String> = if headless {
        Vec::new()
    } else {
        new.cluster_ips.clone()
    };
    let mut families = Vec::new();
    for (i, text) in new.ip_families.iter().enumerate() {
        match parse_family(text) {
            Some(f) => families.push(f),
            None => {
                return Err(invalid(
                    format!("spec.ipFamilies[{i}]"),
                    &quoted(text),
                    "supported values: \"IPv4\", \"IPv6\"",
                ));
            }
        }
    }
    let mut ip_families = Vec::new();
    for (i, ip) in given_ips.iter().enumerate() {
        let Some(family) = family_of(ip) else {
            return Err(invalid(
                format!("spec.clusterIPs[{i}]"),
                &quoted(ip),
                "must be a valid IP address",
            ));
        };
        if !cluster.has(family) {
            return Err(invalid(
                format!("spec.clusterIPs[{i}]"),
                &quoted(ip),
                &format!("{family} is not configured on this cluster"),
            ));
        }
        if let Some(expected) = families.get(i)
            && *expected != family
        {
            return Err(invalid(
                format!("spec.clusterIPs[{i}]"),
                &quoted(ip),
                &format!("expected an {expected} value as indicated by `ipFamilies[{i}]`"),
            ));
        }
        ip_families.push(family);
    }
    if families.is_empty() {
        families = ip_families;
    }
    if families.is_empty() {
        families.push(cluster.primary());
    }
    // An update that leaves policy and families as they were is never upgraded (or
    // downgraded) because the cluster's stack changed.
    // Upstream's isMatchingPreferDualStackClusterIPFields: a PreferDualStack Service whose
    // type, cluster IPs and families are as they were.
    let untouched = old.is_some_and(|o| {
        policy == "PreferDualStack"
            && o.ip_family_policy.as_deref() == Some("PreferDualStack")
            && o.type_ == new.type_
            && o.cluster_ips == new.cluster_ips
            && o.ip_families == families.iter().map(|f| f.to_string()).collect::<Vec<_>>()
    });
    if policy != "SingleStack"
        && families.len() == 1
        && !untouched
        && (cluster.dual_stack() || unrestricted)
    {
        families.push(other(families[0]));
    }
    if policy == "RequireDualStack" && !cluster.dual_stack() && !unrestricted {
        return Err(invalid(
            "spec.ipFamilyPolicy",
            &quoted(&policy),
            "this cluster is not configured for dual-stack services",
        ));
    }
    if !unrestricted {
        for (i, family) in families.iter().enumerate() {
            if !cluster.has(*family) {
                return Err(invalid(
                    format!("spec.ipFamilies[{i}]"),
                    &quoted(&family.to_string()),
                    "not configured on this cluster",
                ));
            }
        }
    }
    // Going from two families to one.
    if let Some(old) = old
        && old.ip_families.len() == 2
        && !headless
    {
        let same_ips = new.cluster_ips == old.cluster_ips;
        let same_families = new.ip_families == old.ip_families || new.ip_families.is_empty();
        if policy == "SingleStack" {
            if same_ips && same_families {
                families.truncate(1);
            }
        } else if new.cluster_ips.len() < old.cluster_ips.len() {
            // Upstream (`initIPFamilyFields`) names the policy, not the list.
            return Err(invalid(
                "spec.ipFamilyPolicy",
                &quoted(&policy),
                "must be 'SingleStack' to release the secondary cluster IP",
            ));
        } else if !new.ip_families.is_empty() && new.ip_families.len() < old.ip_families.len() {
            return Err(invalid(
                "spec.ipFamilyPolicy",
                &quoted(&policy),
                "must be 'SingleStack' to release the secondary IP family",
            ));
        }
    }
    if policy == "SingleStack" && families.len() > 1 {
        let what = if given_ips.len() > 1 {
            "cluster IPs"
        } else {
            "IP families"
        };
        return Err(invalid(
            "spec.ipFamilyPolicy",
            &quoted(&policy),
            &format!(
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple {what} are specified"
            ),
        ));
    }
    plan.headless = headless;
    if !headless {
        let carried: Vec<String> = old.map(|o| o.cluster_ips.clone()).unwrap_or_default();
        for (i, _family) in families.iter().enumerate() {
            let want = match given_ips.get(i) {
                Some(ip) if carried.get(i) == Some(ip) => {
                    Want::Keep(ip.parse().expect("checked above"))
                }
                Some(ip) => Want::Request(ip.parse().expect("checked above")),
                None => Want::Any,
            };
            plan.cluster_ips.push(want);
        }
    }
    plan.ip_families = families;
    plan.ip_family_policy = Some(policy);
    Ok(())
}

fn plan_node_ports(old: Option<&Svc>, new: &Svc, plan: &mut Plan) -> Result<(), FieldError> {
    if !new.may_have_node_ports() {
        plan.clear_node_ports = new.ports.iter().any(|p| p.node_port != 0);
        return Ok(());
    }
    let carried: BTreeSet<i64> = old
        .filter(|o| o.may_have_node_ports())
        .map(|o| {
            o.ports
                .iter()
                .map(|p| p.node_port)
                .filter(|n| *n != 0)
                .collect()
        })
        .unwrap_or_default();
    // A number given for a `port` decides for its other protocols too (only where the type
    // allocates nodePorts; otherwise an entry without one stays without).
    let mut given_for_port: BTreeMap<i64, i64> = BTreeMap::new();
    for p in &new.ports {
        if p.node_port != 0 {
            given_for_port.entry(p.port).or_insert(p.node_port);
        }
    }
    // Groups share one number: the entries of one `port` (its protocols).
    let mut groups: BTreeMap<(i64, i64), Vec<usize>> = BTreeMap::new();
    for (i, p) in new.ports.iter().enumerate() {
        let number = match (p.node_port, given_for_port.get(&p.port)) {
            (0, Some(shared)) if new.allocates_node_ports() => *shared,
            (n, _) => n,
        };
        if number != 0 || new.allocates_node_ports() {
            groups.entry((p.port, number)).or_default().push(i);
        }
    }
    // One number for two different `port`s is taken twice: upstream refuses the second.
    let mut first_port_of: BTreeMap<i64, i64> = BTreeMap::new();
    let mut ordered: Vec<((i64, i64), Vec<usize>)> = groups.into_iter().collect();
    ordered.sort_by_key(|(_, ports)| ports[0]);
    for ((port, number), ports) in ordered {
        if number == 0 {
            plan.node_ports.push(NodePortGroup {
                want: Want::Any,
                ports,
            });
            continue;
        }
        let field = format!("spec.ports[{}].nodePort", ports[0]);
        if let Some(other) = first_port_of.insert(number, port)
            && other != port
        {
            return Err(invalid(
                &field,
                &number.to_string(),
                "provided port is already allocated",
            ));
        }
        let n = port_number(number, &field)?;
        let want = if carried.contains(&number) {
            Want::Keep(n)
        } else {
            Want::Request(n)
        };
        plan.node_ports.push(NodePortGroup { want, ports });
    }
    plan.node_ports.sort_by_key(|g| g.ports[0]);
    Ok(())
}

/// Every value a Service carries, by pool: its cluster IPs, its nodePorts (a number shared by
/// protocols counts once) and its healthCheckNodePort while it needs one.
pub fn carried(svc: &Svc) -> BTreeSet<(&'static str, Value)> {
    let mut values = BTreeSet::new();
    if svc.needs_cluster_ip() && !svc.is_headless() {
        for ip in &svc.cluster_ips {
            if let (Ok(addr), Some(family)) = (ip.parse::<IpAddr>(), family_of(ip)) {
                values.insert((pool_of(family), Value::Ip(addr)));
            }
        }
    }
    if svc.may_have_node_ports() {
        for p in &svc.ports {
            if let Ok(n) = u16::try_from(p.node_port)
                && n != 0
            {
                values.insert((ipam::spec::NODEPORT, Value::Port(n)));
            }
        }
    }
    if svc.needs_health_check_node_port()
        && let Ok(n) = u16::try_from(svc.health_check_node_port)
        && n != 0
    {
        values.insert((ipam::spec::NODEPORT, Value::Port(n)));
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(spec: serde_json::Value) -> Svc {
        Svc::from_json(&json!({"metadata": {"namespace": "default", "name": "s"}, "spec": spec}))
    }

    fn v4() -> Cluster {
        Cluster {
            families: vec![Family::IPv4],
        }
    }

    fn dual() -> Cluster {
        Cluster {
            families: vec![Family::IPv4, Family::IPv6],
        }
    }

    #[test]
    fn a_plain_service_gets_one_ip_of_the_default_family_and_single_stack() {
        let p = plan(
            &dual(),
            None,
            &svc(json!({"selector": {"a": "b"}, "ports": [{"port": 80}]})),
        )
        .unwrap();
        assert_eq!(p.ip_families, [Family::IPv4]);
        assert_eq!(p.ip_family_policy.as_deref(), Some("SingleStack"));
        assert_eq!(p.cluster_ips, [Want::Any]);
        assert!(p.node_ports.is_empty());
    }

    #[test]
    fn prefer_dual_stack_gets_both_families_in_order() {
        let p = plan(
            &dual(),
            None,
            &svc(json!({"ipFamilyPolicy": "PreferDualStack"})),
        )
        .unwrap();
        assert_eq!(p.ip_families, [Family::IPv4, Family::IPv6]);
        assert_eq!(p.cluster_ips, [Want::Any, Want::Any]);
        let single = plan(
            &v4(),
            None,
            &svc(json!({"ipFamilyPolicy": "PreferDualStack"})),
        )
        .unwrap();
        assert_eq!(single.ip_families, [Family::IPv4]);
    }

    #[test]
    fn require_dual_stack_on_a_single_stack_cluster_is_refused() {
        let e = plan(
            &v4(),
            None,
            &svc(json!({"ipFamilyPolicy": "RequireDualStack"})),
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"
        );
    }

    #[test]
    fn headless_without_selector_defaults_to_require_dual_stack_and_allocates_nothing() {
        let p = plan(&v4(), None, &svc(json!({"clusterIP": "None"}))).unwrap();
        assert_eq!(p.ip_family_policy.as_deref(), Some("RequireDualStack"));
        assert!(p.headless);
        assert!(p.cluster_ips.is_empty());
    }

    #[test]
    fn an_ip_of_a_missing_family_is_refused_on_its_index() {
        let e = plan(&v4(), None, &svc(json!({"clusterIPs": ["fd00::5"]}))).unwrap_err();
        assert_eq!(
            e.message,
            "spec.clusterIPs[0]: Invalid value: \"fd00::5\": IPv6 is not configured on this cluster"
        );
    }

    #[test]
    fn tcp_and_udp_of_one_port_share_a_node_port() {
        let s = svc(
            json!({"type": "NodePort", "ports": [{"port": 53, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}, {"port": 80, "nodePort": 30080}]}),
        );
        let p = plan(&v4(), None, &s).unwrap();
        assert_eq!(
            p.node_ports,
            [
                NodePortGroup {
                    want: Want::Any,
                    ports: vec![0, 1]
                },
                NodePortGroup {
                    want: Want::Request(30080),
                    ports: vec![2]
                },
            ]
        );
    }

    #[test]
    fn a_load_balancer_without_node_port_allocation_keeps_only_requested_ones() {
        let s = svc(
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
            "ports": [{"port": 80}, {"port": 443, "nodePort": 30443}], "externalTrafficPolicy": "Local"}),
        );
        let p = plan(&v4(), None, &s).unwrap();
        assert_eq!(
            p.node_ports,
            [NodePortGroup {
                want: Want::Request(30443),
                ports: vec![1]
            }]
        );
        assert_eq!(p.health_check, Some(Want::Any));
    }

    #[test]
    fn an_update_keeps_what_it_carries_and_inherits_what_it_omits() {
        let old = svc(
            json!({"type": "NodePort", "clusterIP": "10.0.0.9", "clusterIPs": ["10.0.0.9"], "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}),
        );
        let new = inherit(
            &old,
            &svc(
                json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}, {"port": 81, "protocol": "TCP"}]}),
            ),
        );
        let p = plan(&v4(), Some(&old), &new).unwrap();
        assert_eq!(p.cluster_ips, [Want::Keep("10.0.0.9".parse().unwrap())]);
        assert_eq!(
            p.node_ports,
            [
                NodePortGroup {
                    want: Want::Keep(30080),
                    ports: vec![0]
                },
                NodePortGroup {
                    want: Want::Any,
                    ports: vec![1]
                }
            ]
        );
    }

    #[test]
    fn dropping_the_secondary_ip_needs_single_stack() {
        let old = svc(
            json!({"clusterIPs": ["10.0.0.9", "fd00::9"], "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack"}),
        );
        let new = svc(
            json!({"clusterIPs": ["10.0.0.9"], "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack"}),
        );
        let e = plan(&dual(), Some(&old), &new).unwrap_err();
        assert_eq!(
            e.message,
            "spec.ipFamilyPolicy: Invalid value: \"PreferDualStack\": must be 'SingleStack' to release the secondary cluster IP"
        );
        let single = svc(
            json!({"clusterIPs": ["10.0.0.9", "fd00::9"], "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "SingleStack"}),
        );
        let p = plan(&dual(), Some(&old), &single).unwrap();
        assert_eq!(p.ip_families, [Family::IPv4]);
        assert_eq!(p.cluster_ips, [Want::Keep("10.0.0.9".parse().unwrap())]);
    }

    #[test]
    fn a_prefer_dual_stack_service_left_alone_is_not_upgraded() {
        let old = svc(
            json!({"clusterIPs": ["10.0.0.9"], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "PreferDualStack"}),
        );
        let p = plan(&dual(), Some(&old), &old.clone()).unwrap();
        assert_eq!(p.ip_families, [Family::IPv4]);
    }

    #[test]
    fn one_node_port_for_two_different_ports_is_refused_on_the_second() {
        let s = svc(json!({"type": "NodePort", "ports": [
            {"port": 80, "protocol": "TCP", "nodePort": 30080},
            {"port": 81, "protocol": "UDP", "nodePort": 30080}]}));
        let e = plan(&v4(), None, &s).unwrap_err();
        assert_eq!(
            e.message,
            "spec.ports[1].nodePort: Invalid value: 30080: provided port is already allocated"
        );
        assert!(!e.internal);
    }

    #[test]
    fn a_health_check_port_equal_to_a_node_port_is_an_internal_error() {
        let s = svc(
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30080,
            "ports": [{"port": 80, "nodePort": 30080}]}),
        );
        let e = plan(&v4(), None, &s).unwrap_err();
        assert!(e.internal);
        assert_eq!(
            e.message,
            "failed to allocate requested HealthCheck NodePort 30080: provided port is already allocated"
        );
    }

    #[test]
    fn without_node_port_allocation_a_protocol_sibling_does_not_copy_the_number() {
        let s = svc(
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [
            {"port": 53, "protocol": "TCP", "nodePort": 30053}, {"port": 53, "protocol": "UDP"}]}),
        );
        let p = plan(&v4(), None, &s).unwrap();
        assert_eq!(
            p.node_ports,
            [NodePortGroup {
                want: Want::Request(30053),
                ports: vec![0]
            }]
        );
    }

    #[test]
    fn carried_values_count_a_shared_node_port_once() {
        let s = svc(
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30999,
            "clusterIPs": ["10.0.0.9", "fd00::9"],
            "ports": [{"port": 53, "protocol": "TCP", "nodePort": 30053}, {"port": 53, "protocol": "UDP", "nodePort": 30053}]}),
        );
        let values: Vec<String> = carried(&s)
            .iter()
            .map(|(p, v)| format!("{p}:{v}"))
            .collect();
        assert_eq!(
            values,
            [
                "ipv4:10.0.0.9",
                "ipv6:fd00::9",
                "nodeport:30053",
                "nodeport:30999"
            ]
        );
    }
}
