//! `atlas demo`: a small fleet through the real write path (staging → stage_flush → projection).

use anyhow::{Context, Result};
use atlas_config::Config;
use atlas_store::entities::NewEntity;
use atlas_store::{FlushedEntity, Store, StoreError, TenantId};
use futures_util::FutureExt;
use indicatif::{ProgressBar, ProgressStyle};

/// Demo fleet size.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Entities per tenant.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    entities: i64,
    /// Minutes of history (one reading per attribute per minute).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(i32).range(1..=10_080))]
    minutes: i32,
}

const TENANTS: &[&str] = &["acme", "globex"];

/// (name, data_type, is_hot): one attribute of every type; status, region, priority, online
/// and config are projected into entity_jsonb.
const ATTRIBUTES: &[(&str, &str, bool)] = &[
    ("temperature", "decimal", false),
    ("humidity", "decimal", false),
    ("status", "string", true),
    ("region", "string", true),
    ("priority", "integer", true),
    ("online", "boolean", true),
    ("config", "json", true),
    ("firmware_version", "string", false),
    ("last_service", "date", false),
    ("last_boot", "timestamp", false),
];

const GET_TENANT: &str =
    "SELECT tenant_id FROM public.tenants WHERE tenant_name = $1 ORDER BY tenant_id LIMIT 1";
const ADD_TENANT: &str = "INSERT INTO public.tenants (tenant_name) VALUES ($1) RETURNING tenant_id";
const ADD_ATTRIBUTE: &str = "INSERT INTO public.attributes (attribute_name, data_type, is_hot) VALUES ($1, $2, $3) \
     ON CONFLICT (attribute_name) DO NOTHING";
const COUNT_ENTITIES: &str =
    "SELECT count(*) FROM public.entities WHERE entity_type = 'sensor' AND NOT is_deleted";
const ENTITY_IDS: &str = "SELECT entity_id FROM public.entities WHERE entity_type = 'sensor' AND NOT is_deleted \
     ORDER BY entity_id";

/// One reading per attribute per entity per minute, typed into the column of its data_type.
/// Status changes every 20 minutes, so most hot values repeat (as in real fleets). Every value
/// is a function of the entity and the reading's own minute (`t.am`, minutes since the epoch),
/// so a later run re-stages the same readings with the same values: replays, which store
/// nothing (a different value at a stored time would be refused).
const STAGE_VALUES: &str = r#"
INSERT INTO public.entity_values_ingest (
    entity_id, tenant_id, attribute_id, value, value_int, value_decimal, value_bool,
    value_date, value_timestamp, ingested_at)
SELECT e, $1, a.attribute_id,
       CASE a.attribute_name
           WHEN 'status' THEN (ARRAY['online', 'offline', 'maintenance'])[1 + ((e + t.am / 20) % 3)::int]
           WHEN 'region' THEN (ARRAY['eu-west-1', 'us-east-1', 'ap-south-1'])[1 + (e % 3)::int]
           WHEN 'config' THEN jsonb_build_object('sampling_s', 60, 'unit', 'celsius')::text
           WHEN 'firmware_version' THEN '1.' || (e % 4)::text || '.0'
       END,
       CASE WHEN a.attribute_name = 'priority' THEN e % 10 END,
       CASE a.attribute_name
           WHEN 'temperature' THEN round((20 + 5 * sin(e + t.am / 10.0))::numeric, 2)
           WHEN 'humidity' THEN round((50 + 20 * cos(e + t.am / 15.0))::numeric, 1)
       END,
       CASE WHEN a.attribute_name = 'online' THEN (e + t.am) % 7 <> 0 END,
       CASE WHEN a.attribute_name = 'last_service' THEN (timestamp '2026-01-01' + make_interval(days => (e % 300)::int))::date END,
       CASE WHEN a.attribute_name = 'last_boot' THEN date_trunc('day', t.ts, 'UTC') - make_interval(hours => (e % 48)::int) END,
       t.ts
FROM unnest($3::bigint[]) AS e,
     generate_series(0, $4 - 1) AS m,
     LATERAL (SELECT $2::timestamptz - make_interval(mins => m) AS ts) r,
     LATERAL (SELECT r.ts, (extract(epoch FROM r.ts) / 60)::bigint AS am) t,
     public.attributes a
