//! The one error type of the crate.

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid.
    #[error("{flag}: {message}")]
    Config { flag: String, message: String },

    /// A Corefile cannot be read: the file, the line (0 for the whole file) and why.
    #[error("{file}:{line}: {message}")]
    Corefile {
        file: String,
        line: usize,
        message: String,
    },

    /// A socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}
