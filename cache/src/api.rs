//! The Kubernetes API types the cache reads, re-exported from one place so that a k8s-openapi or
//! kube version bump touches this file only.

pub use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CoreEndpointPort, EndpointSubset, Endpoints, Namespace, Pod,
    Service, ServicePort,
};
pub use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
