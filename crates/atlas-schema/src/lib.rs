//! Atlas's database schema: versioned `migrations/*.sql` (tables, indexes, policies, data),
//! repeatable `functions/*.sql` (each function's one current definition, re-applied when its
//! file changes), all embedded in the binary; the migrator that applies them; and the
//! bootstrap of the roles they rely on.
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

/// One versioned migration file (`migrations/NNNN_name.sql`): tables, indexes, policies,
/// privileges and data. Applied once, in version order; editing it afterwards is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its number, the file name's prefix; migrations apply in ascending order.
    pub version: i32,
    /// The file name.
    pub name: &'static str,
    /// The SQL it runs, in one transaction, as [`OWNER_ROLE`].
    pub sql: &'static str,
}

/// One repeatable file of functions (`functions/family.sql`), Flyway's `R__` model: re-applied
/// after the versioned migrations whenever its checksum changes, so each function has exactly
/// one current definition. Every statement must be re-runnable (`CREATE OR REPLACE`, grants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Functions {
    /// The file name.
    pub name: &'static str,
    /// The SQL it runs, in one transaction, as [`OWNER_ROLE`].
    pub sql: &'static str,
}

/// A versioned migration the baseline replaced: a database that applied all of them (with
/// these checksums) has the baseline's schema and does not run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Squashed {
    /// Its version.
    pub version: i32,
    /// Its file name.
    pub name: &'static str,
    /// The checksum it was applied with.
    pub checksum: &'static str,
}

/// Everything the migrator applies to one kind of database.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// Versioned migrations, in version order.
    pub migrations: &'static [Migration],
    /// Repeatable function files, in name order.
    pub functions: &'static [Functions],
    /// Run after every migration run, as [`OWNER_ROLE`] (idempotent).
    pub after_migrate: &'static str,
    /// The migrations the first of [`Schema::migrations`] (the baseline) replaced.
    pub squashed: &'static [Squashed],
}

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// Every versioned migration of the main database, found by listing `migrations/`.
pub const MIGRATIONS: &[Migration] = MIGRATIONS_FILES;
/// Every function file of the main database, found by listing `functions/`.
pub const FUNCTIONS: &[Functions] = FUNCTION_FILES;
/// The analytics store's migrations (`analytics/`), applied by `atlas cdc` to its own database.
pub const ANALYTICS_MIGRATIONS: &[Migration] = ANALYTICS_MIGRATIONS_FILES;

