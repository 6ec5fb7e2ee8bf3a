//! The prose and examples of the OpenAPI document that the types and handlers do not carry:
//! a description of every operation (its summary comes from the handler's doc comment) and
//! an example of every schema. A test keeps both complete.

use serde_json::{Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;

/// Adds the descriptions, the examples and `servers`.
pub(crate) struct Docs;

/// Operation id → what a reader of the API needs beyond the summary.
const DESCRIPTIONS: &[(&str, &str)] = &[
    (
        "healthz",
        "Liveness: answers 200 as long as the process serves HTTP, whatever the state of PostgreSQL or Redis. Use /readyz to decide whether to send traffic.",
    ),
    (
        "render",
        "The Prometheus text exposition of this process: every metric with HELP text and a base unit. Failure counters are present at 0 from the start.",
    ),
    (
        "readyz",
        "200 when the primary answers and every migration is applied unchanged, else 503. Replicas and Redis are reported but not required: reads fall back to the primary and to PostgreSQL.",
    ),
    (
        "list_attributes",
        "The global attribute catalogue, every attribute with its data type, flags and validation regex, for the operator.",
    ),
    (
        "define_attribute",
        "Adds an attribute to the global catalogue. Its name and data type are fixed once defined; a taken name is a 409. A validation regex (string attributes only) must compile in linear-time syntax.",
    ),
    (
        "update_attribute",
        "Changes is_hot, is_indexed, validation_regex or allow_rounding. Turning is_hot on backfills every live entity's projection with its newest value; turning it off removes the attribute from every projection (the time series keeps all values).",
    ),
    (
        "list_tenants",
        "Tenants in id order, a page at a time: pass the previous page's next_cursor as cursor.",
    ),
    (
        "create_tenant",
        "Creates a tenant with a unique name (409 when taken). Issue it a key with POST /v1/admin/tenants/{id}/keys.",
    ),
    (
        "get_tenant",
        "One tenant by id, active or deactivated, with its name and creation time; 404 when there is no such tenant.",
    ),
    (
        "activate_tenant",
        "Makes a deactivated tenant's keys work again (idempotent).",
    ),
    (
        "deactivate_tenant",
        "Refuses the tenant's keys with 403 from now on; its data stays. Other servers notice within the key-cache TTL.",
    ),
    (
        "list_keys",
        "A tenant's API keys with their prefix, label and revocation time; secrets are never shown again.",
    ),
    (
        "issue_key",
        "Issues a 256-bit API key for the tenant. The secret is in this answer only (it is stored as a SHA-256 hash): give it to the tenant now.",
    ),
    (
        "revoke_key",
        "Revokes a key: it gets 401 from now on (other servers within the key-cache TTL). Revoking twice is not an error.",
    ),
    (
        "aggregates",
        "avg, min, max, sum or count of a numeric attribute in UTC-aligned buckets, over the whole tenant, one entity (entity_id) or one type (entity_type). from and to are epoch milliseconds or RFC 3339 times; at most 10 000 buckets and the configured longest range. Cached per tenant until its next write.",
    ),
    (
        "attributes",
        "The global attribute catalogue as a tenant sees it: names, data types and which attributes are hot (searchable).",
    ),
    (
        "list_entities",
        "The tenant's live entities in id order, a page at a time (limit, cursor), optionally of one entity_type.",
    ),
    (
        "register_entities",
        "Registers one entity (an object) or up to the configured maximum (an array) in one transaction; the server assigns ids. cold_attrs are free-form properties (a JSON object).",
    ),
    (
        "search",
        "Entities whose hot attributes match every given condition: contains (JSON containment, typed: 8 is not \"8\"), has_key, has_any, has_all, optionally of one entity_type; a page at a time. Served by the GIN index under tenant isolation.",
    ),
    (
        "get_entity",
        "One of the tenant's entities with its properties and version; another tenant's id is a 404.",
    ),
    (
        "delete_entity",
        "Soft-deletes the entity: every read stops showing it, telemetry for it is refused, and its stored values stay in the time series.",
    ),
    (
        "update_entity",
        "Changes the entity's type and/or replaces its properties (cold_attrs). With version, the change applies only if the entity is still at that version (else 409), so concurrent editors do not overwrite each other.",
    ),
    (
        "hot_attributes",
        "The newest value of each hot attribute of the entity and its event time, from Redis when cached (X-Atlas-Cache: hit) or from the projection; never older than a committed write.",
    ),
    (
        "latest",
        "The newest stored value of one attribute of the entity, typed, with its event time; null when the entity has none.",
    ),
    (
        "series",
        "The entity's values of one attribute in [from, to), oldest first, a page at a time (limit, cursor). from and to are epoch milliseconds or RFC 3339 times within the configured longest range.",
    ),
    (
        "me",
        "The tenant the calling key belongs to: a cheap way to check a key.",
    ),
    (
        "attribute_stats",
        "Per attribute the tenant has values of: how many values, how many entities, oldest and newest time, as of the last periodic refresh.",
    ),
    (
        "ingest",
        "Stores readings: one object or an array. Each value must fit its attribute's data type; ts is epoch milliseconds (the receipt time when absent). durability=durable (default) answers after the commit; staged answers after the values are staged, stored by the background drain. A replayed reading stores nothing twice; telemetry is rate-limited per value.",
    ),
];

fn attribute() -> Value {
    json!({"attribute_id": 1, "attribute_name": "temperature", "data_type": "decimal",
           "is_indexed": false, "is_hot": false, "validation_regex": null, "allow_rounding": false,
           "created_at": "2026-12-01T09:00:00Z", "updated_at": "2026-12-01T09:00:00Z"})
}

fn entity() -> Value {
    json!({"entity_id": 1, "entity_type": "sensor", "cold_attrs": {"label": "boiler room"},
           "version": 2, "created_at": "2026-12-01T09:00:00Z", "updated_at": "2026-12-01T10:00:00Z"})
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

/// Schema name → an example of it.
fn example(schema: &str) -> Option<Value> {
    let bucket = json!({"ts": 1_764_579_600_000_i64, "value": 21.4, "count": 60});
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
        "Bucket" => bucket,
        "DataType" => json!("decimal"),
        "Entity" => entity(),
        "EntityChanges" => json!({"cold_attrs": {"label": "boiler room"}, "version": 2}),
        "EntityInput" => json!({"entity_type": "sensor", "cold_attrs": {"label": "boiler room"}}),
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
        "IssuedKey" => json!({"key_id": 3, "tenant_id": 1, "prefix": "k3Xq9bT2mN8a",
                              "secret": "atlas_k3Xq9bT2mN8a_6f1c0d9e8b7a6f5e4d3c2b1a09f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a190",
                              "name": "gateway-eu", "created_at": "2026-12-01T09:30:00Z"}),
        "KeyList" => json!({"items": [key_info()]}),
        "Latest" => json!({"entity_id": 1, "attribute": "temperature", "latest": point()}),
        "Me" => json!({"tenant_id": 1, "tenant_name": "acme"}),
        "NewAttribute" => {
            json!({"attribute_name": "temperature", "data_type": "decimal", "is_hot": true})
        }
        "NewKey" => json!({"name": "gateway-eu"}),
        "NewTenant" => json!({"tenant_name": "acme"}),
        "Point" => point(),
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
            let id = op.operation_id.as_deref().unwrap_or("");
            if let Some((_, text)) = DESCRIPTIONS.iter().find(|(op_id, _)| *op_id == id) {
                op.description = Some((*text).to_owned());
            }
            // A time range's ends are required: utoipa drops `required` for parameters
            // whose schema is built by a function (`schema_with`).
            for p in op.parameters.iter_mut().flatten() {
                if p.name == "from" || p.name == "to" {
                    p.required = utoipa::openapi::Required::True;
                }
            }
        }
    }
}
