//! Schema tests against the private PostgreSQL of the test stack: the catalog the migrations
//! build, tenant isolation as the app role, the flush, the migrator and the replica.

mod support;

mod catalog;
mod explain;
mod flush;
mod ingest_rows;
mod isolation;
mod migrator;
mod numeric;
mod replica;
mod upgrade;
