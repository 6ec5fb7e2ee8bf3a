//! Administration: tenants, their API keys, and the global attribute catalogue. These are not
//! tenant-scoped data (an operator acts across tenants), so they run outside the tenant
//! transaction; the HTTP layer guards them with the admin token.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Store, StoreError, TenantId};

/// Longest accepted `validation_regex`, and the compiled-size cap that bounds its memory.
const MAX_REGEX_LEN: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tenant {
    /// Its id.
    pub tenant_id: i64,
    /// Its unique name.
    pub tenant_name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Deactivated tenants' keys are refused (403).
    pub is_active: bool,
}

/// The type of an attribute's values; each maps to one typed column of the time series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DataType {
    /// `value` (text), checked against `validation_regex`.
    String,
    /// `value_int` (i64).
    Integer,
    /// `value_decimal` (DECIMAL(20,5)).
    Decimal,
    /// `value_bool`.
    Boolean,
    /// `value_date`.
    Date,
    /// `value_timestamp`.
    Timestamp,
    /// `value` holding a JSON document.
    Json,
}

impl DataType {
    /// Every data type, in catalogue order.
    pub const ALL: [DataType; 7] = [
        DataType::String,
        DataType::Integer,
        DataType::Decimal,
        DataType::Boolean,
        DataType::Date,
        DataType::Timestamp,
        DataType::Json,
    ];

    /// The name stored in `attributes.data_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::String => "string",
            DataType::Integer => "integer",
            DataType::Decimal => "decimal",
            DataType::Boolean => "boolean",
            DataType::Date => "date",
            DataType::Timestamp => "timestamp",
            DataType::Json => "json",
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown data_type `{s}`; expected one of string, integer, decimal, boolean, date, timestamp, json"))
    }
}

/// An attribute of the global catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attribute {
    /// Its id.
    pub attribute_id: i64,
    /// Its unique name (the key of hot values in the projection).
    pub attribute_name: String,
    /// The type of its values.
    pub data_type: DataType,
    /// Whether it is marked for indexing.
    pub is_indexed: bool,
    /// Whether its newest value is projected into `entity_jsonb`.
    pub is_hot: bool,
    /// Regex that string values must match (linear-time `regex` syntax).
    pub validation_regex: Option<String>,
    /// Decimal values with more than 5 fraction digits are rounded instead of refused.
    pub allow_rounding: bool,
    /// When it was defined.
    pub created_at: DateTime<Utc>,
    /// When its flags or regex last changed.
    pub updated_at: DateTime<Utc>,
}

/// A new attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeSpec {
    /// Unique name: a letter or `_`, then letters, digits, `_`, `.` or `-` (≤ 255).
    pub attribute_name: String,
    /// Its type (fixed once defined).
    pub data_type: DataType,
    /// Projected into `entity_jsonb`.
    pub is_hot: bool,
    /// Marked for indexing.
    pub is_indexed: bool,
    /// Optional regex for string values.
    pub validation_regex: Option<String>,
    /// Round decimals to 5 fraction digits instead of refusing them.
    pub allow_rounding: bool,
}

/// Changes to an attribute. Name and data_type are fixed: stored values and projection keys
/// depend on them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttributeUpdate {
    /// New `is_hot`.
    pub is_hot: Option<bool>,
    /// New `is_indexed`.
    pub is_indexed: Option<bool>,
    /// New regex (`Some(None)` removes it).
    pub validation_regex: Option<Option<String>>,
    /// New `allow_rounding`.
    pub allow_rounding: Option<bool>,
}

/// True when `s` is 1..=`max` characters: an ASCII letter or digit, then letters, digits and
/// the characters of `extra`. Names in Atlas are identifiers, not free text: nothing that
/// looks like SQL or markup gets in, and error messages can quote them safely.
pub fn is_identifier(s: &str, max: usize, extra: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
        && s.len() <= max
}

