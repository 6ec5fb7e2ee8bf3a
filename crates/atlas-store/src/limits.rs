//! Each tenant's retention and quotas: its own settings (`tenant_limits`), the global defaults
//! they override, and the usage the quotas are checked against.

use serde::{Deserialize, Serialize};

use crate::{Store, StoreError, TenantId, Tx};

/// The longest retention a tenant may be given, in days (as `[lifecycle]` allows).
pub const MAX_RETENTION_DAYS: i64 = 36_500;

/// One limit of a tenant: retention in days or a quota; 0 is "keep for ever" / "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Limit {
    /// Days raw values are kept.
    RawDays,
    /// Days 1-minute rollups are kept.
    Rollup1mDays,
    /// Days 1-hour rollups are kept.
    Rollup1hDays,
    /// Days 1-day rollups are kept.
    Rollup1dDays,
    /// Days dead letters are kept.
    DeadLetterDays,
    /// Most live entities.
    MaxEntities,
    /// Most values written per UTC day.
    MaxValuesPerDay,
    /// Most values stored.
    MaxStoredValues,
}

impl Limit {
    /// Every limit, in the order of the table's columns.
    pub const ALL: [Limit; 8] = [
        Limit::RawDays,
        Limit::Rollup1mDays,
        Limit::Rollup1hDays,
        Limit::Rollup1dDays,
        Limit::DeadLetterDays,
        Limit::MaxEntities,
        Limit::MaxValuesPerDay,
        Limit::MaxStoredValues,
    ];

    /// Its name in the API, the CLI and the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::RawDays => "raw_days",
            Limit::Rollup1mDays => "rollup_1m_days",
            Limit::Rollup1hDays => "rollup_1h_days",
            Limit::Rollup1dDays => "rollup_1d_days",
            Limit::DeadLetterDays => "dead_letter_days",
            Limit::MaxEntities => "max_entities",
            Limit::MaxValuesPerDay => "max_values_per_day",
            Limit::MaxStoredValues => "max_stored_values",
        }
    }

    /// Whether it is a retention in days (else a quota).
    pub fn is_days(self) -> bool {
        (self as usize) < 5
    }

    /// The largest value accepted.
    pub fn largest(self) -> i64 {
        if self.is_days() {
            MAX_RETENTION_DAYS
        } else {
            i64::MAX
        }
    }
}

impl std::str::FromStr for Limit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Limit::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Limit::ALL.iter().map(|l| l.as_str()).collect();
                format!("`{s}` is not a limit: one of {}", names.join(", "))
            })
    }
}

/// Values of every limit, in [`Limit::ALL`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Values(pub [i64; 8]);

impl Values {
    /// The value of one limit.
    pub fn get(&self, l: Limit) -> i64 {
        self.0[l as usize]
    }
}

/// A tenant's own settings: `None` takes the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Overrides(pub [Option<i64>; 8]);

impl Overrides {
    /// Each limit as it applies: the tenant's setting, else the default.
    pub fn effective(&self, defaults: &Values) -> Values {
        let mut v = *defaults;
        for (i, o) in self.0.iter().enumerate() {
            if let Some(o) = o {
                v.0[i] = *o;
            }
        }
        v
    }
}

const COLUMNS: &str = "raw_days::bigint, rollup_1m_days::bigint, rollup_1h_days::bigint, rollup_1d_days::bigint, \
     dead_letter_days::bigint, max_entities, max_values_per_day, max_stored_values";

fn overrides_from(row: &tokio_postgres::Row, first: usize) -> Result<Overrides, StoreError> {
    let mut o = Overrides::default();
    for i in 0..8 {
        o.0[i] = row.try_get(first + i)?;
    }
    Ok(o)
}

/// A change of limits: `Some(None)` resets one to the default, `Some(Some(v))` sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change(pub [Option<Option<i64>>; 8]);

impl Store {
    /// A tenant's own settings (all `None` when it has none); `None` when there is no such
    /// tenant.
    pub async fn tenant_overrides(&self, tenant_id: i64) -> Result<Option<Overrides>, StoreError> {
        let client = self.primary.get().await?;
        let stmt = client
            .prepare_cached(
                &[
                    "SELECT t.tenant_id, ",
                    COLUMNS,
                    " FROM public.tenants t LEFT JOIN public.tenant_limits l USING (tenant_id) \
                 WHERE t.tenant_id = $1",
                ]
                .concat(),
            )
            .await?;
        match client.query_opt(&stmt, &[&tenant_id]).await? {
            Some(row) => Ok(Some(overrides_from(&row, 1)?)),
            None => Ok(None),
        }
    }

