//! Maintainer, leader election and alerts against the test stack's real PostgreSQL and Redis.
#![allow(clippy::panic, reason = "a failed setup fails the test")]

mod alerts;
mod leader;
mod partitions;