/// Migrations 0001-0020 as they were applied before `0020_baseline.sql` replaced them.
const SQUASHED_0020: &[Squashed] = &[
    Squashed {
        version: 1,
        name: "0001_tables.sql",
        checksum: "84ae0b8bc469b7147e6b8c47eb9eb179ea3ec9fca53cd26178d0a21682cb7c60",
    },
    Squashed {
        version: 2,
        name: "0002_partitions.sql",
        checksum: "d6d69b32bac07f37f2c0f83eb35098e6564dd1656c451316f4306a8e4eda003f",
    },
    Squashed {
        version: 3,
        name: "0003_flush_and_projection.sql",
        checksum: "3d6ed8831875eb8cd674995a5c5f8cb87a01d16f400f4b0d67b42cf05609bcda",
    },
    Squashed {
        version: 4,
        name: "0004_security.sql",
        checksum: "0483f5bf883a57e794c830413b464521506b2d76aaab76aff0da65f044f42f1f",
    },
    Squashed {
        version: 5,
        name: "0005_api_keys.sql",
        checksum: "388031450595d6b03d7f23e6d49e64df49372359a9cecc26eb17eb3d2a786301",
    },
    Squashed {
        version: 6,
        name: "0006_ingest.sql",
        checksum: "330651e4447ce97b36428e06c3391774f23ceefd92c02a7e4d0d4b69b0d11b45",
    },
    Squashed {
        version: 7,
        name: "0007_schema_usage.sql",
        checksum: "62538cf9b394faafe4fa51faa45113321e9383ea43587e1c48b36d7ae9589e73",
    },
    Squashed {
        version: 8,
        name: "0008_ingest_rows.sql",
        checksum: "49fa3db0b0bbec1c9465fc9ee416c3b5afa8fff8747656e50b00dd9fbb1dd9fc",
    },
    Squashed {
        version: 9,
        name: "0009_reads.sql",
        checksum: "696255ab81c3d7cc5b10aff025e0e4b8884eb944613105b97774a0b0e8777858",
    },
    Squashed {
        version: 10,
        name: "0010_maintenance.sql",
        checksum: "696d822d2b4de1c6822c1fc0574f8c9fd4e1ef424e262e18c4011d6c5969d41b",
    },
    Squashed {
        version: 11,
        name: "0011_inline_helpers.sql",
        checksum: "04482186d75075232810d4ece7c31ee0c825a4a742c54be779d4a5f1c39d92bb",
    },
    Squashed {
        version: 12,
        name: "0012_ingest_fast_path.sql",
        checksum: "0eace72b1138f64d8e07c13481b811b83b2e8aba12045cc818496731d45dc31b",
    },
    Squashed {
        version: 13,
        name: "0013_entities_known.sql",
        checksum: "b336e9eca0a3093f55eebcbbbe5f48f577aaf7b524490d29ebc2941f5202e96f",
    },
    Squashed {
        version: 14,
        name: "0014_projection_fillfactor.sql",
        checksum: "6f261e00bd067aae46315a1dd0585747c96a2cb3e44e1aaad0647b62d75d9da9",
    },
    Squashed {
        version: 15,
        name: "0015_projection_two_steps.sql",
        checksum: "0ca90be2c7cdc044cb941f5d14e1cb75d48354b92df22b118eb36c07a4673f71",
    },
    Squashed {
        version: 16,
        name: "0016_stage_flush_fast_path.sql",
        checksum: "88a1f995c0de916484161bc5301c0e11dd5def915b3e1b12f97d252bcf37dd63",
    },
    Squashed {
        version: 17,
        name: "0017_partitions_backward.sql",
        checksum: "4bb7843ec90fecabd53b6cedea6dd868b2a48147058e1b1f03d40df4acfea6e8",
    },
    Squashed {
        version: 18,
        name: "0018_projection_newest_column.sql",
        checksum: "3a33a8746985895141e51e3b436a7bf3189f0aab057f82ac02d1dc5fa24dc355",
    },
    Squashed {
        version: 19,
        name: "0019_conflicting_replays_refused.sql",
        checksum: "789ba892f88e56d2077db6fe97ff04c6b1fb2587f7d35ddc107fb13e6d1fb592",
    },
    Squashed {
        version: 20,
        name: "0020_entities_known_bound.sql",
        checksum: "a53aa45fd8005730f7157bd5e154e491c45f660c63989d6fb07149d243c7dce1",
    },
];

/// The main database's schema.
pub const SCHEMA: Schema = Schema {
    migrations: MIGRATIONS,
    functions: FUNCTIONS,
    after_migrate: include_str!("../callbacks/after_migrate.sql"),
    squashed: SQUASHED_0020,
};

/// `functions/tenancy.sql`, which the analytics store shares with the main database: the
/// server sets a transaction's tenant with `set_tenant()` on both.
const TENANCY: Functions = Functions {
    name: "tenancy.sql",
    sql: include_str!("../functions/tenancy.sql"),
};

/// The analytics store's schema.
pub const ANALYTICS_SCHEMA: Schema = Schema {
    migrations: ANALYTICS_MIGRATIONS,
    functions: std::slice::from_ref(&TENANCY),
    after_migrate: "",
    squashed: &[],
};