/// Checks a tenant name: an operator-facing identifier (a slug such as `acme-eu`), so letters,
/// digits and `_ . -` only (≤ 255).
pub fn validate_tenant_name(name: &str) -> Result<(), StoreError> {
    if !is_identifier(name, 255, "_.-") {
        return Err(StoreError::Invalid {
            field: "tenant_name".into(),
            message:
                "must be 1 to 255 characters: a letter or digit, then letters, digits, `_ . -`"
                    .into(),
        });
    }
    Ok(())
}

/// Checks an attribute name.
pub fn validate_attribute_name(name: &str) -> Result<(), StoreError> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if name.is_empty() || name.len() > 255 || !ok_first || !ok_rest {
        return Err(StoreError::Invalid {
            field: "attribute_name".into(),
            message: "must start with a letter or `_` and contain only letters, digits, `_`, `.`, `-` (at most 255)".into(),
        });
    }
    Ok(())
}

/// Compiles a validation regex with the linear-time `regex` crate (no ReDoS), refusing what
/// does not compile or is too large.
pub fn compile_validation_regex(pattern: &str) -> Result<regex::Regex, StoreError> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(StoreError::Invalid {
            field: "validation_regex".into(),
            message: format!("must be at most {MAX_REGEX_LEN} characters"),
        });
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| StoreError::Invalid {
            field: "validation_regex".into(),
            message: format!("invalid regular expression: {e}"),
        })
}

/// A freshly issued API key: `secret` is shown once and never stored.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IssuedKey {
    /// Key id (for revocation and listings).
    pub key_id: i64,
    /// Its tenant.
    pub tenant_id: i64,
    /// The lookup prefix (also visible in listings).
    pub prefix: String,
    /// The full key, `atlas_<prefix>_<64 hex>`.
    pub secret: String,
    /// Its label.
    pub name: String,
    /// Issued at.
    pub created_at: DateTime<Utc>,
}

/// An API key as listed (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyInfo {
    /// Key id.
    pub key_id: i64,
    /// Its tenant.
    pub tenant_id: i64,
    /// The lookup prefix.
    pub prefix: String,
    /// Its label.
    pub name: String,
    /// Issued at.
    pub created_at: DateTime<Utc>,
    /// When revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What authentication needs to know about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key's tenant.
    pub tenant: TenantId,
    /// SHA-256 of the full key.
    pub key_hash: [u8; 32],
    /// Revoked keys get 401.
    pub revoked: bool,
    /// Keys of a deactivated tenant get 403.
    pub tenant_active: bool,
}

/// SHA-256 of a presented key: what is stored and compared.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The lookup prefix of a presented key, if it has the `atlas_<prefix>_<secret>` shape.
pub fn key_prefix(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("atlas_")?;
    let (prefix, secret) = rest.split_once('_')?;
    (prefix.len() == 12 && prefix.chars().all(|c| c.is_ascii_alphanumeric()) && secret.len() == 64)
        .then_some(prefix)
}

fn tenant_from(row: &tokio_postgres::Row) -> Tenant {
    Tenant {
        tenant_id: row.get("tenant_id"),
        tenant_name: row.get("tenant_name"),
        created_at: row.get("created_at"),
        is_active: row.get("is_active"),
    }
}

