//! Cluster DNS: the Kubernetes DNS specification (kube-dns / CoreDNS `kubernetes` plugin)
//! answered from the cluster cache.
//!
//! - [`name`]: the name grammar (pure).
//! - [`config`]: zones and the plugin's options.
//! - [`index`]: per-Service records and PTR targets, rebuilt per changed Service.
//! - [`answer`]: one question answered from an index (pure).

pub mod answer;
pub mod config;
pub mod corefile;
mod error;
pub mod forward;
pub mod index;
pub mod message;
pub mod name;
pub mod probes;
pub mod server;

pub use error::{Error, Result};
