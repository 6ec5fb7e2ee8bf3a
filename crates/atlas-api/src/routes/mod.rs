//! Route handlers, grouped by who may call them, and [`api`], the one list of routes from which
//! both the axum router and the OpenAPI document are built.

pub mod admin;
pub mod health;
pub mod limits;
pub mod reads;
pub mod telemetry;
pub mod tenant;

use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

/// Every route of the API: each handler's `#[utoipa::path]` gives its method, path and
/// operation (parameters, responses, headers); `routes!` registers both. Handlers of the same
/// path share one `routes!`.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(crate::metrics::render))
        .routes(routes!(admin::create_tenant, admin::list_tenants))
        .routes(routes!(admin::get_tenant))
        .routes(routes!(admin::deactivate_tenant))
        .routes(routes!(admin::activate_tenant))
        .routes(routes!(limits::get_limits, limits::change_limits))
        .routes(routes!(admin::issue_key, admin::list_keys))
        .routes(routes!(admin::revoke_key))
        .routes(routes!(admin::define_attribute, admin::list_attributes))
        .routes(routes!(admin::update_attribute))
        .routes(routes!(admin::attribute_backfill))
        .routes(routes!(admin::status))
        .routes(routes!(tenant::me))
        .routes(routes!(telemetry::ingest))
        .routes(routes!(tenant::attributes))
        .routes(routes!(tenant::dead_letters))
        .routes(routes!(tenant::ingest_stats))
        .routes(routes!(tenant::entity_types))
        .routes(routes!(tenant::register_entities, tenant::list_entities))
        .routes(routes!(
            tenant::get_entity,
            tenant::update_entity,
            tenant::delete_entity
        ))
        .routes(routes!(reads::search))
        .routes(routes!(reads::hot_attributes))
        .routes(routes!(reads::latest))
        .routes(routes!(reads::series))
        .routes(routes!(reads::aggregates))
        .routes(routes!(reads::query))
        .routes(routes!(reads::attribute_stats))
}
