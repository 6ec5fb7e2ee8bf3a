//! Request extractors whose failures are [`ApiError`]s naming the field at fault.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The JSON path of a deserialization error (for a missing field, the field itself).
fn error_field(path: &serde_path_to_error::Path, message: &str) -> String {
    let mut field = path.to_string();
    if field == "." {
        field.clear();
    }
    // serde reports a missing field at its parent (an unknown one at itself).
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some(name) = rest.split('`').next()
    {
        if !field.is_empty() {
            field.push('.');
        }
        field.push_str(name);
    }
    if field.is_empty() {
        "body".to_owned()
    } else {
        field
    }
}

/// Deserializes JSON, naming the failing field. The input must be exactly one JSON document
/// (plus whitespace): anything after it — a second document a gateway concatenated, stray
/// characters — is a 400, never silently dropped while the first is acknowledged.
pub fn from_json_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let inner = e.inner();
        let message = inner.to_string();
        let field = error_field(e.path(), &message);
        if inner.is_syntax() || inner.is_eof() {
            ApiError::BadRequest {
                code: "malformed_json",
                message: format!("request body is not valid JSON: {message}"),
                field: Some("body".into()),
            }
        } else {
            ApiError::bad_field(field, message)
        }
    })?;
    de.end().map_err(|_| trailing_input(bytes))?;
    Ok(value)
}

/// The 400 for input after the first JSON document, naming where it starts.
fn trailing_input(bytes: &[u8]) -> ApiError {
    // The document ended where serde_json stopped; what follows it, less whitespace, is the
    // offending input. Find its start by re-reading one value (cheap: this is the error path).
    let mut stream =
        serde_json::Deserializer::from_slice(bytes).into_iter::<serde::de::IgnoredAny>();
    let _ = stream.next();
    let end = stream.byte_offset();
    let start = end
        + bytes[end..]
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
    let line = 1 + bytes[..start].iter().filter(|b| **b == b'\n').count();
    let column = 1 + start
        - bytes[..start]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1);
    ApiError::BadRequest {
        code: "trailing_input",
        message: format!(
            "request body continues after its JSON document at byte {start} (line {line}, column \
             {column}); a body is exactly one JSON document — send several readings as one array"
        ),
        field: Some("body".into()),
    }
}

/// A JSON object request body. Checks the content type, the size limit (413), emptiness,
/// syntax, that the document is an object (serde would otherwise fill a struct from an array),
/// and the shape of `T` — each failure names the field.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_json_body(req, state).await?;
        let value: serde_json::Value = from_json_slice(&bytes)?;
        if !value.is_object() {
            return Err(ApiError::bad_field("body", "expected a JSON object"));
        }
        from_json_value(value).map(JsonBody)
    }
}

/// Any JSON document as the body (for endpoints taking an object or an array).
#[derive(Debug)]
pub struct JsonValue(pub serde_json::Value);

impl<S: Send + Sync> FromRequest<S> for JsonValue {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_json_body(req, state).await?;
        from_json_slice(&bytes).map(JsonValue)
    }
}

/// Deserializes an already-parsed JSON value, naming the failing field.
pub fn from_json_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let message = e.inner().to_string();
        let field = error_field(e.path(), &message);
        ApiError::bad_field(field, message)
    })
}

async fn read_json_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
        .unwrap_or(false);
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let limit = crate::body_limit(&req);
    let bytes = Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::BadRequest {
                code: "unreadable_body",
                message: e.body_text(),
                field: Some("body".into()),
            }
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest {
            code: "empty_body",
            message: "request body is empty; a JSON document is required".into(),
            field: Some("body".into()),
        });
    }
    Ok(bytes)
}

/// Query parameters, naming the failing parameter.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(QueryParams)
            .map_err(|e| {
                let message = e.inner().to_string();
                // A repeated parameter is reported at the root; name it, not the body.
                let field = match message
                    .strip_prefix("duplicate field `")
                    .and_then(|rest| rest.split('`').next())
                {
                    Some(name) => name.to_owned(),
                    None => match error_field(e.path(), &message) {
                        f if f == "body" => "query".to_owned(),
                        f => f,
                    },
                };
                let message = if message.starts_with("duplicate field") {
                    format!("`{field}` is given more than once; give it once")
                } else {
                    format!("invalid query parameter: {message}")
                };
                ApiError::bad_field(field, message)
            })
    }
}

/// A numeric id in the path (`/{id}`); anything else is a 400 naming it.
#[derive(Debug, Clone, Copy)]
pub struct PathId(pub i64);

/// Two numeric ids in the path (`/{id}/…/{sub_id}`).
#[derive(Debug, Clone, Copy)]
pub struct PathIds(pub i64, pub i64);

