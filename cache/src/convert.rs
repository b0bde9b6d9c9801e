//! Conversion of API objects into the cache's lean types, with errors that name the object and
//! the field (manifests are written by hand; API objects are validated, but a bad value must
//! still not poison the cache).

use std::net::IpAddr;

use crate::api;
use crate::types::{
    Addresses, Endpoint, EndpointPort, EndpointSlice, Key, Name, Pod, Protocol, Service,
    ServiceKind, ServicePort,
};
use crate::{Error, Result};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn invalid(kind: &str, key: &Key, field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Invalid {
        object: format!("{kind} {key}"),
        field: field.into(),
        message: message.into(),
    }
}

/// The namespaced key of an object; `kind` names it in errors.
pub fn key_of(kind: &str, meta: &api::ObjectMeta) -> Result<Key> {
    let name = meta.name.clone().filter(|n| !n.is_empty());
    let Some(name) = name else {
        return Err(Error::Invalid {
            object: kind.to_string(),
            field: "metadata.name".into(),
            message: "is required".into(),
        });
    };
    let Some(namespace) = meta.namespace.clone().filter(|n| !n.is_empty()) else {
        return Err(Error::Invalid {
            object: format!("{kind} {name}"),
            field: "metadata.namespace".into(),
            message: "is required".into(),
        });
    };
    Ok(Key::new(namespace, name))
}

/// An endpoint's hostname or pod name, in lower case as DNS names it (Kubernetes validates
/// both as lower-case DNS names; manifests are not validated).
fn lower(name: &str) -> Name {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Name::from(name.to_ascii_lowercase())
    } else {
        Name::new(name)
    }
}

fn port_number(kind: &str, key: &Key, field: String, port: i32) -> Result<u16> {
    u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| {
        invalid(
            kind,
            key,
            field,
            format!("{port} is not a port number (1-65535)"),
        )
    })
}

fn protocol(kind: &str, key: &Key, field: String, text: Option<&str>) -> Result<Protocol> {
    Protocol::parse(text).ok_or_else(|| {
        invalid(
            kind,
            key,
            field,
            format!(
                "{:?} is not a protocol; use TCP, UDP or SCTP",
                text.unwrap_or_default()
            ),
        )
    })
}

/// Converts a Service.
pub fn service(svc: &api::Service) -> Result<Service> {
    let key = key_of("Service", &svc.metadata)?;
    let spec = svc.spec.clone().unwrap_or_default();
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        let name = spec
            .external_name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                invalid(
                    "Service",
                    &key,
                    "spec.externalName",
                    "is required for type ExternalName, e.g. db.example.com",
                )
            })?;
        ServiceKind::ExternalName(name.trim_end_matches('.').to_ascii_lowercase().into())
    } else {
        let ips = match spec.cluster_ips.as_deref() {
            Some(list) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.clone()))
                .collect(),
            _ => spec
                .cluster_ip
                .iter()
                .map(|ip| ("spec.clusterIP".to_string(), ip.clone()))
                .collect::<Vec<_>>(),
        };
        if ips.first().is_some_and(|(_, ip)| ip == "None") {
            ServiceKind::Headless
        } else {
            let mut parsed = Addresses::new();
            for (field, ip) in ips.into_iter().filter(|(_, ip)| !ip.is_empty()) {
                parsed.push(ip.parse::<IpAddr>().map_err(|_| {
                    invalid(
                        "Service",
                        &key,
                        field,
                        format!("{ip:?} is not an IP address"),
                    )
                })?);
            }
            // A family given twice answers once.
            parsed.dedup();
            ServiceKind::ClusterIp(parsed)
        }
    };
    let mut ports = Vec::new();
    for (i, p) in spec.ports.unwrap_or_default().iter().enumerate() {
        ports.push(ServicePort {
            name: p.name.as_deref().unwrap_or_default().into(),
            protocol: protocol(
                "Service",
                &key,
                format!("spec.ports[{i}].protocol"),
                p.protocol.as_deref(),
            )?,
            port: port_number("Service", &key, format!("spec.ports[{i}].port"), p.port)?,
        });
    }
    Ok(Service {
        key,
        kind,
        ports: ports.into(),
    })
}