/// Hex SHA-256 of a text.
pub(crate) fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Migration {
    /// Hex SHA-256 of the file's text: an applied migration whose file changed is refused.
    pub fn checksum(&self) -> String {
        sha256_hex(self.sql)
    }
}

impl Functions {
    /// Hex SHA-256 of the file's text: the file is re-applied when it differs from the recorded one.
    pub fn checksum(&self) -> String {
        sha256_hex(self.sql)
    }
}

/// A short fingerprint of the whole schema (names and checksums of every file), e.g. to name a
/// template database that must be rebuilt when any of them changes.
pub fn schema_fingerprint() -> String {
    let mut all = String::new();
    for m in SCHEMA.migrations {
        all.push_str(m.name);
        all.push_str(&m.checksum());
    }
    for f in SCHEMA.functions {
        all.push_str(f.name);
        all.push_str(&f.checksum());
    }
    all.push_str(SCHEMA.after_migrate);
    sha256_hex(&all)[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQL without its `--` comments, upper-cased, whitespace collapsed.
    fn code(sql: &str) -> String {
        sql.lines()
            .map(|l| l.split("--").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_uppercase()
    }

    /// The names of the functions a function file defines.
    fn defined(file: &Functions) -> Vec<String> {
        code(file.sql)
            .split("CREATE OR REPLACE FUNCTION PUBLIC.")
            .skip(1)
            .filter_map(|rest| rest.split('(').next().map(str::to_owned))
            .collect()
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for set in [MIGRATIONS, ANALYTICS_MIGRATIONS] {
            for pair in set.windows(2) {
                assert!(
                    pair[0].version < pair[1].version,
                    "{} / {}",
                    pair[0].name,
                    pair[1].name
                );
            }
        }
        // The baseline stands for exactly the migrations it replaced.
        let last = SQUASHED_0020.iter().map(|s| s.version).max();
        assert_eq!(MIGRATIONS.first().map(|m| m.version), last);
        assert_eq!(
            MIGRATIONS.first().map(|m| m.name),
            Some("0020_baseline.sql")
        );
        assert_eq!(SQUASHED_0020.len(), 20);
    }

    #[test]
    fn versioned_migrations_create_no_function() {
        for m in MIGRATIONS.iter().chain(ANALYTICS_MIGRATIONS) {
            let sql = code(m.sql);
            for form in [
                "CREATE FUNCTION",
                "CREATE OR REPLACE FUNCTION",
                "CREATE PROCEDURE",
                "CREATE OR REPLACE PROCEDURE",
            ] {
                assert!(
                    !sql.contains(form),
                    "{} has {form}: functions belong in functions/*.sql",
                    m.name
                );
            }
        }
    }

    #[test]
    fn versioned_migrations_call_no_repeatable_function() {
        // They run before the function files, which may be about to change what they call.
        let names: Vec<String> = FUNCTIONS.iter().flat_map(defined).collect();
        assert!(
            names.len() > 20,
            "the files define the schema's functions: {names:?}"
        );
        for m in MIGRATIONS {
            for statement in code(m.sql).split(';') {
                if statement.trim_start().starts_with("DROP FUNCTION") {
                    continue;
                }
                for name in &names {
                    let called = statement.match_indices(name.as_str()).any(|(i, _)| {
                        let before = statement[..i].chars().next_back();
                        let after = statement[i + name.len()..].trim_start().chars().next();
                        !matches!(before, Some(c) if c.is_alphanumeric() || c == '_')
                            && after == Some('(')
                    });
                    assert!(
                        !called,
                        "{} calls {name}, which a function file defines",
                        m.name
                    );
                }
            }
        }
    }

    #[test]
    fn function_files_only_replace() {
        for file in FUNCTIONS {
            let sql = code(file.sql);
            assert!(
                !sql.contains("CREATE FUNCTION"),
                "{}: use CREATE OR REPLACE",
                file.name
            );
            assert!(
                !defined(file).is_empty(),
                "{} defines no function",
                file.name
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
