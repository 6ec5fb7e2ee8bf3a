//! Atlas's database schema: versioned `.sql` migrations embedded in the binary, the migrator
//! that applies them, and the bootstrap of the roles they rely on.
//!
//! Roles (cluster-wide, created by [`migrate`] before any migration runs):
//! - [`OWNER_ROLE`]: NOLOGIN, owns every table; RLS is FORCEd so it binds the owner too.
//! - [`DEFINER_ROLE`]: NOLOGIN, BYPASSRLS; owns only the SECURITY DEFINER functions that must
//!   cross tenants (`stage_flush`, the stats refresh).
//! - [`APP_ROLE`]: the server's login; NOSUPERUSER, NOBYPASSRLS, owns nothing.

mod error;
mod migrate;

pub use error::SchemaError;
pub use migrate::{
    AppLogin, MigrateReport, MigrationState, migrate, migrate_set, migration_status,
    migration_status_of,
};

/// The role that owns every table of the schema.
pub const OWNER_ROLE: &str = "atlas_owner";
/// The BYPASSRLS role that owns the cross-tenant SECURITY DEFINER functions.
pub const DEFINER_ROLE: &str = "atlas_definer";
/// The role the server logs in as.
pub const APP_ROLE: &str = "atlas_app";

/// One versioned migration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its number; migrations apply in ascending order.
    pub version: i32,
    /// The file name.
    pub name: &'static str,
    /// The SQL it runs, in one transaction, as [`OWNER_ROLE`].
    pub sql: &'static str,
}

macro_rules! migration {
    ($version:literal, $file:literal) => {
        migration!($version, "migrations", $file)
    };
    ($version:literal, $dir:literal, $file:literal) => {
        Migration {
            version: $version,
            name: $file,
            sql: include_str!(concat!("../", $dir, "/", $file)),
        }
    };
}

/// Every migration, in order. A test checks that this list and `migrations/` agree.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_tables.sql"),
    migration!(2, "0002_partitions.sql"),
    migration!(3, "0003_flush_and_projection.sql"),
    migration!(4, "0004_security.sql"),
    migration!(5, "0005_api_keys.sql"),
    migration!(6, "0006_ingest.sql"),
    migration!(7, "0007_schema_usage.sql"),
    migration!(8, "0008_ingest_rows.sql"),
    migration!(9, "0009_reads.sql"),
    migration!(10, "0010_maintenance.sql"),
    migration!(11, "0011_inline_helpers.sql"),
    migration!(12, "0012_ingest_fast_path.sql"),
    migration!(13, "0013_entities_known.sql"),
    migration!(14, "0014_projection_fillfactor.sql"),
    migration!(15, "0015_projection_two_steps.sql"),
    migration!(16, "0016_stage_flush_fast_path.sql"),
    migration!(17, "0017_partitions_backward.sql"),
    migration!(18, "0018_projection_newest_column.sql"),
    migration!(19, "0019_conflicting_replays_refused.sql"),
    migration!(20, "0020_entities_known_bound.sql"),
];

/// The analytics store's migrations (`analytics/`), applied by `atlas cdc` to its own database.
pub const ANALYTICS_MIGRATIONS: &[Migration] = &[
    migration!(1, "analytics", "0001_analytics.sql"),
    migration!(2, "analytics", "0002_pruning.sql"),
    migration!(3, "analytics", "0003_attributes_allow_rounding.sql"),
];

impl Migration {
    /// Hex SHA-256 of the file's text: an applied migration whose file changed is refused.
    pub fn checksum(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.sql.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A short fingerprint of the whole migration set (names and checksums), e.g. to name a
/// template database that must be rebuilt when any migration changes.
pub fn schema_fingerprint() -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for m in MIGRATIONS {
        hasher.update(m.name.as_bytes());
        hasher.update(m.checksum().as_bytes());
    }
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_match_their_files() {
        check_set("migrations", MIGRATIONS);
        check_set("analytics", ANALYTICS_MIGRATIONS);
    }

    fn check_set(folder: &str, set: &[Migration]) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = set.iter().map(|m| m.name).collect();
        assert_eq!(
            files, listed,
            "every file in {folder}/ must be listed in its migration set"
        );
        for (i, m) in set.iter().enumerate() {
            let expected = i32::try_from(i + 1).unwrap_or(i32::MAX);
            assert_eq!(m.version, expected, "{} is out of sequence", m.name);
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{}",
                m.name
            );
        }
    }

    #[test]
    fn checksum_changes_with_content() {
        let a = MIGRATIONS[0];
        let b = Migration {
            sql: "SELECT 1",
            ..a
        };
        assert_eq!(a.checksum().len(), 64);
        assert_ne!(a.checksum(), b.checksum());
    }
}