/// Converts an EndpointSlice. Slices of addressType FQDN carry names, not addresses: they convert
/// to a slice with no endpoints.
pub fn endpoint_slice(slice: &api::EndpointSlice) -> Result<EndpointSlice> {
    let key = key_of("EndpointSlice", &slice.metadata)?;
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(Name::new);
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        // A port without a number means "all ports": nothing DNS can publish.
        let Some(number) = p.port else { continue };
        ports.push(EndpointPort {
            name: p.name.as_deref().unwrap_or_default().into(),
            protocol: protocol(
                "EndpointSlice",
                &key,
                format!("ports[{i}].protocol"),
                p.protocol.as_deref(),
            )?,
            port: port_number("EndpointSlice", &key, format!("ports[{i}].port"), number)?,
        });
    }
    let mut endpoints = Vec::new();
    if slice.address_type != "FQDN" {
        for (i, e) in slice.endpoints.iter().flatten().enumerate() {
            let mut addresses = Addresses::new();
            for (j, a) in e.addresses.iter().enumerate() {
                addresses.push(a.parse::<IpAddr>().map_err(|_| {
                    invalid(
                        "EndpointSlice",
                        &key,
                        format!("endpoints[{i}].addresses[{j}]"),
                        format!("{a:?} is not an IP address"),
                    )
                })?);
            }
            endpoints.push(Endpoint {
                addresses,
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
                hostname: e.hostname.as_deref().filter(|h| !h.is_empty()).map(lower),
                pod_name: e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.as_deref().map(lower)),
            });
        }
    }
    // A trigger time that does not parse only loses the latency sample, as in CoreDNS.
    let last_change_trigger = slice
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LAST_CHANGE_TRIGGER_TIME))
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(std::time::SystemTime::from);
    Ok(EndpointSlice {
        key,
        service,
        ports: ports.into(),
        endpoints: endpoints.into(),
        last_change_trigger,
    })
}

/// The annotation the endpoint controllers set to when a change began.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Converts an Endpoints object into the slices EndpointSlice mirroring would make of it (one per
/// subset and address family; `addresses` ready, `notReadyAddresses` not ready).
pub fn mirror_endpoints(eps: &api::Endpoints) -> Result<Vec<EndpointSlice>> {
    let key = key_of("Endpoints", &eps.metadata)?;
    let mut slices = Vec::new();
    for (i, subset) in eps.subsets.iter().flatten().enumerate() {
        let mut ports = Vec::new();
        for (j, p) in subset.ports.iter().flatten().enumerate() {
            ports.push(EndpointPort {
                name: p.name.as_deref().unwrap_or_default().into(),
                protocol: protocol(
                    "Endpoints",
                    &key,
                    format!("subsets[{i}].ports[{j}].protocol"),
                    p.protocol.as_deref(),
                )?,
                port: port_number(
                    "Endpoints",
                    &key,
                    format!("subsets[{i}].ports[{j}].port"),
                    p.port,
                )?,
            });
        }
        let ports: std::sync::Arc<[EndpointPort]> = ports.into();
        let mut by_family: [Vec<Endpoint>; 2] = [Vec::new(), Vec::new()];
        let lists = [
            ("addresses", subset.addresses.as_ref(), true),
            (
                "notReadyAddresses",
                subset.not_ready_addresses.as_ref(),
                false,
            ),
        ];
        for (field, list, ready) in lists {
            for (j, a) in list.into_iter().flatten().enumerate() {
                let ip: IpAddr = a.ip.parse().map_err(|_| {
                    invalid(
                        "Endpoints",
                        &key,
                        format!("subsets[{i}].{field}[{j}].ip"),
                        format!("{:?} is not an IP address", a.ip),
                    )
                })?;
                by_family[usize::from(ip.is_ipv6())].push(Endpoint {
                    addresses: Addresses::from_buf([ip]),
                    ready,
                    hostname: a.hostname.as_deref().filter(|h| !h.is_empty()).map(lower),
                    pod_name: a
                        .target_ref
                        .as_ref()
                        .filter(|r| r.kind.as_deref() == Some("Pod"))
                        .and_then(|r| r.name.as_deref().map(lower)),
                });
            }
        }
        for (family, endpoints) in by_family
            .into_iter()
            .enumerate()
            .filter(|(_, e)| !e.is_empty())
        {
            slices.push(EndpointSlice {
                key: Key::new(
                    &key.namespace,
                    format!(
                        "{}-mirror-{i}-{}",
                        key.name,
                        if family == 0 { "ipv4" } else { "ipv6" }
                    ),
                ),
                service: Some(key.name.clone()),
                ports: ports.clone(),
                endpoints: endpoints.into(),
                last_change_trigger: None,
            });
        }
    }
    Ok(slices)
}

