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

    /// True when the error means the database could not be reached (retryable: 503).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Db(e) => e.is_closed() || e.code().is_none(),
            _ => false,
        }
    }
}
