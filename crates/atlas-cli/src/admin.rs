//! `atlas serve` and the admin verbs (`tenant`, `key`, `attribute`): the same operations as the
//! admin API, run directly against the database as the app role.

use std::time::Duration;

use anyhow::{Context, Result};
use atlas_config::Config;
use atlas_store::admin::{AttributeSpec, AttributeUpdate, DataType};
use clap::Subcommand;

/// `atlas tenant …`
#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant.
    Create {
        /// Unique name.
        name: String,
    },
    /// List tenants.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Deactivate a tenant (its keys get 403).
    Deactivate {
        /// Tenant name or id.
        tenant: String,
    },
    /// Reactivate a tenant.
    Activate {
        /// Tenant name or id.
        tenant: String,
    },
    /// Show or change a tenant's retention and quotas (0: keep for ever / no limit). Servers
    /// apply a change within a second.
    Limits {
        /// Tenant name or id.
        tenant: String,
        /// Set a limit for this tenant: `NAME=VALUE` (raw_days, rollup_1m_days,
        /// rollup_1h_days, rollup_1d_days, dead_letter_days, max_entities,
        /// max_values_per_day, max_stored_values); repeatable.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Return a limit to the server's default; repeatable.
        #[arg(long = "reset", value_name = "NAME")]
        reset: Vec<String>,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// On Citus: put a big tenant on a shard of its own (`isolate_tenant_to_new_shard`).
    Isolate {
        /// Tenant name or id.
        tenant: String,
    },
}

