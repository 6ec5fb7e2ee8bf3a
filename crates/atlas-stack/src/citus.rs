//! Citus in the stack: installing the extension, the server settings every node needs, and
//! making a database of the stack distributed (extension on every node, workers registered
//! with the coordinator).
//!
//! No registry these machines reach ships Citus: Citus's own apt repository has
//! `postgresql-15-citus-13.2`; without it, a build script (such as the one CI is given) builds
//! it from source. [`install`] tries them in that order and otherwise says what to do.

use std::path::{Path, PathBuf};

use crate::process::{Cmd, is_root};
use crate::{Stack, StackError};

/// The extension library PostgreSQL 15 loads.
const CITUS_SO: &str = "/usr/lib/postgresql/15/lib/citus.so";
/// Citus's own Debian package for PostgreSQL 15 (the 13.2 line is the last for 15).
const CITUS_PACKAGE: &str = "postgresql-15-citus-13.2";
/// The environment variable naming a build script (`atlas stack install --citus-build`).
pub const CITUS_BUILD_ENV: &str = "ATLAS_CITUS_BUILD";

/// Settings of every node of a Citus stack (coordinator, its replica, workers).
/// - Citus must be preloaded.
/// - Multi-shard writes commit with two-phase commit: prepared transactions are needed.
/// - A node reaches itself (reference-table copies, shard moves) at `citus.local_hostname`:
///   the address the nodes listen on and the passwords file names, not `localhost`.
///
/// `citus.propagate_set_commands = 'local'` (so `SET LOCAL app.current_tenant_id` reaches the
/// shards) is set by `atlas migrate` on the app login only, not here: server-wide it would
/// also carry the migrator's `SET LOCAL ROLE` onto Citus's own superuser connections.
pub(crate) const SERVER_SETTINGS: &str = "shared_preload_libraries = 'citus'\n\
     max_prepared_transactions = 200\n\
     citus.local_hostname = '127.0.0.1'\n";

/// Whether the Citus extension is installed into PostgreSQL 15.
pub fn citus_installed() -> bool {
    Path::new(CITUS_SO).exists()
}

/// How Citus got installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CitusInstall {
    /// It was there already.
    Present,
    /// From Citus's Debian package.
    Package,
    /// By the given build script.
    Built(PathBuf),
}

/// Installs Citus when it is missing: Citus's Debian package when apt knows it, else the build
/// script (`build_script`, else `$ATLAS_CITUS_BUILD`), else an error saying what to do.
pub fn install(build_script: Option<&Path>) -> Result<CitusInstall, StackError> {
    if citus_installed() {
        return Ok(CitusInstall::Present);
    }
    let script = build_script
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CITUS_BUILD_ENV).map(PathBuf::from));
    if !is_root() {
        return Err(missing(
            "installing it needs root: run `sudo atlas stack install --citus`",
        ));
    }
    if package_available() {
        crate::packages::ensure(&[(CITUS_PACKAGE, CITUS_SO)])?;
        return Ok(CitusInstall::Package);
    }
    match script {
        Some(script) if script.is_file() => {
            Cmd::new("bash")
                .arg(script.to_string_lossy().as_ref())
                .run(&format!("building Citus with {}", script.display()))?;
            if citus_installed() {
                Ok(CitusInstall::Built(script))
            } else {
                Err(missing(&format!(
                    "{} ran but {CITUS_SO} is still missing",
                    script.display()
                )))
            }
        }
        Some(script) => Err(missing(&format!(
            "the build script {} does not exist",
            script.display()
        ))),
        None => Err(missing(&format!(
            "apt knows no {CITUS_PACKAGE}: add Citus's apt repository \
             (https://install.citusdata.com/community/deb.sh) and run `atlas stack install --citus` \
             again, or pass a build script with --citus-build PATH (or {CITUS_BUILD_ENV})"
        ))),
    }
}

/// Fails with the way to install Citus when it is missing.
pub(crate) fn ensure_installed() -> Result<(), StackError> {
    if citus_installed() {
        Ok(())
    } else {
        Err(missing("run `atlas stack install --citus` first"))
    }
}

fn missing(how: &str) -> StackError {
    StackError::CitusMissing {
        how: how.to_owned(),
    }
}

