//! The in-process harness of the controller's checks: ipam pools in a memory store, the
//! allocation module behind the API server's Service admission interface, the API server on a
//! loopback port, a kube-rs client for it and the releaser following its Service watch. Real
//! parts throughout; only the admission adapter (the production one lives in the binary) is
//! restated here, as small as it can be.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiserver::admission::{AdmissionRequest, ServiceAdmission};
use apiserver::registry::{Registry, RegistryConfig};
use apiserver::server::{Server, ServerConfig};
use apiserver::storage::Storage;
use apiserver::storage::memory::MemoryStorage;
use controller::{AllocationRequest, Cluster, ServiceAllocator};
use futures::future::BoxFuture;
use ipam::store::memory::MemoryStore;
use ipam::{Allocator, AllocatorOptions, Family, PoolSpec, Record, Release, Value};
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use kube::core::Status;
use kube::runtime::watcher;
use serde_json::json;
use tokio::task::JoinHandle;

/// How long anything asynchronous (the releaser follows a watch) may take.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// The allocation module as the API server's Service admission.
struct Allocation(ServiceAllocator<MemoryStore>);

impl ServiceAdmission for Allocation {
    fn name(&self) -> &str {
        "svcplane-allocation"
    }

    fn admit(
        &self,
        request: AdmissionRequest,
    ) -> BoxFuture<'_, Result<serde_json::Value, apiserver::Denial>> {
        Box::pin(async move {
            let request = AllocationRequest {
                uid: request.uid,
                object: request.object,
                old_object: request.old_object,
                dry_run: request.dry_run,
                deadline: None,
            };
            self.0
                .admit(&request)
                .await
                .map(|admitted| admitted.object)
                .map_err(|d| apiserver::Denial {
                    code: d.code,
                    reason: d.reason,
                    message: d.message,
                    field: d.field,
                    details: None,
                })
        })
    }

    fn abandon(&self, request: AdmissionRequest) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.0.abandon(&request.uid).await;
        })
    }
}

/// Pools as kube-apiserver's flags give them: one CIDR per family (primary first) and a
/// NodePort range, all with `hold`.
pub(crate) fn flags(cidrs: &[&str], node_ports: &str, hold: Duration) -> Vec<PoolSpec> {
    let cidrs: Vec<String> = cidrs.iter().map(|c| c.to_string()).collect();
    ipam::spec::specs_from_flags(&cidrs, Some(node_ports), hold).unwrap()
}

/// A NodePort pool of `range` with `hold`.
pub(crate) fn node_port_pool(range: &str, hold: Duration) -> PoolSpec {
    PoolSpec {
        name: ipam::spec::NODEPORT.into(),
        cidrs: Vec::new(),
        range: Some(range.into()),
        hold,
        reservations: BTreeMap::new(),
    }
}

/// An IP pool (`ipv4` or `ipv6`) of one CIDR with `hold`.
pub(crate) fn ip_pool(name: &str, cidr: &str, hold: Duration) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        cidrs: vec![cidr.into()],
        range: None,
        hold,
        reservations: BTreeMap::new(),
    }
}

/// A Service named `name` in `default` with `spec`.
pub(crate) fn service(name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// The Status of a refused request.
pub(crate) fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected the API to refuse the request, got {other:?}"),
    }
}

/// Asserts a refusal's code, reason and message.
pub(crate) fn assert_refused(status: &Status, code: u16, reason: &str, message: &str) {
    assert_eq!(
        (status.code, status.reason.as_str(), status.message.as_str()),
        (code, reason, message),
        "{status:?}"
    );
}

/// The field of a 422's single cause.
pub(crate) fn cause_field(status: &Status) -> String {
    let causes = &status.details.as_ref().expect("a 422 has details").causes;
    assert_eq!(causes.len(), 1, "{status:?}");
    causes[0].field.clone()
}

