//! Helpers of the process-level tests: the `atlas serve` child, a fleet made through the API,
//! and private stacks for tests that stop or pause a database.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use atlas_testkit::{Stack, StackSpec, StackUrls, connect};
use serde_json::json;

pub const ADMIN: &str = "fault-test-admin-token-0123";

pub use atlas_testkit::free_port;

/// `atlas` against a test database: every URL from the environment, no stack directory.
pub fn atlas_for(db: &atlas_testkit::TestDb) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_atlas"));
    c.env("ATLAS_ADMIN_DATABASE_URL", &db.urls.admin_database_url)
        .env("ATLAS_DATABASE_URL", &db.urls.database_url)
        .env("ATLAS_REPLICA_URLS", db.urls.replica_urls.join(","))
        .env("ATLAS_REDIS_URL", &db.urls.redis_url)
        .env("ATLAS_STACK_DIR", "/nonexistent-atlas-stack")
        .env("ATLAS_LOG", "warn");
    c
}

pub struct Serve {
    pub child: Child,
    pub base: String,
}

impl Serve {
    /// Starts `atlas serve` against a database (and replicas); waits until it answers.
    pub async fn start(database_url: &str, replica_urls: &[String], redis_url: &str) -> Serve {
        Self::start_with(database_url, replica_urls, redis_url, &[]).await
    }

    /// [`Serve::start`] with more environment (e.g. `ATLAS_CONFIG`).
    pub async fn start_with(
        database_url: &str,
        replica_urls: &[String],
        redis_url: &str,
        env: &[(&str, &str)],
    ) -> Serve {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_atlas"))
            .arg("serve")
            .envs(env.iter().copied())
            .env("ATLAS_DATABASE_URL", database_url)
            .env("ATLAS_REPLICA_URLS", replica_urls.join(","))
            .env("ATLAS_REDIS_URL", redis_url)
            .env("ATLAS_LISTEN", format!("127.0.0.1:{port}"))
            .env("ATLAS_ADMIN_TOKEN", ADMIN)
            .env("ATLAS_STACK_DIR", "/nonexistent-atlas-stack")
            .env("ATLAS_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn atlas serve: {e}"));
        // Owned by the guard from here on, so it is killed and reaped on every path.
        let serve = Serve {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        for _ in 0..100 {
            if http
                .get(format!("{}/healthz", serve.base))
                .send()
                .await
                .is_ok()
            {
                return serve;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("atlas serve did not start");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Defines `priority`, creates a tenant with a key and `n` entities (through the API).
pub async fn fleet(base: &str, n: usize) -> (String, Vec<i64>) {
    let api = atlas_testkit::api::Api::new(base, ADMIN);
    api.define(json!({"attribute_name": "priority", "data_type": "integer", "is_hot": true}))
        .await;
    let (_, key) = api.tenant("faulty").await;
    let ids = api.entities(&key, n).await;
    (key, ids)
}

/// Brings up a private stack in `target/<dir>` on `(primary, replica, redis)` ports and a
/// fresh, migrated database `<prefix>_<pid>` on it. Returns the spec too, to take it down.
pub async fn private_stack(
    dir: &str,
    ports: (u16, u16, u16),
    prefix: &str,
) -> (Stack, StackUrls, StackSpec) {
    let dir =
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).join(dir);
    let spec = StackSpec {
        pg_port: ports.0,
        replica_port: ports.1,
        redis_port: ports.2,
        ..StackSpec::test(&dir)
    };
    let up = spec.clone();
    let stack = tokio::task::spawn_blocking(move || Stack::up(&up))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("private stack: {e}"));
    let name = format!("{prefix}_{}", std::process::id());
    migrated_database(
        &stack.urls_for("postgres").admin_database_url,
        &name,
        stack.app_password(),
    )
    .await;
    let urls = stack.urls_for(&name);
    (stack, urls, spec)
}

/// Creates the database `name` afresh (dropping a left-over one) through `admin_url` (a
/// superuser URL of the cluster's `postgres` database) and migrates it, the app login's
/// password set to `app_password`.
pub async fn migrated_database(admin_url: &str, name: &str, app_password: &str) {
    let admin = connect(admin_url).await.unwrap_or_else(|e| panic!("{e}"));
    for generator in [
        "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', $1::text)",
        "SELECT format('CREATE DATABASE %I', $1::text)",
    ] {
        let stmt: String = admin
            .query_one(generator, &[&name])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        admin
            .batch_execute(&stmt)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let url = atlas_cdc::with_database(admin_url, name).unwrap_or_else(|e| panic!("{e}"));
    let mut db_admin = connect(&url).await.unwrap_or_else(|e| panic!("{e}"));
    let login = atlas_schema::AppLogin {
        user: "atlas_app".into(),
        password: app_password.to_owned(),
    };
    atlas_schema::migrate(&mut db_admin, Some(&login))
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
}