/// Whether apt has a candidate for Citus's package (only with Citus's repository added).
fn package_available() -> bool {
    Cmd::new("apt-cache")
        .args(["policy", CITUS_PACKAGE])
        .output_quiet()
        .is_ok_and(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            text.lines()
                .any(|l| l.trim().starts_with("Candidate:") && !l.contains("(none)"))
        })
}

/// Creates the database `:'db'` unless it exists (run in `postgres`; a psql variable, quoted
/// by PostgreSQL's `format`).
const CREATE_DATABASE: &str = "SELECT format('CREATE DATABASE %I', :'db') \
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \\gexec\n";
/// Creates the extension in the database the script runs in.
const CREATE_EXTENSION: &str = "CREATE EXTENSION IF NOT EXISTS citus;\n";
/// On the coordinator: the extension, and the coordinator itself registered (group 0), so
/// reference tables get a copy there. `:'port'` is the coordinator's port (a psql variable).
const SETUP_COORDINATOR: &str = "CREATE EXTENSION IF NOT EXISTS citus;\n\
SELECT citus_set_coordinator_host('127.0.0.1', :'port'::integer) \
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_node WHERE groupid = 0);\n";
/// On the coordinator: registers the worker on `:'port'` unless it is.
const ADD_WORKER: &str = "SELECT citus_add_node('127.0.0.1', :'port'::integer) \
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_node WHERE nodename = '127.0.0.1' AND nodeport = :'port'::integer);\n";

impl Stack {
    /// Makes `database` a Citus database of this stack: created on every worker, the
    /// extension on every node, the coordinator and the workers registered (each step skipped
    /// when done). The coordinator's database must exist. The one place a database becomes
    /// distributed: `stack up` (for `atlas`), the test kit's templates, the benchmarks.
    pub fn citus_setup(&self, database: &str) -> Result<(), StackError> {
        for port in &self.spec.workers {
            self.citus_worker_database(*port, database)?;
        }
        let coordinator = self.spec.pg_port.to_string();
        self.psql_script(
            self.spec.pg_port,
            database,
            SETUP_COORDINATOR,
            &[("port", &coordinator)],
        )?;
        for port in &self.spec.workers {
            let port = port.to_string();
            self.psql_script(self.spec.pg_port, database, ADD_WORKER, &[("port", &port)])?;
        }
        Ok(())
    }

    /// Creates `database` with the citus extension on the node listening on `port`, unless
    /// there: what a worker needs before a coordinator registers it.
    pub fn citus_worker_database(&self, port: u16, database: &str) -> Result<(), StackError> {
        self.psql_script(port, "postgres", CREATE_DATABASE, &[("db", database)])?;
        self.psql_script(port, database, CREATE_EXTENSION, &[])
    }

    /// Creates and starts one more Citus worker on `port` (data in `worker-<port>`);
    /// registering it with a database's coordinator is the caller's (`atlas cluster
    /// add-worker`). Stopped by `down` like the others.
    pub fn up_extra_worker(&self, port: u16) -> Result<PathBuf, StackError> {
        let data = self.extra_worker_dir(port);
        self.up_server(&data, port, &format!("worker-{port}"))?;
        Ok(data)
    }

    /// Data directory of an extra worker (see [`Stack::up_extra_worker`]).
    pub fn extra_worker_dir(&self, port: u16) -> PathBuf {
        self.state.pg_root.join(format!("worker-{port}"))
    }

    /// Runs a constant SQL script in `database` on `port` with psql variables (psql
    /// interpolates them in scripts, never in `-c`; the script's text never holds a value).
    fn psql_script(
        &self,
        port: u16,
        database: &str,
        sql: &str,
        vars: &[(&str, &str)],
    ) -> Result<(), StackError> {
        let file = self
            .spec
            .dir
            .join(format!("setup-{}.sql", crate::random_secret()));
        std::fs::write(&file, sql).map_err(crate::io(&file))?;
        crate::process::chown_to_postgres(&file)?;
        let mut cmd = self
            .pg(&format!("{}/psql", crate::PG_BIN))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-d", database]);
        for (name, value) in vars {
            cmd = cmd.args(["-v", &format!("{name}={value}")]);
        }
        let result = cmd
            .args(["-f", &file.to_string_lossy()])
            .run("setting up Citus");
        let _ = std::fs::remove_file(&file);
        result.map(|_| ())
    }
}