/// Waits until `check` holds, for at most [`PATIENCE`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn ip(text: &str) -> Value {
    Value::Ip(text.parse::<IpAddr>().unwrap())
}

pub(crate) fn port(n: u16) -> Value {
    Value::Port(n)
}

/// The Service's `spec.clusterIPs`.
pub(crate) fn cluster_ips(svc: &Service) -> Vec<String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ips.clone())
        .unwrap_or_default()
}

/// The Service's `spec.clusterIP`.
pub(crate) fn cluster_ip(svc: &Service) -> Option<String> {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.clone())
}

/// The Service's nodePorts, in port order (`None` where a port has none).
pub(crate) fn node_ports(svc: &Service) -> Vec<Option<i32>> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|ports| ports.iter().map(|p| p.node_port).collect())
        .unwrap_or_default()
}

/// The last octet of an IPv4 address.
pub(crate) fn last_octet(text: &str) -> u8 {
    match text.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(_) => panic!("{text} is not IPv4"),
    }
}

/// A running API server with the allocation module and the releaser.
pub(crate) struct Harness {
    pub(crate) allocator: Arc<Allocator<MemoryStore>>,
    pub(crate) client: Client,
    /// Services of `default`.
    pub(crate) services: Api<Service>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Harness {
    /// Applies `specs` to a fresh store (the IP pools' order gives the cluster's families,
    /// primary first) and starts everything; returns once the releaser follows the watch.
    pub(crate) async fn start(specs: Vec<PoolSpec>) -> Harness {
        let store = MemoryStore::new();
        ipam::apply::apply(&store, &specs).await.unwrap();
        let families: Vec<Family> = specs
            .iter()
            .filter_map(|s| match s.name.as_str() {
                ipam::spec::IPV4 => Some(Family::IPv4),
                ipam::spec::IPV6 => Some(Family::IPv6),
                _ => None,
            })
            .collect();
        let allocator = Arc::new(
            Allocator::start(store, AllocatorOptions::default())
                .await
                .unwrap(),
        );
        let admission = Allocation(ServiceAllocator::new(
            allocator.clone(),
            Cluster { families },
        ));
        let registry = Registry::new(
            Storage::Memory(MemoryStorage::new(10_000)),
            RegistryConfig {
                prefix: "/registry/".into(),
                admission: vec![Arc::new(admission)],
                max_pod_grace: None,
                namespace_cleanup_interval: Duration::from_millis(100),
                gc_retry_interval: Duration::from_millis(100),
            },
        );
        registry.bootstrap().await.unwrap();
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert_file: None,
            tls_key_file: None,
            token_file: None,
            audit_log: None,
            bookmark_interval: Duration::from_secs(1),
            min_request_timeout: Duration::from_secs(1800),
            compaction_interval: Duration::ZERO,
            tls_handshake_timeout: Duration::from_secs(10),
            request_header_timeout: Duration::from_secs(120),
        };
        let server = Server::bind(registry, &config).await.unwrap();
        let url = format!("http://{}", server.local_addr());
        let mut tasks = vec![tokio::spawn(async move {
            server.run(std::future::pending()).await.unwrap();
        })];
        let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        let releaser = controller::releaser::run(
            allocator.clone(),
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            Duration::from_millis(200),
            None,
            None,
        );
        tasks.push(tokio::spawn(async move {
            releaser.await.unwrap();
        }));
        let harness = Harness {
            allocator,
            services: Api::default_namespaced(client.clone()),
            client,
            tasks,
        };
        harness.await_releaser().await;
        harness
    }

