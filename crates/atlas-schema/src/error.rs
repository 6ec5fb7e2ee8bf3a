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
    /// The database stopped before the last migration the baseline replaced: this binary has
    /// only the baseline, which cannot be applied over a partial schema.
    #[error(
        "the database has not applied migration {missing}, which {baseline} replaced: \
         migrate it with an atlas binary from before the baseline first"
    )]
    BeforeBaseline {
        /// The first replaced migration the database lacks.
        missing: &'static str,
        /// The baseline's file name.
        baseline: &'static str,
    },
    /// A function file no longer defines a function it defined when last applied, and the old
    /// one is still there: its signature or return type changed without a versioned `DROP`.
    #[error(
        "{file} no longer defines {function}, which is still in the database: \
         add a versioned migration that drops it (DROP FUNCTION {function})"
    )]
    Orphaned {
        /// The function file.
        file: &'static str,
        /// The left-over function's signature.
        function: String,
    },
    /// A function of the schema's roles that no function file defines.
    #[error(
        "function {function} is in the database but in no functions/*.sql file: \
         if its signature changed, add a versioned migration that drops it (DROP FUNCTION {function})"
    )]
    Unmanaged {
        /// The function's signature.
        function: String,
    },
    /// A migration's SQL failed.
    #[error("migration {name} failed: {}", describe(source))]
    Failed {
        /// Its file name.
        name: &'static str,
        /// The database error (SQLSTATE preserved).
        source: tokio_postgres::Error,
    },
    /// Any other database error.
    #[error("database error during {step}: {}", describe(source))]
    Db {
        /// What the migrator was doing.
        step: &'static str,
        /// The database error (SQLSTATE preserved).
        source: tokio_postgres::Error,
    },
}

/// The server's message, detail and hint when there is one: tokio-postgres's own Display says
/// only "db error".
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} ({})", db.message(), db.code().code());
            for extra in [db.detail(), db.hint(), db.where_()].into_iter().flatten() {
                text.push_str("; ");
                text.push_str(extra);
            }
            text
        }
        None => error.to_string(),
    }
}
