//! A real server per test: its own database, an ephemeral port, an HTTP client.

use atlas_api::AppState;
use atlas_config::{Config, Limits};
use atlas_testkit::TestDb;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use tokio::sync::oneshot;

pub const ADMIN: &str = "test-admin-token-0123456789";

pub struct Server {
    pub base: String,
    pub state: AppState,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    // Last: dropped after the server stopped.
    pub db: TestDb,
}

/// A test server's configuration over `db`: its database, replica and Redis, a cache namespace
/// of its own, the admin token, and no maintenance worker (tests drive maintenance).
pub fn config_for(db: &TestDb) -> Config {
    Config {
        database_url: Some(db.urls.database_url.clone()),
        replica_urls: db.urls.replica_urls.clone(),
        redis_url: Some(db.urls.redis_url.clone()),
        cache_prefix: cache_prefix(db),
        admin_token: Some(ADMIN.into()),
        pool_size: 8,
        maintenance: atlas_config::Maintenance {
            enabled: false,
            ..atlas_config::Maintenance::default()
        },
        cdc: atlas_config::Cdc {
            analytics_database: String::new(),
            ..atlas_config::Cdc::default()
        },
        ..Config::default()
    }
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(Limits::default()).await
    }

    pub async fn start_with(limits: Limits) -> Self {
        Self::configured(TestDb::new().await, |c| c.limits = limits).await
    }

    /// A server as `atlas serve` builds it from [`config_for`] `db`, changed by `change`.
    pub async fn configured(db: TestDb, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = config_for(&db);
        change(&mut config);
        let server = atlas_server::Server::build(&config).unwrap_or_else(|e| panic!("server: {e}"));
        let state = server.state().clone();
        // A server trusts Redis only once it has replaced the cache epoch (in the background,
        // at start): tests that look at what the cache holds must not race that. Bounded: a
        // test that starts with Redis unreachable goes on after it.
        if config.redis_url.is_some() || !config.redis_sentinel_urls.is_empty() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !state.cache().is_trusted() && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            base: format!("http://{addr}"),
            state,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
            db,
        }
    }

    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.req(method, path).bearer_auth(ADMIN)
    }

    /// The Prometheus text of `/metrics` (tests share one process-wide recorder: compare
    /// deltas).
    pub async fn metrics(&self) -> String {
        self.req(Method::GET, "/metrics")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .text()
            .await
            .unwrap_or_default()
    }

    /// One `bigint` an admin query of this server's database answers (counts).
    pub async fn scalar(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> i64 {
        self.db.scalar(sql, params).await
    }

    pub fn as_tenant(&self, key: &str, method: Method, path: &str) -> RequestBuilder {
        self.req(method, path).bearer_auth(key)
    }

    /// The API as the test kit drives it (fleet set-up).
    pub fn api(&self) -> atlas_testkit::api::Api {
        atlas_testkit::api::Api {
            base: self.base.clone(),
            http: self.http.clone(),
            admin_token: ADMIN.into(),
        }
    }

    /// A tenant and one key for it, through the admin API.
    pub async fn tenant(&self, name: &str) -> (i64, String) {
        self.api().tenant(name).await
    }

    /// Defines an attribute through the admin API; returns its id.
    pub async fn define(&self, body: Value) -> i64 {
        self.api().define(body).await
    }

    /// The id of the attribute named `name`, from the admin catalogue (panics when none).
    pub async fn attribute_id(&self, name: &str) -> i64 {
        let (s, attrs) = call(self.admin(Method::GET, "/v1/admin/attributes")).await;
        assert_eq!(s, 200, "{attrs}");
        attrs["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["attribute_name"] == name)
            .and_then(|a| a["attribute_id"].as_i64())
            .unwrap_or_else(|| panic!("no attribute {name}: {attrs}"))
    }

    /// Registers `n` sensors for a tenant; returns their ids.
    pub async fn entities(&self, key: &str, n: usize) -> Vec<i64> {
        self.api().entities(key, n).await
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// The key prefix of a test database's cache.
pub fn cache_prefix(db: &TestDb) -> String {
    format!("{}:", db.name)
}

/// Sends a request; returns the status and the JSON body (Null when empty).
pub async fn call(req: RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap_or_else(|e| panic!("request: {e}"));
    split(resp).await
}

/// GET `path` as the tenant of `key`: the status, the body and `X-Atlas-Cache`.
pub async fn get_cached(server: &Server, key: &str, path: &str) -> (u16, Value, String) {
    let resp = server
        .as_tenant(key, Method::GET, path)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cache = header(&resp, "x-atlas-cache");
    let (s, b) = split(resp).await;
    (s, b, cache)
}

/// A response header as text (empty when absent or not text).
pub fn header(resp: &Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

pub async fn split(resp: Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("non-JSON body ({e}): {text}"))
    };
    (status, body)
}

/// Asserts the uniform error shape with a status, and returns its `field`.
#[track_caller]
pub fn assert_error(status: u16, body: &Value, expected: u16) -> Option<String> {
    assert_eq!(status, expected, "{body}");
    let err = &body["error"];
    assert!(
        err["code"].is_string() && err["message"].is_string(),
        "not the uniform error shape: {body}"
    );
    err["field"].as_str().map(str::to_owned)
}

pub use atlas_testkit::free_port;

/// The flags of a test's own throw-away Redis on `port` (loopback, no persistence).
pub fn redis_flags(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Starts `redis-server args` and waits until `port` accepts connections.
pub fn redis_server(args: &[String], port: u16) -> std::process::Child {
    let mut child = std::process::Command::new("redis-server")
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("redis-server: {e}"));
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("redis-server did not start on {port}");
}
