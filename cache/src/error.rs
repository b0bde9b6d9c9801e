//! The one error type of the crate.

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An object has a field the cache cannot use.
    #[error("{object}: {field}: {message}")]
    Invalid {
        object: String,
        field: String,
        message: String,
    },

    /// A manifest file could not be read or parsed.
    #[error("{file}: {message}")]
    Manifest { file: String, message: String },

    /// The Kubernetes client could not be set up.
    #[error("kubernetes client: {0}")]
    Client(String),
}
