//! Applying migrations.

use tokio_postgres::Client;

use crate::{APP_ROLE, MIGRATIONS, Migration, SchemaError};

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
RESET ROLE;
";

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
    /// Names of the migrations applied now, in order.
    pub applied: Vec<&'static str>,
    /// How many were already applied before.
    pub already_applied: usize,
}

/// One migration's state in a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    /// The embedded migration.
    pub migration: Migration,
    /// The checksum recorded when it was applied, if it was.
    pub applied_checksum: Option<String>,
}

impl MigrationState {
    /// True when applied and unchanged since.
    pub fn is_current(&self) -> bool {
        self.applied_checksum.as_deref() == Some(self.migration.checksum().as_str())
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
    migrate_set(client, app, MIGRATIONS).await
}

/// [`migrate`] with another migration set (the analytics store's own database).
pub async fn migrate_set(
    client: &mut Client,
    app: Option<&AppLogin>,
    set: &'static [Migration],
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
    set: &'static [Migration],
) -> Result<MigrateReport, SchemaError> {
    client
        .batch_execute(BOOTSTRAP_ROLES)
        .await
        .map_err(db("creating roles"))?;
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
    for state in states {
        match &state.applied_checksum {
            Some(_) if state.is_current() => report.already_applied += 1,
            Some(applied) => {
                return Err(SchemaError::Modified {
                    version: state.migration.version,
                    name: state.migration.name.to_owned(),
                    applied: applied.clone(),
                    current: state.migration.checksum(),
                });
            }
            None => {
                apply(client, &state.migration).await?;
                tracing::info!(migration = state.migration.name, "applied migration");
                report.applied.push(state.migration.name);
            }
        }
    }
    Ok(report)
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

/// The state of every embedded migration in the connected database. Fails when the database
/// has a migration this binary does not know.
pub async fn migration_status(client: &Client) -> Result<Vec<MigrationState>, SchemaError> {
    migration_status_of(client, MIGRATIONS).await
}

/// [`migration_status`] for another migration set.
pub async fn migration_status_of(
    client: &Client,
    set: &'static [Migration],
) -> Result<Vec<MigrationState>, SchemaError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('public.atlas_schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db("reading migration history"))?
        .get(0);
    let applied: Vec<(i32, String, String)> = if exists {
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
    if let Some((version, name, _)) = applied
        .iter()
        .find(|(v, _, _)| !set.iter().any(|m| m.version == *v))
    {
        return Err(SchemaError::Unknown {
            version: *version,
            name: name.clone(),
        });
    }
    Ok(set
        .iter()
        .map(|m| MigrationState {
            migration: *m,
            applied_checksum: applied
                .iter()
                .find(|(v, _, _)| *v == m.version)
                .map(|(_, _, c)| c.clone()),
        })
        .collect())
}
