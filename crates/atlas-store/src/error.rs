//! Errors of the store crate.

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A connection URL could not be parsed.
    #[error("invalid database URL: {source}")]
    Url {
        /// The parser's error.
        source: tokio_postgres::Error,
    },
    /// A pool could not be built.
    #[error("cannot build connection pool: {0}")]
    PoolBuild(String),
    /// No connection could be had (database down, pool exhausted, timeout).
    #[error("database unavailable: {0}")]
    Unavailable(#[from] deadpool_postgres::PoolError),
    /// The database answered with an error; its SQLSTATE is in [`StoreError::sqlstate`].
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// An input value is not acceptable.
    #[error("invalid `{field}`: {message}")]
    Invalid {
        /// The field (as named in the API).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A unique value is taken.
    #[error("conflict on `{field}`: {message}")]
    Conflict {
        /// The field.
        field: String,
        /// What conflicts.
        message: String,
    },
    /// The thing does not exist (for this tenant).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Stored data violates an invariant of this code.
    #[error("inconsistent stored data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The SQLSTATE of a database error, so callers can tell a unique violation from a lost
    /// connection without matching strings.
    pub fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            StoreError::Db(e) => e.code(),
            _ => None,
        }
    }

    /// Maps a unique violation to [`StoreError::Conflict`] on `field`; other errors pass.
    pub fn conflict_on_unique(e: tokio_postgres::Error, field: &str, message: &str) -> Self {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            StoreError::Conflict {
                field: field.to_owned(),
                message: message.to_owned(),
            }
        } else {
            StoreError::Db(e)
        }
    }

    /// True when the error means the database could not be reached (retryable: 503).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Db(e) => e.is_closed() || e.code().is_none(),
            _ => false,
        }
    }
}