WHERE a.attribute_name = ANY ($5)
"#;

/// Runs `atlas demo`.
pub async fn run(config: &Config, args: &DemoArgs) -> Result<()> {
    let admin = crate::connect(&crate::stack::admin_url(config)?).await?;
    let store = crate::stack::store(config)?;
    for (name, data_type, hot) in ATTRIBUTES {
        admin
            .execute(ADD_ATTRIBUTE, &[name, data_type, hot])
            .await?;
    }
    let names: Vec<String> = ATTRIBUTES.iter().map(|(n, _, _)| (*n).to_owned()).collect();
    // Whole minutes, so a second run re-stages the same readings (replays store nothing).
    let now = chrono::Utc::now();
    let now = now
        - chrono::Duration::seconds(i64::from(chrono::Timelike::second(&now)))
        - chrono::Duration::nanoseconds(i64::from(chrono::Timelike::nanosecond(&now)));
    // Partitions for the whole history: in a month's first days it reaches into the month
    // before, which a new database does not cover yet.
    let resolved = crate::stack::resolved(config)?;
    atlas_maintain::Maintainer::new(
        store.clone(),
        atlas_maintain::Settings::from_config(&resolved.maintenance),
    )
    .backfill(
        now - chrono::Duration::minutes(i64::from(args.minutes)),
        now,
    )
    .await
    .context("partitions for the demo's history")?;

    let mut staged = 0u64;
    for tenant_name in TENANTS {
        let tenant = match admin.query_opt(GET_TENANT, &[tenant_name]).await? {
            Some(row) => TenantId(row.get(0)),
            None => TenantId(admin.query_one(ADD_TENANT, &[tenant_name]).await?.get(0)),
        };
        // The app role may premake entity partitions before the id sequence reaches them.
        store
            .primary()
            .get()
            .await?
            .execute("SELECT public.ensure_entity_partitions(2)", &[])
            .await?;
        let want = args.entities;
        let ids: Vec<i64> = store
            .with_tenant(tenant, move |tx| {
                async move {
                    let have: i64 = tx.query_one(COUNT_ENTITIES, &[]).await?.get(0);
                    if have < want {
                        // Through the API's own registration (the same statements on a
                        // single node and on Citus).
                        let new: Vec<NewEntity> = (have..want)
                            .map(|_| NewEntity {
                                entity_type: "sensor".into(),
                                cold_attrs: serde_json::json!({}),
                            })
                            .collect();
                        atlas_store::entities::register(tx, tenant, &new).await?;
                    }
                    let rows = tx.query(ENTITY_IDS, &[]).await?;
                    Ok::<_, StoreError>(rows.iter().map(|r| r.get(0)).collect())
                }
                .boxed()
            })
            .await?;
        let client = store.primary().get().await?;
        staged += client
            .execute(
                STAGE_VALUES,
                &[&tenant.0, &now, &ids, &args.minutes, &names],
            )
            .await
            .context("staging demo values")?;
        println!("tenant {tenant_name} (id {tenant}): {} entities", ids.len());
    }

    let bar = ProgressBar::new(staged);
    bar.set_style(
        ProgressStyle::with_template("flushing {bar:40} {pos}/{len} values ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let stored = flush_all(&store, 5_000, Some(&bar)).await?;
    bar.finish_and_clear();
    println!(
        "staged {staged} readings, stored {stored} new values (replays of earlier runs store nothing)"
    );
    Ok(())
}

/// Drains staging, advancing `bar` by the values each batch stored; returns the total stored.
pub async fn flush_all(store: &Store, batch: i32, bar: Option<&ProgressBar>) -> Result<u64> {
    let flushed = store
        .drain_staging(batch, usize::MAX, |b: &[FlushedEntity]| {
            if let Some(bar) = bar {
                bar.inc(b.iter().map(|f| u64::try_from(f.stored).unwrap_or(0)).sum());
            }
        })
        .await?;
    Ok(flushed
        .iter()
        .map(|f| u64::try_from(f.stored).unwrap_or(0))
        .sum())
}
