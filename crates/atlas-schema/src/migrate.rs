//! Applying migrations.

use tokio_postgres::Client;

use crate::{APP_ROLE, Functions, Migration, SCHEMA, Schema, SchemaError};

/// Key of the session advisory lock that serializes concurrent migrators.
const MIGRATE_LOCK_KEY: i64 = 0x6174_6c61_735f_6d67; // "atlas_mg"

/// Creates the three roles when missing. Roles are cluster-wide; BYPASSRLS needs a superuser.
const BOOTSTRAP_ROLES: &str = r"
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'atlas_owner') THEN
        CREATE ROLE atlas_owner NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'atlas_definer') THEN
        CREATE ROLE atlas_definer NOLOGIN NOSUPERUSER BYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'atlas_app') THEN
        CREATE ROLE atlas_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL; -- a concurrent migrator created it first
END
$$;
-- Migrations run as atlas_owner and hand function ownership to atlas_definer.
GRANT atlas_definer TO atlas_owner;
-- replication_replay_lag() (a definer function) reads pg_stat_replication's lag columns.
GRANT pg_read_all_stats TO atlas_definer;
";

/// On a Citus coordinator: the coordinator opens its connections to the workers as the
/// *current* user, which inside migrations is atlas_owner and inside the SECURITY DEFINER
/// functions atlas_definer. Both become LOGIN roles there, each with a new random password
/// (from the server's strong random source) that only `pg_dist_authinfo` holds, readable by
/// superusers alone: nobody can log in as them but the coordinator itself. Citus propagates
/// the ALTER ROLE to every worker. Run by every migrate, so it also rotates the passwords.
const CITUS_INTERNAL_LOGINS: &str = r"
DO $$
DECLARE
    v_role text;
    v_password text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    FOREACH v_role IN ARRAY ARRAY['atlas_owner', 'atlas_definer'] LOOP
        v_password := replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
        EXECUTE format('ALTER ROLE %I WITH LOGIN PASSWORD %L', v_role, v_password);
        DELETE FROM pg_catalog.pg_dist_authinfo WHERE rolename = v_role AND nodeid = 0;
        INSERT INTO pg_catalog.pg_dist_authinfo (nodeid, rolename, authinfo)
        VALUES (0, v_role, 'password=' || v_password);
    END LOOP;
END
$$;
";