    /// Every tenant's own settings (tenants without any are left out).
    pub async fn all_overrides(&self) -> Result<Vec<(i64, Overrides)>, StoreError> {
        let client = self.primary.get().await?;
        let rows = client
            .query(
                &[
                    "SELECT tenant_id, ",
                    COLUMNS,
                    " FROM public.tenant_limits ORDER BY tenant_id",
                ]
                .concat(),
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, overrides_from(r, 1)?)))
            .collect()
    }

    /// Applies `change` to a tenant's settings; returns them after. Values are checked
    /// (0 to each limit's maximum). `NotFound` when there is no such tenant.
    pub async fn change_limits(
        &self,
        tenant_id: i64,
        change: &Change,
    ) -> Result<Overrides, StoreError> {
        for (l, c) in Limit::ALL.iter().zip(change.0.iter()) {
            if let Some(Some(v)) = c
                && !(0..=l.largest()).contains(v)
            {
                return Err(StoreError::Invalid {
                    field: l.as_str().into(),
                    message: format!("must be between 0 and {}", l.largest()),
                });
            }
        }
        let mut client = self.primary.get().await?;
        let tx = client.transaction().await?;
        if tx
            .query_opt(
                "SELECT 1 FROM public.tenants WHERE tenant_id = $1 FOR SHARE",
                &[&tenant_id],
            )
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound("tenant"));
        }
        let current = tx
            .query_opt(
                &[
                    "SELECT tenant_id, ",
                    COLUMNS,
                    " FROM public.tenant_limits WHERE tenant_id = $1 FOR UPDATE",
                ]
                .concat(),
                &[&tenant_id],
            )
            .await?
            .map(|r| overrides_from(&r, 1))
            .transpose()?
            .unwrap_or_default();
        let mut next = current;
        for (i, c) in change.0.iter().enumerate() {
            if let Some(v) = c {
                next.0[i] = *v;
            }
        }
        let days = |i: usize| next.0[i].map(|v| i32::try_from(v).unwrap_or(i32::MAX));
        tx.execute(
            "INSERT INTO public.tenant_limits (tenant_id, raw_days, rollup_1m_days, rollup_1h_days, \
                 rollup_1d_days, dead_letter_days, max_entities, max_values_per_day, max_stored_values) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (tenant_id) DO UPDATE SET raw_days = excluded.raw_days, \
                 rollup_1m_days = excluded.rollup_1m_days, rollup_1h_days = excluded.rollup_1h_days, \
                 rollup_1d_days = excluded.rollup_1d_days, dead_letter_days = excluded.dead_letter_days, \
                 max_entities = excluded.max_entities, max_values_per_day = excluded.max_values_per_day, \
                 max_stored_values = excluded.max_stored_values, updated_at = now()",
            &[
                &tenant_id,
                &days(0),
                &days(1),
                &days(2),
                &days(3),
                &days(4),
                &next.0[5],
                &next.0[6],
                &next.0[7],
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(next)
    }

    /// Values each tenant has stored, as of the last statistics refresh.
    pub async fn stored_values(&self) -> Result<Vec<(i64, i64)>, StoreError> {
        let client = self.primary.get().await?;
        let rows = client
            .query(
                "SELECT tenant_id, stored FROM public.tenant_stored_values()",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Live entities of each tenant that has any.
    pub async fn entity_counts(&self) -> Result<Vec<(i64, i64)>, StoreError> {
        let client = self.primary.get().await?;
        let rows = client
            .query(
                "SELECT tenant_id, entities FROM public.tenant_entity_counts()",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}

/// The tenant's live entities, counted in its transaction.
pub async fn live_entities(tx: &Tx<'_>, tenant: TenantId) -> Result<i64, StoreError> {
    Ok(tx
        .query_one(
            "SELECT count(*) FROM public.entities WHERE tenant_id = $1 AND NOT is_deleted",
            &[&tenant.0],
        )
        .await?
        .try_get(0)?)
}

/// Takes the tenant's entity-quota lock for the rest of the transaction: registrations of one
/// tenant with a quota count and insert one after another (other tenants never wait).
pub async fn lock_entity_quota(tx: &Tx<'_>, tenant: TenantId) -> Result<(), StoreError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('atlas.max_entities'), hashtext($1::bigint::text))",
        &[&tenant.0],
    )
    .await?;
    Ok(())
}
