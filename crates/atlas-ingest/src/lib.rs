//! Atlas ingest: typed telemetry in, durably acknowledged, hot attributes projected.
//!
//! [`typing`] turns JSON readings into rows with exactly one typed value each (or names the
//! field at fault); [`pipeline`] batches rows, COPYs them into staging and flushes them into
//! the time series in the same transaction, so a commit *is* the acknowledgement;
//! [`atlas_cache::Cache`] drops the Redis entries a commit made stale.

pub mod pipeline;
pub mod typing;

pub use atlas_cache::Cache;
pub use pipeline::{Ack, Durability, IngestConfig, IngestError, Ingestor, Pipeline};
pub use typing::{Catalog, FieldError, Reading, ReceiptClock, Row, TimeRules, Typed};
