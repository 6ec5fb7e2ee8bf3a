//! `POST /v1/telemetry`: ThingsBoard-style readings, validated whole before anything is
//! written, acknowledged once durable.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use atlas_ingest::typing::{field_path, type_readings};
use atlas_ingest::{Durability, FieldError, IngestError, Reading};

use crate::AppState;
use crate::auth::Tenant;
use crate::consistency::WrittenAt;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonValue, QueryParams, from_json_value};

/// One reading (the ThingsBoard shape).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documents the body; the handler parses `atlas_ingest::Reading`
pub struct TelemetryItem {
    /// The entity (one of the caller's).
    pub entity_id: i64,
    /// Epoch milliseconds of the reading; the server's receipt time when absent. Send it to
    /// make retries idempotent: one (entity, attribute, ts) is one reading.
    #[serde(default)]
    pub ts: Option<i64>,
    /// Attribute name (or numeric id) → value, typed by the attribute's data_type: integer →
    /// integral number; decimal → number (≤ 15 integer and 5 fraction digits); boolean; date →
    /// "YYYY-MM-DD"; timestamp → RFC 3339 string; string → string (matching the attribute's
    /// validation_regex); json → any JSON.
    #[schema(value_type = Object)]
    pub values: serde_json::Map<String, serde_json::Value>,
}

/// The body: one reading or an array of them.
#[derive(Debug)]
pub struct TelemetryBody;

impl utoipa::PartialSchema for TelemetryBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::extract::one_or_many("TelemetryItem", 1, None)
    }
}

impl ToSchema for TelemetryBody {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            TelemetryItem::name().into_owned(),
            <TelemetryItem as utoipa::PartialSchema>::schema(),
        ));
    }
}

/// When the server answers a telemetry request.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TelemetryParams {
    /// `durable` (default): after the values are committed in the time series. `staged`:
    /// after the COPY into the UNLOGGED staging table committed — faster, but a PostgreSQL
    /// crash within the next flush (~100 ms) loses them.
    #[param(inline)]
    pub durability: Option<DurabilityParam>,
}

/// Durability levels.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityParam {
    /// Acknowledge after commit in the time series.
    Durable,
    /// Acknowledge after commit in staging.
    Staged,
}

/// What the server stored (or staged) of a telemetry request.
#[derive(Debug, Serialize, ToSchema)]
pub struct TelemetryAck {
    /// Values accepted (stored, or already stored: a replay is a no-op).
    pub accepted: usize,
    /// `durable` or `staged`.
    pub durability: String,
}

/// A refused request: the error it is answered with and why its values were not stored.
struct Refusal {
    error: ApiError,
    /// The reason counted; the error's code when `None`.
    reason: Option<&'static str>,
    /// Whether the values count as rejected in `atlas_ingest_values_total` (refusals of the
    /// request itself; values the pipeline refused are counted there by their outcome).
    rejected: bool,
}

impl Refusal {
    fn because(reason: &'static str, error: ApiError) -> Self {
        Self {
            error,
            reason: Some(reason),
            rejected: true,
        }
    }
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        // Rate limits and quotas refuse the request's values; a failing dependency does not
        // judge them, so they are not "rejected" values, only not stored.
        let rejected = matches!(error, ApiError::RateLimited { .. } | ApiError::Quota { .. });
        Self {
            error,
            reason: None,
            rejected,
        }
    }
}

fn field_error(e: FieldError) -> ApiError {
    if e.not_found {
        ApiError::UnknownReference {
            message: e.message,
            field: e.field,
        }
    } else {
        ApiError::invalid_value(e.field, e.message)
    }
}

/// The reading (its index) and attribute key of the `row`th value: rows are the readings'
/// values in order, as typed.
fn row_value(readings: &[Reading], row: usize) -> Option<(usize, &str)> {
    readings
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.values.keys().map(move |k| (i, k.as_str())))
        .nth(row)
}

/// The request field of the `row`th value; built only for an error, not for every value of
/// every request.
fn value_field(
    readings: &[Reading],
    prefix: &dyn Fn(usize) -> String,
    row: usize,
) -> Option<String> {
    row_value(readings, row).map(|(i, k)| field_path(&prefix(i), &format!("values.{k}")))
}

