//! Atlas ingest: typed telemetry in, durably acknowledged, hot attributes projected.
//!
//! [`typing`] turns JSON readings into rows with exactly one typed value each (or names the
//! field at fault); [`pipeline`] batches the rows of concurrent requests and writes a durable
//! batch as one `ingest_rows($1)` call — validate, store, project the hot attributes — whose
//! autocommit *is* the acknowledgement (staged batches are COPYed into the UNLOGGED staging
//! table instead, and a background drain stores them through `stage_flush`);
//! [`atlas_cache::Cache`] drops the Redis entries a commit made stale.

pub mod pipeline;
pub mod typing;

pub use atlas_cache::Cache;
pub use pipeline::{Ack, Durability, IngestConfig, IngestError, Ingestor, Pipeline};
pub use typing::{Catalog, FieldError, Reading, ReceiptClock, Row, TimeRules, Typed};
