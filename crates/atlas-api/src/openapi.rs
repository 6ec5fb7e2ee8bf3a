//! The OpenAPI 3 document: its frame here (info, tags, security schemes), its paths from the
//! route list in [`crate::routes::api`], its examples from `openapi_docs`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::openapi_docs::Docs;

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

/// The Atlas HTTP API's frame; [`document`] is the whole document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Atlas", description = "Multi-tenant telemetry store for device fleets. Every error is \
        `{\"error\": {\"code\", \"message\", \"field\"}}`; 429 and 503 carry Retry-After."),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Security),
    tags((name = "health"), (name = "admin", description = "Operator API (admin token)"),
         (name = "tenant", description = "Tenant API (tenant API key)"),
         (name = "reads", description = "Read API (tenant API key): hot attributes, search, series, aggregates"))
)]
pub struct ApiDoc;

/// The whole document, as served at `/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut openapi = crate::routes::api().into_openapi();
    finish(&mut openapi);
    openapi
}

/// Adds what needs the operations to be present (the route list adds them after the frame).
pub(crate) fn finish(openapi: &mut utoipa::openapi::OpenApi) {
    Docs.modify(openapi);
}