/// Converts a Pod.
pub fn pod(pod: &api::Pod) -> Result<Pod> {
    let key = key_of("Pod", &pod.metadata)?;
    let status = pod.status.clone().unwrap_or_default();
    let listed: Vec<(String, String)> = status
        .pod_ips
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.clone()))
        .collect();
    let texts = if listed.is_empty() {
        status
            .pod_ip
            .iter()
            .map(|ip| ("status.podIP".to_string(), ip.clone()))
            .collect()
    } else {
        listed
    };
    let mut ips = Vec::with_capacity(texts.len());
    for (field, text) in texts.iter().filter(|(_, t)| !t.is_empty()) {
        let ip = text
            .parse::<IpAddr>()
            .map_err(|_| invalid("Pod", &key, field, format!("{text:?} is not an IP address")))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let finished = matches!(
        status.phase.as_deref(),
        Some("Succeeded" | "Failed" | "Unknown")
    );
    Ok(Pod {
        key,
        ips: ips.into(),
        live: !finished && pod.metadata.deletion_timestamp.is_none(),
    })
}

/// The name of a Namespace.
pub fn namespace(ns: &api::Namespace) -> Result<Name> {
    ns.metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .map(Name::new)
        .ok_or_else(|| Error::Invalid {
            object: "Namespace".into(),
            field: "metadata.name".into(),
            message: "is required".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn an_endpoint_slice_keeps_the_trigger_time_of_its_change() {
        let slice: api::EndpointSlice = from(json!({
            "metadata": {"name": "web-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"},
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-12-07T04:01:02.5Z"}},
            "addressType": "IPv4",
            "endpoints": []
        }));
        let converted = endpoint_slice(&slice).unwrap();
        assert_eq!(
            converted.last_change_trigger,
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_796_616_062_500))
        );
    }

    #[test]
    fn a_dual_stack_service_keeps_its_cluster_ips_in_order() {
        let svc: api::Service = from(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.0.0.3", "clusterIPs": ["10.0.0.3", "10::3"],
                     "ports": [{"name": "http", "port": 80}, {"port": 53, "protocol": "UDP"}]}
        }));
        let s = service(&svc).unwrap();
        assert_eq!(
            s.kind,
            ServiceKind::ClusterIp(
                ["10.0.0.3".parse().unwrap(), "10::3".parse().unwrap()]
                    .into_iter()
                    .collect()
            )
        );
        assert_eq!(
            s.ports.to_vec(),
            vec![
                ServicePort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80
                },
                ServicePort {
                    name: "".into(),
                    protocol: Protocol::Udp,
                    port: 53
                }
            ]
        );
    }

    #[test]
    fn headless_and_external_name_services_are_recognised() {
        let h: api::Service = from(
            json!({"metadata": {"name": "h", "namespace": "ns"}, "spec": {"clusterIP": "None"}}),
        );
        assert_eq!(service(&h).unwrap().kind, ServiceKind::Headless);
        let h: api::Service = from(
            json!({"metadata": {"name": "h", "namespace": "ns"}, "spec": {"clusterIPs": ["None"]}}),
        );
        assert_eq!(service(&h).unwrap().kind, ServiceKind::Headless);
        let e: api::Service = from(json!({"metadata": {"name": "e", "namespace": "ns"},
            "spec": {"type": "ExternalName", "externalName": "db.example.com."}}));
        assert_eq!(
            service(&e).unwrap().kind,
            ServiceKind::ExternalName("db.example.com".into())
        );
        // A Service not yet given an IP has none.
        let p: api::Service =
            from(json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {}}));
        assert_eq!(
            service(&p).unwrap().kind,
            ServiceKind::ClusterIp(Default::default())
        );
    }

    #[test]
    fn bad_values_name_the_object_and_the_field() {
        // (object, expected error text)
        let rows = [
            (
                json!({"metadata": {"name": "w", "namespace": "d"}, "spec": {"clusterIP": "10.0.0.300"}}),
                "Service d/w: spec.clusterIP: \"10.0.0.300\" is not an IP address",
            ),
            (
                json!({"metadata": {"name": "w", "namespace": "d"}, "spec": {"ports": [{"port": 70000}]}}),
                "Service d/w: spec.ports[0].port: 70000 is not a port number (1-65535)",
            ),
            (
                json!({"metadata": {"name": "w", "namespace": "d"}, "spec": {"ports": [{"port": 80, "protocol": "HTTP"}]}}),
                "Service d/w: spec.ports[0].protocol: \"HTTP\" is not a protocol; use TCP, UDP or SCTP",
            ),
            (
                json!({"metadata": {"name": "w", "namespace": "d"}, "spec": {"type": "ExternalName"}}),
                "Service d/w: spec.externalName: is required for type ExternalName, e.g. db.example.com",
            ),
            (
                json!({"metadata": {"name": "w"}, "spec": {}}),
                "Service w: metadata.namespace: is required",
            ),
        ];
        for (obj, want) in rows {
            let err = service(&from(obj)).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn slice_endpoints_count_absent_ready_as_ready_and_keep_names() {
        let slice: api::EndpointSlice = from(json!({
            "metadata": {"name": "web-abc", "namespace": "default", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "all"}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "hostname": "web-0", "targetRef": {"kind": "Pod", "name": "web-0"}},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.1.0.3"], "conditions": {"ready": true}, "targetRef": {"kind": "Node", "name": "n1"}}
            ]
        }));
        let s = endpoint_slice(&slice).unwrap();
        assert_eq!(s.service.as_deref(), Some("web"));
        assert_eq!(
            s.ports.to_vec(),
            vec![EndpointPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080
            }]
        );
        let summary: Vec<_> = s
            .endpoints
            .iter()
            .map(|e| (e.ready, e.hostname, e.pod_name))
            .collect();
        assert_eq!(
            summary,
            vec![
                (true, Some("web-0"), Some("web-0")),
                (false, None, None),
                (true, None, None)
            ]
        );
    }

    #[test]
    fn endpoints_are_mirrored_per_subset_and_family() {
        let eps: api::Endpoints = from(json!({
            "metadata": {"name": "ext", "namespace": "default"},
            "subsets": [{
                "addresses": [{"ip": "192.0.2.1", "hostname": "a"}, {"ip": "2001:db8::1"}],
                "notReadyAddresses": [{"ip": "192.0.2.2"}],
                "ports": [{"name": "db", "port": 5432}]
            }]
        }));
        let slices = mirror_endpoints(&eps).unwrap();
        assert_eq!(slices.len(), 2);
        assert!(
            slices
                .iter()
                .all(|s| s.service.as_deref() == Some("ext") && s.ports[0].port == 5432)
        );
        let v4 = &slices[0].endpoints;
        assert_eq!(
            v4.iter()
                .map(|e| (e.addresses[0].to_string(), e.ready))
                .collect::<Vec<_>>(),
            vec![
                ("192.0.2.1".to_string(), true),
                ("192.0.2.2".to_string(), false)
            ]
        );
        assert_eq!(v4.get(0).unwrap().hostname, Some("a"));
        assert_eq!(
            slices[1].endpoints.get(0).unwrap().addresses[0].to_string(),
            "2001:db8::1"
        );
    }

    #[test]
    fn finished_and_deleting_pods_are_not_live() {
        let running: api::Pod = from(
            json!({"metadata": {"name": "p", "namespace": "d"}, "status": {"phase": "Running", "podIP": "10.1.0.9"}}),
        );
        let p = pod(&running).unwrap();
        assert!(p.live);
        assert_eq!(p.ips.to_vec(), vec!["10.1.0.9".parse::<IpAddr>().unwrap()]);
        let dual: api::Pod = from(json!({"metadata": {"name": "p", "namespace": "d"},
            "status": {"phase": "Running", "podIP": "10.1.0.9",
                       "podIPs": [{"ip": "10.1.0.9"}, {"ip": "fd00::9"}]}}));
        assert_eq!(
            pod(&dual).unwrap().ips.to_vec(),
            vec![
                "10.1.0.9".parse::<IpAddr>().unwrap(),
                "fd00::9".parse().unwrap()
            ]
        );
        let done: api::Pod = from(
            json!({"metadata": {"name": "p", "namespace": "d"}, "status": {"phase": "Succeeded", "podIP": "10.1.0.9"}}),
        );
        assert!(!pod(&done).unwrap().live);
        let deleting: api::Pod = from(
            json!({"metadata": {"name": "p", "namespace": "d", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Running"}}),
        );
        assert!(!pod(&deleting).unwrap().live);
    }
}
