//! What the OpenAPI document needs that the types do not carry: an example of every schema
//! (an operation's summary and description are its handler's doc comment). A test keeps both
//! complete.

use serde_json::{Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;

/// Adds the examples and `servers`.
pub(crate) struct Docs;

fn attribute() -> Value {
    json!({"attribute_id": 1, "attribute_name": "temperature", "data_type": "decimal",
           "is_indexed": false, "is_hot": false, "validation_regex": null, "allow_rounding": false,
           "created_at": "2026-12-01T09:00:00Z", "updated_at": "2026-12-01T09:00:00Z"})
}

fn entity() -> Value {
    json!({"entity_id": 1, "entity_type": "sensor", "cold_attrs": {"label": "boiler room"},
           "hot_attrs": {"status": "online", "priority": 3}, "version": 2, "created_at": "2026-12-01T09:00:00Z", "updated_at": "2026-12-01T10:00:00Z"})
}

fn dead_letter() -> Value {
    json!({"dead_letter_id": 7, "entity_id": 1, "attribute": "temperature", "value": "21.5",
           "ingested_at": "2026-12-01T09:00:00Z",
           "reason": "a different value is already stored for this entity, attribute and time",
           "failed_at": "2026-12-01T09:00:01Z"})
}

fn ingest_latency() -> Value {
    json!({"mean_ms": 4.2, "p50_ms": 5, "p99_ms": 20})
}

fn ingest_minute() -> Value {
    json!({"minute": "2026-12-01T09:00:00Z", "stored": 90, "refused": {"invalid_value": 3},
           "requests": 1, "latency": ingest_latency()})
}

fn key_info() -> Value {
    json!({"key_id": 3, "tenant_id": 1, "prefix": "k3Xq9bT2mN8a", "name": "gateway-eu",
           "created_at": "2026-12-01T09:30:00Z", "revoked_at": null})
}

fn point() -> Value {
    json!({"ts": 1_764_580_000_000_i64, "time": "2026-12-01T09:06:40.000000Z", "value": 21.5})
}

fn tenant() -> Value {
    json!({"tenant_id": 1, "tenant_name": "acme", "created_at": "2026-12-01T09:00:00Z", "is_active": true})
}

fn stats() -> Value {
    json!({"attribute_id": 1, "attribute_name": "temperature", "distinct_entities": 100,
           "total_values": 6000, "oldest": "2026-12-01T08:00:00Z", "newest": "2026-12-01T09:00:00Z"})
}

fn hit() -> Value {
    json!({"entity_id": 1, "entity_type": "sensor", "attributes": {"status": "online", "priority": 3}})
}

fn reading() -> Value {
    json!({"entity_id": 1, "ts": 1_764_580_000_000_i64, "values": {"temperature": 21.5, "status": "online"}})
}

fn limit_values() -> Value {
    json!({"raw_days": 90, "rollup_1m_days": 30, "rollup_1h_days": 400, "rollup_1d_days": 0,
           "dead_letter_days": 30, "max_entities": 5000, "max_values_per_day": 0, "max_stored_values": 0})
}

/// Schema name → an example of it.
fn example(schema: &str) -> Option<Value> {
    let bucket = json!({"ts": 1_764_579_600_000_i64, "value": 21.4, "count": 60});
    let bucket = &bucket;
    Some(match schema {
        "AggFn" => json!("avg"),
        "Aggregate" => {
            json!({"attribute": "temperature", "fn": "avg", "bucket": "1h", "items": [bucket]})
        }
        "ApiKeyInfo" => key_info(),
        "Attribute" => attribute(),
        "AttributeChanges" => json!({"is_hot": true}),
        "AttributeList" => json!({"items": [attribute()]}),
        "AttributeStats" => stats(),
        "Bucket" => bucket.clone(),
        "DataType" => json!("decimal"),
        "BackfillReport" => json!({"attribute_id": 4, "state": "running", "entities_done": 250_000,
                                   "entities_total": 1_000_000, "projections_changed": 231_000,
                                   "started_at": "2026-12-01T09:00:00Z", "updated_at": "2026-12-01T09:00:12Z"}),
        "DeadLetter" => dead_letter(),
        "DeadLetterPage" => {
            json!({"items": [dead_letter()], "next_cursor": "1764579601000000.7"})
        }
        "Entity" => entity(),
        "EntityChanges" => json!({"cold_attrs": {"label": "boiler room"}, "version": 2}),
        "EntityInput" => json!({"entity_type": "sensor", "cold_attrs": {"label": "boiler room"}}),
        "EntityTypePage" => json!({"items": ["sensor", "valve"], "next_cursor": "valve"}),
        "EntityPage" => json!({"items": [entity()], "next_cursor": "1"}),
        "ErrorBody" => {
            json!({"error": {"code": "invalid_field", "message": "expected an integer, got 2.5", "field": "[0].values.priority"}})
        }
        "ErrorDetail" => {
            json!({"code": "invalid_field", "message": "expected an integer, got 2.5", "field": "[0].values.priority"})
        }
        "Health" => json!({"status": "ok"}),
        "HotAttributes" => {
            json!({"entity_id": 1, "attributes": {"status": "online", "priority": 3},
                                  "ts": {"status": 1_764_580_000_000_i64, "priority": 1_764_579_000_000_i64}})
        }
        "IngestLatency" => ingest_latency(),
        "IngestMinute" => ingest_minute(),
        "IngestStatsBody" => json!({"from": "2026-12-01T08:01:00Z", "minutes": 60, "stored": 5_400,
                                    "refused": {"invalid_value": 3, "rate_limited": 200}, "requests": 54,
                                    "latency": ingest_latency(), "per_minute": [ingest_minute()]}),
        "IssuedKey" => json!({"key_id": 3, "tenant_id": 1, "prefix": "k3Xq9bT2mN8a",
                              "secret": "atlas_k3Xq9bT2mN8a_6f1c0d9e8b7a6f5e4d3c2b1a09f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a190",
                              "name": "gateway-eu", "created_at": "2026-12-01T09:30:00Z"}),
        "KeyList" => json!({"items": [key_info()]}),
        "Latest" => json!({"entity_id": 1, "attribute": "temperature", "latest": point()}),
        "Me" => json!({"tenant_id": 1, "tenant_name": "acme", "limits": limit_values(),
                       "usage": {"entities": 1200, "values_today": 350_000, "stored_values": 41_000_000}}),
        "Usage" => json!({"entities": 1200, "values_today": 350_000, "stored_values": 41_000_000}),
        "LimitValues" => limit_values(),
        "LimitOverrides" => json!({"raw_days": 90, "rollup_1m_days": null, "rollup_1h_days": null,
                                   "rollup_1d_days": null, "dead_letter_days": null, "max_entities": 5000,
                                   "max_values_per_day": null, "max_stored_values": null}),
        "LimitsChange" => json!({"raw_days": 90, "max_entities": 5000, "max_values_per_day": null}),
        "TenantLimits" => json!({"tenant_id": 1, "limits": limit_values(),
                                 "overrides": {"raw_days": 90, "rollup_1m_days": null, "rollup_1h_days": null,
                                               "rollup_1d_days": null, "dead_letter_days": null, "max_entities": 5000,
                                               "max_values_per_day": null, "max_stored_values": null}}),
        "NewAttribute" => {
            json!({"attribute_name": "temperature", "data_type": "decimal", "is_hot": true})
        }
        "NewKey" => json!({"name": "gateway-eu"}),
        "NewTenant" => json!({"tenant_name": "acme"}),
        "Point" => point(),
        "QueryRequest" => json!({"attributes": ["temperature", "humidity"], "entity_ids": [1, 2],
                                 "from": 1_764_000_000_000_i64, "to": 1_764_604_800_000_i64,
                                 "fn": "avg", "max_points": 500}),
        "QueryResult" => json!({"fn": "avg", "bucket": "30m",
                                "series": [{"entity_id": 1, "attribute": "temperature", "points": [bucket]}]}),
        "QuerySeries" => json!({"entity_id": 1, "attribute": "temperature", "points": [bucket]}),
        "Readiness" => {
            json!({"status": "ready", "primary": "up", "migrations": "current", "replicas": ["up"], "redis": "up"})
        }
        "RegisterBody" => {
            json!([{"entity_type": "sensor", "cold_attrs": {"label": "boiler room"}}, {"entity_type": "pump"}])
        }
        "SearchBody" => {
            json!({"contains": {"status": "online"}, "entity_type": "sensor", "limit": 100})
        }
        "SearchHit" => hit(),
        "SearchPage" => json!({"items": [hit()], "next_cursor": "1"}),
        "SeriesPage" => {
            json!({"entity_id": 1, "attribute": "temperature", "items": [point()], "next_cursor": null})
        }
        "StatsList" => json!({"items": [stats()]}),
        "TelemetryAck" => json!({"accepted": 2, "durability": "durable"}),
        "TelemetryBody" => json!([reading(), {"entity_id": 2, "values": {"status": "offline"}}]),
        "TelemetryItem" => reading(),
        "Tenant" => tenant(),
        "TenantPage" => json!({"items": [tenant()], "next_cursor": null}),
        _ => return None,
    })
}

fn set_example(schema: &mut Schema, value: Value) {
    match schema {
        Schema::Object(o) => o.examples = vec![value],
        Schema::OneOf(o) => o.examples = vec![value],
        Schema::AllOf(o) => o.examples = vec![value],
        Schema::AnyOf(o) => o.examples = vec![value],
        Schema::Array(a) => a.examples = vec![value],
        _ => {}
    }
}

impl utoipa::Modify for Docs {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi.servers = Some(vec![
            utoipa::openapi::ServerBuilder::new()
                .url("/")
                .description(Some(
                    "This Atlas server (the document is served by every server)",
                ))
                .build(),
        ]);
        if let Some(components) = openapi.components.as_mut() {
            for (name, schema) in components.schemas.iter_mut() {
                if let (RefOr::T(schema), Some(value)) = (schema, example(name)) {
                    set_example(schema, value);
                }
            }
        }
        for op in crate::openapi::operations_mut(openapi) {
            // A response without a description is not valid OpenAPI: say what its status says.
            // An answer header states its meaning where readers look for it, not in its schema.
            for (status, response) in op.responses.responses.iter_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                if response.description.is_empty() {
                    response.description = status
                        .parse::<u16>()
                        .ok()
                        .and_then(|s| axum::http::StatusCode::from_u16(s).ok())
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("")
                        .to_owned();
                }
                for header in response.headers.values_mut() {
                    if let RefOr::T(header) = header
                        && header.description.is_none()
                        && let Some(RefOr::T(Schema::Object(schema))) = &mut header.schema
                    {
                        header.description = schema.description.take();
                    }
                }
            }
            // A time range's ends are required: utoipa drops `required` for parameters
            // whose schema is built by a function (`schema_with`).
            for p in op.parameters.iter_mut().flatten() {
                if let RefOr::T(p) = p
                    && (p.name == "from" || p.name == "to")
                {
                    p.required = utoipa::openapi::Required::True;
                }
            }
        }
    }
}
