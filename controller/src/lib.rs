//! The Service controller's library: what a Service is allocated at admission and what is
//! released when it changes or goes away.
//!
//! - [`service`]: the lean view of a Service that allocation reads (from its JSON).
//! - [`plan`]: pure decisions: IP families and policy, which values to keep, request or pick,
//!   and the values a Service carries.
//! - [`allocation`]: carries out a plan against the ipam pools, all or nothing, and answers
//!   with the patched Service and its JSONPatch, or a denial in upstream's words.
//! - [`webhook`]: the mutating admission webhook kube-apiserver calls for Services, over
//!   HTTPS, with [`allocation`] behind it.
//! - [`repair`]: the periodic comparison of the pools with the live Services: missing values
//!   recorded, leaks freed, duplicates and strays reported with upstream's events.
//! - [`releaser`]: follows the Service watch and releases, with the pool's hold, the values an
//!   update dropped or a delete left behind.
//!
//! - [`endpoints`]: the Endpoints controller's pure decision for one Service (subsets, cap,
//!   labels and annotations), as kube-controller-manager makes it.
//! - [`endpointslices`]: the EndpointSlice controller's pure plan for one Service (packing,
//!   placeholder, recycling, trafficDistribution hints).
//! - [`views`]: API objects to and from the views those decide on; [`trigger_time`]: the
//!   last-change-trigger-time of a sync.
//! - [`runtime`]: the work queue; [`endpoint_controllers`]: the two
//!   reconcilers over them, as `svcplane controller` runs them.
//!
//! Admission never releases: it cannot know whether the write it admits will happen.

pub mod allocation;
pub mod endpoint_controllers;
pub mod endpoints;
pub mod endpointslices;
mod error;
pub mod leader;
pub mod metrics;
pub mod mirroring;
pub mod ops;
pub mod plan;
pub mod releaser;
pub mod repair;
pub mod runtime;
pub mod service;
pub mod service_cidrs;
pub mod slice_tracker;
pub mod trigger_time;
pub mod views;
pub mod webhook;

pub use allocation::{Admitted, AllocationRequest, Denial, ServiceAllocator};
pub use error::{Error, Result};
pub use plan::Cluster;
