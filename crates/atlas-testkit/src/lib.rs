//! Test support: one private stack (PostgreSQL primary + streaming replica + Redis) per test
//! run, and one database per test, cloned from a template migrated once per schema version.
//!
//! The stack lives in `$ATLAS_TEST_STACK_DIR` (default `target/atlas-test-stack`) on the test
//! ports of [`StackSpec::test`]. Test processes share it; a file lock makes exactly one of them
//! bring it up and build the template. `scripts/test` stops it at the end of the run.
#![allow(
    clippy::panic,
    reason = "a failed setup fails the test that asked for it"
)]

pub mod api;
pub mod browser;
pub mod proxy;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use atlas_schema::{AppLogin, migrate, schema_fingerprint};
pub use atlas_stack::{HaNode, HaSpec, HaStack, Stack, StackSpec, StackUrls};
use atlas_store::Store;
use tokio_postgres::Client;

/// The shared stack and the name of the migrated template database.
#[derive(Debug)]
pub struct Cluster {
    /// The running stack.
    pub stack: Stack,
    /// Template database every test database is cloned from.
    pub template: String,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a statement that PostgreSQL builds from bound identifiers with `format(%I)`.
const CREATE_DB: &str =
    "SELECT format('CREATE DATABASE %I TEMPLATE %I OWNER atlas_owner', $1::text, $2::text)";
const CREATE_EMPTY_DB: &str = "SELECT format('CREATE DATABASE %I', $1::text)";
const DROP_DB: &str = "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', $1::text)";
const RENAME_DB: &str = "SELECT format('ALTER DATABASE %I RENAME TO %I', $1::text, $2::text)";

/// Whether this test run targets the Citus stack (`ATLAS_TEST_CITUS=1`): a coordinator and two
/// workers instead of a single primary, the same tests.
pub fn citus() -> bool {
    std::env::var("ATLAS_TEST_CITUS").is_ok_and(|v| v == "1")
}

fn stack_dir() -> PathBuf {
    let (var, default) = if citus() {
        ("ATLAS_TEST_CITUS_STACK_DIR", "atlas-citus-stack/citus")
    } else {
        ("ATLAS_TEST_STACK_DIR", "atlas-test-stack")
    };
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).join(default)
    })
}

/// The stack of this run's mode.
fn test_spec(dir: &std::path::Path) -> StackSpec {
    if citus() {
        StackSpec::citus_test(dir)
    } else {
        StackSpec::test(dir)
    }
}

/// Every PostgreSQL node a database of the stack lives on: the primary (the Citus coordinator)
/// and the Citus workers.
fn node_ports(stack: &Stack) -> Vec<u16> {
    std::iter::once(stack.spec().pg_port)
        .chain(stack.spec().workers.iter().copied())
        .collect()
}

/// Superuser connection to the `postgres` database of each node.
async fn node_admins(stack: &Stack) -> Result<Vec<Client>, String> {
    let mut admins = Vec::new();
    for port in node_ports(stack) {
        admins.push(
            connect(&stack.admin_url_at(port, "postgres"))
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(admins)
}

/// The shared cluster, brought up (and the template built) on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| init().unwrap_or_else(|e| panic!("test stack setup failed: {e}")))
}

fn init() -> Result<Cluster, String> {
    let dir = stack_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lock_path = dir.join(".setup.lock");
    let lock =
        std::fs::File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    let stack = Stack::up(&test_spec(&dir)).map_err(|e| e.to_string())?;
    let template = format!("atlas_tpl_{}", schema_fingerprint());
    let (s, t) = (stack.clone(), template.clone());
    // Build on a thread with its own runtime: callers may be inside a tokio runtime already.
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(build_template(&s, &t))
    })
    .join()
    .map_err(|_| "template builder panicked".to_owned())??;
    drop(lock);
    Ok(Cluster { stack, template })
}

async fn build_template(stack: &Stack, template: &str) -> Result<(), String> {
    let admin = connect(&stack.urls_for("postgres").admin_database_url)
        .await
        .map_err(|e| e.to_string())?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
        .await
        .map_err(|e| e.to_string())?
        .is_some();
    if exists {
        return Ok(());
    }
    let building = format!("{template}_build");
    let admins = node_admins(stack).await?;
    for node in &admins {
        generated(node, DROP_DB, &[&building]).await?;
    }
    generated(&admin, CREATE_EMPTY_DB, &[&building]).await?;
    if stack.spec().is_citus() {
        let (s, b) = (stack.clone(), building.clone());
        tokio::task::spawn_blocking(move || s.citus_setup(&b))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    {
        let mut db = connect(&stack.urls_for(&building).admin_database_url)
            .await
            .map_err(|e| e.to_string())?;
        let login = AppLogin {
            user: atlas_schema::APP_ROLE.to_owned(),
            password: stack.app_password().to_owned(),
        };
        migrate(&mut db, Some(&login))
            .await
            .map_err(|e| e.to_string())?;
    }
    // The migrating connection must be gone before the database can be renamed or cloned.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for node in &admins {
        seal_template(node, &building).await?;
        generated(node, RENAME_DB, &[&building, &template]).await?;
    }
    Ok(())
}

