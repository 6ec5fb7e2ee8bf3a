//! The OpenAPI 3 document, generated from the handlers and types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
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
    modifiers(&Security),
    tags((name = "health"), (name = "admin", description = "Operator API (admin token)"),
         (name = "tenant", description = "Tenant API (tenant API key)"),
         (name = "reads", description = "Read API (tenant API key): hot attributes, search, series, aggregates"))
)]
pub struct ApiDoc;