    /// Proves the releaser has listed and follows the watch: a probe Service's IP is released
    /// after its delete (then freed, leaving the pools as they were).
    async fn await_releaser(&self) {
        let probes: Api<Service> = Api::namespaced(self.client.clone(), "kube-system");
        let object = "kube-system/releaser-probe";
        for _ in 0..20 {
            let created = probes
                .create(
                    &PostParams::default(),
                    &service("releaser-probe", json!({"ports": [{"port": 80}]})),
                )
                .await
                .unwrap();
            let (pool, value) = match cluster_ip(&created) {
                Some(text) => {
                    let value = ip(&text);
                    let pool = match value {
                        Value::Ip(IpAddr::V4(_)) => ipam::spec::IPV4,
                        _ => ipam::spec::IPV6,
                    };
                    (pool, value)
                }
                None => panic!("the probe got no ClusterIP: {created:?}"),
            };
            probes
                .delete("releaser-probe", &DeleteParams::default())
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(1);
            let mut released = false;
            while Instant::now() < deadline {
                if !self.allocated_to(pool, value, object) {
                    released = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.allocator
                .release(pool, value, object, Release::Now)
                .await
                .unwrap();
            if released {
                return;
            }
        }
        panic!("the releaser never released the probe's ClusterIP");
    }

    /// Every record of `pool`.
    pub(crate) fn records(&self, pool: &str) -> Vec<(Value, Record)> {
        self.allocator.view().records(pool).unwrap()
    }

    /// The record of one value.
    pub(crate) fn record(&self, pool: &str, value: Value) -> Option<Record> {
        self.records(pool)
            .into_iter()
            .find(|(v, _)| *v == value)
            .map(|(_, r)| r)
    }

    /// The values of `pool` recorded for `object` (`namespace/name`), allocated or held.
    pub(crate) fn values_of(&self, pool: &str, object: &str) -> Vec<Value> {
        self.records(pool)
            .into_iter()
            .filter(|(_, r)| r.owner.object == object)
            .map(|(v, _)| v)
            .collect()
    }

    /// The values of `pool` allocated (not held) to `object`.
    pub(crate) fn allocated_values_of(&self, pool: &str, object: &str) -> Vec<Value> {
        self.records(pool)
            .into_iter()
            .filter(|(_, r)| r.owner.object == object && r.is_allocated())
            .map(|(v, _)| v)
            .collect()
    }

    /// True when `value` is allocated (not held) to `object`.
    pub(crate) fn allocated_to(&self, pool: &str, value: Value, object: &str) -> bool {
        self.record(pool, value)
            .is_some_and(|r| r.owner.object == object && r.is_allocated())
    }

    /// Waits until `value` has no record at all (released with hold 0).
    pub(crate) async fn await_free(&self, pool: &str, value: Value) {
        eventually(&format!("{pool} {value} freed"), || {
            let free = self.record(pool, value).is_none();
            async move { free }
        })
        .await;
    }

    /// Waits until `value` is held for `object` (released with a hold).
    pub(crate) async fn await_held(&self, pool: &str, value: Value, object: &str) {
        eventually(&format!("{pool} {value} held for {object}"), || {
            let held = self
                .record(pool, value)
                .is_some_and(|r| r.owner.object == object && !r.is_allocated());
            async move { held }
        })
        .await;
    }

    /// Waits until `value` is allocated (not held) to `object`.
    pub(crate) async fn await_allocated(&self, pool: &str, value: Value, object: &str) {
        eventually(&format!("{pool} {value} allocated to {object}"), || {
            let allocated = self.allocated_to(pool, value, object);
            async move { allocated }
        })
        .await;
    }

    /// Creates a Service in `default`, expecting success.
    pub(crate) async fn create(&self, name: &str, spec: serde_json::Value) -> Service {
        self.services
            .create(&PostParams::default(), &service(name, spec))
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"))
    }

    /// Creates a Service in `default`, expecting a refusal.
    pub(crate) async fn refused(&self, name: &str, spec: serde_json::Value) -> Status {
        refusal(
            self.services
                .create(&PostParams::default(), &service(name, spec))
                .await,
        )
    }

    /// Deletes a Service of `default`.
    pub(crate) async fn delete(&self, name: &str) {
        self.services
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
}