fn attribute_from(row: &tokio_postgres::Row) -> Result<Attribute, StoreError> {
    let data_type: String = row.get("data_type");
    Ok(Attribute {
        attribute_id: row.get("attribute_id"),
        attribute_name: row.get("attribute_name"),
        data_type: data_type.parse().map_err(StoreError::Corrupt)?,
        is_indexed: row.get("is_indexed"),
        is_hot: row.get("is_hot"),
        validation_regex: row.get("validation_regex"),
        allow_rounding: row.get("allow_rounding"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

fn key_info_from(row: &tokio_postgres::Row) -> ApiKeyInfo {
    ApiKeyInfo {
        key_id: row.get("key_id"),
        tenant_id: row.get("tenant_id"),
        prefix: row.get("prefix"),
        name: row.get("name"),
        created_at: row.get("created_at"),
        revoked_at: row.get("revoked_at"),
    }
}

impl Store {
    /// Creates a tenant; a taken name is a conflict.
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant, StoreError> {
        let name = name.trim();
        validate_tenant_name(name)?;
        let client = self.primary.get().await?;
        let row = client
            .query_one(
                "INSERT INTO public.tenants (tenant_name) VALUES ($1) \
                 RETURNING tenant_id, tenant_name, created_at, is_active",
                &[&name],
            )
            .await
            .map_err(|e| {
                StoreError::conflict_on_unique(e, "tenant_name", "a tenant with this name exists")
            })?;
        Ok(tenant_from(&row))
    }

    /// Tenants ordered by id, after `after`, at most `limit`.
    pub async fn list_tenants(&self, after: i64, limit: i64) -> Result<Vec<Tenant>, StoreError> {
        let client = self.primary.get().await?;
        let rows = client
            .query(
                "SELECT tenant_id, tenant_name, created_at, is_active FROM public.tenants \
                 WHERE tenant_id > $1 ORDER BY tenant_id LIMIT $2",
                &[&after, &limit],
            )
            .await?;
        Ok(rows.iter().map(tenant_from).collect())
    }

    /// One tenant.
    pub async fn get_tenant(&self, tenant_id: i64) -> Result<Option<Tenant>, StoreError> {
        let client = self.primary.get().await?;
        let row = client
            .query_opt(
                "SELECT tenant_id, tenant_name, created_at, is_active FROM public.tenants WHERE tenant_id = $1",
                &[&tenant_id],
            )
            .await?;
        Ok(row.as_ref().map(tenant_from))
    }

    /// One tenant by its name.
    pub async fn get_tenant_by_name(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        let client = self.primary.get().await?;
        let row = client
            .query_opt(
                "SELECT tenant_id, tenant_name, created_at, is_active FROM public.tenants WHERE tenant_name = $1",
                &[&name],
            )
            .await?;
        Ok(row.as_ref().map(tenant_from))
    }

    /// Activates or deactivates a tenant; `None` when it does not exist.
    pub async fn set_tenant_active(
        &self,
        tenant_id: i64,
        active: bool,
    ) -> Result<Option<Tenant>, StoreError> {
        let client = self.primary.get().await?;
        let row = client
            .query_opt(
                "UPDATE public.tenants SET is_active = $2 WHERE tenant_id = $1 \
                 RETURNING tenant_id, tenant_name, created_at, is_active",
                &[&tenant_id, &active],
            )
            .await?;
        Ok(row.as_ref().map(tenant_from))
    }

    /// Issues a key for a tenant: 256 random bits, stored only as a hash.
    pub async fn issue_api_key(&self, tenant_id: i64, name: &str) -> Result<IssuedKey, StoreError> {
        use rand::Rng;
        use rand::distr::Alphanumeric;
        if !name.is_empty() && !is_identifier(name, 255, "_.-") {
            return Err(StoreError::Invalid {
                field: "name".into(),
                message: "must be empty or up to 255 characters: a letter or digit, then letters, digits, `_ . -`".into(),
            });
        }
        if self.get_tenant(tenant_id).await?.is_none() {
            return Err(StoreError::NotFound("tenant"));
        }
        // The thread-local RNG must not live across an await (it is not Send).
        let (prefix, secret_bytes): (String, [u8; 32]) = {
            let mut rng = rand::rng();
            let prefix = (&mut rng)
                .sample_iter(&Alphanumeric)
                .take(12)
                .map(char::from)
                .collect();
            (prefix, rng.random())
        };
        let hex: String = secret_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let secret = format!("atlas_{prefix}_{hex}");
        let hash = hash_key(&secret);
        let client = self.primary.get().await?;
        let row = client
            .query_one(
                "INSERT INTO public.api_keys (tenant_id, prefix, key_hash, name) VALUES ($1, $2, $3, $4) \
                 RETURNING key_id, created_at",
                &[&tenant_id, &prefix, &hash.as_slice(), &name],
            )
            .await?;
        Ok(IssuedKey {
            key_id: row.get(0),
            tenant_id,
            prefix,
            secret,
            name: name.to_owned(),
            created_at: row.get(1),
        })
    }

    /// A tenant's keys (without secrets).
    pub async fn list_api_keys(&self, tenant_id: i64) -> Result<Vec<ApiKeyInfo>, StoreError> {
        let client = self.primary.get().await?;
        let rows = client
            .query(
                "SELECT key_id, tenant_id, prefix, name, created_at, revoked_at FROM public.api_keys \
                 WHERE tenant_id = $1 ORDER BY key_id",
                &[&tenant_id],
            )
            .await?;
        Ok(rows.iter().map(key_info_from).collect())
    }

    /// Revokes a key of a tenant (idempotent); `None` when no such key.
    pub async fn revoke_api_key(
        &self,
        tenant_id: i64,
        key_id: i64,
    ) -> Result<Option<ApiKeyInfo>, StoreError> {
        let client = self.primary.get().await?;
        // Revokes once (the first revocation's time stays), then reads the key either way. Not
        // `coalesce(revoked_at, now())`: Citus evaluates no volatile function inside COALESCE
        // on a distributed table.
        let row = client
            .query_opt(
                "WITH revoked AS (UPDATE public.api_keys SET revoked_at = now() \
                     WHERE tenant_id = $1 AND key_id = $2 AND revoked_at IS NULL \
                     RETURNING key_id, tenant_id, prefix, name, created_at, revoked_at) \
                 SELECT key_id, tenant_id, prefix, name, created_at, revoked_at FROM revoked \
                 UNION ALL \
                 SELECT key_id, tenant_id, prefix, name, created_at, revoked_at FROM public.api_keys \
                 WHERE tenant_id = $1 AND key_id = $2 AND NOT EXISTS (SELECT 1 FROM revoked)",
                &[&tenant_id, &key_id],
            )
            .await?;
        Ok(row.as_ref().map(key_info_from))
    }

    /// Looks a key up by its prefix (for authentication).
    pub async fn find_api_key(&self, prefix: &str) -> Result<Option<KeyRecord>, StoreError> {
        let client = self.primary.get().await?;
        let row = client
            .query_opt(
                "SELECT k.tenant_id, k.key_hash, k.revoked_at IS NOT NULL, t.is_active \
                 FROM public.api_keys k JOIN public.tenants t ON t.tenant_id = k.tenant_id WHERE k.prefix = $1",
                &[&prefix],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let hash: Vec<u8> = row.get(1);
        Ok(Some(KeyRecord {
            tenant: TenantId(row.get(0)),
            key_hash: hash
                .try_into()
                .map_err(|_| StoreError::Corrupt("api key hash is not 32 bytes".into()))?,
            revoked: row.get(2),
            tenant_active: row.get(3),
        }))
    }

    /// Defines a new attribute; a taken name is a conflict.
    pub async fn define_attribute(&self, spec: &AttributeSpec) -> Result<Attribute, StoreError> {
        validate_attribute_name(&spec.attribute_name)?;
        if spec.allow_rounding && spec.data_type != DataType::Decimal {
            return Err(StoreError::Invalid {
                field: "allow_rounding".into(),
                message: "only decimal attributes round".into(),
            });
        }
        if let Some(p) = &spec.validation_regex {
            compile_validation_regex(p)?;
            if spec.data_type != DataType::String {
                return Err(StoreError::Invalid {
                    field: "validation_regex".into(),
                    message: "only string attributes take a validation_regex".into(),
                });
            }
        }
        let client = self.primary.get().await?;
        let row = client
            .query_one(
                "INSERT INTO public.attributes (attribute_name, data_type, is_hot, is_indexed, validation_regex, allow_rounding) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 RETURNING attribute_id, attribute_name, data_type, is_indexed, is_hot, validation_regex, allow_rounding, created_at, updated_at",
                &[
                    &spec.attribute_name,
                    &spec.data_type.as_str(),
                    &spec.is_hot,
                    &spec.is_indexed,
                    &spec.validation_regex,
                    &spec.allow_rounding,
                ],
            )
            .await
            .map_err(|e| StoreError::conflict_on_unique(e, "attribute_name", "an attribute with this name exists"))?;
        attribute_from(&row)
    }

    /// Changes an attribute's flags or regex; `None` when it does not exist.
    ///
    /// Turning `is_hot` on backfills every entity's projection with its newest value of the
    /// attribute, [`BACKFILL_BATCH`] entities at a time, calling `progress` after each batch;
    /// turning it off removes the attribute from every projection. Both happen in the
    /// transaction that flips the flag; the entities whose projection changed are returned so
    /// their cache entries can be dropped after the commit.
    pub async fn update_attribute(
        &self,
        attribute_id: i64,
        update: &AttributeUpdate,
        mut progress: impl FnMut(BackfillProgress) + Send,
    ) -> Result<Option<(Attribute, Vec<(TenantId, i64)>)>, StoreError> {
        let Some(current) = self.get_attribute(attribute_id).await? else {
            return Ok(None);
        };
        if let Some(Some(p)) = &update.validation_regex {
            compile_validation_regex(p)?;
            if current.data_type != DataType::String {
                return Err(StoreError::Invalid {
                    field: "validation_regex".into(),
                    message: "only string attributes take a validation_regex".into(),
                });
            }
        }
        if update.allow_rounding == Some(true) && current.data_type != DataType::Decimal {
            return Err(StoreError::Invalid {
                field: "allow_rounding".into(),
                message: "only decimal attributes round".into(),
            });
        }
        let regex = match &update.validation_regex {
            Some(v) => v.clone(),
            None => current.validation_regex.clone(),
        };
        let mut client = self.primary.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "UPDATE public.attributes SET is_hot = $2, is_indexed = $3, validation_regex = $4, allow_rounding = $5, updated_at = now() \
                 WHERE attribute_id = $1 \
                 RETURNING attribute_id, attribute_name, data_type, is_indexed, is_hot, validation_regex, allow_rounding, created_at, updated_at",
                &[
                    &attribute_id,
                    &update.is_hot.unwrap_or(current.is_hot),
                    &update.is_indexed.unwrap_or(current.is_indexed),
                    &regex,
                    &update.allow_rounding.unwrap_or(current.allow_rounding),
                ],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let attribute = attribute_from(&row)?;
        let changed = if attribute.is_hot == current.is_hot {
            Vec::new()
        } else if attribute.is_hot {
            backfill(&tx, attribute_id, &mut progress).await?
        } else {
            tx.query(
                "SELECT tenant_id, entity_id FROM public.hot_attr_clear($1)",
                &[&attribute_id],
            )
            .await?
            .iter()
            .map(|r| Ok((TenantId(r.try_get(0)?), r.try_get(1)?)))
            .collect::<Result<Vec<_>, StoreError>>()?
        };
        tx.commit().await?;
        Ok(Some((attribute, changed)))
    }

    /// One attribute.
    pub async fn get_attribute(&self, attribute_id: i64) -> Result<Option<Attribute>, StoreError> {
        let client = self.primary.get().await?;
        let row = client
            .query_opt(
                "SELECT attribute_id, attribute_name, data_type, is_indexed, is_hot, validation_regex, allow_rounding, created_at, updated_at \
                 FROM public.attributes WHERE attribute_id = $1",
                &[&attribute_id],
            )
            .await?;
        row.as_ref().map(attribute_from).transpose()
    }

    /// The whole catalogue, by id.
    pub async fn list_attributes(&self) -> Result<Vec<Attribute>, StoreError> {
        let client = self.primary.get().await?;
        let rows = client
            .query(
                "SELECT attribute_id, attribute_name, data_type, is_indexed, is_hot, validation_regex, allow_rounding, created_at, updated_at \
                 FROM public.attributes ORDER BY attribute_id",
                &[],
            )
            .await?;
        rows.iter().map(attribute_from).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefix_accepts_only_the_issued_shape() {
        let good = format!("atlas_{}_{}", "AbCdEf123456", "0".repeat(64));
        assert_eq!(key_prefix(&good), Some("AbCdEf123456"));
        for bad in [
            "",
            "atlas_",
            "atlas_short_00",
            &format!("atlas_AbCdEf12345!_{}", "0".repeat(64)),
            &format!("other_AbCdEf123456_{}", "0".repeat(64)),
            &format!("atlas_AbCdEf123456_{}", "0".repeat(63)),
        ] {
            assert_eq!(key_prefix(bad), None, "{bad}");
        }
    }

    #[test]
    fn attribute_names_and_regexes_are_checked() {
        for ok in ["temperature", "_x", "a.b-c_1"] {
            assert!(validate_attribute_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1abc", "a b", "a'b", &"x".repeat(256)] {
            assert!(validate_attribute_name(bad).is_err(), "{bad}");
        }
        assert!(compile_validation_regex("^[a-z]+$").is_ok());
        let err = compile_validation_regex("(unclosed")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("validation_regex"), "{err}");
        // Backreferences (a ReDoS source elsewhere) are not even accepted.
        assert!(compile_validation_regex(r"(a)\1").is_err());
    }

    #[test]
    fn data_types_round_trip() {
        for t in DataType::ALL {
            assert_eq!(t.as_str().parse::<DataType>(), Ok(t));
        }
        assert!("float".parse::<DataType>().is_err());
    }
}

/// Entities one backfill statement projects: small enough that progress moves every second or
/// so at full scale, large enough that the per-statement overhead does not count.
pub const BACKFILL_BATCH: i32 = 5_000;

/// How far the backfill of an attribute turned hot has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackfillProgress {
    /// Live entities looked at so far (every tenant).
    pub entities_done: i64,
    /// Live entities when it started.
    pub entities_total: i64,
    /// Projections that changed so far (entities with a value of the attribute, unless a newer
    /// one was projected already).
    pub projections_changed: i64,
}

/// Projects the attribute into every live entity, batch by batch in `tx`, reporting after
/// each; returns the entities whose projection changed.
async fn backfill(
    tx: &tokio_postgres::Transaction<'_>,
    attribute_id: i64,
    progress: &mut (impl FnMut(BackfillProgress) + Send),
) -> Result<Vec<(TenantId, i64)>, StoreError> {
    let total: i64 = tx
        .query_one(
            "SELECT coalesce(sum(entities), 0)::bigint FROM public.tenant_entity_counts()",
            &[],
        )
        .await?
        .try_get(0)?;
    let stmt = tx
        .prepare(
            "SELECT tenant_id, entity_id, changed FROM public.hot_attr_backfill($1, $2, $3, $4)",
        )
        .await?;
    let mut at = BackfillProgress {
        entities_total: total,
        ..BackfillProgress::default()
    };
    progress(at);
    let (mut after_tenant, mut after_entity) = (i64::MIN, i64::MIN);
    let mut changed = Vec::new();
    loop {
        let rows = tx
            .query(
                &stmt,
                &[&attribute_id, &after_tenant, &after_entity, &BACKFILL_BATCH],
            )
            .await?;
        for r in &rows {
            let (t, e): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
            if r.try_get::<_, bool>(2)? {
                changed.push((TenantId(t), e));
            }
            // The keyset goes on after the greatest entity of the batch, whatever the order
            // the rows came in.
            (after_tenant, after_entity) = (after_tenant, after_entity).max((t, e));
        }
        at.entities_done += i64::try_from(rows.len()).unwrap_or(0);
        // Entities registered meanwhile are looked at too; the total grows with them.
        at.entities_total = at.entities_total.max(at.entities_done);
        at.projections_changed = i64::try_from(changed.len()).unwrap_or(i64::MAX);
        progress(at);
        if rows.len() < usize::try_from(BACKFILL_BATCH).unwrap_or(usize::MAX) {
            return Ok(changed);
        }
    }
}
