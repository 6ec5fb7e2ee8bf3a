//! Route handlers, grouped by who may call them.

pub mod admin;
pub mod health;
pub mod reads;
pub mod telemetry;
pub mod tenant;
