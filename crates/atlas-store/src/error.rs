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
    /// A tenant quota would be exceeded; nothing was written.
    #[error("{message}")]
    Quota {
        /// The quota (`max_entities`, …).
        quota: &'static str,
        /// What would exceed it, and the limit.
        message: String,
    },
    /// Stored data violates an invariant of this code.
    #[error("inconsistent stored data: {0}")]
    Corrupt(String),
    /// A statement did not finish in time; its connection was dropped, so whether it
    /// committed is unknown (a primary cut off from its synchronous standby never confirms).
    #[error("{what} did not finish within {after_ms} ms; its outcome is unknown")]
    TimedOut {
        /// What was running.
        what: &'static str,
        /// The limit.
        after_ms: u64,
    },
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

    /// True when the error means the database could not be reached (retryable: 503): no
    /// connection, a lost one, a timeout of unknown outcome, or a server that is not (or no
    /// longer) a writable primary — shutting down, starting, or demoted during a failover.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::TimedOut { .. } => true,
            StoreError::Db(e) => {
                e.is_closed()
                    || e.code().is_none_or(|code| {
                        let code = code.code();
                        code.starts_with("08") // connection exception
                            || matches!(
                                code,
                                "25006" // read_only_sql_transaction: a standby now
                                | "57P01" // admin_shutdown
                                | "57P02" // crash_shutdown
                                | "57P03" // cannot_connect_now: starting or promoting
                            )
                    })
            }
            _ => false,
        }
    }

    /// True when the server is a standby (a demoted primary): a pooled connection to it
    /// must not be reused for writes.
    pub fn is_read_only(&self) -> bool {
        self.sqlstate() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
    }
}
