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
    /// A configuration that cannot work, named by its flag.
    #[error("{field}: {message}")]
    Config { field: String, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;