/// On a Citus coordinator, for the app login:
/// - its password for the coordinator's own connections to the workers (the server's queries
///   reach the shards as that login), quoted for libpq;
/// - `citus.propagate_set_commands = 'local'`, so the tenant set with `SET LOCAL` reaches the
///   shards, whose RLS policies read it (`set_config()` is never propagated). On this role
///   only: the migrator's own `SET LOCAL ROLE` must not follow Citus's superuser connections.
const CITUS_APP_AUTHINFO: &str = r"
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    EXECUTE format('ALTER ROLE %I SET citus.propagate_set_commands = %L',
                   current_setting('atlas.migrate_app_user'), 'local');
    DELETE FROM pg_catalog.pg_dist_authinfo
    WHERE rolename = current_setting('atlas.migrate_app_user') AND nodeid = 0;
    INSERT INTO pg_catalog.pg_dist_authinfo (nodeid, rolename, authinfo)
    VALUES (0, current_setting('atlas.migrate_app_user'),
            'password=''' || replace(replace(current_setting('atlas.migrate_app_password'), '', '\'), '''', '''')
            || '''');
END
$$;
";

/// `ALTER ROLE … PASSWORD` cannot take a bind parameter: PostgreSQL quotes the values itself
/// (%I, %L) and the migrator runs the statement it returns.
const APP_PASSWORD_SQL: &str =
    "SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', $1::text, $2::text)";
/// Creates a custom login that acts as atlas_app (when the URL's user is not atlas_app).
const CUSTOM_LOGIN_SQL: &str = "SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS INHERIT IN ROLE atlas_app', $1::text) \
     WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1::text)";
const DB_OWNER_SQL: &str =
    "SELECT format('ALTER DATABASE %I OWNER TO atlas_owner', current_database())";

const CREATE_HISTORY: &str = r"
SET ROLE atlas_owner;
CREATE TABLE IF NOT EXISTS public.atlas_schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
-- The repeatable function files' own history: the checksum each was last applied with, and
-- the functions it defined then (to find one whose signature changed and was left behind).
CREATE TABLE IF NOT EXISTS public.atlas_schema_functions (
    name       text        PRIMARY KEY,
    checksum   text        NOT NULL,
    functions  text[]      NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
-- /readyz compares the applied files with the binary's.
GRANT SELECT ON public.atlas_schema_functions TO atlas_app;
RESET ROLE;
";

/// A function's name as the migrator records it (`p` being its pg_proc row): schema, name and
/// arguments, independent of the session's search_path. A macro so queries stay literals.
macro_rules! signature {
    () => {
        "format('%s.%s(%s)', p.pronamespace::regnamespace, p.proname, pg_get_function_identity_arguments(p.oid))"
    };
}

/// The login the server will use, whose password the migrator sets.
#[derive(Debug, Clone)]
pub struct AppLogin {
    /// Role name (normally `atlas_app`).
    pub user: String,
    /// Its password.
    pub password: String,
}

/// What one `migrate` run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Names of the versioned migrations applied now, in order.
    pub applied: Vec<&'static str>,
    /// How many versioned migrations were already applied before.
    pub already_applied: usize,
    /// Names of the function files (re-)applied now because they were new or had changed.
    pub functions_applied: Vec<&'static str>,
}

/// One embedded file's state in a database: a versioned migration or a function file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    /// The migration's version; `None` for a repeatable function file.
    pub version: Option<i32>,
    /// The file name.
    pub name: &'static str,
    /// The embedded file's checksum.
    pub checksum: String,
    /// The checksum recorded when it was (last) applied, if it was.
    pub applied_checksum: Option<String>,
}

impl MigrationState {
    /// True when applied and unchanged since.
    pub fn is_current(&self) -> bool {
        self.applied_checksum.as_deref() == Some(self.checksum.as_str())
    }

    /// True for a versioned migration edited after it was applied (a function file that changed
    /// is merely pending: it is re-applied).
    pub fn is_edited(&self) -> bool {
        self.version.is_some() && self.applied_checksum.is_some() && !self.is_current()
    }
}

fn db(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SchemaError {
    move |source| SchemaError::Db { step, source }
}

/// Runs a statement that PostgreSQL itself generated with `format(%I, %L)` from bound values.
async fn run_generated(
    client: &Client,
    step: &'static str,
    generator: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<(), SchemaError> {
    if let Some(row) = client
        .query_opt(generator, params)
        .await
        .map_err(db(step))?
    {
        let statement: String = row.get(0);
        client.batch_execute(&statement).await.map_err(db(step))?;
    }
    Ok(())
}

/// Brings the connected database up to date. `client` must be a superuser connection to the
/// target database. Idempotent; concurrent runs serialize on an advisory lock.
pub async fn migrate(
    client: &mut Client,
    app: Option<&AppLogin>,
) -> Result<MigrateReport, SchemaError> {
    migrate_set(client, app, &SCHEMA).await
}

/// [`migrate`] with another schema (the analytics store's own database).
pub async fn migrate_set(
    client: &mut Client,
    app: Option<&AppLogin>,
    set: &Schema,
) -> Result<MigrateReport, SchemaError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK_KEY])
        .await
        .map_err(db("taking the migration lock"))?;
    let result = migrate_locked(client, app, set).await;
    // Session locks end with the session anyway; unlock so a caller may keep the connection.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK_KEY])
        .await;
    result
}

async fn migrate_locked(
    client: &mut Client,
    app: Option<&AppLogin>,
    set: &Schema,
) -> Result<MigrateReport, SchemaError> {
    client
        .batch_execute(BOOTSTRAP_ROLES)
        .await
        .map_err(db("creating roles"))?;
    client
        .batch_execute(CITUS_INTERNAL_LOGINS)
        .await
        .map_err(db("giving the Citus coordinator its logins"))?;
    if let Some(login) = app {
        if login.user != APP_ROLE {
            run_generated(
                client,
                "creating the app login",
                CUSTOM_LOGIN_SQL,
                &[&login.user],
            )
            .await?;
        }
        run_generated(
            client,
            "setting the app password",
            APP_PASSWORD_SQL,
            &[&login.user, &login.password],
        )
        .await?;
        // The DO block reads them from session settings (a DO block takes no parameters).
        client
            .execute(
                "SELECT set_config('atlas.migrate_app_user', $1, false), \
                        set_config('atlas.migrate_app_password', $2, false)",
                &[&login.user, &login.password],
            )
            .await
            .map_err(db("giving the Citus coordinator its logins"))?;
        let stored = client.batch_execute(CITUS_APP_AUTHINFO).await;
        let _ = client
            .batch_execute("RESET atlas.migrate_app_user; RESET atlas.migrate_app_password")
            .await;
        stored.map_err(db("giving the Citus coordinator its logins"))?;
    }
    run_generated(
        client,
        "handing the database to atlas_owner",
        DB_OWNER_SQL,
        &[],
    )
    .await?;
    client
        .batch_execute(CREATE_HISTORY)
        .await
        .map_err(db("creating the history table"))?;

    let states = migration_status_of(client, set).await?;
    let mut report = MigrateReport::default();
    for (state, migration) in states.iter().zip(set.migrations) {
        match &state.applied_checksum {
            Some(_) if state.is_current() => report.already_applied += 1,
            Some(applied) => {
                return Err(SchemaError::Modified {
                    version: migration.version,
                    name: migration.name.to_owned(),
                    applied: applied.clone(),
                    current: state.checksum.clone(),
                });
            }
            None => {
                apply(client, migration).await?;
                tracing::info!(migration = migration.name, "applied migration");
                report.applied.push(migration.name);
            }
        }
    }
    for (state, file) in states[set.migrations.len()..].iter().zip(set.functions) {
        if !state.is_current() {
            apply_functions(client, file).await?;
            tracing::info!(functions = file.name, "applied functions");
            report.functions_applied.push(file.name);
        }
    }
    if !set.functions.is_empty() {
        check_functions_managed(client).await?;
    }
    if !set.after_migrate.is_empty() {
        let tx = client.transaction().await.map_err(db("after migrating"))?;
        tx.batch_execute("SET LOCAL ROLE atlas_owner")
            .await
            .map_err(db("after migrating"))?;
        tx.batch_execute(set.after_migrate)
            .await
            .map_err(db("after migrating"))?;
        tx.commit().await.map_err(db("after migrating"))?;
    }
    Ok(report)
}

/// Applies one function file in its own transaction and records the functions it defined:
/// those whose catalog row this transaction wrote (`CREATE OR REPLACE` rewrites it even when
/// nothing changed). A function the file defined before and no longer does - its signature
/// changed, so `CREATE OR REPLACE` made a second one - must have been dropped by a versioned
/// migration; otherwise the old one would linger and callers could still reach it.
async fn apply_functions(client: &mut Client, file: &Functions) -> Result<(), SchemaError> {
    let failed = |source| SchemaError::Failed {
        name: file.name,
        source,
    };
    let tx = client.transaction().await.map_err(failed)?;
    let before: Vec<String> = tx
        .query_opt(
            "SELECT functions FROM public.atlas_schema_functions WHERE name = $1",
            &[&file.name],
        )
        .await
        .map_err(failed)?
        .map(|r| r.get(0))
        .unwrap_or_default();
    // Function bodies name functions of other files, or of this one further down: like
    // pg_dump, create them without checking bodies, which are checked when they run (and, all
    // at once with every function present, by the schema tests).
    tx.batch_execute("SET LOCAL ROLE atlas_owner; SET LOCAL check_function_bodies = off")
        .await
        .map_err(failed)?;
    tx.batch_execute(file.sql).await.map_err(failed)?;
    let defined: Vec<String> = tx
        .query(
            concat!(
                "SELECT ",
                signature!(),
                " FROM pg_proc p \
                 WHERE p.pronamespace = 'public'::regnamespace AND p.xmin = pg_current_xact_id()::xid \
                 ORDER BY 1"
            ),
            &[],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let left: Vec<String> = tx
        .query(
            concat!(
                "SELECT ",
                signature!(),
                " FROM pg_proc p \
                 WHERE ",
                signature!(),
                " = ANY ($1) AND NOT ",
                signature!(),
                " = ANY ($2) ORDER BY 1"
            ),
            &[&before, &defined],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(function) = left.into_iter().next() {
        return Err(SchemaError::Orphaned {
            file: file.name,
            function,
        });
    }
    tx.execute(
        "INSERT INTO public.atlas_schema_functions (name, checksum, functions) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, functions = EXCLUDED.functions, \
         applied_at = now()",
        &[&file.name, &file.checksum(), &defined],
    )
    .await
    .map_err(failed)?;
    tx.commit().await.map_err(failed)
}

/// Every function of the schema's roles in `public` is defined by a function file: one that none
/// defines is a left-over (a changed signature whose old form no versioned migration dropped).
async fn check_functions_managed(client: &Client) -> Result<(), SchemaError> {
    let stray = client
        .query_opt(
            concat!(
                "SELECT ",
                signature!(),
                " FROM pg_proc p \
                 WHERE p.pronamespace = 'public'::regnamespace \
                   AND pg_get_userbyid(p.proowner) IN ('atlas_owner', 'atlas_definer') \
                   AND NOT EXISTS (SELECT 1 FROM public.atlas_schema_functions f WHERE ",
                signature!(),
                " = ANY (f.functions)) \
                 ORDER BY 1 LIMIT 1"
            ),
            &[],
        )
        .await
        .map_err(db("checking the functions"))?;
    match stray {
        Some(row) => Err(SchemaError::Unmanaged {
            function: row.get(0),
        }),
        None => Ok(()),
    }
}

async fn apply(client: &mut Client, m: &Migration) -> Result<(), SchemaError> {
    let failed = |source| SchemaError::Failed {
        name: m.name,
        source,
    };
    let tx = client.transaction().await.map_err(failed)?;
    tx.batch_execute("SET LOCAL ROLE atlas_owner")
        .await
        .map_err(failed)?;
    tx.batch_execute(m.sql).await.map_err(failed)?;
    tx.execute(
        "INSERT INTO public.atlas_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        &[&m.version, &m.name, &m.checksum()],
    )
    .await
    .map_err(failed)?;
    tx.commit().await.map_err(failed)
}

/// The state of every embedded file (versioned migrations, then function files) in the
/// connected database. Fails when the database has a migration this binary does not know.
pub async fn migration_status(client: &Client) -> Result<Vec<MigrationState>, SchemaError> {
    migration_status_of(client, &SCHEMA).await
}

/// [`migration_status`] for another schema.
pub async fn migration_status_of(
    client: &Client,
    set: &Schema,
) -> Result<Vec<MigrationState>, SchemaError> {
    let (migrations, functions): (bool, bool) = client
        .query_one(
            "SELECT to_regclass('public.atlas_schema_migrations') IS NOT NULL, \
                    to_regclass('public.atlas_schema_functions') IS NOT NULL",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .map_err(db("reading migration history"))?;
    let applied: Vec<(i32, String, String)> = if migrations {
        client
            .query(
                "SELECT version, name, checksum FROM public.atlas_schema_migrations ORDER BY version",
                &[],
            )
            .await
            .map_err(db("reading migration history"))?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    } else {
        Vec::new()
    };
    let recorded: Vec<(String, String)> = if functions {
        client
            .query(
                "SELECT name, checksum FROM public.atlas_schema_functions",
                &[],
            )
            .await
            .map_err(db("reading migration history"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    } else {
        Vec::new()
    };
    let squashed = squashed_state(&applied, set)?;
    if let Some((version, name, _)) = applied.iter().find(|(v, n, _)| {
        !set.migrations.iter().any(|m| m.version == *v)
            && !set.squashed.iter().any(|s| s.version == *v && s.name == n)
    }) {
        return Err(SchemaError::Unknown {
            version: *version,
            name: name.clone(),
        });
    }
    let mut states: Vec<MigrationState> = set
        .migrations
        .iter()
        .enumerate()
        .map(|(i, m)| MigrationState {
            version: Some(m.version),
            name: m.name,
            checksum: m.checksum(),
            applied_checksum: if i == 0 && squashed {
                // The baseline: the database applied everything it replaced.
                Some(m.checksum())
            } else {
                applied
                    .iter()
                    .find(|(v, n, _)| *v == m.version && n == m.name)
                    .map(|(_, _, c)| c.clone())
            },
        })
        .collect();
    states.extend(set.functions.iter().map(|f| {
        MigrationState {
            version: None,
            name: f.name,
            checksum: f.checksum(),
            applied_checksum: recorded
                .iter()
                .find(|(n, _)| n == f.name)
                .map(|(_, c)| c.clone()),
        }
    }));
    Ok(states)
}

/// Whether the database predates the baseline: it then applied every migration the baseline
/// replaced, unchanged (anything in between cannot be upgraded by this binary).
fn squashed_state(applied: &[(i32, String, String)], set: &Schema) -> Result<bool, SchemaError> {
    let old = |v: i32, n: &str| set.squashed.iter().any(|s| s.version == v && s.name == n);
    if !applied.iter().any(|(v, n, _)| old(*v, n)) {
        return Ok(false);
    }
    for s in set.squashed {
        match applied.iter().find(|(v, _, _)| *v == s.version) {
            Some((_, name, checksum)) if name == s.name && checksum == s.checksum => {}
            Some((_, name, checksum)) if name == s.name => {
                return Err(SchemaError::Modified {
                    version: s.version,
                    name: name.clone(),
                    applied: checksum.clone(),
                    current: s.checksum.to_owned(),
                });
            }
            _ => {
                return Err(SchemaError::BeforeBaseline {
                    missing: s.name,
                    baseline: set.migrations.first().map_or("", |m| m.name),
                });
            }
        }
    }
    Ok(true)
}
