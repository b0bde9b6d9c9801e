//! The Services a cluster has from its first moment, kept as kube-apiserver keeps
//! `default/kubernetes`: the Service is created through the API (so it gets its ClusterIP by
//! admission like any other), and its Endpoints and EndpointSlice are written straight to
//! storage by the server itself, because they point at loopback listeners that validation
//! would refuse from a client. The Endpoints carry `endpointslice.kubernetes.io/skip-mirror`
//! and the slice carries only `kubernetes.io/service-name`, as upstream's reconciler writes
//! them, so no controller touches either.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::object::{self, FieldValidation, meta_mut};
use crate::registry::{Registry, WriteOptions};
use crate::resource::find;

/// One port of a system Service: its name, protocol, Service port, and the port its
/// endpoint listens on.
#[derive(Debug, Clone)]
pub struct SystemPort {
    pub name: &'static str,
    pub protocol: &'static str,
    pub port: u16,
    pub endpoint_port: Option<u16>,
}

/// A selectorless Service whose one endpoint the server itself provides.
#[derive(Debug, Clone)]
pub struct SystemService {
    pub namespace: &'static str,
    pub name: &'static str,
    pub labels: Value,
    pub cluster_ip: IpAddr,
    pub ports: Vec<SystemPort>,
    /// The address of the endpoint (a listener of this process).
    pub endpoint: IpAddr,
}

impl SystemService {
    /// `default/kubernetes`: port 443 to the API listener, as kube-apiserver creates it.
    pub fn kubernetes(cluster_ip: IpAddr, api: std::net::SocketAddr) -> SystemService {
        SystemService {
            namespace: "default",
            name: "kubernetes",
            labels: json!({"component": "apiserver", "provider": "kubernetes"}),
            cluster_ip,
            ports: vec![SystemPort {
                name: "https",
                protocol: "TCP",
                port: 443,
                endpoint_port: Some(api.port()),
            }],
            endpoint: api.ip(),
        }
    }

    /// `kube-system/kube-dns` as kubeadm's CoreDNS add-on names it: DNS on 53 (UDP and TCP)
    /// to the DNS listener, and 9153 for metrics, which has no endpoint while the DNS server
    /// serves no metrics.
    pub fn kube_dns(cluster_ip: IpAddr, dns: std::net::SocketAddr) -> SystemService {
        SystemService {
            namespace: "kube-system",
            name: "kube-dns",
            labels: json!({
                "k8s-app": "kube-dns",
                "kubernetes.io/cluster-service": "true",
                "kubernetes.io/name": "CoreDNS",
            }),
            cluster_ip,
            ports: vec![
                SystemPort {
                    name: "dns",
                    protocol: "UDP",
                    port: 53,
                    endpoint_port: Some(dns.port()),
                },
                SystemPort {
                    name: "dns-tcp",
                    protocol: "TCP",
                    port: 53,
                    endpoint_port: Some(dns.port()),
                },
                SystemPort {
                    name: "metrics",
                    protocol: "TCP",
                    port: 9153,
                    endpoint_port: None,
                },
            ],
            endpoint: dns.ip(),
        }
    }

    fn service(&self) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                json!({
                    "name": p.name, "protocol": p.protocol, "port": p.port,
                    "targetPort": p.endpoint_port.unwrap_or(p.port),
                })
            })
            .collect();
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": self.labels},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": self.cluster_ip.to_string(),
                "ipFamilyPolicy": "SingleStack",
                "sessionAffinity": "None",
                "ports": ports,
            },
        })
    }

    fn endpoint_ports(&self) -> Vec<&SystemPort> {
        self.ports
            .iter()
            .filter(|p| p.endpoint_port.is_some())
            .collect()
    }

    /// The Endpoints as kube-apiserver's endpoint reconciler writes them.
    pub fn endpoints(&self) -> Value {
        let ports: Vec<Value> = self
            .endpoint_ports()
            .iter()
            .map(|p| json!({"name": p.name, "port": p.endpoint_port, "protocol": p.protocol}))
            .collect();
        json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {
                "name": self.name, "namespace": self.namespace,
                "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
            },
            "subsets": [{"addresses": [{"ip": self.endpoint.to_string()}], "ports": ports}],
        })
    }

    /// The EndpointSlice as kube-apiserver's endpoints adapter derives it.
    pub fn endpoint_slice(&self) -> Value {
        let ports: Vec<Value> = self
            .endpoint_ports()
            .iter()
            .map(|p| json!({"name": p.name, "port": p.endpoint_port, "protocol": p.protocol}))
            .collect();
        let address_type = if self.endpoint.is_ipv6() {
            "IPv6"
        } else {
            "IPv4"
        };
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": self.name, "namespace": self.namespace,
                "labels": {"kubernetes.io/service-name": self.name},
            },
            "addressType": address_type,
            "endpoints": [{
                "addresses": [self.endpoint.to_string()],
                "conditions": {"ready": true},
            }],
            "ports": ports,
        })
    }
}

