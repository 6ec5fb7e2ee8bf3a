//! The OpenAPI 3 document, generated from the handlers and types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::openapi_docs::Docs;
use crate::routes::{admin, health, reads, telemetry, tenant};

/// The schema of a body that is one `item` object or an array of `min`..=`max` of them.
pub fn one_or_many(
    item: &str,
    min: usize,
    max: Option<usize>,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder, Ref};
    OneOfBuilder::new()
        .item(Ref::from_schema_name(item))
        .item(
            ArrayBuilder::new()
                .items(Ref::from_schema_name(item))
                .min_items(Some(min))
                .max_items(max),
        )
        .into()
}

/// Every operation of the document, to modify.
pub(crate) fn operations_mut(
    openapi: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    openapi.paths.paths.values_mut().flat_map(|item| {
        [
            item.get.as_mut(),
            item.post.as_mut(),
            item.patch.as_mut(),
            item.delete.as_mut(),
        ]
        .into_iter()
        .flatten()
    })
}

/// Adds the two bearer schemes: the admin token and tenant API keys.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The operator's ATLAS_ADMIN_TOKEN"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "tenant_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("atlas_<prefix>_<secret>")
                    .description(Some("A tenant API key issued by the admin API"))
                    .build(),
            ),
        );
    }
}

/// Documents the routing headers on the operations that honour them: reads take
/// `X-Atlas-Consistency` and answer `X-Atlas-Served-By` / `X-Atlas-Lag-Ms`; writes answer
/// `X-Atlas-Lsn` (see `routing`). `X-Atlas-Min-Lsn` is described, not declared: Schemathesis
/// ignores a header's `pattern` and would send values any server must refuse.
struct RoutingHeaders;

/// Operations routed by consistency (their handlers take `ReadFrom` and answer via `served`).
const ROUTED_READS: &[&str] = &[
    "hot_attributes",
    "search",
    "latest",
    "series",
    "aggregates",
    "attribute_stats",
    "list_entities",
    "get_entity",
];
/// Operations answered through `with_lsn`.
const LSN_WRITES: &[&str] = &[
    "ingest",
    "register_entities",
    "update_entity",
    "delete_entity",
];

impl Modify for RoutingHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ObjectBuilder, RefOr, Required, Type};

        let text = |pattern: Option<&str>| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(pattern)
        };
        let header = |schema: ObjectBuilder, description: &str| {
            HeaderBuilder::new()
                .schema(schema)
                .description(Some(description))
                .build()
        };
        for op in operations_mut(openapi) {
            let id = op.operation_id.clone().unwrap_or_default();
            let read = ROUTED_READS.contains(&id.as_str());
            let write = LSN_WRITES.contains(&id.as_str());
            if read {
                let params = op.parameters.get_or_insert_with(Vec::new);
                params.push(
                    ParameterBuilder::new()
                        .name(crate::routing::CONSISTENCY)
                        .parameter_in(ParameterIn::Header)
                        .required(Required::False)
                        .description(Some(
                            "strong (primary), eventual (a replica within the lag budget) or \
                                 analytics (the analytics store, for latest/series/aggregates); \
                                 overrides ?consistency=. (X-Atlas-Min-Lsn, a write's X-Atlas-Lsn, \
                                 makes the answer include that write; see README.)",
                        ))
                        .schema(Some(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .enum_values(Some(["strong", "eventual", "analytics"])),
                        ))
                        .build(),
                );
            }
            if !read && !write {
                continue;
            }
            for (status, response) in op.responses.responses.iter_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                if !status.starts_with('2') {
                    continue;
                }
                if read {
                    response.headers.insert(
                        crate::routing::SERVED_BY.into(),
                        header(text(None), "primary, replica-N, analytics or cache"),
                    );
                    response.headers.insert(
                        crate::routing::LAG_MS.into(),
                        header(
                            ObjectBuilder::new().schema_type(Type::Integer),
                            "How far behind the primary the answer may be (ms)",
                        ),
                    );
                } else {
                    response.headers.insert(
                            crate::routing::LSN.into(),
                            header(
                                text(Some("^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")),
                                "The primary's WAL position after the commit; send it as X-Atlas-Min-Lsn",
                            ),
                        );
                }
            }
        }
    }
}

/// The Atlas HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Atlas", description = "Multi-tenant telemetry store for device fleets. Every error is \
        `{\"error\": {\"code\", \"message\", \"field\"}}`; 429 and 503 carry Retry-After."),
    paths(
        health::healthz, health::readyz, crate::metrics::render,
        admin::create_tenant, admin::list_tenants, admin::get_tenant, admin::deactivate_tenant,
        admin::activate_tenant, admin::issue_key, admin::list_keys, admin::revoke_key,
        admin::define_attribute, admin::update_attribute, admin::list_attributes,
        tenant::me, tenant::attributes, tenant::register_entities, tenant::list_entities,
        tenant::get_entity, tenant::update_entity, tenant::delete_entity,
        telemetry::ingest,
        reads::hot_attributes, reads::search, reads::latest, reads::series, reads::aggregates,
        reads::attribute_stats,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Security, &RoutingHeaders, &Docs),
    tags((name = "health"), (name = "admin", description = "Operator API (admin token)"),
         (name = "tenant", description = "Tenant API (tenant API key)"),
         (name = "reads", description = "Read API (tenant API key): hot attributes, search, series, aggregates"))
)]
pub struct ApiDoc;
