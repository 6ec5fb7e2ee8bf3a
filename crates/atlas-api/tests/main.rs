//! HTTP API tests against a real server, database and Redis: authentication on every
//! endpoint, the cross-tenant attack suite, the error contract, limits and the OpenAPI document.

mod support;

mod admin;
mod attack;
mod auth;
mod citus;
mod console;
mod contract;
mod entities;
mod lifecycle;
mod maintenance;
mod reads;
mod replication;
mod sentinel;
mod telemetry;