/// Ends every session in `database` and lets no new one in, so it can be renamed and used as
/// a template: Citus keeps a maintenance daemon connected to each of its databases, which
/// starts again only when a session opens there.
async fn seal_template(node: &Client, database: &str) -> Result<(), String> {
    node.execute(
        "UPDATE pg_database SET datallowconn = false WHERE datname = $1",
        &[&database],
    )
    .await
    .map_err(|e| e.to_string())?;
    node.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        &[&database],
    )
    .await
    .map_err(|e| e.to_string())?;
    for _ in 0..100 {
        let left: i64 = node
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&database],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if left == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("sessions in {database} did not end"))
}

async fn generated(
    client: &Client,
    generator: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<(), String> {
    let row = client
        .query_one(generator, params)
        .await
        .map_err(|e| e.to_string())?;
    let statement: String = row.get(0);
    client
        .batch_execute(&statement)
        .await
        .map_err(|e| e.to_string())
}

pub use atlas_store::connect;

/// The analytics-store database a test names for `database` ([`TestDb`] drops it).
pub fn analytics_name_for(database: &str) -> String {
    format!("{database}_an")
}

/// The logical slot a test names for `database` (slots of a [`TestDb`] are dropped with it).
pub fn slot_name_for(database: &str) -> String {
    format!("{database}_slot")
}

/// A database of its own for one test, dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDb {
    /// Database name.
    pub name: String,
    /// URLs for this database.
    pub urls: StackUrls,
}

