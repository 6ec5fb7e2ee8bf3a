//! The one error type of the API and its mapping to HTTP: every failure is
//! `{"error": {"code", "message", "field"}}` with the status that fits.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use atlas_store::StoreError;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Its code, message and the field at fault.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_field`, `not_found`, `rate_limited`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The request field at fault (JSON path like `entities[2].entity_type`, or a query or
    /// path parameter), when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Every way a request can fail.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 400: the request cannot be read (malformed JSON, wrong type, bad parameter).
    #[error("{message}")]
    BadRequest {
        /// Stable machine-readable code (`invalid_field`, `trailing_input`, …).
        code: &'static str,
        /// What is wrong with the input and, where there is one, how to fix it.
        message: String,
        /// Field at fault.
        field: Option<String>,
    },
    /// 401: no, unknown or revoked credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: valid credentials that may not do this (deactivated tenant).
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such thing (for this tenant).
    #[error("{0} not found")]
    NotFound(String),
    /// 404 for a reference inside the request (e.g. an entity id in a telemetry item).
    #[error("{message}")]
    UnknownReference {
        /// Which reference is unknown.
        message: String,
        /// Field holding the reference.
        field: String,
    },
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: conflicts with existing state.
    #[error("{message}")]
    Conflict {
        /// What the request conflicts with.
        message: String,
        /// Field at fault.
        field: Option<String>,
    },
    /// 413: body over the limit.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 413 with a specific explanation (e.g. too many values in one request).
    #[error("{0}")]
    TooLarge(String),
    /// 415: the body is not JSON.
    #[error("request body must be application/json")]
    UnsupportedMediaType,
    /// 422: readable but semantically invalid.
    #[error("{message}")]
    Unprocessable {
        /// Stable machine-readable code (`invalid_value`, …).
        code: &'static str,
        /// Why the value cannot be used and, where there is one, how to fix it.
        message: String,
        /// Field at fault.
        field: Option<String>,
    },
    /// 429: the tenant's request budget is spent.
    #[error("rate limit exceeded; retry after {retry_after_s} s")]
    RateLimited {
        /// Seconds until a request will be accepted.
        retry_after_s: u64,
    },
    /// 429 (a rate quota: values per day) or 409 (a capacity quota: entities, stored values):
    /// the tenant's quota would be exceeded; nothing of the request was written.
    #[error("{message}")]
    Quota {
        /// The quota, as named in the tenant's limits (`max_values_per_day`, …).
        quota: String,
        /// What would exceed it, and the limit.
        message: String,
        /// For a rate quota: seconds until it resets (429 with `Retry-After`); `None` for a
        /// capacity quota (409).
        retry_after_s: Option<u64>,
    },
    /// 503: a dependency (the database) is unreachable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an unexpected database error (logged, not shown).
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// 400 for a named field.
    pub fn bad_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code: "invalid_field",
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// 422 for a named field.
    pub fn invalid_value(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Unprocessable {
            code: "invalid_value",
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// The HTTP status it is answered with (the one place errors map to statuses).
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::UnknownReference { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } | ApiError::TooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. }
            | ApiError::Quota {
                retry_after_s: Some(_),
                ..
            } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Quota { .. } => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code of the error body.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } | ApiError::Unprocessable { code, .. } => code,
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) | ApiError::UnknownReference { .. } => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict { .. } => "conflict",
            ApiError::PayloadTooLarge { .. } | ApiError::TooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Quota { .. } => "quota_exceeded",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            ApiError::BadRequest { field, .. }
            | ApiError::Unprocessable { field, .. }
            | ApiError::Conflict { field, .. } => field.clone(),
            ApiError::UnknownReference { field, .. } => Some(field.clone()),
            ApiError::Quota { quota, .. } => Some(quota.clone()),
            ApiError::PayloadTooLarge { .. } | ApiError::UnsupportedMediaType => {
                Some("body".into())
            }
            _ => None,
        }
    }
}

/// Seconds a client should wait before retrying while the database is unreachable.
const UNAVAILABLE_RETRY_AFTER_S: u64 = 2;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                field: self.field(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::RateLimited { retry_after_s }
            | ApiError::Quota {
                retry_after_s: Some(retry_after_s),
                ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            ApiError::Unavailable(_) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(UNAVAILABLE_RETRY_AFTER_S),
                );
            }
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            return ApiError::Unavailable("the database is unavailable".into());
        }
        match e {
            StoreError::Invalid { field, message } => ApiError::Unprocessable {
                code: "invalid_value",
                message,
                field: Some(field),
            },
            StoreError::Conflict { field, message } => ApiError::Conflict {
                message,
                field: Some(field),
            },
            StoreError::NotFound(what) => ApiError::NotFound(what.to_owned()),
            StoreError::Quota { quota, message } => ApiError::Quota {
                quota: quota.to_owned(),
                message,
                retry_after_s: None,
            },
            // A data exception (class 22: out of range, bad encoding…) is the input's fault;
            // validation should have named the field, but it must never become a 500.
            StoreError::Db(db) if db.code().is_some_and(|c| c.code().starts_with("22")) => {
                ApiError::Unprocessable {
                    code: "invalid_value",
                    message: format!(
                        "the database refused a value: {}",
                        db.as_db_error()
                            .map(|d| d.message())
                            .unwrap_or("data exception")
                    ),
                    field: None,
                }
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}
