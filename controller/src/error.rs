//! The crate's error type.

/// What can go wrong outside a Service's own fault (those are denials, not errors).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pools' store failed.
    #[error(transparent)]
    Ipam(#[from] ipam::Error),
    /// The Kubernetes API failed.
    #[error("the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The watch cache has not yet seen this controller's own last write; the sync is retried.
    #[error("the cache is out of date: {0}")]
    Stale(String),
    /// Pods are on nodes the node cache does not know; they were skipped and the sync is retried.
    #[error("pods are on nodes not (yet) known: {0:?}")]
    MissingNodes(Vec<String>),
    /// A configuration that cannot work, named by its flag.
    #[error("{field}: {message}")]
    Config { field: String, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;