/// `atlas key …`
#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Issue an API key for a tenant; the key is printed once.
    Create {
        /// Tenant name or id.
        #[arg(long)]
        tenant: String,
        /// A label for the key (which gateway or team holds it).
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List a tenant's keys.
    List {
        /// Tenant name or id.
        #[arg(long)]
        tenant: String,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key.
    Revoke {
        /// Tenant name or id.
        #[arg(long)]
        tenant: String,
        /// Key id.
        key_id: i64,
    },
}

/// `atlas attribute …`
#[derive(Debug, Subcommand)]
pub enum AttributeCmd {
    /// Define an attribute.
    Define {
        /// Unique name.
        name: String,
        /// string, integer, decimal, boolean, date, timestamp or json.
        #[arg(long = "type")]
        data_type: String,
        /// Project into the searchable document.
        #[arg(long)]
        hot: bool,
        /// Mark for indexing.
        #[arg(long)]
        indexed: bool,
        /// Regex for string values.
        #[arg(long)]
        regex: Option<String>,
        /// Decimal attributes: round to 5 fraction digits instead of refusing.
        #[arg(long)]
        allow_rounding: bool,
    },
    /// List the catalogue.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change an attribute.
    Update {
        /// Attribute name or id.
        attribute: String,
        /// New is_hot (turning it on backfills every entity's projection).
        #[arg(long)]
        hot: Option<bool>,
        /// New is_indexed.
        #[arg(long)]
        indexed: Option<bool>,
        /// New regex (empty string removes it).
        #[arg(long)]
        regex: Option<String>,
        /// New allow_rounding (decimal attributes).
        #[arg(long)]
        allow_rounding: Option<bool>,
    },
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints a list as one JSON array (`json`), or as a table: `row` gives each item's cells
/// under `header`.
pub(crate) fn print_list<T: serde::Serialize>(
    json: bool,
    items: &[T],
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    if json {
        return print_json(&items);
    }
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    print_table(header, &rows);
    Ok(())
}

/// Prints rows under a header, each column as wide as its widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// A tenant named by its id or its name (digits are an id first, then a name).
pub(crate) async fn resolve_tenant(
    store: &atlas_store::Store,
    tenant: &str,
) -> Result<atlas_store::admin::Tenant> {
    let by_id = match tenant.parse::<i64>() {
        Ok(id) => store.get_tenant(id).await?,
        Err(_) => None,
    };
    let found = match by_id {
        Some(t) => Some(t),
        None => store.get_tenant_by_name(tenant).await?,
    };
    found.with_context(|| format!("no tenant `{tenant}` (see `atlas tenant list`)"))
}

/// An attribute named by its id or its name.
async fn resolve_attribute(
    store: &atlas_store::Store,
    attribute: &str,
) -> Result<atlas_store::admin::Attribute> {
    let all = store.list_attributes().await?;
    let id = attribute.parse::<i64>().ok();
    all.into_iter()
        .find(|a| Some(a.attribute_id) == id || a.attribute_name == attribute)
        .with_context(|| format!("no attribute `{attribute}` (see `atlas attribute list`)"))
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Runs a tenant verb.
pub async fn tenant(config: &Config, cmd: TenantCmd) -> Result<()> {
    let store = crate::stack::store(config)?;
    match cmd {
        TenantCmd::Create { name } => print_json(&store.create_tenant(&name).await?),
        TenantCmd::List { json } => {
            let mut all = Vec::new();
            let mut after = 0;
            loop {
                let page = store.list_tenants(after, 1000).await?;
                let last = page.last().map(|t| t.tenant_id);
                let full = page.len() == 1000;
                all.extend(page);
                match last {
                    Some(id) if full => after = id,
                    _ => break,
                }
            }
            print_list(json, &all, &["ID", "NAME", "STATE", "CREATED"], |t| {
                vec![
                    t.tenant_id.to_string(),
                    t.tenant_name.clone(),
                    if t.is_active { "active" } else { "deactivated" }.to_owned(),
                    time(t.created_at),
                ]
            })
        }
        TenantCmd::Deactivate { tenant } => set_active(&store, &tenant, false).await,
        TenantCmd::Activate { tenant } => set_active(&store, &tenant, true).await,
        TenantCmd::Limits {
            tenant,
            set,
            reset,
            json,
        } => limits(config, &store, &tenant, &set, &reset, json).await,
        TenantCmd::Isolate { tenant } => {
            let id = resolve_tenant(&store, &tenant).await?.tenant_id;
            crate::cluster::isolate_tenant(config, id).await
        }
    }
}

/// `atlas tenant limits`: applies `--set`/`--reset` (if any), then shows every limit, its
/// value and whether the tenant set it.
async fn limits(
    config: &Config,
    store: &atlas_store::Store,
    tenant: &str,
    set: &[String],
    reset: &[String],
    json: bool,
) -> Result<()> {
    use atlas_store::limits::{Change, Limit};
    let id = resolve_tenant(store, tenant).await?.tenant_id;
    let mut change = Change::default();
    for s in set {
        let (name, value) = s
            .split_once('=')
            .with_context(|| format!("--set {s}: expected NAME=VALUE"))?;
        let limit: Limit = name.trim().parse().map_err(anyhow::Error::msg)?;
        let value: i64 = value
            .trim()
            .parse()
            .ok()
            .filter(|v| (0..=limit.largest()).contains(v))
            .with_context(|| {
                format!(
                    "--set {s}: the value must be a whole number from 0 to {}",
                    limit.largest()
                )
            })?;
        change.0[limit as usize] = Some(Some(value));
    }
    for name in reset {
        let limit: Limit = name.trim().parse().map_err(anyhow::Error::msg)?;
        change.0[limit as usize] = Some(None);
    }
    let overrides = if set.is_empty() && reset.is_empty() {
        store
            .tenant_overrides(id)
            .await?
            .context("no such tenant")?
    } else {
        store.change_limits(id, &change).await?
    };
    let effective = overrides.effective(&atlas_maintain::limit_defaults(
        &config.maintenance,
        &config.lifecycle,
    ));
    if json {
        // The admin API's document, so both say a tenant's limits the same way.
        return print_json(&atlas_api::routes::limits::TenantLimits {
            tenant_id: id,
            limits: effective.into(),
            overrides: overrides.into(),
        });
    }
    print_table(
        &["LIMIT", "VALUE", "SOURCE"],
        &Limit::ALL
            .iter()
            .map(|l| {
                let v = effective.get(*l);
                vec![
                    l.as_str().to_owned(),
                    if v == 0 {
                        if l.is_days() { "for ever" } else { "none" }.to_owned()
                    } else {
                        v.to_string()
                    },
                    if overrides.0[*l as usize].is_some() {
                        "tenant"
                    } else {
                        "default"
                    }
                    .to_owned(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    Ok(())
}

async fn set_active(store: &atlas_store::Store, tenant: &str, active: bool) -> Result<()> {
    let id = resolve_tenant(store, tenant).await?.tenant_id;
    print_json(
        &store
            .set_tenant_active(id, active)
            .await?
            .context("no such tenant")?,
    )
}

/// Runs a key verb.
pub async fn key(config: &Config, cmd: KeyCmd) -> Result<()> {
    let store = crate::stack::store(config)?;
    match cmd {
        KeyCmd::Create { tenant, name } => {
            let t = resolve_tenant(&store, &tenant).await?;
            let key = store.issue_api_key(t.tenant_id, &name).await?;
            eprintln!(
                "key {} issued for tenant {} ({}); it is shown only now:",
                key.key_id, t.tenant_name, t.tenant_id
            );
            println!("{}", key.secret);
            Ok(())
        }
        KeyCmd::List { tenant, json } => {
            let t = resolve_tenant(&store, &tenant).await?;
            let keys = store.list_api_keys(t.tenant_id).await?;
            let header = ["ID", "PREFIX", "NAME", "CREATED", "REVOKED"];
            print_list(json, &keys, &header, |k| {
                vec![
                    k.key_id.to_string(),
                    k.prefix.clone(),
                    k.name.clone(),
                    time(k.created_at),
                    k.revoked_at.map(time).unwrap_or_default(),
                ]
            })
        }
        KeyCmd::Revoke { tenant, key_id } => {
            let t = resolve_tenant(&store, &tenant).await?;
            print_json(
                &store
                    .revoke_api_key(t.tenant_id, key_id)
                    .await?
                    .with_context(|| format!("tenant {} has no key {key_id}", t.tenant_name))?,
            )
        }
    }
}

/// Runs an attribute verb.
pub async fn attribute(config: &Config, cmd: AttributeCmd) -> Result<()> {
    let store = crate::stack::store(config)?;
    match cmd {
        AttributeCmd::Define {
            name,
            data_type,
            hot,
            indexed,
            regex,
            allow_rounding,
        } => {
            let data_type: DataType = data_type.parse().map_err(anyhow::Error::msg)?;
            let attribute = store
                .define_attribute(&AttributeSpec {
                    attribute_name: name,
                    data_type,
                    is_hot: hot,
                    is_indexed: indexed,
                    validation_regex: regex,
                    allow_rounding,
                })
                .await?;
            let cache = crate::stack::cache(config)?;
            catalogue_changed(&cache).await;
            settle(&cache).await;
            print_json(&attribute)
        }
        AttributeCmd::List { json } => {
            let all = store.list_attributes().await?;
            let yes = |b: bool| if b { "yes" } else { "" }.to_owned();
            let header = ["ID", "NAME", "TYPE", "HOT", "INDEXED", "ROUNDING", "REGEX"];
            print_list(json, &all, &header, |a| {
                vec![
                    a.attribute_id.to_string(),
                    a.attribute_name.clone(),
                    a.data_type.as_str().to_owned(),
                    yes(a.is_hot),
                    yes(a.is_indexed),
                    yes(a.allow_rounding),
                    a.validation_regex.clone().unwrap_or_default(),
                ]
            })
        }
        AttributeCmd::Update {
            attribute,
            hot,
            indexed,
            regex,
            allow_rounding,
        } => {
            let id = resolve_attribute(&store, &attribute).await?.attribute_id;
            let update = AttributeUpdate {
                is_hot: hot,
                is_indexed: indexed,
                validation_regex: regex.map(|r| (!r.is_empty()).then_some(r)),
                allow_rounding,
            };
            // Turning `hot` on backfills every entity's projection, batch by batch: show how
            // far it has come.
            let bar = (hot == Some(true)).then(|| {
                let bar = indicatif::ProgressBar::new(0).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} {wide_bar} {pos}/{len} entities ({eta})",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar.set_message(format!("projecting `{attribute}`"));
                bar
            });
            let started = std::time::Instant::now();
            let result = store
                .update_attribute(id, &update, |p| {
                    if let Some(bar) = &bar {
                        bar.set_length(u64::try_from(p.entities_total).unwrap_or(0));
                        bar.set_position(u64::try_from(p.entities_done).unwrap_or(0));
                    }
                })
                .await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let (attribute, reprojected) = result?.context("no such attribute")?;
            if hot.is_some() {
                eprintln!(
                    "{} entities re-projected in {:.1} s",
                    reprojected.len(),
                    started.elapsed().as_secs_f64()
                );
            }
            let cache = crate::stack::cache(config)?;
            let hot: Vec<(i64, i64)> = reprojected.iter().map(|(t, e)| (t.0, *e)).collect();
            cache.entities_changed(&hot, &[]).await;
            catalogue_changed(&cache).await;
            settle(&cache).await;
            print_json(&attribute)
        }
    }
}

/// Before a command that changed data exits: a failed invalidation is covered by a new
/// cache epoch once Redis answers, which this process must stay for.
pub(crate) async fn settle(cache: &atlas_cache::Cache) {
    if !cache.settle(Duration::from_secs(3)).await {
        eprintln!(
            "warning: Redis did not answer, so cached entries of what this command changed may \
             be served until they expire (at most 5 minutes) or a server restarts"
        );
    }
}

/// Drops the cached attribute catalogue after a change (servers re-read it within seconds).
async fn catalogue_changed(cache: &atlas_cache::Cache) {
    let (a, b) = cache.meta_keys();
    cache.invalidate(&[a, b]).await;
}

/// `atlas serve`: the HTTP API until SIGTERM or Ctrl-C, then a graceful stop.
pub async fn serve(config: &Config) -> Result<()> {
    let resolved = crate::stack::resolved(config)?;
    let server = atlas_server::Server::build(&resolved)?;
    let listener = atlas_api::bind(resolved.listen).await?;
    tracing::info!(listen = %resolved.listen, admin_api = resolved.admin_token.is_some(), "atlas serving");
    server.serve(listener, shutdown_signal()).await?;
    tracing::info!("atlas stopped");
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested: finishing in-flight requests");
}
