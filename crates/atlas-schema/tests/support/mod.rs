//! Fixtures shared by the schema tests.

use atlas_testkit::TestDb;
use tokio_postgres::Client;

/// Two tenants with entities, and one attribute of each kind the tests need.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    pub tenant_a: i64,
    pub tenant_b: i64,
    /// Entities of tenant A.
    pub a1: i64,
    pub a2: i64,
    /// Entity of tenant B.
    pub b1: i64,
    /// decimal, cold.
    pub temperature: i64,
    /// string, hot.
    pub status: i64,
    /// integer, hot.
    pub priority: i64,
}

async fn add_attribute(admin: &Client, name: &str, data_type: &str, hot: bool) -> i64 {
    admin
        .query_one(
            "INSERT INTO attributes (attribute_name, data_type, is_hot) VALUES ($1, $2, $3) RETURNING attribute_id",
            &[&name, &data_type, &hot],
        )
        .await
        .unwrap_or_else(|e| panic!("attribute {name}: {e}"))
        .get(0)
}

/// Creates entities for `tenant` as the app role, inside that tenant's context.
pub async fn add_entities(app: &mut Client, tenant: i64, n: i64) -> Vec<i64> {
    let tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    set_tenant(&tx, tenant).await;
    let rows = tx
        .query(
            "INSERT INTO entities (tenant_id, entity_type) SELECT $1, 'sensor' FROM generate_series(1, $2::bigint) RETURNING entity_id",
            &[&tenant, &n],
        )
        .await
        .unwrap_or_else(|e| panic!("entities: {e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    ids
}

/// Today (UTC) at `hms` (RFC 3339): always inside the partitions the migrations create, whenever
/// the tests run (a fixed date falls out of them within months). The day is taken once per
/// run, so a test running across midnight keeps its times in order.
pub fn at(hms: &str) -> String {
    static DAY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let day = DAY.get_or_init(|| chrono::Utc::now().format("%Y-%m-%d").to_string());
    format!("{day}T{hms}Z")
}

/// An entity's projected hot attributes (read as the superuser).
pub async fn hot_attrs(db: &TestDb, entity: i64) -> serde_json::Value {
    db.admin()
        .await
        .query_one(
            "SELECT hot_attrs FROM entity_jsonb WHERE entity_id = $1",
            &[&entity],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0)
}

/// Sets the tenant context for the current transaction.
pub async fn set_tenant(client: &impl tokio_postgres::GenericClient, tenant: i64) {
    client
        .execute(
            "SELECT set_config('app.current_tenant_id', $1, true)",
            &[&tenant.to_string()],
        )
        .await
        .unwrap_or_else(|e| panic!("set tenant: {e}"));
}

pub async fn fleet(db: &TestDb) -> Fleet {
    let admin = db.admin().await;
    let tenant = |name: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query_one(
                    "INSERT INTO tenants (tenant_name) VALUES ($1) RETURNING tenant_id",
                    &[&name],
                )
                .await
                .unwrap_or_else(|e| panic!("tenant: {e}"))
                .get::<_, i64>(0)
        }
    };
    let tenant_a = tenant("tenant-a").await;
    let tenant_b = tenant("tenant-b").await;
    let temperature = add_attribute(&admin, "temperature", "decimal", false).await;
    let status = add_attribute(&admin, "status", "string", true).await;
    let priority = add_attribute(&admin, "priority", "integer", true).await;
    let mut app = db.app().await;
    let a = add_entities(&mut app, tenant_a, 2).await;
    let b = add_entities(&mut app, tenant_b, 1).await;
    Fleet {
        tenant_a,
        tenant_b,
        a1: a[0],
        a2: a[1],
        b1: b[0],
        temperature,
        status,
        priority,
    }
}

/// Stages one integer/decimal/string reading (exactly one value column set) as the app role.
pub async fn stage(
    app: &Client,
    tenant: i64,
    entity: i64,
    attribute: i64,
    value: Value<'_>,
    at: &str,
) {
    let at: chrono::DateTime<chrono::Utc> = at.parse().unwrap_or_else(|e| panic!("{at}: {e}"));
    let (text, int, dec): (Option<&str>, Option<i64>, Option<String>) = match value {
        Value::Text(t) => (Some(t), None, None),
        Value::Int(i) => (None, Some(i), None),
        Value::Decimal(d) => (None, None, Some(d.to_owned())),
    };
    app.execute(
        "INSERT INTO entity_values_ingest (tenant_id, entity_id, attribute_id, value, value_int, value_decimal, ingested_at) \
         VALUES ($1, $2, $3, $4, $5, $6::text::numeric, $7)",
        &[&tenant, &entity, &attribute, &text, &int, &dec, &at],
    )
    .await
    .unwrap_or_else(|e| panic!("staging: {e}"));
}

/// A staged value.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Text(&'a str),
    Int(i64),
    Decimal(&'a str),
}

/// Calls stage_flush until staging is empty; returns the values stored.
pub async fn flush(app: &Client) -> i64 {
    let mut stored = 0;
    loop {
        let n: Option<i64> = app
            .query_one("SELECT sum(stored)::bigint FROM stage_flush(10000)", &[])
            .await
            .unwrap_or_else(|e| panic!("stage_flush: {e}"))
            .get(0);
        let left: i64 = app
            .query_one("SELECT backlog FROM staging_stats(1)", &[])
            .await
            .unwrap_or_else(|e| panic!("staging_stats: {e}"))
            .get(0);
        stored += n.unwrap_or(0);
        if left == 0 {
            return stored;
        }
    }
}

/// The SQLSTATE of an error, as its five-character code.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}
