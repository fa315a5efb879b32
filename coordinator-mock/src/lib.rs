//! A coordinator for local runs, tests and demos. It speaks the same v1
//! contract a production coordinator would: it dials processors, keeps one
//! exactly-once link to each (state in its own Postgres), and drives the
//! procedures.

pub mod admin;
pub mod backoff;
pub mod batches;
pub mod common;
pub mod config;
pub mod coordinator;
pub mod devnet;
pub mod dispatch;
pub mod error;
pub mod keygen;
pub mod metrics;
pub mod payouts;
pub mod run;
pub mod settlement;
pub mod signing;
