//! svcplane's Kubernetes-compatible API server: the embedded default behind `svcplane dev` and
//! the harness of the end-to-end tests. It serves core/v1 namespaces, services, endpoints, pods,
//! nodes and events, discovery.k8s.io/v1 endpointslices, coordination.k8s.io/v1 leases and
//! events.k8s.io/v1 events over REST and watch, from memory or etcd, faithfully enough that
//! kube-rs and kubectl cannot tell it apart from kube-apiserver where it matters.
//!
//! Services pass through a [`ServiceAdmission`] after the plain defaults — in process, or a
//! mutating admission webhook called over HTTPS as kube-apiserver calls one
//! ([`admission_webhook`]); the API server itself allocates nothing.

pub mod admission;
pub mod admission_webhook;
pub mod discovery;
pub mod error;
pub mod event_conversion;
pub mod gc;
pub mod http;
pub mod kubelet;
pub mod object;
pub mod protobuf;
pub mod registry;
pub mod resource;
pub mod selector;
pub mod server;
pub mod smp;
pub mod storage;
pub mod system_services;
pub mod table;
pub mod validation;
pub mod watch;

pub use admission::{AdmissionRequest, Denial, Operation, ServiceAdmission};
pub use error::ApiError;
