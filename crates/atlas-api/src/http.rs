//! The HTTP conventions around every route: request ids, CORS for browser dashboards, and the
//! request timeout (compression both ways is tower-http's, wired in [`crate::router`]).

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestId, RequestId};

use crate::error::ApiError;

/// Gives a request without an `X-Request-Id` a random one (128 bits, hex); a client's own id
/// is kept, so a gateway's id follows the request through.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIds;

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        let id = format!("{:032x}", rand::rng().random::<u128>());
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// Answers a request that takes longer than the configured timeout with 503 and
/// `Retry-After` (the uniform error); dropping the handler cancels its database work.
pub async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(format!(
            "the request took longer than {} ms; retry",
            limit.as_millis()
        ))
        .into_response(),
    }
}

/// Headers a browser client may send (beyond the CORS-safelisted ones).
const ALLOWED_HEADERS: [&str; 5] = [
    "authorization",
    "content-type",
    "x-atlas-consistency",
    "x-atlas-min-lsn",
    "x-request-id",
];

/// Headers a browser client may read from answers.
const EXPOSED_HEADERS: [&str; 6] = [
    "x-atlas-cache",
    "x-atlas-served-by",
    "x-atlas-lag-ms",
    "x-atlas-lsn",
    "x-request-id",
    "retry-after",
];

/// CORS for the configured origins (`*`: any); `None` when none are configured, so no CORS
/// header is ever sent.
pub fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let names = |list: &[&str]| -> Vec<HeaderName> {
        list.iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect()
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers(names(&ALLOWED_HEADERS))
            .expose_headers(names(&EXPOSED_HEADERS))
            .max_age(Duration::from_secs(600))
            .vary([header::ORIGIN]),
    )
}