/// Stores telemetry. The whole request is validated first: any bad value refuses the request
/// (naming the item and field) and nothing is written.
///
/// Stores readings: one object or an array. Each value must fit its attribute's data type; ts is
/// epoch milliseconds (the receipt time when absent). durability=durable (default) answers after
/// the commit; staged answers after the values are staged, stored by the background drain. A
/// replayed reading stores nothing twice; telemetry is rate-limited per value.
#[utoipa::path(post, path = "/v1/telemetry", tag = "tenant", security(("tenant_key" = [])),
    params(TelemetryParams),
    request_body(content = TelemetryBody, description = "A reading or an array of readings"),
    responses((status = 200, description = "Durably stored", body = TelemetryAck,
               headers(("x-atlas-lsn" = inline(WrittenAt)))),
              (status = 202, description = "Staged (durability=staged)", body = TelemetryAck,
               headers(("x-atlas-lsn" = inline(WrittenAt)))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, description = "An entity is not the caller's", body = ErrorBody),
              (status = 409, description = "Some values could not be stored (e.g. the entity was deleted meanwhile)", body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn ingest(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    QueryParams(params): QueryParams<TelemetryParams>,
    JsonValue(body): JsonValue,
) -> Result<axum::response::Response, ApiError> {
    let started = std::time::Instant::now();
    let single = body.is_object();
    let readings: Vec<Reading> = match body {
        serde_json::Value::Array(_) => from_json_value(body)?,
        serde_json::Value::Object(_) => vec![from_json_value(body)?],
        _ => {
            return Err(ApiError::bad_field(
                "body",
                "expected a reading object or an array of them",
            ));
        }
    };
    let values: usize = readings.iter().map(|r| r.values.len()).sum();
    let stats = &state.inner.ingest_stats;
    match store_readings(tenant, &state, params, &readings, values, single).await {
        Ok((resp, accepted)) => {
            stats.stored(&state.inner.cache, tenant, accepted, started.elapsed());
            Ok(resp)
        }
        Err(refusal) => {
            let reason = refusal.reason.unwrap_or_else(|| refusal.error.code());
            if refusal.rejected {
                metrics::counter!("atlas_ingest_values_total", "outcome" => "rejected", "reason" => reason)
                    .increment(u64::try_from(values).unwrap_or(0));
            }
            stats.refused(&state.inner.cache, tenant, reason, values);
            Err(refusal.error)
        }
    }
}

/// Validates and stores `readings` (`values` of them in all); answers the response and the
/// values acknowledged.
async fn store_readings(
    tenant: atlas_store::TenantId,
    state: &AppState,
    params: TelemetryParams,
    readings: &[Reading],
    values: usize,
    single: bool,
) -> Result<(axum::response::Response, usize), Refusal> {
    let Some(ingestor) = state.inner.ingestor.clone() else {
        return Err(ApiError::Unavailable("ingest is not running on this server".into()).into());
    };
    if readings.is_empty() {
        return Err(ApiError::invalid_value("body", "at least one reading is required").into());
    }
    let max = state.inner.limits.max_values_per_request;
    if values > max {
        return Err(Refusal::because(
            "too_many_values",
            ApiError::TooLarge(format!(
                "{values} values in one request; at most {max} are accepted"
            )),
        ));
    }
    // Telemetry is charged per value, not per request: a 10 000-value request is not one
    // request's worth of work.
    state.inner.rate.charge_values(tenant, values)?;
    let prefix = |i: usize| {
        if single {
            String::new()
        } else {
            format!("[{i}]")
        }
    };

    // Type everything; an unknown attribute or an uncovered time may be news (an attribute
    // defined or a partition made a moment ago): look again once before refusing.
    let mut fresh = false;
    let rows = loop {
        let catalog = state.catalog(fresh).await?;
        let time = state.time_rules(fresh, readings).await?;
        match type_readings(tenant, readings, &catalog, &time, &prefix) {
            Ok(rows) => break rows,
            Err(e) if !fresh && matches!(e.reason, "unknown_attribute" | "time_out_of_range") => {
                fresh = true
            }
            Err(e) => return Err(Refusal::because(e.reason, field_error(e))),
        }
    };

    // Every entity must be one of the caller's.
    let ids: Vec<i64> = readings.iter().map(|r| r.entity_id).collect();
    let unknown = state
        .inner
        .known
        .first_unknown(&state.inner.store, tenant, &ids)
        .await
        .map_err(ApiError::from)?;
    if let Some(i) = unknown {
        return Err(Refusal::because(
            "unknown_entity",
            ApiError::UnknownReference {
                message: format!("entity {} not found", readings[i].entity_id),
                field: field_path(&prefix(i), "entity_id"),
            },
        ));
    }

    let durability = match params.durability {
        Some(DurabilityParam::Staged) => Durability::Staged,
        _ => Durability::Durable,
    };
    // Quotas last, after every check that could refuse the request for its content: what
    // the day's count is charged is written, or given back.
    let charge = state.admit_values(tenant, rows.len()).await?;
    let n_rows = rows.len();
    let submitted = ingestor.submit(rows, durability).await;
    if let Some(charge) = &charge {
        match &submitted {
            Ok(_) => {}
            Err(IngestError::Refused { refused, .. }) => state.refund(charge, *refused).await,
            Err(_) => state.refund(charge, n_rows).await,
        }
    }
    if let Err(IngestError::Refused { row, .. }) = &submitted {
        // Rows the database refused may have hit a partition dropped since coverage was last
        // read, or an entity deleted by another server since it was confirmed here: re-read
        // coverage now and ask about the entity again next time, so the next such write is a
        // clean 422 on `ts` or 404 on `entity_id`.
        let _ = state.time_rules(true, &[]).await;
        if let Some((i, _)) = row_value(readings, *row) {
            state.inner.known.forget(tenant, readings[i].entity_id);
        }
    }
    // Not "rejected" values (a full queue, a stopping server or the database refusing rows
    // judge no value of the request), but refused all the same: counted per tenant by why.
    let ack = submitted.map_err(|e| {
        let (reason, error) = match e {
            IngestError::QueueFull => (
                "queue_full",
                ApiError::Unavailable("the ingest queue is full; retry later".into()),
            ),
            IngestError::ShuttingDown => (
                "shutting_down",
                ApiError::Unavailable("the server is shutting down; retry".into()),
            ),
            IngestError::Unavailable(_) => (
                "database_unavailable",
                ApiError::Unavailable("the database is unavailable".into()),
            ),
            IngestError::Refused {
                refused,
                reason,
                row,
                ..
            } => (
                "not_stored",
                ApiError::Conflict {
                    message: format!("{refused} value(s) were not stored: {reason}"),
                    field: value_field(readings, &prefix, row),
                },
            ),
            other => ("internal", ApiError::Internal(other.to_string())),
        };
        Refusal {
            error,
            reason: Some(reason),
            rejected: false,
        }
    })?;
    let (status, label) = match durability {
        Durability::Durable => (StatusCode::OK, "durable"),
        Durability::Staged => (StatusCode::ACCEPTED, "staged"),
    };
    let resp = axum::response::IntoResponse::into_response((
        status,
        Json(TelemetryAck {
            accepted: ack.accepted,
            durability: label.into(),
        }),
    ));
    // Durable values are committed: the position the writer read after the commit covers
    // them (read here only if it could not).
    let resp = match ack.wal_lsn {
        Some(lsn) => crate::consistency::with_known_lsn(resp, Some(atlas_replication::Lsn(lsn))),
        None => crate::consistency::with_lsn(state, resp).await,
    };
    Ok((resp, ack.accepted))
}

#[cfg(test)]
mod tests {
    use super::{Reading, value_field};

    fn in_array(i: usize) -> String {
        format!("[{i}]")
    }

    #[test]
    fn a_refused_row_is_named_by_its_reading_and_value() {
        let readings: Vec<Reading> = serde_json::from_value(serde_json::json!([
            {"entity_id": 1, "values": {"b": 1, "a": 2}},
            {"entity_id": 2, "values": {"c": 3}},
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        // Rows follow the readings, and each reading's values in key order (as typed).
        assert_eq!(
            value_field(&readings, &in_array, 0).as_deref(),
            Some("[0].values.a")
        );
        assert_eq!(
            value_field(&readings, &in_array, 1).as_deref(),
            Some("[0].values.b")
        );
        assert_eq!(
            value_field(&readings, &in_array, 2).as_deref(),
            Some("[1].values.c")
        );
        assert_eq!(value_field(&readings, &in_array, 3), None);
        assert_eq!(
            value_field(&readings[1..], &|_| String::new(), 0).as_deref(),
            Some("values.c")
        );
    }
}