/// Plain decimal digits without leading zeros only: `i64::from_str` would also take `+1`,
/// `-1` or `01`, so one entity would answer to several paths.
fn parse_id(name: &str, raw: &str) -> Result<i64, ApiError> {
    let digits = !raw.is_empty()
        && raw.bytes().all(|b| b.is_ascii_digit())
        && (raw == "0" || !raw.starts_with('0'));
    digits
        .then(|| raw.parse::<i64>().ok())
        .flatten()
        .ok_or_else(|| {
            ApiError::bad_field(
                name.to_owned(),
                format!(
                    "`{raw}` is not an id: ids are decimal digits without sign or leading zeros, \
                 at most 9223372036854775807"
                ),
            )
        })
}

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw): axum::extract::Path<String> =
            axum::extract::Path::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_field("id", e.body_text()))?;
        parse_id("id", &raw).map(PathId)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PathIds {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path((a, b)): axum::extract::Path<(String, String)> =
            axum::extract::Path::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_field("id", e.body_text()))?;
        Ok(PathIds(parse_id("id", &a)?, parse_id("key_id", &b)?))
    }
}

/// An optional integer field that, like JSON Schema's `integer`, also accepts an integral
/// number written with a fraction (`102.0`); `102.5` is refused.
pub fn integral_i32<'de, D>(de: D) -> Result<Option<i32>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    atlas_ingest::typing::integral_i64_opt(de)?
        .map(|v| i32::try_from(v).map_err(|_| D::Error::custom(format!("{v} is out of range"))))
        .transpose()
}

/// [`double_option`] of an integer that, like JSON Schema's `integer`, also accepts an
/// integral number written with a fraction (`102.0`): absent, `null`, or the integer.
pub fn double_option_integral<'de, D>(de: D) -> Result<Option<Option<i64>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    atlas_ingest::typing::integral_i64_opt(de).map(Some)
}

/// A JSON field that distinguishes "absent" (`None`) from `null` (`Some(None)`).
pub fn double_option<'de, T, D>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    serde::Deserialize::deserialize(de).map(Some)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        name: String,
        n: i64,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        items: Vec<Item>,
    }

    fn field_of(json: &str) -> Option<String> {
        match from_json_slice::<Doc>(json.as_bytes()) {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("expected 400, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field_of(r#"{"items": [{"name": "a", "n": 1}, {"name": "b", "n": "x"}]}"#).as_deref(),
            Some("items[1].n")
        );
        assert_eq!(
            field_of(r#"{"items": [{"name": "a"}]}"#).as_deref(),
            Some("items[0].n")
        );
        assert_eq!(
            field_of(r#"{"items": [{"name": "a", "n": 1, "zz": 0}]}"#).as_deref(),
            Some("items[0].zz")
        );
        assert_eq!(field_of(r#"{}"#).as_deref(), Some("items"));
        assert_eq!(field_of(r#"{"items": [}"#).as_deref(), Some("body"));
        assert_eq!(field_of(r#"[]"#).as_deref(), Some("body"));
    }

    fn trailing_message(json: &str) -> String {
        match from_json_slice::<serde_json::Value>(json.as_bytes()) {
            Err(ApiError::BadRequest {
                code: "trailing_input",
                message,
                field,
            }) => {
                assert_eq!(field.as_deref(), Some("body"));
                message
            }
            other => panic!("expected trailing_input for {json:?}, got {other:?}"),
        }
    }

    #[test]
    fn input_after_the_document_is_refused_naming_where_it_starts() {
        let two = r#"{"a":1}{"a":2}"#;
        assert!(trailing_message(two).contains("at byte 7 (line 1, column 8)"));
        assert!(trailing_message("{\"a\":1} xyz").contains("at byte 8 (line 1, column 9)"));
        assert!(trailing_message("[1]\n\n ]]]").contains("(line 3, column 2)"));
        assert!(trailing_message("1 2").contains("at byte 2"));
        // Whitespace after the document is not input.
        assert!(from_json_slice::<serde_json::Value>(b"{\"a\":1}\r\n\t ").is_ok());
    }

    #[test]
    fn path_ids_are_plain_digits() {
        assert_eq!(parse_id("id", "42").ok(), Some(42));
        assert_eq!(parse_id("id", "0").ok(), Some(0));
        for bad in [
            "+1",
            "-1",
            "01",
            " 1",
            "1 ",
            "",
            "1e3",
            "0x10",
            "9223372036854775808",
        ] {
            assert!(parse_id("id", bad).is_err(), "{bad:?} was taken as an id");
        }
    }
}
