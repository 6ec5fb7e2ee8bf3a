//! Errors of the schema crate.

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// An applied migration's file no longer matches what was applied.
    #[error(
        "migration {version} ({name}) was changed after it was applied \
         (applied checksum {applied}, file checksum {current}); add a new migration instead of editing an applied one"
    )]
    Modified {
        /// Its version.
        version: i32,
        /// Its file name.
        name: String,
        /// Checksum recorded when it was applied.
        applied: String,
        /// Checksum of the embedded file now.
        current: String,
    },
    /// The database has a migration this binary does not know (it is newer than the binary).
    #[error(
        "the database has migration {version} ({name}) that this atlas binary does not know; upgrade atlas"
    )]
    Unknown {
        /// Its version.
        version: i32,
        /// Its recorded name.
        name: String,
    },
    /// A migration's SQL failed.
    #[error("migration {name} failed: {source}")]
    Failed {
        /// Its file name.
        name: &'static str,
        /// The database error (SQLSTATE preserved).
        source: tokio_postgres::Error,
    },
    /// Any other database error.
    #[error("database error during {step}: {source}")]
    Db {
        /// What the migrator was doing.
        step: &'static str,
        /// The database error (SQLSTATE preserved).
        source: tokio_postgres::Error,
    },
}
