//! Cluster DNS: the Kubernetes DNS specification (kube-dns / CoreDNS `kubernetes` plugin)
//! answered from the cluster cache.
//!
//! - [`name`]: the name grammar (pure).

pub mod name;