/// Creates the Service if it is missing (kept as it is otherwise, as a user may have changed
/// what upstream would not reset), and writes its Endpoints and EndpointSlice.
pub async fn ensure(registry: &Registry, system: &SystemService) -> Result<(), ApiError> {
    let services = find("", "v1", "services").expect("services are served");
    let options = WriteOptions {
        dry_run: false,
        validation: FieldValidation::Strict,
    };
    match registry
        .get(services, Some(system.namespace), system.name)
        .await
    {
        Ok(_) => {}
        Err(e) if e.code == 404 => {
            match registry
                .create(services, Some(system.namespace), system.service(), options)
                .await
            {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    }
    let endpoints = find("", "v1", "endpoints").expect("endpoints are served");
    let slices =
        find("discovery.k8s.io", "v1", "endpointslices").expect("endpointslices are served");
    registry
        .put_unvalidated(endpoints, system.namespace, system.endpoints())
        .await?;
    registry
        .put_unvalidated(slices, system.namespace, system.endpoint_slice())
        .await?;
    Ok(())
}

/// The fields of `desired` that the server owns, copied onto `current`'s metadata: what an
/// unvalidated write stores.
pub(crate) fn merged(current: Option<&Value>, desired: &Value) -> Value {
    let mut next = desired.clone();
    match current {
        Some(current) => {
            let meta = meta_mut(&mut next);
            for field in ["uid", "creationTimestamp", "generation"] {
                if let Some(v) = current.pointer(&format!("/metadata/{field}")) {
                    meta.insert(field.into(), v.clone());
                }
            }
            let changed = {
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    meta_mut(&mut v).remove("resourceVersion");
                    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove("generation");
                    }
                    v
                };
                strip(current) != strip(&next)
            };
            if changed && next.get("endpoints").is_some() {
                let generation = current
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                meta_mut(&mut next).insert("generation".into(), json!(generation + 1));
            }
        }
        None => {
            let meta = meta_mut(&mut next);
            meta.insert("uid".into(), json!(object::new_uid()));
            meta.insert("creationTimestamp".into(), json!(object::now()));
            if next.get("endpoints").is_some() {
                meta_mut(&mut next).insert("generation".into(), json!(1));
            }
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_dns_has_kubeadms_ports_and_endpoints_only_where_something_listens() {
        let dns = SystemService::kube_dns(
            "10.96.0.10".parse().unwrap(),
            "127.0.0.1:1053".parse().unwrap(),
        );
        let service = dns.service();
        assert_eq!(service["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(
            service["spec"]["ports"],
            json!([
                {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 1053},
                {"name": "dns-tcp", "protocol": "TCP", "port": 53, "targetPort": 1053},
                {"name": "metrics", "protocol": "TCP", "port": 9153, "targetPort": 9153},
            ])
        );
        assert!(service["spec"].get("selector").is_none());
        assert_eq!(
            dns.endpoints()["subsets"],
            json!([{
                "addresses": [{"ip": "127.0.0.1"}],
                "ports": [
                    {"name": "dns", "port": 1053, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 1053, "protocol": "TCP"},
                ],
            }])
        );
        let slice = dns.endpoint_slice();
        assert_eq!(slice["addressType"], "IPv4");
        assert_eq!(
            slice["metadata"]["labels"],
            json!({"kubernetes.io/service-name": "kube-dns"})
        );
    }

    #[test]
    fn an_unchanged_rewrite_keeps_identity_and_generation() {
        let api = SystemService::kubernetes(
            "10.96.0.1".parse().unwrap(),
            "127.0.0.1:6443".parse().unwrap(),
        );
        let first = merged(None, &api.endpoint_slice());
        assert_eq!(first["metadata"]["generation"], 1);
        let again = merged(Some(&first), &api.endpoint_slice());
        assert_eq!(again, first);
        let moved = SystemService::kubernetes(
            "10.96.0.1".parse().unwrap(),
            "127.0.0.1:7443".parse().unwrap(),
        );
        let next = merged(Some(&first), &moved.endpoint_slice());
        assert_eq!(next["metadata"]["generation"], 2);
        assert_eq!(next["metadata"]["uid"], first["metadata"]["uid"]);
    }
}
