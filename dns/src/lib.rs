//! Cluster DNS: the Kubernetes DNS specification (kube-dns / CoreDNS `kubernetes` plugin)
//! answered from the cluster cache.
//!
//! - [`name`]: the name grammar (pure).
//! - [`config`]: zones and the plugin's options.
//! - [`index`]: per-Service records and PTR targets, rebuilt per changed Service.
//! - [`answer`]: one question answered from an index (pure).
//! - [`memo`]: cluster answers kept as bytes per receiving thread, while what they read holds.
//! - [`message`]: request and reply on the wire, checks and truncation.
//! - [`corefile`]: the Corefile read into what the server runs.
//! - [`chain`]: a server block's plugins (cache, cluster, forward, loadbalance, loop, log) and
//!   the router between blocks.
//! - [`cache`], [`forward`], [`hosts`], [`log`], [`errors`], [`rewrite`]: the directives of
//!   those names.
//! - [`metrics`], [`probes`]: `/metrics`, `/health` and `/ready`; [`reload`]: when and
//!   whether a changed Corefile replaces the running one.
//! - [`plan`]: what a Corefile asks for; [`service`]: a plan built into routers and chains.
//! - [`server`]: the listeners.
//! - [`wire`]: a plain query read from its bytes and a cached reply written as bytes, for cache
//!   hits answered without decoding or encoding a message.

pub mod answer;
pub mod cache;
pub mod chain;
pub mod config;
pub mod corefile;
mod datagram;
mod error;
pub mod errors;
pub mod forward;
pub mod hosts;
pub mod index;
pub mod log;
pub mod memo;
pub mod message;
pub mod metrics;
pub mod name;
pub mod plan;
pub mod probes;
pub mod reload;
pub mod rewrite;
pub mod server;
pub mod service;
pub mod wire;

pub use error::{Error, Result};