impl TestDb {
    /// Clones the migrated template into a fresh database.
    pub async fn new() -> Self {
        let cluster = cluster();
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        // On Citus, each node's database is cloned from that node's template: the coordinator's
        // metadata names shards the workers' clones hold under the same names.
        for node in node_admins(&cluster.stack)
            .await
            .unwrap_or_else(|e| panic!("connecting as admin: {e}"))
        {
            generated(&node, CREATE_DB, &[&name, &cluster.template])
                .await
                .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        }
        let urls = cluster.stack.urls_for(&name);
        // Citus records the database itself as a distributed object (the migrator's ALTER
        // DATABASE … OWNER): a clone's record still names the template, which a node added
        // later would be asked to have. Point it at the clone, on every node.
        if cluster.stack.spec().is_citus() {
            for port in node_ports(&cluster.stack) {
                connect(&cluster.stack.admin_url_at(port, &name))
                    .await
                    .unwrap_or_else(|e| panic!("connecting to {name}: {e}"))
                    .batch_execute(
                        "UPDATE pg_catalog.pg_dist_object SET objid = \
                         (SELECT oid FROM pg_database WHERE datname = current_database()) \
                         WHERE classid = 'pg_catalog.pg_database'::regclass",
                    )
                    .await
                    .unwrap_or_else(|e| panic!("the database object of {name}: {e}"));
            }
        }
        // The template's partitions start at the month it was migrated in (it is kept across
        // runs of one schema): cover yesterday's month and two after it, so readings a few
        // hours old are stored in a month's first hours too.
        connect(&urls.admin_database_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {name}: {e}"))
            .batch_execute("SELECT public.ensure_ts_partitions(now() - interval '1 day', 2)")
            .await
            .unwrap_or_else(|e| panic!("partitions of {name}: {e}"));
        Self { name, urls }
    }

    /// An empty database (no schema, no roles' grants) beside this one, dropped when the value
    /// is dropped: for tests of the migrator itself.
    pub async fn empty_sibling(&self, suffix: &str) -> TestDb {
        let name = format!("{}_{suffix}", self.name);
        let admin = connect(&cluster().stack.urls_for("postgres").admin_database_url)
            .await
            .unwrap_or_else(|e| panic!("connecting as admin: {e}"));
        generated(&admin, CREATE_EMPTY_DB, &[&name])
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
        let urls = cluster().stack.urls_for(&name);
        TestDb { name, urls }
    }

    /// A superuser connection to this database.
    pub async fn admin(&self) -> Client {
        connect(&self.urls.admin_database_url)
            .await
            .unwrap_or_else(|e| panic!("admin connection: {e}"))
    }

    /// [`scalar`] as the superuser on this database.
    pub async fn scalar(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> i64 {
        scalar(&self.admin().await, sql, params).await
    }

    /// The ports of the Citus workers this database lives on (none on a single node).
    pub fn worker_ports(&self) -> Vec<u16> {
        cluster().stack.spec().workers.clone()
    }

    /// A superuser connection to this database on the node listening on `port`.
    pub async fn admin_at(&self, port: u16) -> Client {
        connect(&cluster().stack.admin_url_at(port, &self.name))
            .await
            .unwrap_or_else(|e| panic!("admin connection to port {port}: {e}"))
    }

    /// An `atlas_app` connection to this database on the node listening on `port`.
    pub async fn app_at(&self, port: u16) -> Client {
        connect(&cluster().stack.app_url_at(port, &self.name))
            .await
            .unwrap_or_else(|e| panic!("app connection to port {port}: {e}"))
    }

    /// An `atlas_app` connection to the primary.
    pub async fn app(&self) -> Client {
        connect(&self.urls.database_url)
            .await
            .unwrap_or_else(|e| panic!("app connection: {e}"))
    }

    /// An `atlas_app` connection to the replica, once the new database has been replayed there.
    pub async fn replica(&self) -> Client {
        let url = &self.urls.replica_urls[0];
        let mut last = String::new();
        for _ in 0..100 {
            match connect(url).await {
                Ok(c) => return c,
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("replica connection: {last}")
    }

    /// Name of this test's analytics-store database (dropped with the test database).
    pub fn analytics_name(&self) -> String {
        analytics_name_for(&self.name)
    }

    /// Name of this test's logical slot (dropped with the test database).
    pub fn slot_name(&self) -> String {
        slot_name_for(&self.name)
    }

    /// Pools for the app role (primary + replica) with `size` connections each.
    pub fn store(&self, size: usize) -> Store {
        Store::connect(&self.urls.database_url, &self.urls.replica_urls, size)
            .unwrap_or_else(|e| panic!("store: {e}"))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let url = cluster().stack.urls_for("postgres").admin_database_url;
        let stack = cluster().stack.clone();
        // Drop needs async I/O; do it on a thread with its own runtime and wait for it.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    if let Ok(admin) = connect(&url).await {
                        // A logical slot keeps its database from being dropped (and would
                        // retain WAL for ever): end its reader, drop it, then the databases.
                        let _ = admin
                            .execute(
                                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                                 WHERE database = $1 AND active_pid IS NOT NULL",
                                &[&name],
                            )
                            .await;
                        for _ in 0..50 {
                            let _ = atlas_store::cluster::drop_idle_slots_of(&admin, &name).await;
                            let left = admin
                                .query_one(
                                    "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
                                    &[&name],
                                )
                                .await
                                .map(|r| r.get::<_, i64>(0))
                                .unwrap_or(0);
                            if left == 0 {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        let _ = generated(&admin, DROP_DB, &[&analytics_name_for(&name)]).await;
                        // The coordinator first: its sessions hold connections to the workers.
                        let _ = generated(&admin, DROP_DB, &[&name]).await;
                        if let Ok(nodes) = node_admins(&stack).await {
                            for node in nodes.iter().skip(1) {
                                let _ = generated(node, DROP_DB, &[&name]).await;
                            }
                        }
                    }
                });
            }
        })
        .join();
    }
}

/// Creates a physical slot that reserves WAL and that nothing consumes - what a stopped
/// consumer leaves behind - and returns its name. Physical slots belong to no database, so
/// [`TestDb`] does not drop them: the caller does.
pub async fn create_idle_slot(admin: &Client, name: &str) -> String {
    admin
        .query_one(
            "SELECT pg_create_physical_replication_slot($1, true)",
            &[&name],
        )
        .await
        .unwrap_or_else(|e| panic!("slot {name}: {e}"));
    name.to_owned()
}

/// A free loopback port (for a server or Redis of a test's own).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The one `bigint` a query answers (a count, an id); a failure panics naming the query.
pub async fn scalar(
    client: &impl tokio_postgres::GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    client
        .query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// The first column of every row a query answers; a failure panics naming the query.
pub async fn column<T>(
    client: &impl tokio_postgres::GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A small deterministic generator (xorshift) for test data, so a failure can be replayed
/// from its seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits (the seed must not be 0).
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> i64 {
        i64::try_from(self.next_u64() % n.max(1)).unwrap_or(0)
    }
}
