//! Tests of the `atlas` binary as a process: acknowledged values survive `kill -9` of the
//! server and an immediate stop of PostgreSQL.

mod support;

mod admin;
mod cdc;
mod failover;
mod faults;
mod load;
mod metrics;
mod readme;
mod replication;
mod status;
