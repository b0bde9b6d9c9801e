//! The one error type of the crate. Expected outcomes (a full pool, a taken value) are not
//! errors: see [`crate::Refusal`].

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A pool spec, pools file or flag is invalid.
    #[error("{field}: {message}")]
    InvalidSpec { field: String, message: String },

    /// The pool has not been created in the store.
    #[error("unknown pool {name:?} (known: {known}); create it with `svcplane ipam apply`")]
    UnknownPool { name: String, known: String },

    /// Applying a spec would leave allocated or held values outside the pool.
    #[error(
        "pool {pool}: the new spec leaves values in use outside the pool: {values}; release them (delete or change the objects) first, or keep them inside the pool"
    )]
    Shrink { pool: String, values: String },

    /// A reservation names a value already allocated to another object.
    #[error("pool {pool}: {value} cannot be reserved for {object}: it is allocated to {owner}")]
    ReservationTaken {
        pool: String,
        value: String,
        object: String,
        owner: String,
    },

    /// The store could not be reached (or answered "unavailable") for longer than allowed.
    #[error(
        "etcd at {endpoints} is unreachable: {message}; check --etcd-endpoints (and the TLS flags) and that etcd is running"
    )]
    Unavailable { endpoints: String, message: String },

    /// The store refused a request for another reason.
    #[error("etcd request failed: {0}")]
    Store(String),

    /// A stored key or value could not be decoded.
    #[error("stored key {key}: {message}")]
    Corrupt { key: String, message: String },

    /// Another writer changed the pools while they were being applied.
    #[error("the pools changed while they were being applied; run the command again")]
    Conflict,
}

impl From<etcdconf::Error> for Error {
    fn from(e: etcdconf::Error) -> Error {
        match e {
            etcdconf::Error::Invalid { flag, message } => Error::InvalidSpec {
                field: flag,
                message,
            },
            etcdconf::Error::Unavailable { endpoints, message } => {
                Error::Unavailable { endpoints, message }
            }
        }
    }
}

impl Error {
    /// True for failures worth retrying: the store was unreachable or timed out.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}
