//! The cluster cache shared by the DNS server and the controller.
//!
//! - [`types`]: lean internal types (only what readers need), converted from API objects at the
//!   boundary by [`convert`].
//! - [`store`]: the cache as plain data changed by events, published as immutable, indexed
//!   snapshots (atomically: a reader sees a whole step or none of it), with a `synced` state and a
//!   change notification for subscribers.
//! - [`follow`]: the controllers' stores: lean values converted at the watch boundary.
//! - [`selector`]: label selectors in kubectl syntax, one parser for the API server and the
//!   controllers.
//! - Feeds: [`manifests`] (files and directories, reloaded when they change) and [`kube_feed`]
//!   (kube-runtime watchers from a kubeconfig or in-cluster config).

pub mod api;
pub mod convert;
mod error;
pub mod follow;
pub mod kube_feed;
pub mod manifests;
pub mod rest;
pub mod selector;
pub mod sharded;
pub mod store;
pub mod types;

pub use error::{Error, Result};
pub use store::{Cache, Event, Kind, Object, Snapshot};
pub use types::{
    Addresses, Endpoint, EndpointPort, EndpointRef, EndpointSlice, Endpoints, Key, Name, Pod,
    Protocol, Service, ServiceKind, ServicePort,
};
