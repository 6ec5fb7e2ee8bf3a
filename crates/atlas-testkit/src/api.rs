//! The Atlas HTTP API as tests drive it: attributes, tenants with keys and entities made
//! through the same routes as any client.

use reqwest::Method;
use serde_json::{Value, json};

/// A running server's API, with its admin token.
#[derive(Debug, Clone)]
pub struct Api {
    /// `http://host:port`.
    pub base: String,
    /// The client (keeps connections).
    pub http: reqwest::Client,
    /// The server's admin token.
    pub admin_token: String,
}

impl Api {
    /// The API at `base` whose admin token is `admin_token`.
    pub fn new(base: &str, admin_token: &str) -> Self {
        Self {
            base: base.to_owned(),
            http: reqwest::Client::new(),
            admin_token: admin_token.to_owned(),
        }
    }

    /// Sends `body` (when any) to `path` with `token`; returns the status and the JSON body
    /// (Null when empty or not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Defines an attribute through the admin API; returns its id.
    pub async fn define(&self, attribute: Value) -> i64 {
        let (status, b) = self
            .call(
                Method::POST,
                "/v1/admin/attributes",
                &self.admin_token,
                Some(&attribute),
            )
            .await;
        assert_eq!(status, 201, "{b}");
        b["attribute_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no attribute_id: {b}"))
    }

    /// A tenant and one key for it, through the admin API: `(tenant_id, secret)`.
    pub async fn tenant(&self, name: &str) -> (i64, String) {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/admin/tenants",
                &self.admin_token,
                Some(&json!({"tenant_name": name})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let id = body["tenant_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no tenant_id: {body}"));
        let (status, key) = self
            .call(
                Method::POST,
                &format!("/v1/admin/tenants/{id}/keys"),
                &self.admin_token,
                Some(&json!({})),
            )
            .await;
        assert_eq!(status, 201, "{key}");
        let secret = key["secret"]
            .as_str()
            .unwrap_or_else(|| panic!("no secret: {key}"))
            .to_owned();
        (id, secret)
    }

    /// Registers `n` sensors for the tenant of `key`; returns their ids.
    pub async fn entities(&self, key: &str, n: usize) -> Vec<i64> {
        let body: Vec<Value> = (0..n)
            .map(|i| json!({"entity_type": "sensor", "cold_attrs": {"serial": i}}))
            .collect();
        let (status, page) = self
            .call(Method::POST, "/v1/entities", key, Some(&json!(body)))
            .await;
        assert_eq!(status, 201, "{page}");
        page["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no items: {page}"))
            .iter()
            .map(|e| {
                e["entity_id"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("no entity_id: {e}"))
            })
            .collect()
    }
}
